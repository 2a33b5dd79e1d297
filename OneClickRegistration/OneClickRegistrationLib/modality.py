"""Recognising the modality of a head volume: T1, T2, FLAIR or CT.

First from what the scanner or the user wrote (DICOM Modality and
SeriesDescription, a node or file name), then from the image content.
Every answer carries a confidence in [0, 1] and a one-line reason.
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


@dataclass(frozen=True)
class ModalityGuess:
    """A recognised modality with how sure we are and why."""

    modality: str
    confidence: float
    reason: str
    source: str  # 'caller', 'tags', 'name' or 'content'

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
    """T1 / T2 / FLAIR from echo, repetition and inversion times (ms), when given.

    Physics: a long inversion time (> 1500 ms) nulls CSF (FLAIR); a short one
    (300-1300 ms, MPRAGE) gives T1 contrast; a long TE (> 60 ms) gives T2
    contrast; a short TE with a short TR (< 900 ms) gives T1 contrast.
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
    return None


def _guess_from_tags(hints: Mapping[str, str]) -> Optional[ModalityGuess]:
    dicom_modality = str(hints.get("Modality", "")).strip().upper()
    if dicom_modality == "CT":
        return ModalityGuess("CT", 0.99, "DICOM Modality is CT", "tags")
    for key in _DESCRIPTION_TAGS:
        found = _modality_from_text(str(hints.get(key, "")))
        if found and not (dicom_modality == "MR" and found[0] == "CT"):
            return ModalityGuess(found[0], 0.95, f"{key} {hints[key]!r} {found[1]}", "tags")
    timing = _modality_from_timing(hints)
    if timing:
        return ModalityGuess(timing[0], 0.85, f"DICOM timing: {timing[1]}", "tags")
    return None


def _guess_from_name(hints: Mapping[str, str]) -> Optional[ModalityGuess]:
    for key in _NAME_TAGS:
        if hints.get(key):
            found = _modality_from_text(str(hints[key]))
            if found:
                return ModalityGuess(found[0], 0.9, f"name {hints[key]!r} {found[1]}", "name")
    return None


# --------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------

_WORKING_SPACING_MM = 3.0
_CT_PEAK_WINDOW = 0.05        # +-5 % of the air-to-tissue gap
_CT_MIN_CONCENTRATION = 0.37  # CT >= 0.43 on real and template CTs, MR <= 0.30
_CT_MIN_BONE_REACH = 0.3      # CT >= 0.39 (smoothed template), PD-weighted MR <= 0.2
_CENTRAL_RADIUS_MM = 25.0
_DARK_CSF_MIN = 0.33          # T1 / FLAIR >= 0.45, T2 / PD <= 0.23
_WM_DEPTH_RATIO_T1 = 1.15     # T1 >= 1.3, FLAIR / T2 <= 1.1


