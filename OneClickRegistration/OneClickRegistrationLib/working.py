"""Working copies of an image pair: the cost of a registration follows the head, not the grid.

Clinical volumes run to 512x512x400 voxels of 0.5 mm and beyond, with neck,
shoulders or a large field of view of air around the head.  The pipeline
never computes on the caller's images; for each one it makes:

- a *reduced* copy: float32, block-averaged to about WORKING_SPACING_MM where
  the image is finer, the whole field of view.  Modality recognition, the
  head mask and the quality score use it: they judge the whole image, and a
  head pushed off the other head must still be penalised by the score;
- a *cropped* copy of the reduced one: the box around the head (and the
  user's mask) plus CROP_MARGIN_MM.  The linear and deformable stages run on
  it, so their pyramids, interpolators and fields never see the air.

Both copies keep their physical geometry (origin, spacing, direction), so a
transform found on them applies to the caller's images unchanged.  Block
averaging is done in the input's pixel type, before the float conversion,
so no float copy of a full-resolution input is ever made; the only
full-resolution work left is the final resampling (imageio.resample_onto).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import imageio

# The finest resolution any stage needs: registration precision comes from
# sub-voxel interpolation, not from voxels finer than about a millimetre.
WORKING_SPACING_MM = 1.0
# How far the cropped copies reach beyond the head: room for the pyramid's
# smoothing, the edges of the head in the metric and the deformable grid.
CROP_MARGIN_MM = 15.0


@dataclass
class WorkingImage:
    """One image of the pair as the stages see it: intensities, head mask, optional user mask."""

    image: sitk.Image  # float32
    head: sitk.Image  # uint8, on image's grid
    mask: Optional[sitk.Image] = None  # the user's binary mask on image's grid

    @classmethod
    def reduced(cls, image: sitk.Image, user_mask: Optional[sitk.Image] = None) -> "WorkingImage":
        """The reduced copy of `image` (see the module docstring), its head mask and the user's mask on its grid."""
        reduced = reduced_copy(image)
        mask = None if user_mask is None else imageio.on_grid_of(user_mask, reduced, "mask")
        return cls(reduced, imageio.head_mask(reduced), mask)

    def cropped(self) -> "WorkingImage":
        """The same, restricted to the box around the head and the user's mask plus CROP_MARGIN_MM."""
        index, size = crop_box(self.head if self.mask is None else sitk.Or(self.head, self.mask))
        if tuple(size) == self.image.GetSize():
            return self

        def crop(image):
            return None if image is None else sitk.RegionOfInterest(image, size, index)
        return WorkingImage(crop(self.image), crop(self.head), crop(self.mask))

    def region_mask(self) -> sitk.Image:
        """Where the linear metric looks: the head, narrowed by the user's mask when there is one."""
        return self.head if self.mask is None else sitk.And(self.head, self.mask)


def reduced_copy(image: sitk.Image) -> sitk.Image:
    """`image` as float32, block-averaged (in its own pixel type) so that no voxel side is below WORKING_SPACING_MM.

    The factors are whole numbers (a 0.5 mm axis becomes 1 mm, a 0.88 mm one
    stays), so the copy keeps the image's physical extent and orientation.
    """
    shrunk = imageio.shrink_to_spacing(image, WORKING_SPACING_MM)
    return shrunk if shrunk.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(shrunk, sitk.sitkFloat32)


def crop_box(region: sitk.Image):
    """(index, size) of the bounding box of the non-zero voxels of `region`, widened by
    CROP_MARGIN_MM on every side and clipped to the image; the whole image when empty."""
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(region != 0, sitk.sitkUInt8))
    image_size = np.asarray(region.GetSize())
    if not statistics.HasLabel(1):
        return [0, 0, 0], image_size.tolist()
    box = np.asarray(statistics.GetBoundingBox(1))
    margin = np.ceil(CROP_MARGIN_MM / np.asarray(region.GetSpacing())).astype(int)
    low = np.maximum(box[:3] - margin, 0)
    high = np.minimum(box[:3] + box[3:] + margin, image_size)
    return low.tolist(), (high - low).tolist()
