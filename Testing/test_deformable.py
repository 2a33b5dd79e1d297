"""The deformable stage in the pipeline, on real pairs with a known deformation, errors in mm.

Cases come from benchmarks.deformable_bench: the stroke T1/T2 pair (aligned
by curation) block-averaged to 2 mm so that the file stays fast, a known
smooth random deformation and a known rigid.  Each case runs the real
pipeline with the bundled T1-T2 preset; the affine-only result is the same
run's last accepted linear stage.  Errors are measured against the fair
reference (the known transforms composed with the pipeline's own
registration of the undeformed, unmoved pair) and, for the rigid-only
criterion, against the nominal header-identity truth too.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, shared_file

from benchmarks import deformable_bench as bench
from OneClickRegistrationLib import evaluation
from OneClickRegistrationLib.deformable import DeformableOutcome, DeformableSettings, register_deformable
from OneClickRegistrationLib.errors import InvalidInputError, RegistrationCancelled

STROKE = bench.STROKE


@pytest.fixture(scope="module")
def pipeline_runs():
    """Pipeline runs on 2 mm stroke T1-T2 cases (deformed 6 mm, rigid only, source pair), cached."""
    shared_file(f"{STROKE}/T1.nii.gz")
    shared_file(f"{STROKE}/T2.nii.gz")
    built = {}

    def run(peak_mm: float):
        if peak_mm not in built:
            spec = bench.CaseSpec("test", f"{STROKE}/T1.nii.gz", f"{STROKE}/T2.nii.gz", "T1", "T2",
                                  peak_mm, seed=11, shrink=2)
            case = bench.build_case(spec)
            built[peak_mm] = (case, bench.run_pipeline(case.fixed, case.moving, "T1", "T2"))
        return built[peak_mm]

    def reference():
        if "pair" not in built:
            case, _ = run(0.0)
            built["pair"] = bench.run_pipeline(case.fixed, case.original, "T1", "T2")
        return built["pair"]

    return run, reference


def _errors(pipeline_runs, peak_mm: float):
    """(affine-only, with-deformable) error arrays against the fair and the nominal reference."""
    run, reference = pipeline_runs
    case, (affine_only, final, _) = run(peak_mm)
    reference_affine, reference_final, _ = reference()
    fair = {"affine": bench.mapping_error_mm(affine_only, sitk.CompositeTransform([case.truth, reference_affine]),
                                             case.head),
            "final": bench.mapping_error_mm(final, sitk.CompositeTransform([case.truth, reference_final]),
                                            case.head)}
    nominal = {"affine": bench.mapping_error_mm(affine_only, case.truth, case.head),
               "final": bench.mapping_error_mm(final, case.truth, case.head)}
    return fair, nominal


def test_deformed_case_error_falls_below_one_millimetre(pipeline_runs):
    fair, nominal = _errors(pipeline_runs, 6.0)
    _, (_, _, result) = pipeline_runs[0](6.0)
    assert result.stage("deformable").accepted
    assert fair["affine"].mean() > 1.2, "the case must start visibly deformed"
    assert fair["final"].mean() < 1.0
    assert fair["final"].mean() < 0.6 * fair["affine"].mean()
    assert nominal["final"].mean() < 0.7 * nominal["affine"].mean()


def test_final_mapping_folds_nowhere_and_inverts(pipeline_runs):
    case, (_, final, result) = pipeline_runs[0](6.0)
    assert bench.min_jacobian(final, case.fixed) > 0.0
    round_trip = bench.round_trip_error_mm(final, result.inverse_transform, case.head)
    assert round_trip.max() < 0.1


def test_rigid_only_case_is_not_worse_with_the_deformable_stage(pipeline_runs):
    fair, nominal = _errors(pipeline_runs, 0.0)
    for errors in (fair, nominal):
        assert errors["final"].mean() - errors["affine"].mean() <= 0.2


def test_ct_rigid_only_case_is_not_worse_and_does_not_fold():
    """The CT rows' stage (NGF, forced on) on the MNI T1 / CT templates moved by a rigid only.

    The two templates are different people (about 1.7 % apart in size), which the
    affine stage finds but, within a scanner's calibration, does not keep; the
    deformable stage then finds the same difference.  The reference is therefore
    the best linear fit found (the affine stage's, kept or not).
    """
    shared_file(f"{bench.MNI}/spm_avg152T1.nii.gz")
    shared_file(f"{bench.MNI}/clinical_scct.nii.gz")
    spec = bench.CaseSpec("ct", f"{bench.MNI}/spm_avg152T1.nii.gz", f"{bench.MNI}/clinical_scct.nii.gz",
                          "T1", "CT", 0.0, seed=5)
    case = bench.build_case(spec)
    _, final, result = bench.run_pipeline(case.fixed, case.moving, "T1", "CT")
    before = bench.mapping_error_mm(result.stage("affine").transform, case.truth, case.head).mean()
    after = bench.mapping_error_mm(final, case.truth, case.head).mean()
    assert after - before <= 0.2
    assert bench.min_jacobian(final, case.fixed) > 0.0
    assert bench.round_trip_error_mm(final, result.inverse_transform, case.head).max() < 0.1


@pytest.mark.stack
def test_same_image_under_a_rigid_gives_no_deformation():
    fixed = bench.read_float(f"{STROKE}/T1.nii.gz", 2) if (bench.SHARED_DATA / STROKE).is_dir() \
        else pytest.skip("needs the stroke pair")
    rigid = bench.known_rigid(fixed, bench.CaseSpec("same", "", "", "T1", "T1", 0.0, seed=3))
    outcome = register_deformable(fixed, evaluation.move_header(fixed, rigid), rigid,
                                  DeformableSettings(metric="lncc", iterations=(10, 10, 5)))
    assert outcome.max_displacement_mm < 0.05
    assert outcome.min_jacobian == pytest.approx(1.0, abs=1e-3)


def test_a_deformation_too_small_to_count_ends_before_the_finest_level(pipeline_runs):
    """go_on is asked once, before the finest level, with the deformation found so far; False ends there."""
    case, _ = pipeline_runs[0](6.0)
    asked = []

    def go_on(change_mm):
        asked.append(change_mm)
        return False

    settings = DeformableSettings(metric="mind", grid_spacings_mm=(8.0, 4.0, 2.0), iterations=(20, 20, 10))
    outcome = register_deformable(case.fixed, case.moving, case.rigid, settings, fixed_mask=case.head, go_on=go_on)
    assert len(asked) == 1 and asked[0] > 1.0, "the 6 mm deformation shows at the coarse levels"
    assert len(outcome.iterations_run) == 2
    assert outcome.forward.GetDisplacementField().GetSpacing() == (4.0, 4.0, 4.0)
    assert outcome.min_jacobian > 0.0


def test_pipeline_skips_the_finest_level_when_nothing_can_count(monkeypatch):
    """On one image against a rigidly moved copy the pipeline's deformable stage stops at its coarse levels."""
    from OneClickRegistrationLib import pipeline

    fixed = bench.read_float(f"{STROKE}/T1.nii.gz", 2) if (bench.SHARED_DATA / STROKE).is_dir() \
        else pytest.skip("needs the stroke pair")
    rigid = bench.known_rigid(fixed, bench.CaseSpec("same", "", "", "T1", "T1", 0.0, seed=3))
    runs = []
    original = pipeline.deformable.register_deformable
    monkeypatch.setattr(pipeline.deformable, "register_deformable",
                        lambda *args, **kwargs: runs.append(original(*args, **kwargs)) or runs[-1])
    result = pipeline.register(fixed, evaluation.move_header(fixed, rigid), fixed_modality="T1",
                               moving_modality="T1")
    assert len(runs) == 1 and len(runs[0].iterations_run) < 3
    assert not result.stage("deformable").accepted


def test_no_level_is_finer_than_the_fixed_image():
    blob = sitk.GaussianSource(sitk.sitkFloat32, [24, 24, 24], [4.0] * 3, [12.0] * 3, 100.0, [1.0] * 3, [4.0] * 3)
    outcome = register_deformable(blob, blob, sitk.Euler3DTransform(),
                                  DeformableSettings(grid_spacings_mm=(8.0, 4.0, 2.0), iterations=(3, 3, 3)))
    assert outcome.forward.GetDisplacementField().GetSpacing() == (4.0, 4.0, 4.0)
    assert len(outcome.iterations_run) == 2, "the 2 mm level repeats the 4 mm one once clamped"


def test_transforms_write_and_read_back(pipeline_runs, tmp_path):
    case, (_, final, result) = pipeline_runs[0](6.0)
    sitk.WriteTransform(final, str(tmp_path / "forward.h5"))
    sitk.WriteTransform(result.inverse_transform, str(tmp_path / "inverse.h5"))
    read_back = sitk.ReadTransform(str(tmp_path / "forward.h5"))
    point = case.fixed.TransformContinuousIndexToPhysicalPoint([n / 2 for n in case.fixed.GetSize()])
    assert np.allclose(read_back.TransformPoint(point), final.TransformPoint(point), atol=1e-6)
    assert isinstance(sitk.ReadTransform(str(tmp_path / "inverse.h5")), sitk.Transform)


def test_inputs_are_not_modified_and_progress_is_reported(pipeline_runs):
    case, _ = pipeline_runs[0](0.0)
    fixed_before = sitk.GetArrayFromImage(case.fixed).copy()
    moving_before = sitk.GetArrayFromImage(case.moving).copy()
    parameters_before = case.rigid.GetParameters()
    fractions = []
    outcome = register_deformable(case.fixed, case.moving, case.rigid,
                                  DeformableSettings(iterations=(3, 3, 2)), fixed_mask=case.head,
                                  progress=lambda fraction, message: fractions.append(fraction))
    assert isinstance(outcome, DeformableOutcome)
    assert np.array_equal(sitk.GetArrayFromImage(case.fixed), fixed_before)
    assert np.array_equal(sitk.GetArrayFromImage(case.moving), moving_before)
    assert case.rigid.GetParameters() == parameters_before
    assert len(fractions) >= 8 and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_cancellation_propagates(pipeline_runs):
    case, _ = pipeline_runs[0](0.0)

    def cancel(fraction, message):
        if fraction > 0.1:
            raise RegistrationCancelled("stop")

    with pytest.raises(RegistrationCancelled):
        register_deformable(case.fixed, case.moving, case.rigid, DeformableSettings(), progress=cancel)


def test_library_import_does_not_load_the_kernels():
    code = ("import sys; sys.path.insert(0, 'OneClickRegistration'); import OneClickRegistrationLib; "
            "import OneClickRegistrationLib.deformable; "
            "print('OneClickRegistrationLib.deformable_kernels' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert output.stdout.strip() == "False"


def test_settings_round_trip_defaults():
    settings = DeformableSettings.from_dict({"run_by_default": False, "metric": "lncc"})
    assert settings.run_by_default is False
    assert settings.metric == "lncc"
    assert settings.grid_spacings_mm == DeformableSettings().grid_spacings_mm


@pytest.mark.parametrize("values, key", [
    ({"metric": "ssd"}, "metric"),
    ({"run_by_default": "yes"}, "run_by_default"),
    ({"regularization_sigma_mm": 0}, "regularization_sigma_mm"),
    ({"update_sigma_mm": -1}, "update_sigma_mm"),
    ({"max_step_voxels": "big"}, "max_step_voxels"),
    ({"grid_spacings_mm": [2, 4], "iterations": [5, 5]}, "grid_spacings_mm"),
    ({"grid_spacings_mm": []}, "grid_spacings_mm"),
    ({"iterations": [10, 10]}, "iterations"),
    ({"iterations": [10, 2.5, 3]}, "iterations"),
    ({"smoothing": 1}, "smoothing"),
])
def test_settings_errors_name_the_key(values, key):
    with pytest.raises(InvalidInputError, match=f"deformable.{key}"):
        DeformableSettings.from_dict(values)


def test_preset_table_rows_are_valid_settings():
    table = json.loads((ROOT / "OneClickRegistration" / "Resources" / "OneClickRegistration" / "Presets" / "presets.json").read_text())
    for row in table["presets"]:
        settings = DeformableSettings.from_dict(row["deformable"])
        # the agnostic row (modalities unknown) may pair any contrasts: it is cross-modality too
        cross = row["modalities"][0] != row["modalities"][1] or "unknown" in row["modalities"]
        expected = ("ngf" if "CT" in row["modalities"] else "mind") if cross else "lncc"
        assert settings.metric == expected, row["name"]
        assert dataclasses.is_dataclass(settings)
