"""Recognising the modality of a head volume: T1, T2 (PD counts as T2), FLAIR, CT, or unknown.

First from what the scanner or the user wrote (DICOM Modality, SeriesDescription,
ProtocolName, echo / repetition / inversion times, a node or file name), then from
the image content, by the physics of each contrast (see `_content_guess`).  Every
answer carries a confidence in [0, 1] and a one-line reason.  When the evidence is
too weak the answer is `UNKNOWN`, with the reason, and the pipeline then uses the
preset table's modality-agnostic row instead of a confident wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import re
from typing import Mapping, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from . import imageio
from .errors import InvalidInputError

_log = logging.getLogger(__name__)

MODALITIES = ("T1", "T2", "FLAIR", "CT")
UNKNOWN = "unknown"
# A content answer less sure than this is reported as UNKNOWN (with the best
# candidate named in the reason): a modality-agnostic registration is better
# than a confident wrong preset.
UNKNOWN_BELOW = 0.6


@dataclass(frozen=True)
class ModalityGuess:
    """A recognised modality with how sure we are and why.

    `modality` is one of MODALITIES or UNKNOWN.  For UNKNOWN, `confidence` is
    that of the best real candidate (below UNKNOWN_BELOW; 0 when there is
    none) and `reason` says what was missing.
    """

    modality: str
    confidence: float
    reason: str
    source: str  # 'caller', 'tags', 'name' or 'content'

    @property
    def known(self) -> bool:
        """True for a real modality, False for UNKNOWN."""
        return self.modality != UNKNOWN

    def as_dict(self) -> dict:
        return {"modality": self.modality, "confidence": round(self.confidence, 3),
                "reason": self.reason, "source": self.source}

    def __str__(self) -> str:
        return f"{self.modality} ({self.confidence:.0%}: {self.reason})"


def parse_modality(text: str) -> str:
    """Normalise a user-given modality name ('t1', 'Flair', 'ct') or fail clearly."""
    name = str(text).strip().upper()
    if name not in MODALITIES:
        raise InvalidInputError(
            f"unknown modality {text!r}: use one of {', '.join(MODALITIES)}")
    return name


# --------------------------------------------------------------------------
# Hints: DICOM tags and names
# --------------------------------------------------------------------------

_DESCRIPTION_TAGS = ("SeriesDescription", "ProtocolName", "SequenceName", "SeriesName",
                     "ImageType", "ContrastBolusAgent", "PulseSequenceName")
_NAME_TAGS = ("name", "filename", "file", "node")
# DICOM Modality values that are scans, but none of T1 / T2 / FLAIR / CT.
_OTHER_DICOM_MODALITIES = {"PT": "PET", "NM": "nuclear medicine", "US": "ultrasound",
                           "XA": "X-ray angiography", "RF": "fluoroscopy", "DX": "radiography",
                           "CR": "radiography", "MG": "mammography", "OPT": "optical tomography"}


def _has(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


# A token must not be glued to letters on its left ('act1', 'spect' do not
# match); digits may precede it ('avg152T1') and letters may follow it
# ('T1w', 'T2FLAIR').
_FLAIR = r"(?<![a-z])(flair|dark[\s_-]?fluid|tirm)"
_T1 = r"(?<![a-z])(t1(?![0-9])|mp[\s_-]?rage|mp2rage|f?spgr|bravo|tfe|tfl3d|vibe|t1rho)"
_T2 = r"(?<![a-z])(t2(?![0-9])|pd(?![a-z])|pdw|proton[\s_-]?density)"
_T2_WEAK = r"(?<![a-z])(tse|fse|haste|propeller|blade)(?![a-z])"
_CT = r"(?<![a-z])(ct|cbct|cta|computed[\s_-]?tomography)(?![a-z])"


def _modality_from_text(text: str) -> Optional[Tuple[str, str]]:
    """The modality a description names, with the words that said so, or None.

    FLAIR wins over T2 ('T2 FLAIR' is FLAIR) but a 'T1 FLAIR' is a T1-weighted
    inversion-recovery image (dark CSF, bright white matter), so it counts as T1.
    Names that mention both CT and an MR contrast, or both T1 and T2, say
    nothing we can trust.
    """
    text = text.lower()
    flair, t1, t2, ct = (_has(p, text) for p in (_FLAIR, _T1, _T2, _CT))
    if ct and not (flair or t1 or t2):
        return "CT", "says CT"
    if ct:
        return None
    if flair:
        return ("T1", "says T1 FLAIR") if t1 else ("FLAIR", "says FLAIR")
    if t1 and not t2:
        return "T1", "names a T1-weighted sequence"
    if t2 and not t1:
        if _has(r"(?<![a-z])(pd|pdw|proton[\s_-]?density)", text):
            return "T2", "says proton density (T2/PD-like)"
        return "T2", "names a T2-weighted sequence"
    if not t1 and _has(_T2_WEAK, text):
        return "T2", "names a turbo/fast spin-echo sequence"
    return None


def _float_tag(hints: Mapping[str, str], key: str) -> Optional[float]:
    try:
        return float(str(hints[key]).split("\\")[0])
    except (KeyError, ValueError, TypeError):
        return None


def _modality_from_timing(hints: Mapping[str, str]) -> Optional[Tuple[str, str]]:
    """T1 / T2 / FLAIR (PD as T2) from echo, repetition and inversion times (ms), when given.

    Physics: a long inversion time (> 1500 ms) nulls CSF (FLAIR); a short one
    (300-1300 ms, MPRAGE) gives T1 contrast; a long TE (> 60 ms) gives T2
    contrast; a short TE with a short TR (< 900 ms) gives T1 contrast; a short
    TE with a long TR (> 1500 ms) and no inversion weighs proton density, which
    registers like a T2.
    """
    te, tr, ti = (_float_tag(hints, k) for k in ("EchoTime", "RepetitionTime", "InversionTime"))
    if ti is not None and ti > 1500:
        return "FLAIR", f"inversion time {ti:g} ms nulls CSF"
    if ti is not None and 300 <= ti <= 1300 and (te is None or te < 20):
        return "T1", f"inversion time {ti:g} ms with a short echo"
    if te is not None and te >= 60:
        return "T2", f"echo time {te:g} ms"
    if te is not None and tr is not None and te < 30 and tr < 900:
        return "T1", f"short TE {te:g} ms and TR {tr:g} ms"
    if te is not None and tr is not None and te < 40 and tr > 1500 and not ti:
        return "T2", f"short TE {te:g} ms with long TR {tr:g} ms: proton density (T2/PD-like)"
    return None


def _contrast_note(hints: Mapping[str, str]) -> str:
    """' (contrast agent X)' when the DICOM header names a contrast agent, else ''."""
    agent = str(hints.get("ContrastBolusAgent", "")).strip()
    return f" (contrast agent {agent})" if agent else ""


def _guess_from_tags(hints: Mapping[str, str]) -> Optional[ModalityGuess]:
    dicom_modality = str(hints.get("Modality", "")).strip().upper()
    if dicom_modality == "CT":
        return ModalityGuess("CT", 0.99, "DICOM Modality is CT", "tags")
    if dicom_modality in _OTHER_DICOM_MODALITIES:
        return ModalityGuess(UNKNOWN, 0.0, f"DICOM Modality {dicom_modality} "
                             f"({_OTHER_DICOM_MODALITIES[dicom_modality]}) is none of "
                             f"{', '.join(MODALITIES)}", "tags")
    note = _contrast_note(hints)
    for key in _DESCRIPTION_TAGS:
        found = _modality_from_text(str(hints.get(key, "")))
        if found and not (dicom_modality == "MR" and found[0] == "CT"):
            return ModalityGuess(found[0], 0.95, f"{key} {hints[key]!r} {found[1]}{note}", "tags")
    timing = _modality_from_timing(hints)
    if timing:
        return ModalityGuess(timing[0], 0.85, f"DICOM timing: {timing[1]}{note}", "tags")
    return None


def _guess_from_name(hints: Mapping[str, str]) -> Optional[ModalityGuess]:
    for key in _NAME_TAGS:
        if hints.get(key):
            found = _modality_from_text(str(hints[key]))
            if found:
                return ModalityGuess(found[0], 0.9, f"name {hints[key]!r} {found[1]}", "name")
    return None


# --------------------------------------------------------------------------
# Content: the physics of each contrast, measured with ranks and ratios only
# --------------------------------------------------------------------------
#
# Every number measured below is a rank, or an intensity difference divided
# by another intensity difference of the same image, so rescaling the
# intensities (HU, 0-1, 0-255) or adding an offset changes no answer.
# Observed ranges are those of the real volumes the tests use.

_WORKING_SPACING_MM = 2.5     # isotropic grid of the anatomy analysis
_LAYER_SPACING_MM = 1.25      # finer grid of the cortex / white-matter layering
_MIN_EXTENT_MM = 60.0         # a volume smaller than this along an axis shows no head anatomy
_VAULT_MM = 80.0              # top of the head analysed: the cranial vault, no face or neck
_SKULL_SEARCH_MM = 20.0       # the skull lies within this depth under the skin
_SKULL_WIDTH_MM = 7.5         # the skull band falls and rises within this depth on either side
_SKULL_FALL, _SKULL_RISE = 0.1, 0.15   # ... by at least this much in rank (the scalp varies by
                                       # contrast, the brain always stands well above bone)
_COHERENCE_MIN = 0.45         # neighbour correlation on the 2.5 mm grid: heads >= 0.63, noise <= 0.27
_OUTER_MM, _DEEP_MM = 7.5, 15.0   # brain surface layer / deep brain, mm under the inner skull
_STRUCTURE_MIN = 0.035        # fine anatomy, MR heads >= 0.049; blurred or smooth phantoms <= 0.027
_CSF_DARK_MIN = 0.2           # CSF dark tail: T1 / FLAIR >= 0.26, PD <= 0.13
_CSF_DARK_RATIO = 1.0         # bright tail / dark tail: T1 / FLAIR <= 0.82,
_CSF_BRIGHT_RATIO = 1.3       # ... T2 >= 1.8 (in between: CSF is not the extreme)
_CSF_ISO_MAX = 0.25           # PD: both tails below this (<= 0.13)
_LAYER_T1_BELOW = -0.3        # cortex next to CSF minus deep white matter: T1 <= -0.78, FLAIR >= +0.26
_CT_PEAK_WINDOW = 0.05        # +-5 % of the air-to-tissue gap
_CT_MIN_CONCENTRATION = 0.37  # CT >= 0.43 on real and template CTs, MR <= 0.30
_CT_MIN_BONE_REACH = 0.3      # CT >= 0.39 (smoothed template), PD-weighted MR <= 0.2


class _NoAnatomy(Exception):
    """The content shows no head anatomy to judge; the message says what is missing."""


def _sure(margin: float) -> float:
    """Confidence 0.05..0.95 from a margin measured in units of its own uncertainty."""
    return float(0.5 + 0.45 * np.tanh(margin))


def _scalar_float(image: sitk.Image) -> sitk.Image:
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorMagnitude(image)
    return sitk.Cast(image, sitk.sitkFloat32)


def _without_padding(image: sitk.Image) -> sitk.Image:
    """The image with its field-of-view fill (a CT's -2048 outside the reconstruction
    circle, see imageio.padding_value) set to the lowest real value, the air."""
    array = sitk.GetArrayFromImage(image)
    padding = imageio.padding_value(array.ravel())
    if padding is None:
        return image
    outside = array == padding
    array[outside] = array[~outside].min()
    result = sitk.GetImageFromArray(array)
    result.CopyInformation(image)
    return result


def _working_grid(image: sitk.Image) -> Tuple[np.ndarray, sitk.Image]:
    """The image block-averaged and resampled on an isotropic 2.5 mm grid along its own
    axes (same physical extent): the array (z, y, x) and the grid as an image."""
    step = _WORKING_SPACING_MM
    factors = [max(1, int(step // s)) for s in image.GetSpacing()]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    spacing = np.array(image.GetSpacing())
    size = [max(1, int(round(n * s / step))) for n, s in zip(image.GetSize(), spacing)]
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((step - spacing) / 2)
    lowest = float(np.min(sitk.GetArrayViewFromImage(image)))
    grid = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                         [step] * 3, image.GetDirection(), lowest, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(grid), grid


def _otsu_threshold(values: np.ndarray) -> float:
    counts, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    moment = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (moment[-1] * weight - moment * weight[-1]) ** 2 / (weight * (weight[-1] - weight))
    return float(centres[np.nanargmax(between)])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    return labels == 1 + int(np.argmax(sizes))


def _ball(radius_mm: float) -> np.ndarray:
    """A ball structuring element on the working grid."""
    r = int(radius_mm // _WORKING_SPACING_MM)
    grid = np.indices((2 * r + 1,) * 3) - r
    return (grid ** 2).sum(axis=0) * _WORKING_SPACING_MM ** 2 <= radius_mm ** 2 + 1e-6


def _fill_holes_in_slices(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice along each axis: the ventricles, sinuses and airways
    connect to the neck at the edge of the field of view, so a 3D fill misses them."""
    filled = mask.copy()
    for axis in range(3):
        moved = np.moveaxis(mask, axis, 0)
        filled |= np.moveaxis(np.stack([ndi.binary_fill_holes(s) for s in moved]), 0, axis)
    return filled


