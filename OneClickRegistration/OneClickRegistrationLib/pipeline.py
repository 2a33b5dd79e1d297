"""The stage cascade: recognise modalities, pick the preset, run rigid, affine
and deformable registration, score each stage and keep only what the evidence
supports (evidence.py).

`register` is the one entry point shared by the command line, the Slicer
logic and plain-Python users.  Every transform it returns follows the ITK
convention: it maps a point of the fixed image's physical space to the
corresponding point of the moving image's physical space, so resampling the
moving image with it puts the moving image onto the fixed grid.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import SimpleITK as sitk

from . import applying, deformable, deformable_large, evidence, imageio, score
from .errors import InvalidInputError
from .linear import LinearStages
from .modality import UNKNOWN, ModalityGuess, identify_modality, parse_modality
from .presets import Preset, PresetTable, load_preset_table
from .working import WorkingImage

logger = logging.getLogger(__name__)

STAGE_NAMES = ("rigid", "affine", "deformable")

ProgressCallback = Callable[[float, str], None]


@dataclass
class StageResult:
    """What one stage produced and whether the pipeline kept it.

    `transform` is the whole fixed-to-moving mapping after this stage (not the
    increment), so any stage's result can be written and used on its own.
    """

    name: str
    transform: sitk.Transform
    score: float
    accepted: bool
    seconds: float
    message: str = ""
    inverse_transform: Optional[sitk.Transform] = None
    verdict: str = ""  # 'good', 'check visually' or 'failed' (see score.verdict and the pipeline's bound)


@dataclass
class RegistrationResult:
    """Everything a caller needs to use, check and report a registration."""

    transform: sitk.Transform
    inverse_transform: sitk.Transform
    resampled_moving: sitk.Image
    fixed_modality: ModalityGuess
    moving_modality: ModalityGuess
    preset: Preset
    initial_score: float
    stages: list = field(default_factory=list)
    seconds: float = 0.0
    score_description: str = ""
    # The registration's inputs (references, not copies): the grids and images `apply` and `quality_report` use.
    fixed_image: Optional[sitk.Image] = None
    moving_image: Optional[sitk.Image] = None
    # Whom the scans show, as assumed (evidence.SAME_PATIENT or DIFFERENT_PEOPLE), and why.
    subjects: evidence.Subjects = evidence.subjects_as_told(None)

    @property
    def score(self) -> float:
        """Score of the alignment finally returned (the last accepted stage)."""
        accepted = [stage.score for stage in self.stages if stage.accepted]
        return accepted[-1] if accepted else self.initial_score

    @property
    def verdict(self) -> str:
        """'good', 'check visually' or 'failed' for the alignment finally returned.

        It is never better than the verdict of the linear alignment the
        deformable stage started from: warping can raise the score of a wrong
        alignment (two different heads can be made to look alike), so it cannot
        turn a failed linear alignment into a good one.
        """
        accepted = [stage.verdict for stage in self.stages if stage.accepted]
        return accepted[-1] if accepted else score.verdict(self.initial_score)

    def stage(self, name: str) -> StageResult:
        """The result of the stage called `name` ('rigid', 'affine', 'deformable')."""
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"stage {name!r} did not run; stages run: {[s.name for s in self.stages]}")

    def apply(self, image: sitk.Image, *, kind: str = "auto", inverse: bool = False,
              image_interpolation: str = "linear", label_interpolation: str = "nearest") -> sitk.Image:
        """Carry another image through this registration (see `applying`): a scan, a label map, a segmentation.

        inverse=False: `image` lies in the moving image's space (another scan
        of the same session, a label map drawn on the moving image) and comes
        out on the fixed grid.  inverse=True: `image` lies in the fixed image's
        space and comes out on the moving grid.  kind: "auto", "image" or "label".
        """
        if inverse:
            return applying.apply_transform(self.inverse_transform, image, self._input("moving_image"), kind,
                                            image_interpolation=image_interpolation,
                                            label_interpolation=label_interpolation)
        return applying.apply_transform(self.transform, image, self._input("fixed_image"), kind,
                                        image_interpolation=image_interpolation,
                                        label_interpolation=label_interpolation)

    def quality_report(self, directory) -> Path:
        """Write the quality-control report (index.html and its PNG pictures) into `directory`; its index.html.

        Needs matplotlib (pip install "oneclickregistration[qc]"), imported only here.
        """
        from .quality_report import write_quality_report

        return write_quality_report(self, directory)

    def _input(self, name: str) -> sitk.Image:
        """The registration input `name` ('fixed_image' or 'moving_image'), or why a result made by hand has none."""
        image = getattr(self, name)
        if image is None:
            raise InvalidInputError(f"this result does not carry its {name.replace('_', ' ')} (it was made without "
                                    "register()); use applying.apply_transform with the image's grid instead")
        return image

    def report(self) -> dict:
        """A JSON-serialisable summary (the CLI's --report file)."""
        return {
            "fixed": self.fixed_modality.as_dict(),
            "moving": self.moving_modality.as_dict(),
            "preset": self.preset.name,
            "score_description": self.score_description,
            "initial_score": round(self.initial_score, 6),
            "final_score": round(self.score, 6),
            "verdict": self.verdict,
            "subjects": {"case": self.subjects.case, "reason": self.subjects.reason},
            "stages": [
                {
                    "name": stage.name,
                    "score": round(stage.score, 6),
                    "accepted": stage.accepted,
                    "verdict": stage.verdict,
                    "seconds": round(stage.seconds, 3),
                    "message": stage.message,
                }
                for stage in self.stages
            ],
            "seconds": round(self.seconds, 3),
        }


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    fixed_modality: Optional[str] = None,
    moving_modality: Optional[str] = None,
    preset: Union[Preset, str, None] = None,
    stages: Sequence[str] = STAGE_NAMES,
    fixed_mask: Optional[sitk.Image] = None,
    moving_mask: Optional[sitk.Image] = None,
    progress: Optional[ProgressCallback] = None,
    preset_table: Optional[PresetTable] = None,
    fixed_hints: Optional[Mapping[str, str]] = None,
    moving_hints: Optional[Mapping[str, str]] = None,
    inter_subject: Optional[bool] = None,
) -> RegistrationResult:
    """Align `moving` to `fixed` with no choices asked of the user.

    fixed, moving: SimpleITK 3D scalar images of any pixel type and orientation; two 2D images
        (photographs, slices, silhouettes) go to planar.register_planar, which runs the same stages in
        2D (modality, preset, hints and inter_subject do not apply there).
    fixed_modality, moving_modality: 'T1', 'T2', 'FLAIR' or 'CT' to skip recognition.
    preset: a row of the preset table to use instead of the one for the pair,
        as a Preset or by its name ('T1-CT', case-insensitive; 'CT-T1' works too).
    stages: which of 'rigid', 'affine', 'deformable' to run, in that order.
        The deformable stage runs only when listed here *and* the preset enables
        it by default, or when the caller passes a preset that enables it.
    fixed_mask, moving_mask: optional binary masks narrowing the metric and score;
        a mask on another grid than its image is resampled onto the image grid
        (nearest neighbour); a mask under 8 ml is refused.
    progress: called as progress(fraction, message) several times a second in
        every step and stage; raise `RegistrationCancelled` from it to stop: it
        propagates as is, whatever stage runs.  A KeyboardInterrupt (Ctrl-C in
        a console) also propagates as is, within an optimizer iteration; this
        function installs no signal handler.  Inputs are never modified.
    preset_table: a table loaded from a user file (default: the bundled one).
    fixed_hints, moving_hints: names and DICOM tags ('name', 'Modality',
        'SeriesDescription', ...) that help recognise the modality.
    inter_subject: True when the scans show two different people (or a patient
        and a template such as MNI): the affine is kept on its score and the
        deformable stage reaches far (deformable_large.py), whatever the preset
        says; False: one patient; None (default): one patient unless the affine
        stage finds the heads differ in size or shape beyond what one patient's
        scans do (evidence.subjects_from_affine).  The result says which was assumed.
    """
    start = time.perf_counter()
    report = _progress_reporter(progress)
    stages = _validated_stage_names(stages)
    if imageio.planar_pair(fixed, moving):  # two 2D images: planar.py (a 2D image with a volume is refused here)
        from .planar import register_planar  # modality, preset and hints do not apply in 2D (see planar.py)

        return register_planar(fixed, moving, stages=stages, fixed_mask=fixed_mask, moving_mask=moving_mask,
                               progress=progress)
    imageio.validate_image(fixed, "fixed image")
    imageio.validate_image(moving, "moving image")
    fixed_mask = imageio.validated_mask(fixed_mask, fixed, "fixed mask")
    moving_mask = imageio.validated_mask(moving_mask, moving, "moving mask")
    preset = _preset_argument(preset, preset_table)

    report(0.0, "preparing working copies of the images")
    fixed_work = WorkingImage.of(fixed, fixed_mask)
    moving_work = WorkingImage.of(moving, moving_mask)
    report(0.0, "recognising modalities")
    fixed_guess = _modality(fixed_work.image, fixed_modality, fixed_hints)
    moving_guess = _modality(moving_work.image, moving_modality, moving_hints)
    table = preset_table or load_preset_table()
    pair = (fixed_guess.modality, moving_guess.modality)
    chosen = preset or table.lookup(*pair)  # a pair with an unknown side: the agnostic row
    # An unknown side may be any contrast: score it as a cross-modality pair.
    cross_modality = pair[0] != pair[1] or UNKNOWN in pair
    logger.info("fixed %s, moving %s, preset %s", fixed_guess, moving_guess, chosen.name)

    report(0.0, "preparing the quality score")
    scorer = score.AlignmentScorer(
        fixed_work.image, moving_work.image, cross_modality=cross_modality,
        fixed_mask=fixed_work.mask, moving_mask=moving_work.mask,
        fixed_head=fixed_work.head, moving_head=moving_work.head, moving_domain=moving,
    )
    identity = sitk.Euler3DTransform()
    if imageio.same_image(fixed, moving):
        return _identical_images_result(
            fixed, moving, identity, fixed_guess, moving_guess, chosen, scorer, start, stages
        )

    if imageio.physical_overlap_fraction(fixed, moving) == 0.0 and "rigid" not in stages:
        raise imageio.no_overlap_error()

    current = identity
    current_inverse = identity.GetInverse()
    report(0.0, "scoring the initial alignment")
    current_score = scorer(current)
    initial_score = current_score
    linear_verdict = score.verdict(initial_score)  # the bound of a deformable stage's verdict
    linear_stages = LinearStages(fixed_work, moving_work, chosen.linear)
    subjects = evidence.subjects_as_told(inter_subject)
    results = []
    stage_fraction = 1.0 / max(1, len(stages))
    for index, name in enumerate(stages):
        stage_progress = _sub_progress(report, index * stage_fraction, stage_fraction, name)
        stage_start = time.perf_counter()
        with _overlap_loss_as_input_error(name):
            outcome = _run_stage(name, linear_stages, fixed_work, moving_work, current, chosen, stage_progress,
                                 subjects, table, cross_modality)
        if outcome is None:
            continue
        transform, inverse, message, min_jacobian = outcome
        if name == "affine" and inter_subject is None:
            subjects = evidence.subjects_from_affine(transform)
            logger.info("%s", subjects.reason)
        stage_progress(1.0, "weighing the evidence for the result")
        new_score = scorer(transform)
        decision = _decision(name, scorer, current, transform, current_score, new_score, fixed_work, moving_work,
                             min_jacobian)
        accepted = decision.kept
        message = decision.reason + (f"; {message}" if message else "")
        stage_verdict = score.verdict(new_score)
        if name == "deformable" and score.at_most(stage_verdict, linear_verdict) != stage_verdict:
            stage_verdict = score.at_most(stage_verdict, linear_verdict)
            message = (message + "; " if message else "") + (
                f"verdict held at the linear alignment's '{linear_verdict}': warping cannot make up for "
                "a wrong linear alignment")
        elif name != "deformable" and accepted:
            linear_verdict = stage_verdict
        results.append(StageResult(
            name=name, transform=transform, score=new_score, accepted=accepted,
            seconds=time.perf_counter() - stage_start, message=message,
            inverse_transform=inverse, verdict=stage_verdict,
        ))
        logger.info("stage %s: score %.4f (%s) in %.1f s", name, new_score,
                    "kept" if accepted else "dropped", results[-1].seconds)
        if accepted:
            current, current_inverse, current_score = transform, inverse, new_score

    report(1.0, "resampling the moving image")
    return RegistrationResult(
        transform=current,
        inverse_transform=current_inverse,
        resampled_moving=imageio.resample_onto(moving, fixed, current),
        fixed_modality=fixed_guess,
        moving_modality=moving_guess,
        preset=chosen,
        initial_score=initial_score,
        stages=results,
        seconds=time.perf_counter() - start,
        score_description=scorer.description,
        fixed_image=fixed,
        moving_image=moving,
        subjects=subjects,
    )


