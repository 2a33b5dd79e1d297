"""Image input/output and geometry: reading, validating, masks, resampling.

Physical space is the truth: every function here honours spacing, origin and
direction, and nothing resamples an image unless its name says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError

logger = logging.getLogger(__name__)

# The bundled MIT-licensed sample scans (T1, T2, FLAIR of one head), installed with the module.
SAMPLE_DATA = Path(__file__).resolve().parent.parent / "Resources" / "OneClickRegistration" / "SampleData"

# Voxel sizes outside this range are not a head scan in millimetres (a header in
# metres, or a corrupted file); refuse them instead of registering nonsense.
MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
# Head masks are computed at about this voxel size, then put back on the image grid.
MASK_SPACING_MM = 2.0
# A minimum value filling at least this fraction of the voxels, set apart from all
# other values by more than this fraction of the range, is field-of-view padding.
PADDING_MIN_FRACTION = 0.01
PADDING_GAP_FRACTION = 0.05
# DICOM tags that help recognise the modality.
DICOM_HINT_TAGS = {
    "0008|0060": "Modality",
    "0008|103e": "SeriesDescription",
    "0018|1030": "ProtocolName",
    "0018|0024": "SequenceName",
}


@dataclass
class LoadedImage:
    """An image read from disk, with what its name and tags say about it."""

    image: sitk.Image
    path: Path
    hints: Dict[str, str] = field(default_factory=dict)


def read_image(path) -> LoadedImage:
    """Read a file SimpleITK understands (NIfTI, NRRD, MHA...) or a DICOM series folder."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder; check the path")
    try:
        if path.is_dir():
            image, hints = _read_dicom_folder(path)
        else:
            image = sitk.ReadImage(str(path))
            hints = {key: image.GetMetaData(tag).strip()
                     for tag, key in DICOM_HINT_TAGS.items() if image.HasMetaDataKey(tag)}
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        if "spacing" in first_line.lower():
            raise InvalidInputError(
                f"{path}: the header gives a zero or negative voxel spacing ({first_line}); fix the spacing in the header"
            ) from None
        raise InvalidInputError(
            f"{path}: cannot be read as an image ({first_line}); give a NIfTI, NRRD, MHA file or a DICOM folder"
        ) from None
    hints["name"] = _strip_image_suffixes(path.name)
    return LoadedImage(image=image, path=path, hints=hints)


def _read_dicom_folder(folder: Path):
    """Read the largest DICOM series in `folder`, keeping the tags that name the modality."""
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InvalidInputError(f"{folder}: folder holds no DICOM series; give an image file or a DICOM folder")
    files_per_series = [reader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    files = max(files_per_series, key=len)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    image = reader.Execute()
    hints = {key: reader.GetMetaData(0, tag).strip()
             for tag, key in DICOM_HINT_TAGS.items() if reader.HasMetaDataKey(0, tag)}
    return image, hints


def _strip_image_suffixes(name: str) -> str:
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def validate_image(image: sitk.Image, role: str) -> None:
    """Refuse an image that cannot be registered, naming the problem and the fix."""
    if not isinstance(image, sitk.Image):
        raise InvalidInputError(f"{role} is a {type(image).__name__}, not a SimpleITK image; read it with SimpleITK first")
    if image.GetDimension() != 3:
        raise InvalidInputError(
            f"{role} is {image.GetDimension()}D; give a single 3D volume (extract one time point or slice stack first)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"{role} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "give a scalar volume (convert to grey levels first)")
    if min(image.GetSize()) < 4:
        raise InvalidInputError(
            f"{role} is {image.GetSize()} voxels, too small to register; give a volume at least 4 voxels along each axis")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidInputError(f"{role} has voxel spacing {tuple(spacing)}; spacing must be positive: fix the file header")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InvalidInputError(
            f"{role} has voxel spacing {tuple(np.round(spacing, 4))} mm, outside {MIN_SPACING_MM}-{MAX_SPACING_MM} mm; "
            "the header is probably in metres or corrupted: fix the spacing")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1.0) > 1e-3:
        raise InvalidInputError(f"{role} has a degenerate direction matrix; fix the orientation in the file header")
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InvalidInputError(
            f"{role} has {bad} NaN or infinite voxels; replace them (e.g. with the background value) before registering")
    low, high = float(values.min()), float(values.max())
    if low == high:
        what = "empty (all zero)" if low == 0 else f"constant (every voxel is {low:g})"
        raise InvalidInputError(f"{role} is {what}; it holds no anatomy to register: check that the right volume was loaded")


def validated_mask(mask: Optional[sitk.Image], image: sitk.Image, role: str) -> Optional[sitk.Image]:
    """A user mask as a uint8 binary image, checked to be 3D and not empty."""
    if mask is None:
        return None
    if not isinstance(mask, sitk.Image) or mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{role} must be a 3D scalar SimpleITK image (a label map)")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InvalidInputError(f"{role} is empty; draw the region to register or leave the mask out")
    if physical_overlap_fraction(binary, image) == 0.0:
        raise InvalidInputError(f"{role} does not overlap its image; use the mask made for that image")
    return binary


