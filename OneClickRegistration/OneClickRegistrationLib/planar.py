"""2D registration: two images (PNG, TIFF, JPEG, 2D NIfTI/NRRD/MHA, a single slice of a volume) through the stages.

`register()` hands a pair of 2D images here (pipeline.py); `register_planar`
runs the same cascade as the 3D pipeline, in 2D, and returns the same
RegistrationResult (PlanarRegistrationResult, which also carries its notes):

- inputs: a colour image becomes its luminance (imageio.luminance, Rec. 709
  luma), a 3D image one slice thick a 2D image in its plane; each conversion
  is a note in the result's report.  Then the checks of imageio.validate_image.
- stages (planar_stages.py): rigid (full-circle rotation search, then a
  coarse-to-fine Mattes MI fit), affine, deformable (the diffeomorphic engine);
  each stage is scored and kept only on the evidence, as in 3D (evidence.py):
  rigid when it scores at least as well as the images' headers; affine and
  deformable when what they change is large enough to be real and their score
  gain is beyond its noise; a deformation that folds the image, never.
- one preset, "2D": modalities are recognised in 3D head scans only, so every
  2D pair is scored on structure (planar_stages.PlanarScorer) and the
  deformable stage always runs when asked for.  The deformable result's
  verdict is never better than its linear alignment's.

Transforms are 2D SimpleITK transforms in the ITK convention (fixed physical
point -> moving physical point); `resampled_moving` lies on the fixed grid.
Inputs are never modified.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import applying, deformable, evidence, imageio, score
from .errors import InvalidInputError
from .modality import UNKNOWN, ModalityGuess
from .pipeline import (STAGE_NAMES, ProgressCallback, RegistrationResult, StageResult, _progress_reporter,
                       _overlap_loss_as_input_error, _sub_progress, _validated_stage_names)
from .planar_stages import LINEAR, PlanarDeformation, PlanarImage, PlanarLinear, PlanarScorer
from .planar_stages import deformable as deformable_stage
from .presets import Preset

logger = logging.getLogger(__name__)

# What 2D pairs are registered with (there is no modality recognition in 2D).
PLANAR_PRESET = Preset(
    name="2D",
    modalities=(UNKNOWN, UNKNOWN),
    description="2D images: modalities are not recognised; full-circle rotation search, Mattes MI fits coarse to "
                "fine (shrink factors and smoothing in pixels), the diffeomorphic deformable stage, and the "
                "structure NCC score without its chance level",
    linear=LINEAR,
    deformable=deformable.DeformableSettings(run_by_default=True),
)
NOT_RECOGNISED = ModalityGuess(UNKNOWN, 0.0, "2D image: modalities are recognised in 3D head scans only", "2D")
# Affine and deformable stages are kept only when they move 5 % of the fixed foreground by at least
# this many working pixels: the 2D counterpart of evidence.MIN_SCALING and MIN_DEFORMATION_MM, in the
# image's pixels.  On rigid-only pairs of bundled slices the affine fit moves 0.02-0.03 pixel (T1
# against T1, noise added) and 0.25 pixel (T1 against T2) in its own noise.
MIN_AFFINE_CHANGE_PIXELS = 0.5
MIN_DEFORMATION_PIXELS = 1.0
# Foreground points at which the change of the mapping is measured.
CHANGE_POINTS = 4000
# A user mask must cover at least this many pixels of its image (a 16-pixel square).
MIN_MASK_PIXELS = 256


@dataclass
class PlanarRegistrationResult(RegistrationResult):
    """A RegistrationResult of two 2D images, with the notes on what was done to them (colour, slices)."""

    notes: List[str] = field(default_factory=list)

    def report(self) -> dict:
        """RegistrationResult.report with the image dimension and the notes."""
        summary = super().report()
        summary.update({"dimension": 2, "notes": list(self.notes)})
        return summary

    def apply(self, image: sitk.Image, *, kind: str = "auto", inverse: bool = False,
              image_interpolation: str = "linear", label_interpolation: str = "nearest") -> sitk.Image:
        """Carry another 2D image through this registration, as RegistrationResult.apply does in 3D.

        A colour image is carried colour by colour.  Label maps are carried by
        nearest neighbour ('gaussian' is 3D only); scans linearly or by cubic B-spline.
        """
        transform, reference = ((self.inverse_transform, self._input("moving_image")) if inverse
                                else (self.transform, self._input("fixed_image")))
        if not imageio.is_planar(image):
            raise InvalidInputError("this is a 2D registration: give a 2D image to carry (a 3D volume goes through "
                                    "a 3D registration)")
        if image.GetDimension() == 3:
            image, _ = imageio.as_planar_scalar(image, "the image to carry")
        if image.GetNumberOfComponentsPerPixel() > 1:
            channels = [self.apply(sitk.VectorIndexSelectionCast(image, index), kind="image",
                                   image_interpolation=image_interpolation)
                        for index in range(image.GetNumberOfComponentsPerPixel())]
            return sitk.Compose(channels)
        if applying.image_kind(image, kind) == "label":
            if label_interpolation != "nearest":
                raise InvalidInputError(f"label_interpolation {label_interpolation!r} is for 3D volumes; 2D label "
                                        "maps are carried with 'nearest'")
            return sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor,
                                 float(sitk.GetArrayViewFromImage(image).min()), image.GetPixelID())
        interpolators = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline}
        if image_interpolation not in interpolators:
            raise InvalidInputError(f"image_interpolation {image_interpolation!r} is not one of linear, bspline")
        return imageio.resample_onto(image, reference, transform, interpolators[image_interpolation])

    def quality_report(self, directory) -> Path:
        """Refused: the quality report draws three planes of a volume."""
        raise InvalidInputError("the quality report draws three planes of a 3D volume and has no 2D version; "
                                "compare result.resampled_moving with the fixed image instead")


def register_planar(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    stages: Sequence[str] = STAGE_NAMES,
    fixed_mask: Optional[sitk.Image] = None,
    moving_mask: Optional[sitk.Image] = None,
    progress: Optional[ProgressCallback] = None,
) -> PlanarRegistrationResult:
    """Align the 2D image `moving` to the 2D image `fixed` (see the module docstring).

    fixed, moving: 2D SimpleITK images (scalar or colour) or 3D images one
    slice thick.  stages: which of 'rigid', 'affine', 'deformable' to run, in
    that order.  fixed_mask, moving_mask: optional binary masks (2D, or one
    slice) narrowing the fits and the score.  progress(fraction, message) is
    called several times a second; raise RegistrationCancelled from it to stop.
    """
    start = time.perf_counter()
    report = _progress_reporter(progress)
    stages = _validated_stage_names(stages)
    fixed_2d, fixed_notes = _planar_input(fixed, "fixed image")
    moving_2d, moving_notes = _planar_input(moving, "moving image")
    notes = fixed_notes + moving_notes
    for note in notes:
        logger.info("%s", note)
    fixed_mask = _planar_mask(fixed_mask, fixed_2d, "fixed mask")
    moving_mask = _planar_mask(moving_mask, moving_2d, "moving mask")

    report(0.0, "preparing working copies of the images")
    fixed_work = PlanarImage.of(fixed_2d, fixed_mask)
    moving_work = PlanarImage.of(moving_2d, moving_mask)
    report(0.0, "preparing the quality score")
    scorer = PlanarScorer(fixed_work, moving_work)
    identity = sitk.Euler2DTransform()
    done = dict(fixed_2d=fixed_2d, moving_2d=moving_2d, scorer=scorer, notes=notes, start=start)
    if imageio.same_image(fixed_2d, moving_2d):
        perfect = scorer(identity)
        results = [StageResult(name=name, transform=identity, score=perfect, accepted=True, seconds=0.0,
                               message="identical images: identity", inverse_transform=identity,
                               verdict=score.verdict(perfect)) for name in stages]
        return _result(identity, identity, perfect, results, **done)
    if imageio.physical_overlap_fraction(fixed_2d, moving_2d) == 0.0 and "rigid" not in stages:
        raise imageio.no_overlap_error()

    current, current_inverse = identity, identity.GetInverse()
    report(0.0, "scoring the initial alignment")
    current_score = initial_score = scorer(current)
    linear_verdict = score.verdict(initial_score)  # the bound of a deformable stage's verdict
    linear_stages = PlanarLinear(fixed_work, moving_work)
    judge = _Judge(scorer, _foreground_points(fixed_work.region_mask()), max(fixed_2d.GetSpacing()), fixed_work.pixel)
    kept = "headers'"  # the alignment a dropped stage leaves in place
    results = []
    stage_fraction = 1.0 / len(stages)
    for index, name in enumerate(stages):
        stage_progress = _sub_progress(report, index * stage_fraction, stage_fraction, name)
        stage_start = time.perf_counter()
        with _overlap_loss_as_input_error(name, fix="give two images of the same object, or larger masks"):
            outcome = _run_stage(name, linear_stages, fixed_work, moving_work, current, stage_progress)
        transform, inverse = outcome.transform, outcome.inverse
        stage_progress(1.0, "weighing the evidence for the result")
        new_score = scorer(transform)
        decision = judge.decision(name, current, outcome, current_score, new_score, kept)
        message = decision.reason + (f"; {judge.details(outcome)}" if outcome.deformation else "")
        stage_verdict = score.verdict(new_score)
        if name == "deformable" and score.at_most(stage_verdict, linear_verdict) != stage_verdict:
            stage_verdict = score.at_most(stage_verdict, linear_verdict)
            message += (f"; verdict held at the linear alignment's '{linear_verdict}': warping cannot make up for "
                        "a wrong linear alignment")
        elif name != "deformable" and decision.kept:
            linear_verdict = stage_verdict
        results.append(StageResult(name=name, transform=transform, score=new_score, accepted=decision.kept,
                                   seconds=time.perf_counter() - stage_start, message=message,
                                   inverse_transform=inverse, verdict=stage_verdict))
        logger.info("2D stage %s: score %.4f (%s) in %.1f s", name, new_score,
                    "kept" if decision.kept else "dropped", results[-1].seconds)
        if decision.kept:
            current, current_inverse, current_score, kept = transform, inverse, new_score, name

    report(1.0, "resampling the moving image")
    return _result(current, current_inverse, initial_score, results, **done)


def _result(transform, inverse, initial_score, stages, *, fixed_2d, moving_2d, scorer, notes, start):
    """The PlanarRegistrationResult of a run: the moving image resampled onto the fixed grid through `transform`."""
    return PlanarRegistrationResult(
        transform=transform, inverse_transform=inverse,
        resampled_moving=imageio.resample_onto(moving_2d, fixed_2d, transform),
        fixed_modality=NOT_RECOGNISED, moving_modality=NOT_RECOGNISED, preset=PLANAR_PRESET,
        initial_score=initial_score, stages=stages, seconds=time.perf_counter() - start,
        score_description=scorer.description, fixed_image=fixed_2d, moving_image=moving_2d, notes=notes,
    )


def _planar_input(image: sitk.Image, role: str):
    """The image as a validated 2D scalar image, and the notes on its conversion (see imageio.as_planar_scalar)."""
    image_2d, notes = imageio.as_planar_scalar(image, role)
    imageio.validate_image(image_2d, role)
    return image_2d, notes


def _planar_mask(mask: Optional[sitk.Image], image: sitk.Image, role: str) -> Optional[sitk.Image]:
    """A user mask as a binary uint8 2D image on its image's grid (nearest neighbour when on another grid).

    Refused: not a 2D (or single-slice) scalar image, empty, outside its
    image, or under MIN_MASK_PIXELS pixels, too few for the coarse levels.
    """
    if mask is None:
        return None
    if not imageio.is_planar(mask) or mask.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{role} must be a 2D scalar SimpleITK image (a label map) for 2D images")
    mask, _ = imageio.as_planar_scalar(mask, role)
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(binary)):
        raise InvalidInputError(f"{role} is empty; draw the region to register or leave the mask out")
    if imageio.physical_overlap_fraction(binary, image) == 0.0:
        raise InvalidInputError(f"{role} does not overlap its image; use the mask made for that image")
    binary = imageio.on_grid_of(binary, image, role)
    pixels = int(np.count_nonzero(sitk.GetArrayViewFromImage(binary)))
    if pixels < MIN_MASK_PIXELS:
        raise InvalidInputError(f"{role} covers only {pixels} pixel{'s' if pixels != 1 else ''} of its image; a mask "
                                f"must cover at least {MIN_MASK_PIXELS} (a 16-pixel square) to drive the "
                                "registration: draw a larger region or leave the mask out")
    return binary


@dataclass
class _StageOutcome:
    """What a stage produced: the whole transform, its inverse, and the deformable stage's measurements."""

    transform: sitk.Transform
    inverse: sitk.Transform
    deformation: Optional[PlanarDeformation] = None


