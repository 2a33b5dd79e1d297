"""Stages kept only on evidence: a rigid-only pair ends as precise as its rigid fit.

The aligned stroke T1/T2 pair shares one grid (its alignment is the identity),
so a known rigid motion gives every head point's true position.  An affine
stage finds about half a per cent of "scaling" between them and a deformable
stage a few tenths of a millimetre of "motion"; both must be dropped, and a
real scaling must still be kept.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_DATA
from OneClickRegistrationLib import evaluation, evidence, imageio, register, score
from OneClickRegistrationLib.score import ScoreGain

MOTION_DEG = (6.0, -4.0, 8.0)
MOTION_MM = (5.0, -7.0, 3.0)


def _sample(name: str) -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE_DATA / name))


def _motion(image: sitk.Image) -> sitk.Euler3DTransform:
    """The known fixed -> moving motion, about the head's centre."""
    return evaluation.rigid_transform(MOTION_DEG, MOTION_MM, imageio.mask_center(imageio.head_mask(image)))


def _head_points(image: sitk.Image) -> np.ndarray:
    return evaluation.mask_points(imageio.head_mask(imageio.as_float32(image)), max_points=2000)


def test_default_chain_on_a_resampled_rigid_copy_leaves_every_head_point_within_0_2_mm():
    """The image against itself moved once through cubic B-splines (as a scanner would have sampled it)."""
    fixed = _sample("T1.nii.gz")
    truth = _motion(fixed)
    moved = sitk.Resample(fixed, fixed, truth.GetInverse(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    result = register(fixed, moved)
    errors = evaluation.target_registration_error(result.transform, truth, _head_points(fixed))
    assert errors.max() < 0.2, f"max {errors.max():.3f} mm, median {np.median(errors):.3f} mm"
    assert result.verdict == "good"
    for name in ("affine", "deformable"):
        stage = result.stage(name)
        assert not stage.accepted and stage.message.startswith("dropped:"), (name, stage.message)


def test_affine_on_a_rigid_only_pair_is_dropped_and_says_why():
    fixed, moving = _sample("T1.nii.gz"), _sample("T2.nii.gz")
    truth = _motion(fixed)
    result = register(fixed, evaluation.move_header(moving, truth), stages=("rigid", "affine"))
    affine = result.stage("affine")
    assert not affine.accepted
    assert "same size and shape" in affine.message and "rigid alignment is kept" in affine.message
    assert result.transform is result.stage("rigid").transform
    assert result.report()["stages"][1]["message"] == affine.message
    errors = evaluation.target_registration_error(result.transform, truth, _head_points(fixed))
    assert np.median(errors) < 0.3


def test_affine_is_kept_for_a_real_scaling_between_the_scans():
    """A T2 whose voxels are 4 % larger than its header says (a miscalibrated gradient): the affine stage stays."""
    fixed, moving = _sample("T1.nii.gz"), _sample("T2.nii.gz")
    scaled = sitk.Image(moving)
    scaled.SetSpacing(tuple(1.04 * s for s in moving.GetSpacing()))
    centre = np.asarray(imageio.mask_center(imageio.head_mask(fixed)))
    # fixed point x sits at moving point c' + 1.04 (x - c) with c' the scaled image's view of c.
    scaled.SetOrigin(tuple(centre + 1.04 * (np.asarray(moving.GetOrigin()) - centre)))
    truth = sitk.AffineTransform(3)
    truth.SetMatrix((1.04, 0, 0, 0, 1.04, 0, 0, 0, 1.04))
    truth.SetCenter(tuple(centre))
    result = register(fixed, scaled, stages=("rigid", "affine"))
    affine = result.stage("affine")
    assert affine.accepted and affine.message.startswith("kept: corrects a scaling"), affine.message
    points = _head_points(fixed)
    rigid_errors = evaluation.target_registration_error(result.stage("rigid").transform, truth, points)
    affine_errors = evaluation.target_registration_error(result.transform, truth, points)
    assert np.median(affine_errors) < 0.5 < np.median(rigid_errors)


@pytest.mark.stack
def test_score_gain_matches_the_score_and_a_shift_stands_above_its_noise():
    fixed, moving = _sample("T1.nii.gz"), _sample("T2.nii.gz")
    head_f, head_m = imageio.head_mask(fixed), imageio.head_mask(moving)
    scorer = score.AlignmentScorer(imageio.as_float32(fixed), imageio.as_float32(moving), cross_modality=True,
                                   fixed_head=head_f, moving_head=head_m)
    aligned = evaluation.rigid_transform((0, 0, 0), (0, 0, 0), imageio.mask_center(head_f))
    shifted = evaluation.rigid_transform((0, 0, 0), (1.0, 0, 0), imageio.mask_center(head_f))
    gain = scorer.gain(shifted, aligned)
    assert gain.gain == pytest.approx(scorer(aligned) - scorer(shifted), abs=1e-9)
    assert 0 < gain.noise < gain.gain / evidence.NOISE_MULTIPLE
    assert scorer.gain(aligned, aligned) == ScoreGain(0.0, 0.0)


@pytest.mark.stack
def test_decisions_need_both_a_real_change_and_a_gain_beyond_noise():
    real_gain, noisy_gain = ScoreGain(0.02, 0.002), ScoreGain(0.004, 0.003)
    measured = []

    def gain_of(gain):
        return lambda: measured.append(gain) or gain

    assert evidence.deformable_decision(2.0, gain_of(real_gain)).kept
    small = evidence.deformable_decision(0.6, gain_of(real_gain))
    assert not small.kept and "0.60 mm" in small.reason
    assert not evidence.deformable_decision(2.0, gain_of(noisy_gain)).kept
    scaling = sitk.AffineTransform(3)
    scaling.SetMatrix((1.03, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    assert evidence.affine_decision(scaling, gain_of(real_gain)).kept
    assert not evidence.affine_decision(scaling, gain_of(noisy_gain)).kept
    assert len(measured) == 4  # a change too small to matter is dropped without measuring the gain's noise
    scaling.SetMatrix((1.005, 0, 0, 0, 1.0, 0, 0, 0, 0.997))
    assert "0.5 %" in evidence.affine_decision(scaling, gain_of(real_gain)).reason
    assert len(measured) == 4