def as_float32(image: sitk.Image) -> sitk.Image:
    """A float32 copy for computation; the caller's image is never modified."""
    return sitk.Cast(image, sitk.sitkFloat32)


def same_image(a: sitk.Image, b: sitk.Image) -> bool:
    """True when both are the same voxels on the same grid (the same scan passed twice)."""
    if a.GetSize() != b.GetSize() or a.GetPixelID() != b.GetPixelID():
        return False
    if not (np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
            and np.allclose(a.GetDirection(), b.GetDirection())):
        return False
    return np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def robust_range(image: sitk.Image, low_percentile: float = 0.5, high_percentile: float = 99.5):
    """Intensity percentiles of the voxels that are not padding (e.g. -2048 outside a CT field of view).

    Without this, a CT whose padding covers more than `low_percentile` of the
    grid would clamp at the padding value, and a head mask would take the
    whole field-of-view cylinder for the head.
    """
    values = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, values.size // 2_000_000)
    sample = values[::step]
    padding = padding_value(sample)
    if padding is not None:
        sample = sample[sample != padding]
    return tuple(float(v) for v in np.percentile(sample, [low_percentile, high_percentile]))


def padding_value(values: np.ndarray) -> Optional[float]:
    """The constant filling the area outside a scanner's field of view, or None when there is none.

    Padding is the minimum value when it fills at least PADDING_MIN_FRACTION
    of the voxels and lies below every other value by more than
    PADDING_GAP_FRACTION of the intensity range: a CT's -2048 or -3024 sits
    far below air (-1000), whereas an MR's zero background runs continuously
    into its noise and is real signal, not padding.
    """
    lowest = values.min()
    is_lowest = values == lowest
    if is_lowest.mean() < PADDING_MIN_FRACTION or is_lowest.all():
        return None
    rest = values[~is_lowest]
    span = float(np.percentile(rest, 99.5)) - float(lowest)
    gap = float(rest.min()) - float(lowest)
    return float(lowest) if span > 0 and gap > PADDING_GAP_FRACTION * span else None


def head_mask(image: sitk.Image) -> sitk.Image:
    """Binary mask of the head (or object) on the image's grid.

    Otsu foreground, opened, largest component, closed and hole-filled, all on
    a copy of about 2 mm voxels (shape, not detail, is what the masks are for)
    clamped to robust percentiles so that padding outside a scanner's field of
    view does not pull the threshold.
    """
    low, high = robust_range(image)
    coarse = shrink_to_spacing(sitk.Clamp(image, sitk.sitkFloat32, low, high), MASK_SPACING_MM)
    foreground = sitk.OtsuThreshold(coarse, 0, 1, 128)
    foreground = sitk.BinaryMorphologicalOpening(foreground, _radius_in_voxels(coarse, 2.0))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(foreground), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(largest)):
        largest = sitk.Cast(coarse > low, sitk.sitkUInt8)
    closed = sitk.BinaryMorphologicalClosing(largest, _radius_in_voxels(coarse, 4.0))
    filled = sitk.BinaryFillhole(closed)
    return sitk.Resample(filled, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _radius_in_voxels(image: sitk.Image, radius_mm: float):
    return [max(1, int(round(radius_mm / s))) for s in image.GetSpacing()]


def mask_center(mask: sitk.Image) -> np.ndarray:
    """Physical centre of mass of a binary mask (LPS, mm)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.asarray(stats.GetCentroid(1))


def physical_corners(image: sitk.Image) -> np.ndarray:
    """The 8 corners of the image domain in physical space, shape (8, 3)."""
    size = np.asarray(image.GetSize()) - 1
    corners = [(i, j, k) for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner]) for corner in corners])


def physical_overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Fraction of a's bounding box that lies inside b's bounding box (axis-aligned, physical)."""
    ca, cb = physical_corners(a), physical_corners(b)
    low = np.maximum(ca.min(0), cb.min(0))
    high = np.minimum(ca.max(0), cb.max(0))
    if np.any(high <= low):
        return 0.0
    return float(np.prod(high - low) / np.prod(ca.max(0) - ca.min(0) + 1e-9))


def no_overlap_error() -> InvalidInputError:
    return InvalidInputError(
        "the two images do not overlap in physical space; include the rigid stage so they are first "
        "brought together, or fix the image origins")


def resample_onto(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform,
                  interpolator=sitk.sitkLinear) -> sitk.Image:
    """The moving image resampled onto the fixed grid through `transform` (fixed -> moving points).

    Keeps the moving image's pixel type; voxels that map outside the moving image
    get the moving image's minimum (its background), not an arbitrary zero.
    """
    background = float(sitk.GetArrayViewFromImage(moving).min())
    return sitk.Resample(moving, fixed, transform, interpolator, background, moving.GetPixelID())


def shrink_to_spacing(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Block-average `image` so that no voxel side is below `target_mm` (header kept physical)."""
    factors = [max(1, int(round(target_mm / s))) for s in image.GetSpacing()]
    if all(f == 1 for f in factors):
        return image
    return sitk.BinShrink(image, factors)