def _run_stage(name, linear_stages: PlanarLinear, fixed: PlanarImage, moving: PlanarImage, current,
               progress) -> _StageOutcome:
    """Run one stage from the current transform."""
    if name == "rigid":
        rigid = linear_stages.rigid(progress)
        return _StageOutcome(rigid, rigid.GetInverse())
    if name == "affine":
        affine = linear_stages.affine(current, progress)
        return _StageOutcome(affine, affine.GetInverse())
    deformation = deformable_stage(fixed, moving, current, progress)
    return _StageOutcome(deformation.forward, deformation.inverse, deformation)


@dataclass(frozen=True)
class _Judge:
    """Whether a stage is kept, and why (the 2D counterpart of pipeline._decision and evidence.py).

    Rigid: kept when it scores at least as well as the headers' alignment.
    Affine, deformable: kept when they move 5 % of the fixed foreground by at
    least MIN_AFFINE_CHANGE_PIXELS / MIN_DEFORMATION_PIXELS beyond the current
    alignment and their score gain is beyond its noise (evidence.significant);
    a deformation that folds the image (a Jacobian determinant at or below 0) never.
    points: the fixed foreground's points where the change is measured; pixel,
    working_pixel: the fixed image's pixel and its working copy's (the minimums
    are in working pixels, the messages in the image's pixels).
    """

    scorer: PlanarScorer
    points: np.ndarray
    pixel: float
    working_pixel: float

    def decision(self, name: str, current: sitk.Transform, outcome: _StageOutcome, current_score: float,
                 new_score: float, kept: str) -> evidence.Decision:
        """Keep `outcome` or not; kept: the alignment left in place when it is dropped ('rigid', "headers'", ...)."""
        if name == "rigid":
            if new_score >= current_score - score.TOLERANCE:
                return evidence.Decision(True, f"kept: score {new_score:.4f} (headers' alignment {current_score:.4f})")
            return evidence.Decision(False, f"dropped: score {new_score:.4f} is below the headers' alignment's "
                                            f"{current_score:.4f}, which is kept")
        if outcome.deformation is not None and outcome.deformation.min_jacobian <= 0:
            return evidence.Decision(False, f"dropped: the deformation folds the image (a Jacobian determinant of "
                                            f"{outcome.deformation.min_jacobian:.3f}); the {kept} alignment is kept")
        change = _change_pixels(current, outcome.transform, self.points, self.pixel)
        minimum, what = ((MIN_AFFINE_CHANGE_PIXELS, "scaling or shear") if name == "affine" else
                         (MIN_DEFORMATION_PIXELS, "deformation"))
        minimum *= self.working_pixel / self.pixel
        moved = f"the {what} moves 5 % of the image's foreground by {change:.2f} pixel or more"
        if change < minimum:
            return evidence.Decision(False, f"dropped: {moved}, less than the {minimum:g} pixel a fit finds in "
                                            f"noise; the {kept} alignment is kept")
        gain = self.scorer.gain(current, outcome.transform)
        gain_text = f"score {gain.gain:+.4f} (noise {gain.noise:.4f})"
        if not evidence.significant(gain):
            return evidence.Decision(False, f"dropped: {moved} but does not improve the match beyond noise "
                                            f"({gain_text}); the {kept} alignment is kept")
        return evidence.Decision(True, f"kept: {moved} and improves the match ({gain_text})")

    def details(self, outcome: _StageOutcome) -> str:
        """What the deformable engine measured, for the stage's message."""
        deformation = outcome.deformation
        return (f"minimum Jacobian determinant {deformation.min_jacobian:.3f}, inverse consistent to "
                f"{deformation.inverse_consistency / self.pixel:.2f} pixel")


def _foreground_points(region: sitk.Image, count: int = CHANGE_POINTS) -> np.ndarray:
    """Up to `count` physical points spread evenly over a binary 2D region (rows x, y)."""
    yx = np.argwhere(sitk.GetArrayViewFromImage(region) > 0)
    index = yx[:: max(1, len(yx) // count)][:, ::-1].astype(np.float64)
    to_physical = np.asarray(region.GetDirection()).reshape(2, 2) * np.asarray(region.GetSpacing())
    return index @ to_physical.T + np.asarray(region.GetOrigin())


def _change_pixels(before: sitk.Transform, after: sitk.Transform, points: np.ndarray, pixel: float) -> float:
    """95th percentile over `points` of how far `after` maps a point from where `before` does, in pixels."""
    return evidence.change_mm(before, after, points) / pixel