def _decision(name, scorer, current, transform, current_score, new_score, fixed_work, moving_work,
              min_jacobian) -> evidence.Decision:
    """Keep the stage's result or not (see evidence.py); the rigid stage only has to match the header's score."""
    if name == "rigid":
        if new_score >= current_score - score.TOLERANCE:
            return evidence.Decision(True, f"kept: score {new_score:.4f} (headers' alignment {current_score:.4f})")
        return evidence.Decision(False, f"dropped: score {new_score:.4f} is below the headers' alignment's "
                                        f"{current_score:.4f}, which is kept")
    def measure_gain():
        return scorer.gain(current, transform)

    if name == "affine":
        return evidence.affine_decision(transform, measure_gain)
    points = evidence.head_points(fixed_work.region_mask())
    return evidence.deformable_decision(evidence.change_mm(current, transform, points), measure_gain,
                                        evidence.deformation_threshold_mm(fixed_work.image, moving_work.image),
                                        min_jacobian)


def _run_stage(name, linear_stages, fixed, moving, current, preset, progress, subjects, table, cross_modality):
    """Run one stage from the current transform; None when it does not apply.

    fixed, moving: the working copies; subjects: evidence.Subjects (different
    people get the far-reaching deformable stage of the table's inter-subject
    settings, whatever the preset says).  Returns (whole transform, its inverse, message,
    the deformation's minimum Jacobian determinant or None for a linear stage).
    """
    if name == "rigid":
        rigid = linear_stages.rigid(progress)
        return rigid, rigid.GetInverse(), "", None
    if name == "affine":
        affine = linear_stages.affine(current, progress)
        return affine, affine.GetInverse(), "", None
    if name == "deformable":
        outcome = _deformation(fixed, moving, current, preset, progress, subjects, table, cross_modality)
        if outcome is None:
            return None
        forward = sitk.CompositeTransform([current, outcome.forward])
        inverse = sitk.CompositeTransform([outcome.inverse, current.GetInverse()])
        return forward, inverse, f"minimum Jacobian determinant {outcome.min_jacobian:.3f}", outcome.min_jacobian
    raise AssertionError(name)


