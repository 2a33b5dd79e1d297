"""The benchmark's yardstick: cases carry the right truth and TRE is computed right.

Builds one small known-answer case from the MNI templates and scores three
mappings with the benchmark's own scoring code: the identity (its error must
equal the known misalignment), the true mapping (error ~0) and the SimpleITK
textbook adapter (its error must match a direct TransformPoint evaluation).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file

from benchmarks import cases, methods
from benchmarks.worker import evaluate_case

PAIR = cases.PAIRS[2]  # MNI T1 -> T2: small (2 mm) volumes


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    data_dir = shared_file(PAIR.fixed).parents[1]
    shared_file(PAIR.moving)
    plan = cases.BuildPlan(seeds=(3,), levels=(cases.LEVELS[0],), deformable_seeds=(), pairs=(PAIR,))
    (case,) = cases.build_cases(data_dir, tmp_path_factory.mktemp("bench_cases"), plan)
    return case


def _method_returning(transform: sitk.Transform) -> methods.Method:
    return methods.Method("fixed answer", "test", "rigid", "SimpleITK",
                          lambda fixed, moving: methods.Mapping(0.0, transform=transform))


def _true_transform(case) -> sitk.AffineTransform:
    """The truth rebuilt from the two headers alone (same voxels, moved header)."""
    original = sitk.ReadImage(str(shared_file(PAIR.moving)))
    moved = sitk.ReadImage(case.moving_path)
    d_orig = np.asarray(original.GetDirection()).reshape(3, 3)
    d_new = np.asarray(moved.GetDirection()).reshape(3, 3)
    matrix = d_new @ d_orig.T
    translation = np.asarray(moved.GetOrigin()) - matrix @ np.asarray(original.GetOrigin())
    return sitk.AffineTransform(matrix.ravel().tolist(), translation.tolist())


def test_rigid_case_changes_only_the_header(small_case):
    original = sitk.ReadImage(str(shared_file(PAIR.moving)))
    moved = sitk.ReadImage(small_case.moving_path)
    assert np.array_equal(sitk.GetArrayFromImage(original), sitk.GetArrayFromImage(moved))
    assert 0 < small_case.rotation_degrees <= 15 and 0 < small_case.translation_mm <= 15


def test_identity_error_is_the_known_misalignment(small_case):
    row = evaluate_case(_method_returning(sitk.Euler3DTransform()), small_case.as_dict())
    truth = small_case.truth()
    expected = np.linalg.norm(truth["truth"] - truth["points"], axis=1)
    np.testing.assert_allclose(row["errors"], expected, atol=1e-3)
    assert np.median(expected) > 1.0


def test_true_mapping_has_zero_error(small_case):
    row = evaluate_case(_method_returning(_true_transform(small_case)), small_case.as_dict())
    assert row["status"] == "ok"
    assert float(np.max(row["errors"])) < 1e-3


def test_simpleitk_adapter_error_matches_direct_evaluation(small_case):
    methods.limit_threads()
    method = methods.method_named("SimpleITK rigid")
    transform = method.run(small_case.fixed_path, small_case.moving_path).transform
    row = evaluate_case(_method_returning(transform), small_case.as_dict())
    truth = small_case.truth()
    direct = np.array([transform.TransformPoint(tuple(p)) for p in truth["points"]]) - truth["truth"]
    np.testing.assert_allclose(row["errors"], np.linalg.norm(direct, axis=1), atol=1e-3)
    assert np.median(row["errors"]) < 2.0, "the textbook setup should recover a small rigid motion"
