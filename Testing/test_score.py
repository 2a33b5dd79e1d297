"""The quality score: honest over the overlap, safe in arithmetic, and discriminating.

The aligned pairs share a grid, so their alignment is the identity, except the
CT template against the MR templates: built from other subjects, its best
rigid fit to the T2 template is about 2.7 mm off in z (see
test_rigid_recovery.py).  For CT-MR pairs the reference alignment is
therefore the pair's own rigid registration, and the score must drop 3 mm or
3 degrees away from it.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from OneClickRegistrationLib import evaluation, imageio, register, score

STROKE = "cstar_stroke_t1_t2_flair/"
MNI = "mni_templates_ct_t1_t2_pd/"
ALIGNED_PAIRS = [
    (STROKE + "T1.nii.gz", STROKE + "T1.nii.gz", False),
    pytest.param(STROKE + "T1.nii.gz", STROKE + "T2.nii.gz", True, marks=pytest.mark.stack),
    (STROKE + "T1.nii.gz", STROKE + "FLAIR.nii.gz", True),
    (STROKE + "T2.nii.gz", STROKE + "FLAIR.nii.gz", True),
    (MNI + "spm_avg152T1.nii.gz", MNI + "spm_avg152T2.nii.gz", True),
    (MNI + "spm_avg152T1.nii.gz", MNI + "spm_avg152PD.nii.gz", True),
    (MNI + "spm_avg152T2.nii.gz", MNI + "spm_avg152PD.nii.gz", False),
    pytest.param(MNI + "spm_avg152T1.nii.gz", MNI + "clinical_scct.nii.gz", True, marks=pytest.mark.stack),
    (MNI + "clinical_scct.nii.gz", MNI + "spm_avg152T2.nii.gz", True),
]
CT_TEMPLATE = MNI + "clinical_scct.nii.gz"


def _scorer(fixed: sitk.Image, moving: sitk.Image, cross_modality: bool) -> score.AlignmentScorer:
    fixed, moving = imageio.as_float32(fixed), imageio.as_float32(moving)
    return score.AlignmentScorer(fixed, moving, cross_modality=cross_modality,
                                 fixed_head=imageio.head_mask(fixed), moving_head=imageio.head_mask(moving))


def _misalignments(reference: sitk.Transform, center):
    """`reference` preceded by 3 mm shifts along and 3 degree rotations about each axis, both signs."""
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = np.zeros(3)
            shift[axis] = 3.0 * sign
            angles = np.zeros(3)
            angles[axis] = 3.0 * sign
            for what, motion in ((f"shift {shift} mm", evaluation.rigid_transform((0, 0, 0), shift, center)),
                                 (f"rotation {angles} deg", evaluation.rigid_transform(angles, (0, 0, 0), center))):
                yield what, sitk.CompositeTransform([reference, motion])


@pytest.mark.parametrize("fixed_name,moving_name,cross", ALIGNED_PAIRS,
                         ids=lambda v: v.split("/")[-1] if isinstance(v, str) else str(v))
def test_aligned_pair_scores_higher_than_3mm_or_3deg_off(fixed_name, moving_name, cross):
    fixed = sitk.ReadImage(str(shared_file(fixed_name)))
    moving = sitk.ReadImage(str(shared_file(moving_name)))
    scorer = _scorer(fixed, moving, cross)
    reference = (register(fixed, moving, stages=("rigid",)).transform
                 if CT_TEMPLATE in (fixed_name, moving_name) else sitk.Euler3DTransform())
    aligned = scorer(reference)
    center = imageio.mask_center(imageio.head_mask(imageio.as_float32(fixed)))
    for what, transform in _misalignments(reference, center):
        assert scorer(transform) < aligned, f"{what}: {scorer(transform):.4f} >= aligned {aligned:.4f}"


def _blob(size=32, dtype=sitk.sitkFloat32, scale=1.0, offset=0.0):
    grid = np.indices((size, size, size)).astype(np.float64) - size / 2
    values = np.exp(-(grid ** 2).sum(0) / (2 * (size / 5) ** 2)) + 0.3 * np.sin(grid[0] / 2.0) * (np.abs(grid).max(0) < size / 3)
    image = sitk.GetImageFromArray(values * scale + offset)
    image.SetSpacing((2.0, 2.0, 2.0))
    return sitk.Cast(image, dtype)


@pytest.mark.stack
def test_identical_images_score_one_in_both_measures():
    image = _blob()
    detail = _scorer(image, image, cross_modality=True).evaluate(sitk.Euler3DTransform())
    assert detail.intensity_ncc == pytest.approx(1.0, abs=1e-9)
    assert detail.structure_ncc == pytest.approx(1.0, abs=1e-9)


@pytest.mark.stack
def test_16_bit_data_does_not_overflow():
    """Values near the int16/uint16 limits give the same score as in float."""
    big_uint16 = _blob(dtype=sitk.sitkUInt16, scale=60000.0, offset=100.0)
    big_int16 = _blob(dtype=sitk.sitkInt16, scale=60000.0, offset=-30000.0)
    as_float = sitk.Cast(big_uint16, sitk.sitkFloat32)
    shift = evaluation.rigid_transform((0, 0, 5), (2.0, 0, 0), (31.0, 31.0, 31.0))
    reference = _scorer(as_float, as_float, False)(shift)
    assert _scorer(big_uint16, big_uint16, False)(shift) == pytest.approx(reference, abs=1e-6)
    assert -1.0 <= _scorer(big_int16, big_int16, False)(shift) <= 1.0
    a = np.full(1000, 32767, np.int16)
    b = a.copy()
    a[::2] = -32768
    b[::3] = -32768
    mask = np.ones(1000, bool)
    expected = np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1]
    assert score.masked_ncc(a, b, mask) == pytest.approx(expected, abs=1e-12)


@pytest.mark.stack
def test_constant_image_scores_zero_not_nan():
    constant = np.ones((10, 10, 10), np.int16)
    varying = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    value = score.masked_ncc(constant, varying, np.ones_like(constant, bool))
    assert value == 0.0


@pytest.mark.stack
def test_no_overlap_scores_minus_one():
    image = _blob()
    far_away = evaluation.rigid_transform((0, 0, 0), (500.0, 0, 0), (0, 0, 0))
    detail = _scorer(image, image, False).evaluate(far_away)
    assert detail.value == -1.0 and detail.overlap_voxels == 0


@pytest.mark.stack
def test_padding_outside_the_moving_domain_is_not_scored():
    """Half the fixed grid maps outside the moving image: only the sampled half counts."""
    image = _blob()
    half_out = evaluation.rigid_transform((0, 0, 0), (32.0, 0, 0), (0, 0, 0))
    scorer = _scorer(image, image, False)
    detail = scorer.evaluate(half_out)
    full = scorer.evaluate(sitk.Euler3DTransform())
    assert 0 < detail.overlap_voxels < full.overlap_voxels
    padded_grid = sitk.Resample(image, scorer.grid, half_out, sitk.sitkLinear, 0.0)
    assert np.isfinite(detail.value)
    assert detail.overlap_voxels <= np.count_nonzero(sitk.GetArrayViewFromImage(padded_grid) != 0)


@pytest.mark.parametrize("cross", [False, True])
def test_the_cropped_moving_domain_is_scored_alike_through_a_linear_or_a_composite_transform(cross):
    """The moving image is a crop of a larger scan (as the pipeline's working copies are): points outside the
    crop but inside the scan count as background, whichever way the transform is given (a rigid transform
    is tested analytically, a composite through its displacement field)."""
    scan = _blob(size=48)
    crop = sitk.RegionOfInterest(scan, [30, 30, 30], [9, 9, 9])
    scorer = score.AlignmentScorer(scan, crop, cross_modality=cross, fixed_head=imageio.head_mask(scan),
                                   moving_head=imageio.head_mask(crop), moving_domain=scan)
    rng = np.random.default_rng(7)
    for _ in range(4):
        rigid = evaluation.rigid_transform(rng.uniform(-20, 20, 3), rng.uniform(-20, 20, 3), (47.0, 47.0, 47.0))
        linear, composite = scorer.evaluate(rigid), scorer.evaluate(sitk.CompositeTransform([rigid]))
        assert linear.overlap_voxels == composite.overlap_voxels > 0
        assert linear.value == pytest.approx(composite.value, abs=1e-9)


def test_a_transform_changed_in_place_is_scored_anew():
    image = _blob()
    scorer = _scorer(image, image, False)
    transform = sitk.Euler3DTransform()
    aligned = scorer(transform)
    transform.SetTranslation((4.0, 0.0, 0.0))
    moved = scorer(transform)
    assert moved == pytest.approx(_scorer(image, image, False)(transform), abs=1e-12)
    assert moved < aligned - 0.01


def test_warping_cannot_rescue_a_pair_of_different_heads():
    """Two people's whole-head T1s: the deformable stage raises the score, but the verdict stays the linear one's."""
    fixed = sitk.ReadImage(str(shared_file("philips_elition_adni_mprage/ADNI_Sag3D_MPRAGE_1mm.nii.gz")))
    moving = sitk.ReadImage(str(shared_file("chris_t1_pd/chris_t1.nii.gz")))
    result = register(fixed, moving)
    linear = [stage for stage in result.stages if stage.name != "deformable" and stage.accepted][-1]
    deformable = result.stage("deformable")
    assert linear.verdict != "good", f"linear score {linear.score:.3f}"
    assert deformable.score > linear.score
    assert deformable.verdict == linear.verdict and result.verdict == linear.verdict
    assert result.report()["verdict"] == linear.verdict
    if score.verdict(deformable.score) != linear.verdict:
        assert "warping cannot make up for a wrong linear alignment" in deformable.message
