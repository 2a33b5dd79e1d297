"""Image input/output and geometry: reading, validating, masks, resampling.

Physical space is the truth: every function here honours spacing, origin and
direction, and nothing resamples an image unless its name says so.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from .errors import InvalidInputError
from .fileintegrity import check_file_integrity, input_files

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
# A volume needs at least this many voxels along every axis, and this extent in millimetres:
# the coarsest pyramid level (4 times the finest voxel) and the 6 mm grid of the rotation
# search must keep at least 4 voxels per axis, which ITK's Gaussian filters require.
MIN_VOXELS_PER_AXIS = 16
MIN_EXTENT_MM = 32.0
# An integer-valued image with at most this many distinct values is a label map (a
# segmentation, a mask), unless its value set looks like a scan quantised to few grey levels.
LABEL_MAP_MAX_VALUES = 64
# A scan quantised to 17..64 levels still has partial-volume edges: most neighbouring voxels
# that differ do so by one or two grey levels.  In a label map, neighbouring labels jump by
# arbitrary amounts (measured on the shared data: quantised scans 0.39-0.85, parcellations
# 0.01-0.23).  At or below this many values every integer image is taken for a label map.
LABEL_MAP_ALWAYS_AT_OR_BELOW = 16
QUANTISED_SCAN_MIN_GRADUAL_EDGES = 0.3
# A user mask must cover at least this volume (a 2 cm cube): smaller, the coarse pyramid
# levels have no sample inside it and the metric fails.
MIN_MASK_VOLUME_ML = 8.0
# resample_onto rounds integer results in slabs of at most this many voxels (64 MB of float32).
RESAMPLE_SLAB_VOXELS = 16_000_000
# A mask whose grid differs from its image's by less than this (mm, or direction cosine) is
# taken as on the image grid (rounding in the headers); otherwise it is resampled onto it.
GRID_TOLERANCE = 1e-4
# Output volume formats: single files (so that they can be renamed into place) that keep
# the geometry exactly.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# --- 2D images (planar.py) ---
# Formats a registered 2D image may be written as besides VOLUME_SUFFIXES: single files, lossless.
PLANAR_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
# Colour to luminance: Rec. 709 (sRGB) luma weights of R, G, B, applied to the stored (gamma-encoded) values.
LUMINANCE_WEIGHTS = (0.2126, 0.7152, 0.0722)
# Pixel types a PNG file holds; another type is rounded and clamped to one of these when written as PNG.
PNG_PIXEL_TYPES = ("uint8", "uint16")
# --- end 2D images ---
# DICOM tags that help recognise the modality, by hint name (the command line and the Slicer module read the same).
DICOM_HINT_TAGS = {
    "0008|0060": "Modality",
    "0008|0008": "ImageType",
    "0008|103e": "SeriesDescription",
    "0018|1030": "ProtocolName",
    "0018|0024": "SequenceName",
    "0018|9005": "PulseSequenceName",
    "0018|0010": "ContrastBolusAgent",
    "0018|0080": "RepetitionTime",
    "0018|0081": "EchoTime",
    "0018|0082": "InversionTime",
}


@dataclass
class DicomSeries:
    """One series of a DICOM folder: its SeriesInstanceUID, description and files."""

    uid: str
    description: str
    files: Tuple[str, ...]

    def describe(self) -> str:
        """'1.2.3 ("T1 MPRAGE", 176 files)' for messages."""
        label = f'"{self.description}", ' if self.description else ""
        return f"{self.uid} ({label}{len(self.files)} files)"


@dataclass
class SeriesChoice:
    """Which series of a DICOM folder was read, why, and which others the folder holds."""

    used: DicomSeries
    reason: str
    others: List[DicomSeries] = field(default_factory=list)

    def message(self, folder) -> str:
        """One line for the user: the series used, why, and the others."""
        text = f"{folder}: using DICOM series {self.used.describe()}, {self.reason}"
        if self.others:
            text += "; the folder also holds " + "; ".join(series.describe() for series in self.others)
        return text

    def as_dict(self) -> dict:
        """For the JSON report."""
        return {"used": self.used.uid, "description": self.used.description, "files": len(self.used.files),
                "reason": self.reason,
                "others": [{"uid": s.uid, "description": s.description, "files": len(s.files)} for s in self.others]}


@dataclass
class LoadedImage:
    """An image read from disk, with what its name and tags say about it.

    `files` are the files the image was read from (a header and its data file, or
    a DICOM series), so that no output can be written over one of them;
    `series` says which DICOM series of a folder was read and why.
    """

    image: sitk.Image
    path: Path
    hints: Dict[str, str] = field(default_factory=dict)
    files: Tuple[Path, ...] = ()
    series: Optional[SeriesChoice] = None


def read_image(path, series_uid: Optional[str] = None) -> LoadedImage:
    """Read a file SimpleITK understands (NIfTI, NRRD, MHA...) or a DICOM series folder.

    A compressed or uncompressed NIfTI, NRRD or MetaImage file is first checked
    to hold all the voxel data its header announces, and its compressed stream
    to be intact: ITK zero-fills a truncated .nii or .nii.gz and reads a damaged
    one without a word.  `series_uid` picks a series of a DICOM folder (default:
    the one with the most slices).
    """
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file or folder; check the path")
    if series_uid is not None and not path.is_dir():
        raise InvalidInputError(f"{path}: a series UID was given but this is a file, not a DICOM folder; "
                                "give the folder or drop the series UID")
    choice = None
    try:
        if path.is_dir():
            image, hints, choice = _read_dicom_folder(path, series_uid)
            files = tuple(Path(name) for name in choice.used.files)
        else:
            files = input_files(path)
            check_file_integrity(path)
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
    except OSError as error:
        raise InvalidInputError(f"{path}: cannot be read ({error.strerror or error}); check that the file "
                                "is there and readable") from None
    hints["name"] = image_name(path)
    if choice is not None and choice.others:
        logger.info("%s", choice.message(path))
    return LoadedImage(image=image, path=path, hints=hints, files=files, series=choice)


def _read_dicom_folder(folder: Path, series_uid: Optional[str] = None):
    """Read one DICOM series of `folder`: the one asked for, else the one with the most slices.

    Returns (image, hints from the tags that name the modality, SeriesChoice).
    """
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InvalidInputError(f"{folder}: folder holds no DICOM series; give an image file or a DICOM folder")
    found = [DicomSeries(uid, _series_description(files), tuple(files))
             for uid in series_ids for files in [reader.GetGDCMSeriesFileNames(str(folder), uid)]]
    choice = _choose_series(folder, found, series_uid)
    reader.SetFileNames(list(choice.used.files))
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    image = reader.Execute()
    hints = {key: reader.GetMetaData(0, tag).strip()
             for tag, key in DICOM_HINT_TAGS.items() if reader.HasMetaDataKey(0, tag)}
    return image, hints, choice


def _choose_series(folder: Path, found: List[DicomSeries], series_uid: Optional[str]) -> SeriesChoice:
    """The requested series, or the one with the most files (the first of those in GDCM's order on a tie)."""
    if series_uid is not None:
        matches = [series for series in found if series.uid == series_uid.strip()]
        if not matches:
            raise InvalidInputError(
                f"{folder}: holds no DICOM series {series_uid}; its series are "
                + "; ".join(series.describe() for series in found))
        used, reason = matches[0], "the series asked for"
    else:
        used = max(found, key=lambda series: len(series.files))
        ties = sum(len(series.files) == len(used.files) for series in found)
        reason = ("the only series in the folder" if len(found) == 1 else
                  "the one with the most slices" if ties == 1 else
                  f"the first of {ties} series with {len(used.files)} slices")
    return SeriesChoice(used=used, reason=reason, others=[series for series in found if series is not used])


def _series_description(files) -> str:
    """SeriesDescription of a series, from its first file's header only ('' when absent)."""
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
        return reader.GetMetaData("0008|103e").strip() if reader.HasMetaDataKey("0008|103e") else ""
    except RuntimeError:
        return ""


def image_name(path) -> str:
    """The file or folder name without its image suffixes ('T2' for T2.nii.gz): names the outputs."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".png", ".tiff", ".tif", ".jpeg",
                   ".jpg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name



def validate_image(image: sitk.Image, role: str) -> None:
    """Refuse an image that cannot be registered, naming the problem and the fix.

    What the image is comes first (not an image, 4D, colour, bad header, NaN,
    constant, a label map), then whether it is large enough: a volume under
    MIN_VOXELS_PER_AXIS voxels or MIN_EXTENT_MM along an axis would make the
    coarse pyramid levels fail inside ITK.  A 2D scalar image (planar.py) gets
    the same checks, its size in pixels only (its pyramid is in pixels).
    """
    if not isinstance(image, sitk.Image):
        raise InvalidInputError(f"{role} is a {type(image).__name__}, not a SimpleITK image; read it with SimpleITK first")
    if image.GetDimension() not in (2, 3):
        raise InvalidInputError(
            f"{role} is {image.GetDimension()}D; give a single 3D volume (extract one time point or slice stack first)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(
            f"{role} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector image); "
            "give a scalar volume (convert to grey levels first)")
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidInputError(f"{role} has voxel spacing {tuple(spacing)}; spacing must be positive: fix the file header")
    if np.any(spacing < MIN_SPACING_MM) or np.any(spacing > MAX_SPACING_MM):
        raise InvalidInputError(
            f"{role} has voxel spacing {tuple(np.round(spacing, 4))} mm, outside {MIN_SPACING_MM}-{MAX_SPACING_MM} mm; "
            "the header is probably in metres or corrupted: fix the spacing")
    direction = np.asarray(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
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
    labels = label_map_values(values)
    # In 2D a two-valued image is a silhouette (a binary shape, as in dipy's circle to C), a fair input.
    if labels is not None and not (image.GetDimension() == 2 and labels == 2):
        raise InvalidInputError(
            f"{role} looks like a label map or segmentation ({labels} distinct integer values), not a scan; "
            "register the scan it was drawn on, then apply the transform to the label map with "
            "nearest-neighbour interpolation")
    if image.GetDimension() == 2:
        _check_planar_size(image, role)
        return
    if min(image.GetSize()) < MIN_VOXELS_PER_AXIS:
        raise InvalidInputError(
            f"{role} is {'x'.join(map(str, image.GetSize()))} voxels, too small to register: give a volume "
            f"of at least {MIN_VOXELS_PER_AXIS} voxels along each axis (a whole head, not a thumbnail or a few slices)")
    extent = spacing * np.asarray(image.GetSize())
    if np.any(extent < MIN_EXTENT_MM):
        raise InvalidInputError(
            f"{role} spans only {'x'.join(f'{e:.3g}' for e in extent)} mm, too small to register: give a volume "
            f"at least {MIN_EXTENT_MM:g} mm across along each axis (a whole head)")


def _check_planar_size(image: sitk.Image, role: str) -> None:
    """Refuse a 2D image under MIN_VOXELS_PER_AXIS pixels along a side (its pyramid levels are in pixels, not mm)."""
    if min(image.GetSize()) < MIN_VOXELS_PER_AXIS:
        raise InvalidInputError(
            f"{role} is {'x'.join(map(str, image.GetSize()))} pixels, too small to register: give an image "
            f"of at least {MIN_VOXELS_PER_AXIS} pixels along each side")


def label_map_values(values: np.ndarray) -> Optional[int]:
    """The number of distinct values when `values` look like a label map, else None.

    A label map (segmentation, mask, parcellation) holds few distinct integer
    values.  Scans stored as integers hold many: 8-bit exports about 240-256
    values, 12-16-bit scans hundreds to thousands (every volume of the shared
    data).  Between LABEL_MAP_ALWAYS_AT_OR_BELOW and LABEL_MAP_MAX_VALUES values
    a scan quantised to few grey levels is told apart by its edges: partial
    volume makes neighbouring voxels differ by one or two levels, where labels
    jump by arbitrary amounts.
    """
    distinct = _few_distinct_values(values, LABEL_MAP_MAX_VALUES)
    if distinct is None or not np.all(distinct == np.round(distinct)):
        return None
    if distinct.size > LABEL_MAP_ALWAYS_AT_OR_BELOW and _gradual_edge_fraction(values, distinct) >= \
            QUANTISED_SCAN_MIN_GRADUAL_EDGES:
        return None
    return int(distinct.size)


def _few_distinct_values(values: np.ndarray, limit: int) -> Optional[np.ndarray]:
    """The sorted distinct values when there are at most `limit`, else None; a sample decides most scans fast."""
    flat = values.ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    if np.unique(sample).size > limit:
        return None
    distinct = np.unique(flat)
    return distinct if distinct.size <= limit else None


def _gradual_edge_fraction(values: np.ndarray, distinct: np.ndarray) -> float:
    """Fraction of differing face-neighbour pairs whose values differ by at most two steps of the value grid."""
    levels = distinct.astype(np.int64)
    step = int(np.gcd.reduce(np.diff(levels))) or 1
    gradual = differing = 0
    integers = values.astype(np.int64)
    for axis in range(values.ndim):
        jumps = np.abs(np.diff(integers, axis=axis))
        jumps = jumps[jumps > 0]
        gradual += int(np.count_nonzero(jumps <= 2 * step))
        differing += jumps.size
    return gradual / differing if differing else 1.0


def validated_mask(mask: Optional[sitk.Image], image: sitk.Image, role: str) -> Optional[sitk.Image]:
    """A user mask as a uint8 binary image on its image's grid, checked to be 3D, not empty and large enough.

    A mask drawn on another grid (another resolution or field of view) is
    resampled onto the image's grid with nearest-neighbour interpolation; a
    mask smaller than MIN_MASK_VOLUME_ML gives the coarse pyramid levels no
    sample and is refused.  The caller's mask is not modified.
    """
    if mask is None:
        return None
    if not isinstance(mask, sitk.Image) or mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{role} must be a 3D scalar SimpleITK image (a label map)")
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InvalidInputError(f"{role} is empty; draw the region to register or leave the mask out")
    if physical_overlap_fraction(binary, image) == 0.0:
        raise InvalidInputError(f"{role} does not overlap its image; use the mask made for that image")
    binary = on_grid_of(binary, image, role)
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(binary)))
    volume_ml = voxels * float(np.prod(image.GetSpacing())) / 1000.0
    if volume_ml < MIN_MASK_VOLUME_ML:
        raise InvalidInputError(
            f"{role} covers only {voxels} voxel{'s' if voxels != 1 else ''} ({volume_ml:.3g} ml) of its image; "
            f"a mask must cover at least {MIN_MASK_VOLUME_ML:g} ml (a 2 cm cube) to drive the registration: "
            "draw a larger region or leave the mask out")
    return binary


def on_grid_of(mask: sitk.Image, image: sitk.Image, role: str = "mask") -> sitk.Image:
    """`mask` on `image`'s voxel grid: as is when the grids agree (to GRID_TOLERANCE), else nearest-neighbour resampled."""
    if same_grid(mask, image):
        if mask.GetOrigin() == image.GetOrigin() and mask.GetSpacing() == image.GetSpacing() \
                and mask.GetDirection() == image.GetDirection():
            return mask
        aligned = sitk.Image(mask)
        aligned.CopyInformation(image)
        return aligned
    logger.info("%s is on another grid than its image (%s voxels of %s mm); resampled onto the image grid "
                "with nearest-neighbour interpolation", role, mask.GetSize(), mask.GetSpacing())
    return sitk.Resample(mask, image, sitk.Transform(image.GetDimension(), sitk.sitkIdentity),
                         sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def same_grid(a: sitk.Image, b: sitk.Image, tolerance: float = GRID_TOLERANCE) -> bool:
    """True when both images have the same size and, to `tolerance`, the same origin, spacing and direction."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tolerance))


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
    if padding is not None and np.ptp(sample[sample != padding]) > 0:
        sample = sample[sample != padding]  # (a two-valued image, a silhouette, has a background, not padding)
    low, high = (float(v) for v in np.percentile(sample, [low_percentile, high_percentile]))
    return (low, high) if high > low else (float(sample.min()), float(sample.max()))


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
    view does not pull the threshold.  The morphology runs on the box around
    the foreground (see _within_foreground_box): a head in a large field of
    view of air costs what the head costs.
    """
    low, high = robust_range(image)
    coarse = sitk.Clamp(shrink_to_spacing(image, MASK_SPACING_MM), sitk.sitkFloat32, low, high)
    foreground = sitk.OtsuThreshold(coarse, 0, 1, 128)
    opening, closing = _radius_in_voxels(coarse, 2.0), _radius_in_voxels(coarse, 4.0)

    def closed_and_filled(region: sitk.Image) -> sitk.Image:
        return sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(region, closing))

    def head(box: sitk.Image) -> Optional[sitk.Image]:
        opened = sitk.BinaryMorphologicalOpening(box, opening)
        components = sitk.RelabelComponent(sitk.ConnectedComponent(opened), sortByObjectSize=True)
        largest = sitk.Cast(components == 1, sitk.sitkUInt8)
        if not np.any(sitk.GetArrayViewFromImage(largest)):
            return None
        return _within_foreground_box(largest, closed_and_filled, margin=np.asarray(closing) + 1)

    filled = _within_foreground_box(foreground, head, margin=np.maximum(opening, closing) + 1)
    if filled is None:  # nothing survives the opening: everything above the background
        filled = closed_and_filled(sitk.Cast(coarse > low, sitk.sitkUInt8))
    return sitk.Resample(filled, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def _within_foreground_box(foreground: sitk.Image, shaped, margin) -> Optional[sitk.Image]:
    """shaped(foreground) computed on the box around the foreground plus `margin` voxels (clipped to the grid).

    foreground: a uint8 image of 0 and 1.

    The same result as on the whole grid: where the box stops inside the grid a
    ring of background wider than the structuring elements surrounds it, so
    opening, closing and hole filling see nothing of what lies beyond; where it
    reaches the grid's edge, the edge is the same.  None when shaped gives None.
    """
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(foreground)
    if not statistics.HasLabel(1):
        return shaped(foreground)
    box = np.asarray(statistics.GetBoundingBox(1))
    low = np.maximum(box[:3] - margin, 0)
    high = np.minimum(box[:3] + box[3:] + margin, foreground.GetSize())
    index, extent = low.tolist(), (high - low).tolist()
    inside = shaped(sitk.RegionOfInterest(foreground, extent, index))
    if inside is None:
        return None
    whole = sitk.Image(foreground.GetSize(), sitk.sitkUInt8)
    whole.CopyInformation(foreground)
    return sitk.Paste(whole, sitk.Cast(inside, sitk.sitkUInt8), extent, [0, 0, 0], index)


def _radius_in_voxels(image: sitk.Image, radius_mm: float):
    return [max(1, int(round(radius_mm / s))) for s in image.GetSpacing()]


def mask_center(mask: sitk.Image) -> np.ndarray:
    """Physical centre of mass of a binary mask (LPS, mm)."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    return np.asarray(stats.GetCentroid(1))


def physical_corners(image: sitk.Image) -> np.ndarray:
    """The corners of the image domain in physical space, shape (8, 3) for a volume, (4, 2) for a 2D image."""
    size = np.asarray(image.GetSize()) - 1
    corners = itertools.product(*[(0, int(last)) for last in size])
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
    Integer types are interpolated in float and then rounded to the nearest
    integer (halves away from zero) and clamped to the type's range: ITK's own
    cast truncates (10.9 -> 10).  That is done slab by slab of at most
    RESAMPLE_SLAB_VOXELS, so a clinical-size fixed grid never has a float copy.
    """
    background = float(sitk.GetArrayViewFromImage(moving).min())
    if not _is_integer_type(moving):
        return sitk.Resample(moving, fixed, transform, interpolator, background, moving.GetPixelID())
    dtype = sitk.GetArrayViewFromImage(moving).dtype
    exact = sitk.sitkFloat32 if dtype.itemsize <= 2 else sitk.sitkFloat64  # float32 holds every 16-bit integer
    if fixed.GetDimension() == 2:  # a 2D image (planar.py) is a single slab
        interpolated = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, interpolator, background, exact))
        values = rounded_to_type(interpolated, dtype)
    else:
        width, height, depth = fixed.GetSize()
        values = np.empty((depth, height, width), dtype=dtype)
        for first, count, reference in grid_slabs(fixed):
            slab_image = sitk.Resample(moving, reference, transform, interpolator, background, exact)
            interpolated = sitk.GetArrayViewFromImage(slab_image)  # a view: slab_image must outlive it
            values[first:first + count] = rounded_to_type(interpolated, dtype)
    rounded = sitk.GetImageFromArray(values)
    rounded.CopyInformation(fixed)
    return rounded