def _head_mask(volume: np.ndarray) -> np.ndarray:
    """The head (or object): Otsu on robustly clipped values, largest component, closed, filled."""
    low, high = np.percentile(volume, [0.5, 99.5])
    threshold = _otsu_threshold(np.clip(volume, low, high).ravel())
    head = _largest_component(volume > threshold)
    head |= ndi.binary_closing(head, _ball(5.0))
    return _fill_holes_in_slices(head)


def _superior_mm(grid: sitk.Image, shape) -> np.ndarray:
    """Physical superior coordinate (LPS z, mm) of every voxel of the grid."""
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    k, j, i = np.indices(shape, dtype=np.float32)
    step = np.array(grid.GetSpacing())
    return (grid.GetOrigin()[2] + direction[2, 0] * step[0] * i
            + direction[2, 1] * step[1] * j + direction[2, 2] * step[2] * k)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank in (0, 1], ties sharing their average rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return average[inverse.ravel()] / values.size


def _rank_profile(ranks: np.ndarray, depth: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Median intensity rank per 2.5 mm of depth under the skin (NaN where too few voxels)."""
    step = _WORKING_SPACING_MM
    starts = np.arange(step, 45.0, step)
    profile = np.full(starts.shape, np.nan)
    for n, start in enumerate(starts):
        inside = (depth >= start) & (depth < start + step)
        if inside.sum() >= 10:
            profile[n] = np.median(ranks[inside])
    return starts, profile


def _skull_band(starts: np.ndarray, profile: np.ndarray) -> Tuple[str, float, bool]:
    """The skull under the scalp: 'dark' (MR: bone gives no signal), 'bright' (CT: bone
    is the densest tissue) or 'none' (skull-stripped), the depth where the brain starts,
    and whether the band is clear (0.15 in rank on both sides).

    A band is a minimum (maximum) within 20 mm of the skin with the profile at
    least 0.1 in rank higher (lower) within 7.5 mm above it and 0.15 within
    7.5 mm below it; the brain starts where the profile has come back half-way.
    """
    # The first 2.5 mm hold the skin's partial volume with the air: no band starts there.
    near = (starts > _WORKING_SPACING_MM) & (starts <= _SKULL_SEARCH_MM)
    reach = int(round(_SKULL_WIDTH_MM / _WORKING_SPACING_MM))
    for kind, sign in (("dark", 1.0), ("bright", -1.0)):
        signed = sign * profile
        if not np.any(np.isfinite(signed[near])):
            continue
        k = int(np.nanargmin(np.where(near, signed, np.nan)))
        fall = np.nanmax(signed[max(0, k - reach):k + 1]) - signed[k]
        after = signed[k + 1:k + 1 + reach]
        rise = (np.nanmax(after) - signed[k]) if np.any(np.isfinite(after)) else 0.0
        if fall >= _SKULL_FALL and rise >= _SKULL_RISE:
            back = np.nonzero(signed[k:] >= signed[k] + rise / 2)[0]
            return kind, float(starts[k + back[0]]), bool(fall >= _SKULL_RISE)
    return "none", 0.0, False


@dataclass(frozen=True)
class _Anatomy:
    """What the content analysis measured (see `_measure_anatomy`)."""

    skull: str            # 'dark', 'bright' or 'none'
    skull_clear: bool     # the band stands out by 0.15 in rank on both sides
    structure: float      # fine anatomical structure relative to the tissue signal
    surface: float        # median rank of the brain's surface layer minus its depth's
    dark_tail: float      # (median - 5th percentile) / (median - air) inside the skull
    bright_tail: float    # (95th percentile - median) / (median - air) inside the skull
    layering: float       # tissue next to dark CSF minus deep tissue, in IQR units (NaN: not measured)


def _measure_anatomy(image: sitk.Image, volume: np.ndarray, grid: sitk.Image) -> _Anatomy:
    """Skull, CSF and grey/white-matter evidence from the top of the head.

    The top 80 mm of the head (by the header's superior axis) hold only scalp,
    skull and cerebrum in every head scan, whatever the field of view below.
    Depth is measured from the skin; the skull is found as a band in the depth
    profile of intensity ranks; the brain is what lies deeper.
    """
    extent = np.array(volume.shape) * _WORKING_SPACING_MM
    if extent.min() < _MIN_EXTENT_MM:
        raise _NoAnatomy(f"the volume spans only {extent.min():.0f} mm along one axis, "
                         f"too little to show head anatomy")
    head = _head_mask(volume)
    if not 0.02 <= head.mean() <= 0.98:
        raise _NoAnatomy("no object stands out from a background")
    coherence = _coherence(volume, head)
    if coherence < _COHERENCE_MIN:
        raise _NoAnatomy(f"no spatially coherent tissue (neighbouring voxels correlate {coherence:.2f}): "
                         f"noise, not anatomy")
    depth = ndi.distance_transform_edt(head, sampling=[_WORKING_SPACING_MM] * 3)
    superior = _superior_mm(grid, volume.shape)
    vault = head & (superior > superior[head].max() - _VAULT_MM)
    ranks = _ranks(volume[vault])
    skull, inner, skull_clear = _skull_band(*_rank_profile(ranks, depth[vault]))
    brain = vault & (depth >= inner)
    brain_depth = depth[brain] - inner
    air = float(np.median(volume[~head])) if (~head).sum() >= 100 else float(np.percentile(volume, 0.5))
    structure = _fine_structure(volume, head, depth, air)
    surface = _surface_minus_depth(volume[brain], brain_depth)
    dark_tail, bright_tail = _csf_tails(volume[brain][brain_depth >= _WORKING_SPACING_MM], air)
    layering = _layering(image, grid, brain)
    anatomy = _Anatomy(skull, skull_clear, structure, surface, dark_tail, bright_tail, layering)
    _log.debug("anatomy: %s (brain starts %.1f mm under the skin)", anatomy, inner)
    return anatomy


def _coherence(volume: np.ndarray, head: np.ndarray) -> float:
    """The lowest, over the three axes, correlation of neighbouring voxels in the head.

    Tissues are regions many voxels wide, so neighbours agree in every scan;
    in noise they do not.
    """
    correlations = []
    for axis in range(3):
        values, inside = np.moveaxis(volume, axis, 0), np.moveaxis(head, axis, 0)
        pairs = inside[:-1] & inside[1:]
        if pairs.sum() < 100:
            continue
        first, second = values[:-1][pairs], values[1:][pairs]
        if first.std() == 0 or second.std() == 0:
            continue
        correlations.append(float(np.corrcoef(first, second)[0, 1]))
    return min(correlations) if correlations else 1.0


def _fine_structure(volume: np.ndarray, head: np.ndarray, depth: np.ndarray, air: float) -> float:
    """Median absolute band-pass (2.5-7.5 mm) intensity deep in the head over tissue minus air.

    Sulci, ventricles and the cortex give every MR and CT head structure at
    that scale; a PET-like or smooth volume has none, and the band-pass
    averages single-voxel noise away.
    """
    inner = head & (depth >= 10.0)
    if inner.sum() < 100:
        inner = head
    step = _WORKING_SPACING_MM
    band = ndi.gaussian_filter(volume, 2.5 / step) - ndi.gaussian_filter(volume, 7.5 / step)
    values = band[inner]
    level = float(np.median(volume[inner])) - air
    if level <= 0:
        return 0.0
    return float(np.median(np.abs(values - np.median(values))) / level)


def _surface_minus_depth(values: np.ndarray, brain_depth: np.ndarray) -> float:
    """Median rank of the brain's outer 7.5 mm minus that of the brain deeper than 15 mm.

    Negative: the surface (cortex and sulcal CSF) is darker than the deep white
    matter (T1, and FLAIR with its nulled CSF); positive: brighter (T2 and PD,
    where both CSF and grey matter outshine white matter).
    """
    outer, deep = brain_depth < _OUTER_MM, brain_depth >= _DEEP_MM
    if outer.sum() < 50 or deep.sum() < 50:
        raise _NoAnatomy("the head is too small or too flat to have a brain surface and depth")
    ranks = _ranks(values)
    return float(np.median(ranks[outer]) - np.median(ranks[deep]))


def _csf_tails(values: np.ndarray, air: float) -> Tuple[float, float]:
    """How far the darkest and the brightest 5 % of the brain lie from its median,
    relative to the median's height above the air.

    CSF is the extreme: far below (T1, FLAIR: dark tail deep), far above (T2:
    bright tail long), or neither (PD, where CSF is near grey matter).
    """
    if values.size < 100:
        raise _NoAnatomy("too little brain under the skull to judge")
    low, median, high = np.percentile(values, [5, 50, 95])
    level = median - air
    if level <= 0:
        raise _NoAnatomy("the brain is not brighter than the background")
    return float((median - low) / level), float((high - median) / level)


def _layering(image: sitk.Image, grid: sitk.Image, brain: np.ndarray) -> float:
    """Median of the tissue 1.25-2.5 mm from dark CSF minus that of tissue over 5 mm
    from it, over the brain's interquartile range, on a 1.25 mm grid.

    Next to CSF lies the cortex (grey matter), far from it white matter: T1
    makes white matter brighter (negative), FLAIR grey matter (positive).  CSF
    here is every voxel at least half-way from the brain's median down to its
    darkest level.  Partial volume with CSF makes the nearest layer darker in
    both, so the layer measured is the second one and the boundary is below 0.
    """
    corner = np.argwhere(brain).min(axis=0)
    span = np.argwhere(brain).max(axis=0) - corner + 1
    fine = _LAYER_SPACING_MM
    reference = sitk.Image([int(np.ceil(n * _WORKING_SPACING_MM / fine)) for n in span[::-1]],
                           sitk.sitkFloat32)
    reference.SetSpacing([fine] * 3)
    reference.SetOrigin(grid.TransformIndexToPhysicalPoint([int(c) for c in corner[::-1]]))
    reference.SetDirection(grid.GetDirection())
    mask_image = sitk.GetImageFromArray(brain.astype(np.uint8))
    mask_image.CopyInformation(grid)
    lowest = float(np.min(sitk.GetArrayViewFromImage(image)))
    volume = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(),
                                                  sitk.sitkLinear, lowest))
    mask = sitk.GetArrayFromImage(sitk.Resample(mask_image, reference, sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0)).astype(bool)
    values = volume[mask]
    if values.size < 1000:
        return float("nan")
    darkest, lower, median, upper = np.percentile(values, [1, 25, 50, 75])
    csf = mask & (volume <= darkest + (median - darkest) / 2)
    distance = ndi.distance_transform_edt(~csf, sampling=[fine] * 3)
    tissue = mask & ~csf
    second = tissue & (distance > fine) & (distance <= 2 * fine)
    far = tissue & (distance > 5.0)
    if second.sum() < 50 or far.sum() < 50 or upper <= lower:
        return float("nan")
    return float((np.median(volume[second]) - np.median(volume[far])) / (upper - lower))


def _ct_evidence(values: np.ndarray) -> Tuple[float, str]:
    """How CT-like the histogram is (0..1) and why.

    CT numbers are calibrated: air -1000, water 0, and every soft tissue of the
    head (brain, muscle, blood, CSF) lies within about 100 HU of water, while the
    air-to-water gap is 1000 HU and bone goes far above.  So the foreground
    histogram has one very narrow dominant peak relative to the air-to-peak gap.
    In MR the tissue contrasts are a sizeable fraction of the signal itself,
    so that peak is several times broader.  The concentration measure is
    invariant to offset and scale (HU, HU+1024 storage, rescaled templates).
    Bone must also reach far above that peak (the top 0.5 % of the foreground
    at least 0.3 gaps above it): a low-contrast PD image can have a narrow peak
    too, but nothing that bright.  The confidence stops at 0.9: only a bright
    skull band as well (see `_guess_from_content`) makes it sure.
    """
    threshold = _otsu_threshold(values)
    background, foreground = values[values <= threshold], values[values > threshold]
    if background.size == 0 or foreground.size < 100:
        return 0.0, "no background/foreground split"
    counts, edges = np.histogram(background, bins=128)
    air = float(edges[np.argmax(counts)])
    counts, edges = np.histogram(foreground, bins=256)
    smooth = ndi.gaussian_filter1d(counts.astype(float), 2)
    peak = float((edges[np.argmax(smooth)] + edges[np.argmax(smooth) + 1]) / 2)
    gap = peak - air
    if gap <= 0:
        return 0.0, "no tissue peak above the background"
    concentration = float(np.mean(np.abs(foreground - peak) < _CT_PEAK_WINDOW * gap))
    bone_reach = float((np.percentile(foreground, 99.5) - peak) / gap)
    _log.debug("CT evidence: air %.4g, peak %.4g, concentration %.3f, bone reach %.3f",
               air, peak, concentration, bone_reach)
    if bone_reach < _CT_MIN_BONE_REACH:
        return 0.0, f"nothing far brighter than the tissue peak (bone reach {bone_reach:.2f})"
    score = 1 / (1 + np.exp(-(concentration - _CT_MIN_CONCENTRATION) / 0.03))
    detail = (f"{concentration:.0%} of the foreground within 5% of the air-to-tissue gap "
              f"of one narrow soft-tissue peak, bone reaching {bone_reach:.1f} gaps above it")
    return float(min(score, 0.9)), detail


def _mr_hypotheses(a: _Anatomy) -> dict:
    """Margin of each MR contrast: its weakest cue, in units of that cue's uncertainty
    (positive supports the contrast; `_sure` turns it into a confidence).

    T1: CSF dark (not the brightest: enhancing vessels and dura may lengthen
    the bright tail), white matter brighter than the cortex, the brain darker
    at its surface than in depth.  FLAIR: CSF dark, clearly the extreme, but
    the cortex brighter than white matter.  T2: CSF the brightest tissue, the
    brain brighter at its surface.  PD (registered as T2): CSF near grey
    matter, the brain brighter at its surface.
    """
    ratio = a.bright_tail / max(a.dark_tail, 1e-6)
    deep_tail = (a.dark_tail - _CSF_DARK_MIN) / 0.05
    csf_dark = min(deep_tail, (_CSF_DARK_RATIO - ratio) / 0.2)
    csf_not_bright = min(deep_tail, (_CSF_BRIGHT_RATIO - ratio) / 0.3)
    csf_bright = (ratio - _CSF_BRIGHT_RATIO) / 0.3
    csf_iso = min((_CSF_DARK_MIN - a.dark_tail) / 0.05, (_CSF_ISO_MAX - a.bright_tail) / 0.05)
    surface_dark, surface_bright = -a.surface / 0.1, a.surface / 0.1
    layer = (_LAYER_T1_BELOW - a.layering) / 0.15 if np.isfinite(a.layering) else 0.0
    return {"T1": min(csf_not_bright, layer, surface_dark), "FLAIR": min(csf_dark, -layer),
            "T2": min(csf_bright, surface_bright), "PD": min(csf_iso, surface_bright)}


def _mr_reason(modality: str, a: _Anatomy) -> str:
    """The evidence for `modality` in words."""
    skull = {"dark": "dark skull (MR)", "bright": "bright skull band",
             "none": "no skull (skull-stripped or brain only)"}[a.skull]
    tails = f"{a.dark_tail:.0%} below / {a.bright_tail:.0%} above the brain's median"
    surface = f"{'darker' if a.surface < 0 else 'brighter'} at its surface than in depth ({a.surface:+.2f})"
    layering = ("layering not measured" if not np.isfinite(a.layering) else
                f"tissue next to CSF {'darker' if a.layering < 0 else 'brighter'} than deep white matter "
                f"({a.layering:+.2f})")
    words = {
        "T1": f"dark CSF ({tails}), white matter brightest: {layering}, brain {surface}",
        "FLAIR": f"dark CSF ({tails}) but grey matter brighter than white matter: {layering}",
        "T2": f"bright CSF ({tails}), brain {surface}",
        "PD": f"CSF neither dark nor bright ({tails}), brain {surface}: proton density (T2/PD-like)",
    }[modality]
    return f"{words}; {skull}"


def _mr_contrast(a: _Anatomy) -> ModalityGuess:
    """The MR contrast whose physics the anatomy fits best, or UNKNOWN when none fits well."""
    structure = (a.structure - _STRUCTURE_MIN) / 0.01
    if structure < 0:
        return ModalityGuess(UNKNOWN, 0.0, f"no fine anatomical structure (sulci, ventricles, cortex: "
                             f"{a.structure:.3f} of the signal): a blurred or smooth volume such as PET "
                             f"or a phantom", "content")
    margins = _mr_hypotheses(a)
    best = max(margins, key=margins.get)
    guess = ModalityGuess("T2" if best == "PD" else best, _sure(min(margins[best], structure)),
                          _mr_reason(best, a), "content")
    return _or_unknown(guess)


def _guess_from_content(image: sitk.Image, allow_ct: bool = True) -> ModalityGuess:
    """CT by its calibrated histogram (sure with a bright skull band, refused with a clear
    dark one: bone gives no MR signal), else the MR contrast by its anatomy."""
    if image.GetDimension() != 3:
        return ModalityGuess(UNKNOWN, 0.0, f"a {image.GetDimension()}D image, not a volume", "content")
    image = _without_padding(_scalar_float(image))
    volume, grid = _working_grid(image)
    ct_score, ct_reason = _ct_evidence(volume.ravel()) if allow_ct else (0.0, "")
    ct = ModalityGuess("CT", ct_score, ct_reason, "content")
    try:
        anatomy = _measure_anatomy(image, volume, grid)
    except _NoAnatomy as missing:
        return _or_unknown(ct) if ct_score >= 0.5 else ModalityGuess(UNKNOWN, 0.0, str(missing), "content")
    if ct_score >= 0.5 and anatomy.skull == "bright":
        return ModalityGuess("CT", max(ct_score, 0.97), f"{ct_reason}; bone also a bright band "
                             f"under the scalp", "content")
    if ct_score >= 0.5 and not (anatomy.skull == "dark" and anatomy.skull_clear):
        return _or_unknown(ct)
    guess = _mr_contrast(anatomy)
    if ct_score >= 0.5:
        guess = ModalityGuess(guess.modality, guess.confidence,
                              f"{guess.reason} (a CT-like histogram, but the skull is dark: MR)", "content")
    return guess


def _or_unknown(guess: ModalityGuess) -> ModalityGuess:
    """`guess`, or UNKNOWN naming it as the closest candidate when it is less sure than UNKNOWN_BELOW."""
    if guess.confidence >= UNKNOWN_BELOW:
        return guess
    return ModalityGuess(UNKNOWN, guess.confidence, f"evidence too weak: closest is {guess.modality} "
                         f"({guess.confidence:.0%}): {guess.reason}", guess.source)


def identify_modality(image: sitk.Image, hints: Optional[Mapping[str, str]] = None) -> ModalityGuess:
    """Recognise the modality of `image`, using `hints` (name, DICOM tags) when they are conclusive.

    Order of evidence:
      1. DICOM tags: Modality 'CT' is conclusive, PET and other non-MR scans
         are UNKNOWN; SeriesDescription, ProtocolName, SequenceName naming
         T1 / T2 / FLAIR / CT; else echo, repetition and inversion times.
         Modality 'MR' only rules CT out.
      2. The node or file name, unless the content contradicts it strongly
         (content confidence >= 0.85), in which case the content wins and the
         reason says so.
      3. The content: CT by its calibrated, very narrow soft-tissue peak and
         bone far above it (`_ct_evidence`), unless the skull is dark; else the
         MR contrast by where CSF, grey and white matter sit in the intensity
         order (`_mr_hypotheses`).  PD-weighted images come out as T2.  Weak
         or contradictory evidence gives UNKNOWN, with the reason.
    """
    hints = {str(k): str(v) for k, v in (hints or {}).items() if v is not None}
    tagged = _guess_from_tags(hints)
    if tagged:
        return tagged
    is_mr = str(hints.get("Modality", "")).strip().upper() in ("MR", "MRI")
    named = _guess_from_name(hints)
    content = _guess_from_content(image, allow_ct=not is_mr)
    if is_mr:
        content = ModalityGuess(content.modality, content.confidence,
                                f"DICOM Modality MR; {content.reason}", content.source)
    if named is None:
        return content
    if content.known and content.modality != named.modality and content.confidence >= 0.85:
        return ModalityGuess(content.modality, content.confidence,
                             f"{content.reason} (contradicts {named.reason})", "content")
    if content.modality == named.modality:
        note = ""
    elif content.known:
        note = f"; content suggested {content.modality}"
    else:
        note = "; content inconclusive"
    return ModalityGuess(named.modality, named.confidence, named.reason + note, "name")
