"""Working copies of an image pair: the cost of a registration follows the head, not the grid.

Clinical volumes run to 512x512x400 voxels of 0.5 mm and beyond, with neck,
shoulders or a large field of view of air around the head.  The pipeline
never computes on the caller's images; for each one it makes a *working copy*:

1. the head is found on a copy block-averaged to about imageio.MASK_SPACING_MM
   in the image's own pixel type (a pass over the image, no float copy);
2. the image is cropped, still in its own pixel type, to the box around the
   head (and the user's mask) plus CROP_MARGIN_MM;
3. the crop is block-averaged to about WORKING_SPACING_MM where the image is
   finer, and converted to float32.

Recognition, the stages and the score all run on that copy, so air, neck
padding or a 400^3 field of view cost one pass and nothing after.  The copy
keeps its physical geometry (origin, spacing, direction), so a transform found
on it applies to the caller's image unchanged; what lies outside the crop is
background, which the score takes into account (score.AlignmentScorer is given
the original image's domain).  The only full-resolution work left is the
final resampling (imageio.resample_onto).
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
    def of(cls, image: sitk.Image, user_mask: Optional[sitk.Image] = None) -> "WorkingImage":
        """The working copy of `image` (see the module docstring); user_mask: a validated binary uint8 mask
        on `image`'s grid (imageio.validated_mask), or None."""
        coarse = imageio.shrink_to_spacing(image, imageio.MASK_SPACING_MM)
        coarse_head = imageio.head_mask(coarse)
        region = coarse_head if user_mask is None else sitk.Or(
            coarse_head, imageio.on_grid_of(user_mask, coarse, "mask"))
        index, size = _on_finer_grid(crop_box(region), coarse, image)
        reduced = reduced_copy(sitk.RegionOfInterest(image, size, index))
        head = imageio.on_grid_of(coarse_head, reduced, "head mask")
        mask = None if user_mask is None else imageio.on_grid_of(
            sitk.RegionOfInterest(user_mask, size, index), reduced, "mask")
        return cls(reduced, head, mask)

    def region_mask(self) -> sitk.Image:
        """Where the linear metric looks: the head, narrowed by the user's mask when there is one."""
        return self.head if self.mask is None else sitk.And(self.head, self.mask)

    def whole_region(self) -> sitk.Image:
        """The head, whatever the user's mask says (see linear.like_regions)."""
        return self.head


def reduced_copy(image: sitk.Image) -> sitk.Image:
    """`image` as float32, block-averaged (in its own pixel type) so that no voxel side is below WORKING_SPACING_MM.

    The factors are whole numbers (a 0.5 mm axis becomes 1 mm, a 0.88 mm one
    stays), so the copy keeps the image's physical extent and orientation.
    """
    shrunk = imageio.shrink_to_spacing(image, WORKING_SPACING_MM)
    return shrunk if shrunk.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(shrunk, sitk.sitkFloat32)


def _on_finer_grid(box, coarse: sitk.Image, image: sitk.Image):
    """A box (index, size) of `coarse`, `image` block-averaged, as the box of `image`'s voxels it covers.

    A box reaching the end of `coarse` reaches the end of `image`: block
    averaging drops the last voxels that do not fill a whole block.
    """
    factors = np.round(np.asarray(coarse.GetSpacing()) / np.asarray(image.GetSpacing())).astype(int)
    low, size = np.asarray(box[0]), np.asarray(box[1])
    high = np.where(low + size >= np.asarray(coarse.GetSize()), np.asarray(image.GetSize()), (low + size) * factors)
    return (low * factors).tolist(), (high - low * factors).tolist()


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
