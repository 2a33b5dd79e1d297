"""Gaussian smoothing of whole volumes (smoothing.py): the same result as ITK's recursive Gaussian
within that filter's own approximation, physical sigma on anisotropic grids, inputs untouched."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_DATA
from OneClickRegistrationLib import smoothing


def _impulse(spacing, size=(41, 41, 41)) -> sitk.Image:
    """One bright voxel in the middle of an int16 volume with the given spacing and an oblique direction."""
    array = np.zeros(tuple(reversed(size)), dtype=np.int16)
    array[size[2] // 2, size[1] // 2, size[0] // 2] = 1000
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 3.0, 40.0))
    image.SetDirection(sitk.VersorTransform((0.0, 0.0, 1.0), 0.3).GetMatrix())
    return image


def _variance_along_axes(image: sitk.Image) -> np.ndarray:
    """The spread (mm^2) of the image's mass along each of its own axes (x, y, z)."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float64)
    weights = array / array.sum()
    spreads = []
    for axis, spacing in zip((2, 1, 0), image.GetSpacing()):
        position = (np.arange(array.shape[axis]) * spacing).reshape([-1 if a == axis else 1 for a in range(3)])
        mean = (weights * position).sum()
        spreads.append((weights * (position - mean) ** 2).sum())
    return np.asarray(spreads)


def test_an_impulse_spreads_by_sigma_in_millimetres_on_every_axis_of_an_anisotropic_grid():
    image = _impulse((0.5, 1.0, 2.0))
    before = sitk.GetArrayFromImage(image)
    smoothed = smoothing.gaussian(image, 1.5)
    assert smoothed.GetPixelID() == sitk.sitkFloat32
    assert smoothed.GetSize() == image.GetSize()
    for getter in ("GetOrigin", "GetSpacing", "GetDirection"):
        assert getattr(smoothed, getter)() == getattr(image, getter)()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), before)  # the input is not modified
    assert sitk.GetArrayViewFromImage(smoothed).sum() == pytest.approx(1000.0, rel=1e-5)  # mass kept
    # A sampled Gaussian of sigma s voxels has a variance within a few per cent of s^2 (and exactly
    # s^2 + 1/12 voxel^2 for a finely sampled one); 2 mm voxels hold 0.75 of a voxel.
    np.testing.assert_allclose(_variance_along_axes(smoothed), 1.5 ** 2, rtol=0.06)


def test_a_head_comes_out_as_itk_recursive_gaussian_makes_it():
    head = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    ours = sitk.GetArrayFromImage(smoothing.gaussian(head, 1.0))
    itk = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.Cast(head, sitk.sitkFloat32), 1.0))
    values = sitk.GetArrayViewFromImage(head)
    scale = float(np.percentile(values, 99.5) - np.percentile(values, 0.5))
    inner = (slice(3, -3),) * 3  # the two filters treat the grid's edge differently
    assert np.abs(ours - itk)[inner].mean() < 0.002 * scale
    assert np.abs(ours - itk)[inner].max() < 0.03 * scale


def test_a_negligible_sigma_leaves_the_values_as_they_are():
    image = _impulse((1.0, 1.0, 1.0))
    smoothed = smoothing.gaussian(image, 0.05)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(smoothed), sitk.GetArrayViewFromImage(image))
