"""Whether a stage earned its place: kept only when the evidence says it corrects something real.

Every stage raises its own metric a little even on an alignment that is
already right: an affine finds a per cent of "scaling" between a T1 and a T2
of one head (their contrasts blur edges differently), a deformable stage finds
a few tenths of a millimetre of "motion" in the noise.  Keeping those makes a
rigid-only case less precise than a rigid tool.  So after the rigid stage,
a stage is kept only when both hold:

- its score gain is larger than the score's noise (above zero at the
  one-sided 95 % level, from the standard deviation of the gain over a block
  bootstrap of the scoring region, and at least score.TOLERANCE): the improvement is seen across the head, not in a
  few places or by the luck of which tissue is counted;
- what it changes is large enough to be real for one patient's two scans:
  the affine stage must find a scaling or shear beyond what a scanner's
  calibration allows between two series (MIN_SCALING), the deformable stage
  must move part of the head by at least one voxel of the coarser image, and
  never less than MIN_DEFORMATION_MM (at the 95th percentile of the points
  where both images show the head: see deformation_threshold_mm).

The verdicts are plain sentences for the report, the command line and the
Slicer panel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from .score import TOLERANCE, ScoreGain

# Two series of one patient differ in scale by less than this when the
# scanner's gradients are calibrated (vendors' tolerance is about 1-2 %); an
# affine closer to a rotation than this corrects nothing we can tell apart from
# its own fitting noise (on aligned T1/T2/PD/CT pairs it finds 0.5-1.8 %).
MIN_SCALING = 0.02
# A deformation whose 95th-percentile displacement in the head is below one
# voxel of the coarser image (and never below this) is not told apart from
# interpolation, partial-volume and contrast effects: where two contrasts mix
# tissues in one voxel differently, their edges sit up to a voxel apart.
MIN_DEFORMATION_MM = 1.0
# A gain counts when it is above its noise at the one-sided 95 % level of a normal distribution.
NOISE_MULTIPLE = 1.645
# Head points at which the change of the mapping is measured.
CHANGE_POINTS = 4000
# Two scans of one head do not differ in size by this much: scanner calibration allows 1-2 %, and a
# real change of shape (a bent neck, swelling, the benchmark's 7 mm deformations) or a low-resolution
# scan pair reaches 3.7-5.4 % of affine "scaling" (same-subject pairs of ../shared/data and the bench:
# 0-1.7 %, up to 5.4 %).  A head against a population template (MNI) differs by 11-16 %, two adults by
# 4-14 %: beyond this the pair is taken for two people; two similar-sized heads need --inter-subject.
DIFFERENT_PEOPLE_SCALING = 0.06
SAME_PATIENT = "same patient"
DIFFERENT_PEOPLE = "different people"


@dataclass(frozen=True)
class Decision:
    """Keep the stage or not, and why, in words a clinician understands."""

    kept: bool
    reason: str


@dataclass(frozen=True)
class Subjects:
    """Whom the two scans show, as the pipeline assumed it: SAME_PATIENT or DIFFERENT_PEOPLE, and why."""

    case: str
    reason: str

    @property
    def different(self) -> bool:
        return self.case == DIFFERENT_PEOPLE


def subjects_as_told(inter_subject) -> Subjects:
    """The case before any stage ran: the caller's word (True/False), else one patient until the affine tells."""
    if inter_subject is None:
        return Subjects(SAME_PATIENT, "assumed: two scans of one patient (the default)")
    if inter_subject:
        return Subjects(DIFFERENT_PEOPLE, "as asked: two different people, or a patient and a template")
    return Subjects(SAME_PATIENT, "as asked: two scans of one patient")


def subjects_from_affine(affine: sitk.Transform) -> Subjects:
    """Different people when the affine between the heads scales beyond anything one patient's scans show."""
    departure = scaling_departure(affine)
    if departure >= DIFFERENT_PEOPLE_SCALING:
        return Subjects(DIFFERENT_PEOPLE, f"detected: the heads differ in size or shape by {100 * departure:.1f} % "
                                          f"(one patient's scans differ by under {100 * MIN_SCALING:.0f} %), so "
                                          "these are taken to be two different people or a patient and a template; "
                                          "pass inter_subject=False (--same-subject) if they are one patient")
    return Subjects(SAME_PATIENT, f"detected: the heads have the same size and shape (within "
                                  f"{100 * departure:.1f} %), as two scans of one patient do")