def _deformation(fixed, moving, current, preset, progress, subjects, table, cross_modality):
    """The deformable stage's outcome: far-reaching for different people, the preset's for one patient (or None)."""
    if subjects.different:
        return deformable_large.register_large_deformation(
            fixed.image, moving.image, current, table.inter_subject, cross_modality=cross_modality,
            fixed_mask=fixed.region_mask(), progress=progress,
        )
    if not preset.deformable_by_default:
        logger.info("deformable stage skipped: preset %s does not run it by default", preset.name)
        return None
    threshold_mm = evidence.deformation_threshold_mm(fixed.image, moving.image)
    return deformable.register_deformable(
        fixed.image, moving.image, current, preset.deformable, fixed_mask=fixed.region_mask(), progress=progress,
        go_on=lambda change_mm: evidence.deformation_worth_refining(change_mm, threshold_mm),
    )


@contextlib.contextmanager
def _overlap_loss_as_input_error(stage: str, fix: str = "give two whole-head volumes that overlap, or larger masks"):
    """ITK's "samples map outside moving image buffer" as a one-line InvalidInputError.

    The metric raises it when a pose leaves no sample of the fixed image inside
    the moving one: volumes a few coarse voxels across, or that barely overlap.
    It is a property of the input, not a bug, so the user gets the reason and
    the fix instead of ITK's multi-line RuntimeError.
    """
    try:
        yield
    except RuntimeError as error:
        if "map outside moving image buffer" not in str(error):
            raise
        raise InvalidInputError(
            f"the {stage} stage lost the overlap of the two images (no metric sample of the fixed image falls "
            f"inside the moving image): the images are too small or overlap too little; {fix}") from None