def _working_copy(image: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """A block-averaged ~3 mm float copy (z, y, x) and its spacing (z, y, x) in mm."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorMagnitude(image)
    image = sitk.Cast(image, sitk.sitkFloat32)
    factors = [max(1, int(round(_WORKING_SPACING_MM / s))) for s in image.GetSpacing()]
    factors = [min(f, max(1, n // 8)) for f, n in zip(factors, image.GetSize())]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    return sitk.GetArrayFromImage(image), np.array(image.GetSpacing()[::-1])


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


def _without_padding(values: np.ndarray) -> np.ndarray:
    """The values without a field-of-view fill (CT's -2048 outside the FOV), see imageio.padding_value."""
    padding = imageio.padding_value(values)
    return values if padding is None else values[values != padding]


def _ct_evidence(values: np.ndarray) -> Tuple[float, str]:
    """How CT-like the histogram is (0..1) and why.

    CT numbers are calibrated: air -1000, water 0, and every soft tissue of the
    head (brain, muscle, blood, CSF) lies within about 100 HU of water, while the
    air-to-water gap is 1000 HU and bone goes far above.  So the foreground
    histogram has one very narrow dominant peak relative to the air-to-peak gap.
    In MR the tissue contrasts are a sizeable fraction of the signal itself,
    so that peak is several times broader.  The concentration measure is
    invariant to offset and scale (HU, HU+1024 storage, rescaled templates);
    Bone must also reach far above that peak (the top 0.5 % of the
    foreground at least 0.3 gaps above it): a low-contrast PD image can have a
    narrow peak too, but nothing that bright.  An air level near -1000 and a soft-tissue peak near 0, or a gap of about
    1000 units, only raise the confidence.
    """
    values = _without_padding(values)
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
    hounsfield = -1150 <= air <= -850 and -150 <= peak <= 150
    shifted = 850 <= gap <= 1250
    score = 1 / (1 + np.exp(-(concentration - _CT_MIN_CONCENTRATION) / 0.03))
    detail = f"{concentration:.0%} of the foreground within 5% of the tissue peak"
    if score > 0.5 and hounsfield:
        return max(score, 0.97), f"Hounsfield units: air {air:.0f}, soft tissue {peak:.0f}, {detail}"
    if score > 0.5 and shifted:
        return max(score, 0.92), f"shifted Hounsfield-like units (air-tissue gap {gap:.0f}), {detail}"
    return float(min(score, 0.9)), detail


def _brain_mask(volume: np.ndarray) -> np.ndarray:
    """Brain (or main object) mask: bright tissue cut off from the scalp at the dark skull.

    Tissue above Otsu is eroded by one voxel so the thin scalp detaches,
    the largest component is kept, grown back, and its holes (dark
    ventricles in T1 / FLAIR) are filled.
    """
    threshold = _otsu_threshold(volume.ravel())
    head = ndi.binary_fill_holes(_largest_component(volume > 0.5 * threshold))
    core = _largest_component(ndi.binary_erosion((volume > threshold) & head))
    return ndi.binary_fill_holes(ndi.binary_dilation(core) & head)


def _central_contrast(volume, spacing, brain) -> Tuple[float, float]:
    """Dark and bright deviations from the median in a sphere at the brain's centre.

    The sphere holds deep white matter, the thalami and the lateral and third
    ventricles: where CSF is dark (T1, FLAIR) the dark tail is deep, where it
    is bright (T2) the bright tail is long, and PD has both short.  CSF
    counts as dark when the dark tail is both deep (> 33 % below the median)
    and deeper than the bright tail.
    """
    centre = np.array(ndi.center_of_mass(brain))
    grid = np.indices(volume.shape, dtype=np.float32)
    radius = np.sqrt(sum(((grid[i] - centre[i]) * spacing[i]) ** 2 for i in range(3)))
    values = volume[(radius < _CENTRAL_RADIUS_MM) & brain]
    if values.size < 20:
        values = volume[brain]
    median = float(np.median(values))
    low, high = np.percentile(values, [3, 97])
    return (median - low) / median, (high - median) / median


def _kmeans_1d(values: np.ndarray, classes: int = 3, iterations: int = 20):
    centres = np.percentile(values, np.linspace(50 / classes, 100 - 50 / classes, classes))
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
        centres = np.array([values[labels == j].mean() if np.any(labels == j) else centres[j]
                            for j in range(classes)])
    return centres, labels


def _bright_class_depth_ratio(volume, spacing, brain) -> float:
    """Mean depth of the brightest of 3 intensity classes over the deepest other one.

    White matter is the tissue enclosed by the cortex: it is deepest.  In T1 it
    is also the brightest class; in FLAIR the brightest is cortex and lesions.
    """
    inner = ndi.binary_erosion(brain)
    if inner.sum() < 50:
        inner = brain
    depth = ndi.distance_transform_edt(brain, sampling=spacing)[inner]
    _, labels = _kmeans_1d(volume[inner])
    depths = [depth[labels == j].mean() if np.any(labels == j) else 0.0 for j in range(3)]
    return depths[2] / max(depths[0], depths[1], 1e-6)


def _logistic(margin: float) -> float:
    return float(0.5 + 0.45 * np.tanh(margin))


def _mr_contrast(volume: np.ndarray, spacing: np.ndarray) -> ModalityGuess:
    """T1, T2 or FLAIR from where CSF and white matter sit in the intensity order."""
    volume = volume - float(np.percentile(volume, 0.5))  # MR signal is relative to the air
    brain = _brain_mask(volume)
    dark_tail, bright_tail = _central_contrast(volume, spacing, brain)
    csf_margin = min((dark_tail - _DARK_CSF_MIN) / 0.08, (dark_tail - bright_tail) / 0.1)
    if csf_margin < 0:
        confidence = _logistic(-csf_margin)
        if bright_tail > 2 * dark_tail:
            why = f"bright CSF at the brain centre (+{bright_tail:.0%} vs -{dark_tail:.0%})"
        else:
            why = f"low-contrast centre without dark CSF (+{bright_tail:.0%}/-{dark_tail:.0%}): T2/PD-like"
        return ModalityGuess("T2", confidence, why, "content")
    ratio = _bright_class_depth_ratio(volume, spacing, brain)
    csf = f"dark CSF at the brain centre (-{dark_tail:.0%})"
    if ratio >= _WM_DEPTH_RATIO_T1:
        confidence = _logistic(min(csf_margin, (ratio - _WM_DEPTH_RATIO_T1) / 0.08))
        return ModalityGuess("T1", confidence, f"{csf}, brightest tissue is deep (white matter, depth x{ratio:.2f})", "content")
    confidence = _logistic(min(csf_margin, (_WM_DEPTH_RATIO_T1 - ratio) / 0.08))
    return ModalityGuess("FLAIR", confidence, f"{csf}, brightest tissue is not the deep white matter (depth x{ratio:.2f})", "content")


def _guess_from_content(image: sitk.Image, allow_ct: bool = True) -> ModalityGuess:
    volume, spacing = _working_copy(image)
    if allow_ct:
        ct_score, ct_reason = _ct_evidence(volume.ravel())
        if ct_score >= 0.5:
            return ModalityGuess("CT", ct_score, ct_reason, "content")
    return _mr_contrast(volume, spacing)


def identify_modality(image: sitk.Image, hints: Optional[Mapping[str, str]] = None) -> ModalityGuess:
    """Recognise the modality of `image`, using `hints` (name, DICOM tags) when they are conclusive.

    Order of evidence:
      1. DICOM tags: Modality 'CT' is conclusive; SeriesDescription,
         ProtocolName, SequenceName naming T1 / T2 / FLAIR / CT; else echo,
         repetition and inversion times.  Modality 'MR' only rules CT out.
      2. The node or file name, unless the content contradicts it strongly
         (content confidence >= 0.85), in which case the content wins and the
         reason says so.
      3. The content (see `_ct_evidence` and `_mr_contrast`): CT by its
         calibrated, very narrow soft-tissue peak; then CSF dark or bright at
         the brain centre (T1/FLAIR vs T2), and white matter (deepest tissue)
         brightest or not (T1 vs FLAIR).  PD-weighted images come out as T2.
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
    if content.modality != named.modality and content.confidence >= 0.85:
        return ModalityGuess(content.modality, content.confidence,
                             f"{content.reason} (contradicts {named.reason})", "content")
    note = "" if content.modality == named.modality else f"; content suggested {content.modality}"
    return ModalityGuess(named.modality, named.confidence, named.reason + note, "name")