def rounded_to_type(values: np.ndarray, dtype) -> np.ndarray:
    """Float values as the integer `dtype`: rounded to the nearest (halves away from zero), clamped to its range."""
    limits = np.iinfo(dtype)
    halves_away_from_zero = np.copysign(np.floor(np.abs(values) + 0.5), values)
    return np.clip(halves_away_from_zero, limits.min, limits.max).astype(dtype)


def grid_slabs(reference: sitk.Image):
    """(first plane, planes, an empty image that is those planes of the reference grid), slab after slab.

    Each slab holds at most RESAMPLE_SLAB_VOXELS voxels (at least one plane), so
    resampling onto a clinical-size grid slab by slab never needs a full-size float copy.
    """
    width, height, depth = reference.GetSize()
    planes = max(1, RESAMPLE_SLAB_VOXELS // (width * height))
    for first in range(0, depth, planes):
        count = min(planes, depth - first)
        slab = sitk.Image([width, height, count], sitk.sitkUInt8)
        slab.SetSpacing(reference.GetSpacing())
        slab.SetDirection(reference.GetDirection())
        slab.SetOrigin(reference.TransformIndexToPhysicalPoint([0, 0, first]))
        yield first, count, slab


def resampled_values_note(image: sitk.Image) -> str:
    """How the values of `resample_onto`'s result were made, for reports: rounded or as interpolated."""
    if _is_integer_type(image):
        limits = np.iinfo(sitk.GetArrayViewFromImage(image).dtype)
        return (f"{image.GetPixelIDTypeAsString()}, as the moving image: linear interpolation rounded to the "
                f"nearest integer and clamped to {limits.min}..{limits.max}")
    return f"{image.GetPixelIDTypeAsString()}, as the moving image: linear interpolation, values as interpolated"


def _is_integer_type(image: sitk.Image) -> bool:
    return sitk.GetArrayViewFromImage(image).dtype.kind in "iu"


def shrink_to_spacing(image: sitk.Image, target_mm: float) -> sitk.Image:
    """Block-average `image` so that no voxel side is below `target_mm` (header kept physical)."""
    factors = [max(1, int(round(target_mm / s))) for s in image.GetSpacing()]
    if all(f == 1 for f in factors):
        return image
    return sitk.BinShrink(image, factors)


# --------------------------------------------------------------------------- 2D images (planar.py)


def single_slice_axis(image: sitk.Image) -> Optional[int]:
    """For a 3D image one voxel thick along exactly one axis, that axis (0 x, 1 y, 2 z); else None."""
    if image.GetDimension() != 3:
        return None
    thin = [axis for axis, count in enumerate(image.GetSize()) if count == 1]
    return thin[0] if len(thin) == 1 else None


def is_planar(image) -> bool:
    """True for a 2D image, or a 3D image of a single slice (registered as 2D)."""
    return isinstance(image, sitk.Image) and (image.GetDimension() == 2 or single_slice_axis(image) is not None)


def planar_pair(fixed, moving) -> bool:
    """True when both images are planar (2D, or a single slice): register() hands them to planar.py.

    A 2D image with a volume is refused in one line.  A single slice with a
    volume is left to the 3D checks (which call it too small), as before 2D
    images were accepted.
    """
    if is_planar(fixed) and is_planar(moving):
        return True
    images = {"fixed image": fixed, "moving image": moving}
    if all(isinstance(image, sitk.Image) for image in images.values()) and \
            any(image.GetDimension() == 2 for image in images.values()):
        flat, other = sorted(images, key=lambda role: images[role].GetDimension() != 2)
        raise InvalidInputError(
            f"the {flat} is 2D but the {other} is {images[other].GetDimension()}D "
            f"({'x'.join(map(str, images[other].GetSize()))} voxels): register two 2D images or two 3D volumes; "
            f"extract the matching slice of the volume first (e.g. volume[:, :, k] in SimpleITK)")
    return False


def planar_file(path) -> bool:
    """True when the file's header describes a planar image (2D or a single slice); reads the header only.

    The command line uses it to choose and check its output formats before
    the images are read; a folder or an unreadable file is not planar (reading
    it later says what is wrong).
    """
    path = Path(path)
    if not path.is_file():
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    size = reader.GetSize()
    return len(size) == 2 or (len(size) == 3 and sum(count == 1 for count in size) == 1)


def as_planar_scalar(image: sitk.Image, role: str) -> Tuple[sitk.Image, List[str]]:
    """A planar image as a 2D scalar image, and notes saying what was done to it (for the report).

    A single slice of a 3D image becomes a 2D image in its own plane (its
    in-plane spacing, origin and direction; an oblique plane's direction
    collapses to the identity when its in-plane submatrix is not a rotation).
    A colour image becomes its luminance (see `luminance`).  Other images are
    returned as they are, without a note.  The caller's image is not modified.
    """
    notes = []
    axis = single_slice_axis(image)
    if axis is not None:
        size = list(image.GetSize())
        size[axis] = 0
        image = sitk.Extract(image, size, [0, 0, 0], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS)
        notes.append(f"{role}: a 3D image one voxel thick along {'xyz'[axis]}, registered as a 2D image in its plane")
    if image.GetNumberOfComponentsPerPixel() in (2, 3, 4):
        image, note = luminance(image, role)
        notes.append(note)
    return image, notes


def luminance(image: sitk.Image, role: str) -> Tuple[sitk.Image, str]:
    """A colour (RGB, RGBA) or grey-and-alpha 2D image as one grey level per pixel, and a note saying how.

    Colour: Rec. 709 luma, Y' = 0.2126 R' + 0.7152 G' + 0.0722 B', on the
    stored (gamma-encoded) values, the weights of sRGB photographs.  Alpha is
    transparency, not intensity: it is ignored.  The result keeps the
    components' pixel type (integers rounded to the nearest, clamped).
    """
    components = image.GetNumberOfComponentsPerPixel()
    values = sitk.GetArrayViewFromImage(image)
    if components == 2:
        grey = values[..., 0]
        note = f"{role}: grey level with alpha; the grey level is registered, the alpha (transparency) ignored"
    else:
        grey = np.tensordot(values[..., :3].astype(np.float64), LUMINANCE_WEIGHTS, axes=([-1], [0]))
        alpha = " (alpha, transparency, ignored)" if components == 4 else ""
        note = (f"{role}: colour ({'RGBA' if components == 4 else 'RGB'}) converted to luminance{alpha}: "
                f"Rec. 709 luma Y' = 0.2126 R' + 0.7152 G' + 0.0722 B' of the stored values")
    dtype = values.dtype
    scalar = sitk.GetImageFromArray(rounded_to_type(grey, dtype) if dtype.kind in "iu" else grey.astype(dtype))
    scalar.CopyInformation(image)
    return scalar, note


def in_file_pixel_type(image: sitk.Image, path, fallback: sitk.Image) -> Tuple[sitk.Image, Optional[str]]:
    """`image` as `path`'s format can hold it, and a note when its values had to change (else None).

    PNG holds 8- and 16-bit unsigned integers only: another pixel type takes
    `fallback`'s (the fixed image's) when PNG holds that, else 8 bits, its
    values rounded to the nearest integer and clamped.  Every other format
    written here holds the image as it is.
    """
    if not str(path).lower().endswith(".png") or sitk.GetArrayViewFromImage(image).dtype.name in PNG_PIXEL_TYPES:
        return image, None
    target = sitk.GetArrayViewFromImage(fallback).dtype
    target = target if target.name in PNG_PIXEL_TYPES else np.dtype(np.uint8)
    values = sitk.GetArrayViewFromImage(image)
    converted = sitk.GetImageFromArray(rounded_to_type(values.astype(np.float64), target))
    converted.CopyInformation(image)
    limits = np.iinfo(target)
    clamped = int(np.count_nonzero((values < limits.min - 0.5) | (values >= limits.max + 0.5)))
    return converted, (f"{Path(path).name}: PNG holds {target.name} pixels; the {values.dtype.name} values were "
                       f"rounded to the nearest integer and clamped to {limits.min}..{limits.max} ({clamped} "
                       f"pixels clamped); write .nrrd, .mha or .nii.gz to keep them as they are")