def head_points(region: sitk.Image, count: int = CHANGE_POINTS) -> np.ndarray:
    """Up to `count` physical points spread evenly over a binary region (rows x, y, z)."""
    inside = sitk.GetArrayViewFromImage(region)
    flat = np.flatnonzero(inside)  # C order, as argwhere; a flat index is a third of its memory and time
    step = max(1, len(flat) // count)
    index = np.column_stack(np.unravel_index(flat[::step], inside.shape)[::-1]).astype(np.float64)
    to_physical = np.asarray(region.GetDirection()).reshape(3, 3) * np.asarray(region.GetSpacing())
    return index @ to_physical.T + np.asarray(region.GetOrigin())


def change_mm(before: sitk.Transform, after: sitk.Transform, points: np.ndarray) -> float:
    """95th percentile over `points` of how far `after` maps a point from where `before` maps it."""
    moved = [np.asarray([t.TransformPoint(tuple(p)) for p in points]) for t in (before, after)]
    return float(np.percentile(np.linalg.norm(moved[1] - moved[0], axis=1), 95))


def significant(gain: ScoreGain) -> bool:
    """True when the score gain is larger than its noise."""
    return gain.gain > max(NOISE_MULTIPLE * gain.noise, TOLERANCE)


def _gain_text(gain: ScoreGain) -> str:
    return f"score {gain.gain:+.4f} (noise {gain.noise:.4f})"


def scaling_departure(affine: sitk.Transform) -> float:
    """How far the affine's linear part is from a rotation: the largest |singular value - 1|."""
    matrix = np.asarray(affine.GetMatrix()).reshape(3, 3)
    return float(np.max(np.abs(np.linalg.svd(matrix, compute_uv=False) - 1.0)))


def affine_decision(affine: sitk.Transform, measure_gain: Callable[[], ScoreGain]) -> Decision:
    """Keep an affine (fixed -> moving) only for a real scaling or shear that raises the score beyond noise.

    measure_gain() is called only when the scaling is large enough to matter (its bootstrap takes tenths of a second).
    """
    departure = scaling_departure(affine)
    scaling_text = f"a scaling of up to {100 * departure:.1f} %"
    if departure < MIN_SCALING:
        return Decision(False, f"dropped: the two scans have the same size and shape ({scaling_text} found, within "
                               f"the {100 * MIN_SCALING:.0f} % a scanner's calibration allows); the rigid "
                               f"alignment is kept")
    gain = measure_gain()
    if not significant(gain):
        return Decision(False, f"dropped: {scaling_text} found, but it does not improve the match beyond noise "
                               f"({_gain_text(gain)}); the rigid alignment is kept")
    return Decision(True, f"kept: corrects {scaling_text} between the scans ({_gain_text(gain)})")


def deformation_threshold_mm(*images: sitk.Image) -> float:
    """The smallest deformation the images can show: one voxel of the coarser image (cube root of its volume)."""
    voxel_sides = [float(np.prod(image.GetSpacing())) ** (1.0 / image.GetDimension()) for image in images]
    return max([MIN_DEFORMATION_MM] + voxel_sides)


def deformation_worth_refining(change_mm: float, threshold_mm: float) -> bool:
    """Whether the deformable stage's finest level can make the coarser levels' deformation count.

    The finest level refines detail within a few tenths of a millimetre of the
    coarser levels' field; below half the threshold it would be dropped anyway.
    """
    return change_mm >= 0.5 * threshold_mm


def deformable_decision(change: float, measure_gain: Callable[[], ScoreGain],
                        threshold_mm: float = MIN_DEFORMATION_MM, min_jacobian: Optional[float] = None) -> Decision:
    """Keep a deformation only when it folds nothing, moves part of the head by a voxel or more and
    improves the match beyond noise.

    measure_gain() is called only when the deformation is large enough to matter.
    """
    if min_jacobian is not None and min_jacobian <= 0:
        return Decision(False, f"dropped: it folds the image onto itself (minimum Jacobian determinant "
                               f"{min_jacobian:.3f}), which no anatomy does; the linear alignment is kept")
    moved_text = f"moves 5 % of the head by {change:.2f} mm or more"
    if change < threshold_mm:
        return Decision(False, f"dropped: it {moved_text}, less than the {threshold_mm:.2g} mm the images "
                               f"can tell from noise; the linear alignment is kept")
    gain = measure_gain()
    if not significant(gain):
        return Decision(False, f"dropped: it {moved_text} but does not improve the match beyond noise "
                               f"({_gain_text(gain)}); the linear alignment is kept")
    return Decision(True, f"kept: it {moved_text} and improves the match ({_gain_text(gain)})")
