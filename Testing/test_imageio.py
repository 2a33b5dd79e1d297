"""Head masks and intensity ranges: field-of-view padding is not anatomy, an MR's dark background is not padding."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from OneClickRegistrationLib import imageio

# On every Slicer release's Python stack too (`make test`, pytest -m stack).
pytestmark = pytest.mark.stack

HEAD_CT = "invesalius_ct0051/ct0051_head_CT.nii.gz"
STROKE_T1 = "cstar_stroke_t1_t2_flair/T1.nii.gz"
PADDING = -2048


def _on_wider_grid(image: sitk.Image, factor: int, fill: float) -> sitk.Image:
    """The same voxels in the middle of a grid `factor` times wider in x and y, the rest set to `fill`."""
    size = [image.GetSize()[0] * factor, image.GetSize()[1] * factor, image.GetSize()[2]]
    shift = [-(factor - 1) * image.GetSize()[0] / 2, -(factor - 1) * image.GetSize()[1] / 2, 0]
    origin = image.TransformContinuousIndexToPhysicalPoint(shift)
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, image.GetSpacing(),
                         image.GetDirection(), fill, image.GetPixelID())


def _mask_volume_ml(mask: sitk.Image) -> float:
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(mask)) * np.prod(mask.GetSpacing()) / 1000.0)


def test_ct_padding_covering_most_of_the_grid_stays_out_of_the_head_mask():
    ct = sitk.ReadImage(str(shared_file(HEAD_CT)))
    padded = _on_wider_grid(ct, 2, PADDING)
    values = sitk.GetArrayViewFromImage(padded)
    assert np.mean(values == PADDING) > 0.7

    assert imageio.padding_value(values.ravel()) == PADDING
    low, _ = imageio.robust_range(padded)
    assert low > -1100, "the clamp range must come from the scan, not from its padding"

    original_ml = _mask_volume_ml(imageio.head_mask(ct))
    padded_mask = imageio.head_mask(padded)
    assert not np.any(values[sitk.GetArrayViewFromImage(padded_mask) > 0] == PADDING)
    assert abs(_mask_volume_ml(padded_mask) - original_ml) < 0.05 * original_ml


def test_mr_background_and_ct_air_are_not_padding():
    for relative in (STROKE_T1, HEAD_CT):
        image = sitk.ReadImage(str(shared_file(relative)))
        assert imageio.padding_value(sitk.GetArrayViewFromImage(image).ravel()) is None, relative