def _identical_images_result(fixed, moving, identity, fixed_guess, moving_guess, preset,
                             scorer, start, stages):
    """The same image twice: identity with a perfect score, no work done."""
    perfect = scorer(identity)
    results = [
        StageResult(name=name, transform=identity, score=perfect, accepted=True,
                    seconds=0.0, message="identical images: identity",
                    inverse_transform=identity, verdict=score.verdict(perfect))
        for name in stages
    ]
    return RegistrationResult(
        transform=identity, inverse_transform=identity,
        resampled_moving=imageio.resample_onto(moving, fixed, identity),
        fixed_modality=fixed_guess, moving_modality=moving_guess, preset=preset,
        initial_score=perfect, stages=results, seconds=time.perf_counter() - start,
        score_description=scorer.description, fixed_image=fixed, moving_image=moving,
    )


def _modality(image, forced, hints) -> ModalityGuess:
    """The caller's modality when given, else the recognised one (possibly UNKNOWN)."""
    if forced is not None:
        name = parse_modality(forced)
        return ModalityGuess(name, 1.0, "given by the caller", "caller")
    return identify_modality(image, hints)


def _preset_argument(preset: Union[Preset, str, None], preset_table: Optional[PresetTable]) -> Optional[Preset]:
    """The `preset` argument as a Preset: a Preset as is, a name looked up in the table in use.

    Names match case-insensitively and a pair in either order ('ct-t1' finds
    'T1-CT'), so that a name typed by hand works; an unknown name is refused
    before any work, naming the table's presets.
    """
    if preset is None or isinstance(preset, Preset):
        return preset
    if not isinstance(preset, str):
        raise InvalidInputError(f"preset must be a preset name or a Preset, not a {type(preset).__name__}; "
                                "e.g. preset='T1-CT'")
    table = preset_table or load_preset_table()
    wanted = preset.strip().casefold()
    reversed_pair = "-".join(reversed(wanted.split("-", 1)))
    for row in table.rows.values():
        if row.name.casefold() in (wanted, reversed_pair):
            return row
    return table.by_name(preset)  # raises, listing the names


def _validated_stage_names(stages: Sequence[str]) -> tuple:
    if isinstance(stages, str):
        stages = [part.strip() for part in stages.split(",") if part.strip()]
    names = tuple(str(stage).lower() for stage in stages)
    unknown = [name for name in names if name not in STAGE_NAMES]
    if unknown or not names:
        raise InvalidInputError(f"unknown stages {unknown or '(none)'}: choose from "
                                 f"{', '.join(STAGE_NAMES)}, e.g. 'rigid,affine'")
    ordered = tuple(name for name in STAGE_NAMES if name in names)
    if ordered != names:
        raise InvalidInputError(f"stages must run in the order rigid, affine, deformable; got {list(names)}")
    return names


def _progress_reporter(progress: Optional[ProgressCallback]) -> ProgressCallback:
    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(min(1.0, max(0.0, fraction)), message)
    return report


def _sub_progress(report: ProgressCallback, offset: float, width: float, stage: str) -> ProgressCallback:
    """A progress callback for one stage that maps its 0..1 onto the whole run."""
    def stage_progress(fraction: float, message: str) -> None:
        report(offset + width * fraction, f"{stage}: {message}")
    return stage_progress

