"""The rigid stage's finest level (linear_precise.py): its interpolation, its gradient, its fit.

Run on the bundled stroke T1/T2 pair (aligned by the data's authors), so the
truth of a fit is the identity and the geometry is a real scanner's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from OneClickRegistrationLib import evaluation, imageio, linear, linear_kernels, linear_precise
from OneClickRegistrationLib.parallel import run_slabs

SAMPLES = Path(__file__).resolve().parents[1] / "OneClickRegistration" / "Resources" / "OneClickRegistration" / "SampleData"


def _level(samples: int = 120_000) -> linear_precise.PreciseRigidLevel:
    fixed = linear.fit_image(sitk.ReadImage(str(SAMPLES / "T1.nii.gz"), sitk.sitkFloat32))
    moving = linear.fit_image(sitk.ReadImage(str(SAMPLES / "T2.nii.gz"), sitk.sitkFloat32))
    return linear_precise.PreciseRigidLevel(fixed, moving, None, samples, 0.25, 32, 2e-3, 7)


def test_samples_interpolate_like_simpleitk_quadratic_bsplines_on_an_oblique_grid():
    """Values at mapped points equal SimpleITK's BSpline2 resampling, direction, spacing and origin honoured."""
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(20, 24, 28)).astype(np.float32)
    moving = sitk.GetImageFromArray(volume)
    moving.SetSpacing((0.9, 1.2, 2.0))
    moving.SetOrigin((10.0, -5.0, 3.0))
    moving.SetDirection(sitk.VersorTransform((0.3, -0.2, 0.9), 0.5).GetMatrix())
    fixed = sitk.Image(moving)
    level = linear_precise.PreciseRigidLevel(fixed, moving, None, 5000, 1.0, 32, 2e-3, 1)
    rotation = linear_precise._rotation_matrix(np.array([0.05, -0.03, 0.04]))
    translation, center = np.array([0.7, -0.4, 0.3]), level.points.mean(axis=0)
    transform = linear_precise._euler(rotation, translation, center)

    count = level.points.shape[0]
    values, gradients, inside = np.empty(count), np.empty((count, 3)), np.empty(count, dtype=bool)
    offset = center + translation - rotation @ center
    run_slabs(linear_kernels.sample_quadratic_bspline, count, level.points, level._to_index @ rotation,
              level._to_index @ (offset - level._moving_origin), level.coefficients, level._to_index.T.copy(),
              values, gradients, inside)
    expected = [moving.EvaluateAtPhysicalPoint(transform.TransformPoint(tuple(point)), sitk.sitkBSpline2)
                for point in level.points[inside][:300]]
    assert inside.mean() > 0.5
    np.testing.assert_allclose(values[inside][:300], expected, atol=1e-4)


def test_the_analytic_gradient_matches_finite_differences():
    """Rotation and translation derivatives of minus the normalised MI agree with central differences."""
    level = _level()
    center = level.points.mean(axis=0)
    rotation = linear_precise._rotation_matrix(np.array([0.02, -0.01, 0.03]))
    translation = np.array([1.0, -2.0, 0.5])
    _, rotation_gradient, translation_gradient = level.value_and_gradient(rotation, translation, center)
    step = 1e-6
    for axis in range(3):
        delta = np.eye(3)[axis] * step
        forward, _, _ = level.value_and_gradient(linear_precise._rotation_matrix(delta) @ rotation, translation, center)
        backward, _, _ = level.value_and_gradient(linear_precise._rotation_matrix(-delta) @ rotation, translation, center)
        assert (forward - backward) / (2 * step) == pytest.approx(rotation_gradient[axis], rel=0.05, abs=1e-3)
        forward, _, _ = level.value_and_gradient(rotation, translation + delta * 10, center)
        backward, _, _ = level.value_and_gradient(rotation, translation - delta * 10, center)
        assert (forward - backward) / (20 * step) == pytest.approx(translation_gradient[axis], rel=0.05, abs=1e-4)


def test_the_fit_returns_an_aligned_pair_to_its_alignment_from_a_small_misalignment():
    """From 2 degrees and 2 mm off, the level ends within 0.2 mm of the true (identity) pose on the head."""
    level = _level(240_000)
    fixed = sitk.ReadImage(str(SAMPLES / "T1.nii.gz"))
    head = imageio.head_mask(imageio.as_float32(fixed))
    points = evaluation.mask_points(head, 2000, 0)
    start = evaluation.random_rigid(np.random.default_rng(5), 2.0, 2.0, imageio.mask_center(head))
    value, fitted = level.fit(None, 50, start, lambda iteration: None)
    errors = evaluation.target_registration_error(fitted, sitk.Euler3DTransform(), points)
    assert np.median(errors) < 0.2 and value < 0
