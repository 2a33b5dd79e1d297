"""Two different people, or a patient and a template: detected (or asked for) and registered far.

Between two scans of one patient the affine finds at most a per cent or two
of scaling; between two heads it finds 4-16 %.  Such a pair is registered with
the affine kept on its score and the far-reaching deformable stage
(deformable_large.py), and the result says which case was assumed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from benchmarks.cases import jacobian_determinant
from conftest import SAMPLE_DATA, shared_file
from OneClickRegistrationLib import evaluation, evidence, imageio, register
from OneClickRegistrationLib.presets import load_preset_table

MNI_T1 = "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz"
OTHER_PERSON_T1 = "chris_t1_pd/chris_t1.nii.gz"


def _scaled_copy(image: sitk.Image, factor: float) -> tuple:
    """`image` resampled so its head is `factor` times larger; (copy, fixed -> moving truth)."""
    centre = imageio.mask_center(imageio.head_mask(image))
    truth = sitk.ScaleTransform(3, (factor,) * 3)
    truth.SetCenter(tuple(centre))
    enlarged = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return enlarged, truth


@pytest.mark.stack
def test_the_affine_scaling_tells_one_patient_from_two_people():
    same = sitk.AffineTransform(3)
    same.SetMatrix((1.012, 0, 0, 0, 0.995, 0, 0, 0, 1.0))
    other = sitk.AffineTransform(3)
    other.SetMatrix((0.92, 0, 0, 0, 0.88, 0, 0, 0, 0.99))
    assert not evidence.subjects_from_affine(same).different
    detected = evidence.subjects_from_affine(other)
    assert detected.different and "12.0 %" in detected.reason and "--same-subject" in detected.reason
    assert evidence.subjects_as_told(True).different and not evidence.subjects_as_told(False).different
    assert evidence.subjects_as_told(None).case == evidence.SAME_PATIENT


def test_a_scaled_head_is_taken_for_another_person_unless_told_otherwise():
    fixed = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    moving, _ = _scaled_copy(fixed, 1.08)
    detected = register(fixed, moving, stages=("rigid", "affine"))
    assert detected.subjects.different and detected.subjects.reason.startswith("detected:")
    assert detected.stage("affine").accepted
    assert detected.report()["subjects"]["case"] == evidence.DIFFERENT_PEOPLE
    told = register(fixed, moving, stages=("rigid", "affine"), inter_subject=False)
    assert told.subjects.case == evidence.SAME_PATIENT and told.subjects.reason.startswith("as asked")


def test_a_known_large_deformation_of_the_template_is_recovered_within_1_5_mm():
    """The MNI T1 against itself warped by a smooth deformation of 12 mm peak, registered as different people."""
    fixed = sitk.ReadImage(str(shared_file(MNI_T1)), sitk.sitkFloat32)
    truth = _smooth_deformation(fixed, peak_mm=12.0)
    moving = sitk.Resample(fixed, fixed, _inverse_field(truth, fixed), sitk.sitkLinear, 0.0)
    result = register(fixed, moving, inter_subject=True)
    assert result.subjects.reason.startswith("as asked")
    deformable = result.stage("deformable")
    assert deformable.accepted, deformable.message
    points = evaluation.mask_points(imageio.head_mask(fixed), max_points=3000)
    errors = evaluation.target_registration_error(result.transform, truth, points)
    moved = evaluation.target_registration_error(sitk.Euler3DTransform(), truth, points)
    assert np.percentile(moved, 95) > 6.0, "the known deformation is large"
    assert errors.mean() <= 1.5, f"mean {errors.mean():.2f} mm, p95 {np.percentile(errors, 95):.2f} mm"
    assert _min_jacobian(result.transform, fixed) > 0


def test_a_patient_against_a_template_is_registered_as_different_people():
    fixed = sitk.ReadImage(str(shared_file(MNI_T1)))
    moving = sitk.ReadImage(str(shared_file(OTHER_PERSON_T1)))
    result = register(fixed, moving)
    assert result.subjects.different and result.subjects.reason.startswith("detected:")
    affine, deformable = result.stage("affine"), result.stage("deformable")
    assert affine.accepted and deformable.accepted, (affine.message, deformable.message)
    assert deformable.score > affine.score + 0.1
    assert result.verdict == deformable.verdict
    assert _min_jacobian(result.transform, fixed) > 0


def test_a_user_table_without_inter_subject_settings_uses_the_bundled_ones(tmp_path):
    bundled = load_preset_table()
    document = json.loads(bundled.path.read_text())
    del document["inter_subject"]
    path = tmp_path / "table.json"
    path.write_text(json.dumps(document))
    assert load_preset_table(path).inter_subject == bundled.inter_subject
    document["inter_subject"] = {"grid_spacing_mm": 0}
    path.write_text(json.dumps(document))
    with pytest.raises(Exception, match="inter_subject.grid_spacing_mm: expected a positive number"):
        load_preset_table(path)


def _smooth_deformation(image: sitk.Image, peak_mm: float) -> sitk.DisplacementFieldTransform:
    """A fixed -> moving displacement: three Gaussian bumps (sigma 25 mm) in the head, peak `peak_mm`."""
    rng = np.random.default_rng(17)
    head = sitk.GetArrayFromImage(imageio.head_mask(image)) > 0
    zyx = np.argwhere(head)
    field = np.zeros(head.shape + (3,))
    index = np.indices(head.shape).transpose(1, 2, 3, 0).astype(float)
    spacing = np.asarray(image.GetSpacing())[::-1]
    for centre in zyx[rng.choice(len(zyx), 3, replace=False)]:
        distance_sq = (((index - centre) * spacing) ** 2).sum(axis=-1)
        direction = rng.normal(size=3)
        field += np.exp(-distance_sq / (2 * 25.0 ** 2))[..., None] * direction / np.linalg.norm(direction)
    field *= peak_mm / np.linalg.norm(field, axis=-1).max()
    displacement = sitk.GetImageFromArray(field, isVector=True)
    displacement.CopyInformation(image)
    return sitk.DisplacementFieldTransform(displacement)


def _inverse_field(transform: sitk.DisplacementFieldTransform, image: sitk.Image) -> sitk.Transform:
    """The inverse of a displacement transform on `image`'s grid (ITK's fixed-point inversion)."""
    field = sitk.InvertDisplacementField(transform.GetDisplacementField(), maximumNumberOfIterations=50,
                                         maxErrorToleranceThreshold=0.01, meanErrorToleranceThreshold=0.001)
    field.CopyInformation(image)
    return sitk.DisplacementFieldTransform(field)


def _min_jacobian(transform: sitk.Transform, image: sitk.Image) -> float:
    """Smallest Jacobian determinant of the mapping over the head of `image` (one-sided differences at the border)."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, image.GetSize(),
                                              image.GetOrigin(), image.GetSpacing(), image.GetDirection())
    jacobian = jacobian_determinant(sitk.GetArrayFromImage(field), image)
    head = sitk.GetArrayFromImage(imageio.head_mask(image)) > 0
    return float(jacobian[head].min())


def test_the_command_line_says_which_case_it_assumed(tmp_path, capsys):
    from OneClickRegistrationLib import cli

    fixed_path = SAMPLE_DATA / "T1.nii.gz"
    moving, _ = _scaled_copy(sitk.ReadImage(str(fixed_path)), 1.08)
    moving_path = tmp_path / "larger.nrrd"
    sitk.WriteImage(moving, str(moving_path))
    for flag, case in (("--same-subject", evidence.SAME_PATIENT), ("--inter-subject", evidence.DIFFERENT_PEOPLE)):
        out = tmp_path / flag.strip("-")
        assert cli.main([str(fixed_path), str(moving_path), "-o", str(out), "--stages", "rigid,affine", "-q",
                         flag, "--report", str(out / "r.json")]) == 0
        assert f"subjects: {case} (as asked" in capsys.readouterr().out
        assert json.loads((out / "r.json").read_text())["subjects"]["case"] == case
