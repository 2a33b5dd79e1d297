"""The linear stages: initialisation, rotation search, rigid, then affine.

Built on SimpleITK's registration framework, with the pieces kept apart:
- the metric images: intensities rank-normalised inside the head, so that
  mutual information spends its histogram bins on tissue, not on air or on
  a CT's bone tail;
- initialisation: head centres of mass, then a coarse search over proper
  rotations (no reflections: left and right are never swapped) that keeps
  the few best candidates and refines each briefly;
- the rigid and affine optimisations: multi-resolution, parameters scaled
  from physical shifts, deterministic regular sampling.

Progress is reported during every optimisation, not only between them, so a
caller hears from the stage at least every second or so and a cancel request
(RegistrationCancelled raised by the progress callback) stops it within one
optimizer iteration.  The numba kernel of the rotation search is imported on
first use only, so this module imports where numba is not installed yet.

Transforms follow the ITK convention: fixed physical point -> moving point.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from . import evidence, imageio
from .errors import InvalidInputError
from .linear_precise import PreciseRigidLevel

logger = logging.getLogger(__name__)

METRICS = ("mattes_mi", "correlation")
# Mattes MI samples at most this many voxels per level: enough for a stable
# gradient, few enough to keep a 1 mm head fast.
MAX_METRIC_SAMPLES = 60_000
# The rigid stage's finest level decides its precision: there it samples up to
# this many voxels (the preset's fraction of a 2 mm head) and interpolates the
# images with quadratic B-splines (linear_precise.py for mutual information).  Linear interpolation smooths the moving
# image by an amount that depends on the sub-voxel position, which pulls mutual
# information toward poses on the voxel grid, and 60 000 samples leave a few
# hundredths of a millimetre of sampling noise.  Quadratic B-splines are as
# precise here as cubic ones (the same median errors on every bench pair) at
# half the cost per sample; halving the samples would cost about 0.01 mm.
PRECISE_METRIC_SAMPLES = 240_000
# The optimizer stops when its step (mm, or mm of shift at the head's edge for a
# rotation) falls below this; the finest level stops at twice the coarser levels'
# 1e-3: its last halvings moved no median error on the held-out bench cases by more
# than 0.02 mm, and cost a fifth of the level's iterations.
MIN_STEP_MM = 1e-3
PRECISE_MIN_STEP_MM = 2e-3
SEARCH_SPACING_MM = 6.0
SHAPE_BLUR_MM = 4.0
SHAPE_FIT_ITERATIONS = 100
REFINED_CANDIDATES = 4
COARSE_REFINE_ITERATIONS = 60
SAMPLING_SEED = 20240607
# Refined rotation candidates whose poses differ by more than these lie in different basins;
# a different basin whose coarse metric is within NEAR_TIE_FRACTION of the winner's is a near
# tie, which the coarse level cannot settle: both go on to the next level, the better one wins.
DISTINCT_POSE_DEG = 10.0
DISTINCT_POSE_MM = 10.0
NEAR_TIE_FRACTION = 0.03
# What SimpleITK says when a Python command raised during Execute.
_CALLBACK_ERROR = "error executing the Python Callable"
# During an optimisation, at most one progress message per this many seconds:
# optimizers iterate many times a second, and each message may repaint a GUI.
REPORT_INTERVAL_S = 0.2
ProgressCallback = Optional[Callable[[float, str], None]]


@dataclass(frozen=True)
class LinearSettings:
    """The linear part of a preset-table row (see presets.schema.json)."""

    metric: str
    histogram_bins: int
    sampling_fraction: float
    shrink_factors: Tuple[int, ...]
    smoothing_sigmas_mm: Tuple[float, ...]
    rigid_iterations: Tuple[int, ...]
    affine_iterations: Tuple[int, ...]
    rotation_search_deg: float
    rotation_step_deg: float

    @classmethod
    def from_dict(cls, values: dict) -> "LinearSettings":
        """Build from a table row's "linear" object, naming the first bad key."""
        try:
            settings = cls(
                metric=str(values["metric"]),
                histogram_bins=int(values["histogram_bins"]),
                sampling_fraction=float(values["sampling_fraction"]),
                shrink_factors=tuple(int(v) for v in values["shrink_factors"]),
                smoothing_sigmas_mm=tuple(float(v) for v in values["smoothing_sigmas_mm"]),
                rigid_iterations=tuple(int(v) for v in values["rigid_iterations"]),
                affine_iterations=tuple(int(v) for v in values["affine_iterations"]),
                rotation_search_deg=float(values["rotation_search_deg"]),
                rotation_step_deg=float(values["rotation_step_deg"]),
            )
        except KeyError as missing:
            raise InvalidInputError(f"linear settings lack the key {missing}") from None
        except (TypeError, ValueError) as error:
            raise InvalidInputError(f"linear settings have a value of the wrong type: {error}") from None
        settings._check()
        return settings

    def _check(self) -> None:
        levels = len(self.shrink_factors)
        problems = []
        if self.metric not in METRICS:
            problems.append(f"metric {self.metric!r} is not one of {METRICS}")
        if not 8 <= self.histogram_bins <= 256:
            problems.append("histogram_bins must be between 8 and 256")
        if not 0 < self.sampling_fraction <= 1:
            problems.append("sampling_fraction must be in (0, 1]")
        if levels == 0 or any(f < 1 for f in self.shrink_factors):
            problems.append("shrink_factors must be a non-empty list of integers >= 1")
        for key in ("smoothing_sigmas_mm", "rigid_iterations", "affine_iterations"):
            if len(getattr(self, key)) != levels:
                problems.append(f"{key} must have one entry per level ({levels})")
        if any(count < 0 for count in self.rigid_iterations + self.affine_iterations):
            problems.append("iterations must be >= 0 (0 skips that level)")
        if not 0 <= self.rotation_search_deg <= 180 or self.rotation_step_deg <= 0:
            problems.append("rotation_search_deg must be in [0, 180] and rotation_step_deg > 0")
        if problems:
            raise InvalidInputError("linear settings: " + "; ".join(problems))


def metric_image(image: sitk.Image, mask: sitk.Image, levels: int = 256) -> sitk.Image:
    """Intensities mapped to their rank (0..1) among the head voxels.

    Mutual information is blind to monotonic intensity changes in theory but
    not once intensities are binned: a CT's range (air to dense bone) would
    put all of the brain into one or two bins.  Ranking spreads tissue over
    the bins for every modality alike.
    """
    values = sitk.GetArrayViewFromImage(image)
    inside = values[sitk.GetArrayViewFromImage(mask).astype(bool)]
    step = max(1, inside.size // 500_000)
    quantiles = np.unique(np.percentile(inside[::step], np.linspace(0, 100, levels)))
    if quantiles.size < 2:
        quantiles = np.array([float(values.min()), float(values.max()) + 1.0])
    ranks = np.interp(values, quantiles, np.linspace(0.0, 1.0, quantiles.size)).astype(np.float32)
    result = sitk.GetImageFromArray(ranks)
    result.CopyInformation(image)
    return result


def like_regions(fixed, moving) -> tuple:
    """The regions whose centres the start aligns and whose outlines the rotation search matches.

    They must show the same anatomy on both sides: the user's masks when both
    images have one, else the heads (or 2D foregrounds).  A mask on one side only
    narrows where the fit's metric looks, as in ANTs and elastix: set against the
    other image's whole head it would start the search off by the distance
    between the two centres (a mask of the upper half of a whole-head T1 made
    the rigid stage fail by 12 mm).  fixed, moving: working.WorkingImage or
    planar_stages.PlanarImage.
    """
    if fixed.mask is not None and moving.mask is not None:
        return fixed.region_mask(), moving.region_mask()
    return fixed.whole_region(), moving.whole_region()


def initial_rigid(fixed_mask: sitk.Image, moving_mask: sitk.Image):
    """Rotation-free start that maps the fixed head's centre of mass onto the moving head's
    (an Euler3DTransform, or an Euler2DTransform for 2D masks: planar_stages.py)."""
    fixed_center = imageio.mask_center(fixed_mask)
    moving_center = imageio.mask_center(moving_mask)
    transform = sitk.Euler2DTransform() if fixed_mask.GetDimension() == 2 else sitk.Euler3DTransform()
    transform.SetCenter(fixed_center.tolist())
    transform.SetTranslation((moving_center - fixed_center).tolist())
    return transform


def candidate_rotations(max_deg: float, step_deg: float):
    """Euler angle triples (radians) on a grid covering +-max_deg about each axis."""
    count = int(np.floor(max_deg / step_deg + 1e-9))
    angles = np.deg2rad(np.arange(-count, count + 1) * step_deg)
    return list(itertools.product(angles, angles, angles))


class LinearStages:
    """The rigid and affine stages of one image pair, sharing their image pyramids.

    fixed, moving: the cropped working copies (working.WorkingImage: float32
    intensities, head mask, optional user mask).  Each pyramid level is
    smoothed and subsampled once and then used by every fit at that level:
    the rotation candidates, the rigid fit and the affine fit.
    """

    def __init__(self, fixed, moving, settings: LinearSettings):
        self.fixed = fixed
        self.moving = moving
        self.settings = settings
        self._fit_images = None
        self._levels = {}

    def rigid(self, progress: ProgressCallback = None) -> sitk.Euler3DTransform:
        """Rigid fixed->moving transform from scratch: centres, rotation search, multi-resolution fit.

        The search works on the head masks and rank-normalised head intensities
        (robust far from the answer; the user's masks only when both images
        have one: see like_regions); the fit levels use the clamped intensities
        of the whole working image (or of the fixed user's mask), whose optimum
        is the most precise because the edges of the head count too.
        """
        report = _Progress(progress)
        report.milestone(0.0, "preparing the images")
        fixed_head, moving_head = like_regions(self.fixed, self.moving)
        start = initial_rigid(fixed_head, moving_head)
        contenders = _search_rotations(self._search_level, fixed_head, moving_head, start, self.settings, report)
        best = self._settle_near_tie(contenders, report) if len(contenders) > 1 else contenders[0]
        fitted = self._fit(best, self.settings.rigid_iterations, report, 0.5, 0.5, precise_finest=True)
        return _as_euler(fitted)

    def _settle_near_tie(self, contenders: list, report) -> sitk.Euler3DTransform:
        """The rotation candidate that fits best one level finer than the search (see NEAR_TIE_FRACTION).

        A local optimum can match the head's outline and the coarse intensities
        almost as well as the true pose; the next level's detail tells them apart.
        """
        settings = self.settings
        levels = [(shrink, sigma, count) for shrink, sigma, count in
                  zip(settings.shrink_factors, settings.smoothing_sigmas_mm, settings.rigid_iterations) if count]
        shrink, sigma, count = levels[1] if len(levels) > 1 else levels[0]
        level = self._level(shrink, sigma)
        fitted = []
        for rank, candidate in enumerate(contenders):
            task = f"searching rotations: settling a near tie, candidate {rank + 1} of {len(contenders)}"
            fitted.append(level.fit(settings, count, candidate, lambda iteration: report.iteration(
                0.5, f"{task}, iteration {iteration}")))
        values = [value for value, _ in fitted]
        logger.info("rotation search: %d near-tied candidates in different basins, metric %s one level finer",
                    len(contenders), ", ".join(f"{value:.4f}" for value in values))
        return _as_euler(fitted[int(np.argmin(values))][1])

    def affine(self, initial: sitk.Transform, progress: ProgressCallback = None) -> sitk.AffineTransform:
        """Affine fixed->moving transform starting from `initial` (the rigid result)."""
        report = _Progress(progress)
        report.milestone(0.0, "preparing the images")
        center = imageio.mask_center(self.fixed.region_mask())
        fitted = self._fit(_as_affine(initial, center), self.settings.affine_iterations, report, 0.0, 1.0,
                           go_on=_scaling_worth_refining)
        affine = _as_affine(fitted, center)
        if np.linalg.det(np.asarray(affine.GetMatrix()).reshape(3, 3)) <= 0:
            raise InvalidInputError("the affine fit collapsed or mirrored the image; keep the rigid result")
        return affine

    def _fit(self, initial, iterations, report, offset, width, precise_finest=False, go_on=None):
        """Multi-resolution fit, one SimpleITK run per level so each level has its own iteration count.

        report: the stage's _Progress; the fit covers [offset, offset + width] of the stage.
        precise_finest: fit the full-resolution level with PRECISE_METRIC_SAMPLES
        and quadratic B-spline interpolation (the rigid stage; see PRECISE_METRIC_SAMPLES).
        go_on(transform): asked after every level but the last; False ends the fit there.
        """
        transform = initial
        settings = self.settings
        levels = [level for level in zip(settings.shrink_factors, settings.smoothing_sigmas_mm, iterations)
                  if level[2]]
        for index, (shrink, sigma, count) in enumerate(levels):
            precise = precise_finest and shrink == 1
            task = f"refining at {_spacing_text(self.fixed.image, shrink)}"
            start = offset + width * index / len(levels)
            report.milestone(start, f"{task}: preparing the images" + (" for B-spline interpolation" if precise else ""))
            level = self._level(shrink, sigma, precise)
            _, transform = level.fit(settings, count, transform, lambda iteration: report.iteration(
                start + width * iteration / (count * len(levels)), f"{task}, iteration {iteration}"))
            if go_on is not None and index + 1 < len(levels) and not go_on(transform):
                logger.info("fit ended at %s: the finer levels cannot change the outcome",
                            _spacing_text(self.fixed.image, shrink))
                break
        return transform

    def _level(self, shrink: int, sigma_mm: float, precise: bool = False) -> "_PyramidLevel":
        """The fit pyramid's level (built on first use, then shared by the rigid and affine fits)."""
        key = (shrink, sigma_mm, precise)
        if key not in self._levels:
            if self._fit_images is None:
                self._fit_images = (fit_image(self.fixed.image), fit_image(self.moving.image))
            fixed, moving = (_smoothed_and_shrunk(image, shrink, sigma_mm) for image in self._fit_images)
            if precise and self.settings.metric == "mattes_mi":
                self._levels[key] = PreciseRigidLevel(
                    fixed, moving, self.fixed.mask, PRECISE_METRIC_SAMPLES, self.settings.sampling_fraction,
                    self.settings.histogram_bins, PRECISE_MIN_STEP_MM, SAMPLING_SEED)
            else:
                self._levels[key] = _PyramidLevel(fixed, moving, self.fixed.mask, shrink, precise)
        return self._levels[key]

    def _search_level(self, fixed_head: sitk.Image, moving_head: sitk.Image) -> "_PyramidLevel":
        """The coarsest fit level rank-normalised within the heads (see metric_image), metric in the fixed head."""
        coarse = self._level(max(self.settings.shrink_factors), max(self.settings.smoothing_sigmas_mm))
        fixed = metric_image(coarse.fixed, imageio.on_grid_of(fixed_head, coarse.fixed))
        moving = metric_image(coarse.moving, imageio.on_grid_of(moving_head, coarse.moving))
        return _PyramidLevel(fixed, moving, fixed_head, coarse.shrink)


def _scaling_worth_refining(affine: sitk.AffineTransform) -> bool:
    """Whether a coarse level's affine scales or shears enough that the finer levels may make it count.

    A coarse level that finds less than half of evidence.MIN_SCALING has found
    a rotation: refining it costs the finest level's time and ends dropped.
    """
    return evidence.scaling_departure(affine) >= evidence.MIN_SCALING / 2


def fit_image(image: sitk.Image) -> sitk.Image:
    """Intensities clamped to robust percentiles, so padding (e.g. -2048 outside a CT field of view)
    and a few extreme voxels do not squeeze the tissue into one histogram bin."""
    low, high = imageio.robust_range(image)
    return sitk.Clamp(image, sitk.sitkFloat32, low, high)


def _search_rotations(search_level, fixed_mask, moving_mask, start, settings, report):
    """Rigid starts: rotations scored on head shape, the best few refined on intensities.

    Mutual information has a narrow basin (a few degrees at a coarse scale),
    so a grid of rotations scored with it misses the truth between grid
    points.  The head's shape, blurred, has a basin tens of degrees wide and
    looks alike in every modality: it ranks the grid; the top candidates are
    then fitted on shape and on intensities (search_level(fixed_mask, moving_mask):
    the coarse pyramid level).  Returns the best intensity match, followed by
    any near tie in another basin (see near_ties).
    """
    report.milestone(0.05, "searching rotations: outlining the heads")
    shape = _ShapeComparison(fixed_mask, moving_mask)
    rotations = candidate_rotations(settings.rotation_search_deg, settings.rotation_step_deg)
    report.milestone(0.07, f"searching rotations: comparing {len(rotations)} head orientations")
    scores = shape.correlations([_rotated(start, angles) for angles in rotations])
    order = np.argsort(-scores, kind="stable")[:REFINED_CANDIDATES]
    shrink = max(settings.shrink_factors)
    spacing = _spacing_text(fixed_mask, shrink)
    report.milestone(0.09, f"searching rotations: preparing the {spacing} images")
    coarse = search_level(fixed_mask, moving_mask)
    refined = []
    for rank, index in enumerate(order):
        task = f"searching rotations, candidate {rank + 1} of {len(order)}"
        offset, width = 0.1 + 0.4 * rank / len(order), 0.4 / len(order)
        candidate = shape.fit(_rotated(start, rotations[index]), lambda iteration: report.iteration(
            offset + 0.5 * width * iteration / SHAPE_FIT_ITERATIONS,
            f"{task}: matching head outlines, iteration {iteration}"))
        value, result = coarse.fit(settings, COARSE_REFINE_ITERATIONS, candidate, lambda iteration: report.iteration(
            offset + width * (0.5 + 0.5 * iteration / COARSE_REFINE_ITERATIONS),
            f"{task}: matching at {spacing}, iteration {iteration}"))
        refined.append((value, rank, _as_euler(result)))
    contenders = near_ties([(value, transform) for value, _, transform in refined])
    logger.info("rotation search: %d rotations, best coarse metric %.4f", len(rotations), min(value for value, _, _ in refined))
    return contenders


def near_ties(refined: list) -> list:
    """The best refined candidate, then each one in another basin whose metric is nearly as good.

    refined: (metric value, lower is better; Euler3DTransform) pairs in rank order.
    """
    ordered = sorted(enumerate(refined), key=lambda item: (item[1][0], item[0]))
    best_value, best = ordered[0][1]
    contenders = [best]
    for _, (value, transform) in ordered[1:]:
        near = value - best_value <= NEAR_TIE_FRACTION * abs(best_value)
        if near and all(_distinct_poses(transform, other) for other in contenders):
            contenders.append(transform)
    return contenders


def _distinct_poses(a: sitk.Euler3DTransform, b: sitk.Euler3DTransform) -> bool:
    """True when two rigid poses (same centre) differ by more than DISTINCT_POSE_DEG or DISTINCT_POSE_MM."""
    relative = np.asarray(a.GetMatrix()).reshape(3, 3).T @ np.asarray(b.GetMatrix()).reshape(3, 3)
    degrees = math.degrees(math.acos(float(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0))))
    shift = float(np.linalg.norm(np.subtract(a.GetTranslation(), b.GetTranslation())))
    return degrees > DISTINCT_POSE_DEG or shift > DISTINCT_POSE_MM


def _rotated(start: sitk.Euler3DTransform, angles) -> sitk.Euler3DTransform:
    candidate = sitk.Euler3DTransform(start)
    candidate.SetRotation(*angles)
    return candidate


class _ShapeComparison:
    """Correlation of the two blurred head masks, evaluated quickly at coarse scale."""

    def __init__(self, fixed_mask: sitk.Image, moving_mask: sitk.Image):
        self.fixed = self._blurred(fixed_mask)
        self.moving = self._blurred(moving_mask)
        fixed_values = sitk.GetArrayViewFromImage(self.fixed).ravel().astype(np.float64)
        self._fixed_centered = fixed_values - fixed_values.mean()
        self._points = _grid_points(self.fixed)
        self._moving_array = sitk.GetArrayFromImage(self.moving)
        self._to_moving_index = _physical_to_index_matrix(self.moving)
        self._moving_origin = np.asarray(self.moving.GetOrigin())

    @staticmethod
    def _blurred(mask: sitk.Image) -> sitk.Image:
        """The mask as a blurred shape on a SEARCH_SPACING_MM grid (blurred at a third of that first)."""
        fractions = imageio.shrink_to_spacing(sitk.Cast(mask, sitk.sitkFloat32), SEARCH_SPACING_MM / 3)
        smooth = sitk.SmoothingRecursiveGaussian(fractions, SHAPE_BLUR_MM)
        return imageio.shrink_to_spacing(smooth, SEARCH_SPACING_MM)

    def correlations(self, transforms) -> np.ndarray:
        """NCC between the fixed blurred mask and the moving one seen through each transform."""
        matrices, offsets = [], []
        for transform in transforms:
            matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
            offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
            matrices.append(self._to_moving_index @ matrix)
            offsets.append(self._to_moving_index @ (offset - self._moving_origin))
        return _kernels().pose_correlations(self._points, self._fixed_centered, self._moving_array,
                                            np.asarray(matrices), np.asarray(offsets))

    def fit(self, transform: sitk.Euler3DTransform, on_iteration: Callable[[int], None]) -> sitk.Euler3DTransform:
        """Rigid fit of the blurred masks from `transform` (widens the intensity metric's basin).

        on_iteration(iteration) is called after every optimizer iteration (counted from 1).
        """
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsCorrelation()
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=SEARCH_SPACING_MM, minStep=0.05, numberOfIterations=SHAPE_FIT_ITERATIONS,
            relaxationFactor=0.6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetInitialTransform(sitk.Euler3DTransform(transform), inPlace=False)
        fitted = _execute(method, self.fixed, self.moving, lambda: on_iteration(method.GetOptimizerIteration() + 1))
        return _as_euler(fitted)


def _grid_points(image: sitk.Image) -> np.ndarray:
    """Physical coordinates of every voxel centre, in numpy (z, y, x) ravel order, shape (N, 3)."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in reversed(size)), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return index * np.asarray(image.GetSpacing()) @ direction.T + np.asarray(image.GetOrigin())


def _physical_to_index_matrix(image: sitk.Image) -> np.ndarray:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.linalg.inv(direction * np.asarray(image.GetSpacing()))


class _PyramidLevel:
    """One pyramid level: both images smoothed and subsampled once, every fit at this level runs on them.

    fixed, moving: the level's images (see _smoothed_and_shrunk); fixed_mask:
    where the metric samples the fixed image (None: everywhere); shrink: the
    level's subsampling factor relative to the finest level.  Doing the
    pyramid here rather than in SimpleITK lets several fits (the rotation
    candidates, the rigid and affine stages) share one smoothing.
    """

    def __init__(self, fixed, moving, fixed_mask, shrink: int, precise: bool = False):
        self.shrink = shrink
        self.max_samples = PRECISE_METRIC_SAMPLES if precise else MAX_METRIC_SAMPLES
        self.interpolator = sitk.sitkBSpline2 if precise else sitk.sitkLinear
        self.min_step = PRECISE_MIN_STEP_MM if precise else MIN_STEP_MM
        self.mask = fixed_mask
        # Voxels of this level the metric may sample.
        self.voxels = (int(np.count_nonzero(sitk.GetArrayFromImage(imageio.on_grid_of(fixed_mask, fixed))))
                       if fixed_mask is not None else int(np.prod(fixed.GetSize())))
        self.fixed = fixed
        self.moving = moving

    def fit(self, settings: LinearSettings, iterations: int, initial: sitk.Transform,
            on_iteration: Callable[[int], None]):
        """Optimise from `initial`; return (metric value, transform) of the best pose the optimizer visited.

        The step-size optimizer is not monotonic: from a start already near a
        sharp optimum its first large steps can leave the basin, and it stops
        wherever its step became small.  Keeping the best pose it evaluated
        (the start included) costs nothing: each iteration reports the metric
        of the pose it stepped from.  on_iteration(iteration) is called after every
        iteration (counted from 1).
        """
        method = self._method(settings, iterations)
        value, result = best_visited_fit(method, self.fixed, self.moving, initial, on_iteration)
        logger.debug("level shrink %d: best metric %.5f, %s", self.shrink, value,
                     method.GetOptimizerStopConditionDescription())
        return value, result

    def _method(self, settings: LinearSettings, iterations: int) -> sitk.ImageRegistrationMethod:
        """A SimpleITK registration on this level's images: metric, sampling, optimizer."""
        method = sitk.ImageRegistrationMethod()
        if settings.metric == "mattes_mi":
            method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
        else:
            method.SetMetricAsCorrelation()
        # Image gradients are computed at the samples: precomputing them over
        # whole images (the default for the fixed one) costs more than a level's iterations.
        method.SetMetricUseFixedImageGradientFilter(False)
        method.SetMetricUseMovingImageGradientFilter(False)
        method.SetMetricSamplingStrategy(method.REGULAR)
        method.SetMetricSamplingPercentage(
            min(settings.sampling_fraction, self.max_samples / max(self.voxels, 1)),
            SAMPLING_SEED)
        if self.mask is not None:
            method.SetMetricFixedMask(self.mask)
        method.SetInterpolator(self.interpolator)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=max(0.25, 0.5 * self.shrink), minStep=self.min_step, numberOfIterations=int(iterations),
            relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        return method


def best_visited_fit(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
                     initial: sitk.Transform, on_iteration: Callable[[int], None]):
    """Run `method` from `initial`; (metric value, transform) of the best pose it visited, the start included."""
    method.SetInitialTransform(initial, inPlace=False)
    best = [np.inf, tuple(initial.GetParameters())]
    stepped_from = [best[1]]

    def after_iteration():
        value = method.GetMetricValue()
        if value < best[0]:
            best[:] = [value, stepped_from[0]]
        stepped_from[0] = tuple(method.GetOptimizerPosition())
        on_iteration(method.GetOptimizerIteration() + 1)

    _execute(method, fixed, moving, after_iteration)
    result = type(initial)(initial)
    result.SetParameters(best[1])
    return best[0], result


def _smoothed_and_shrunk(image: sitk.Image, shrink: int, sigma_mm: float) -> sitk.Image:
    """`image` smoothed by a Gaussian of sigma_mm and subsampled to about `shrink` times its finest spacing.

    Block averaging (BinShrink) does the subsampling and the first part of the
    smoothing in one pass over the full image (a block of f voxels of s mm is
    a box filter of variance (f^2 - 1) s^2 / 12); the Gaussian then adds the
    rest on the small grid.  Smoothing the full image first would cost a full
    pass per level and per sigma.
    """
    factors = _shrink_factors(image, shrink)
    if max(factors) == 1:
        return sitk.SmoothingRecursiveGaussian(image, sigma_mm) if sigma_mm > 0 else image
    box_variance = max((f * f - 1) * s * s / 12.0 for f, s in zip(factors, image.GetSpacing()))
    shrunk = sitk.BinShrink(image, factors)
    rest = math.sqrt(max(0.0, sigma_mm ** 2 - box_variance))
    return sitk.SmoothingRecursiveGaussian(shrunk, rest) if rest > 0 else shrunk


def _shrink_factors(image: sitk.Image, shrink: int) -> list:
    """Per-axis subsampling that takes `image` to about `shrink` times its finest spacing."""
    finest = min(image.GetSpacing())
    return [max(1, int(round(shrink * finest / spacing))) for spacing in image.GetSpacing()]


def _spacing_text(image: sitk.Image, shrink: int) -> str:
    """The finest voxel size of a pyramid level, for progress messages ('2 mm', '0.88 mm')."""
    factors = _shrink_factors(image, shrink)
    return f"{min(s * f for s, f in zip(image.GetSpacing(), factors)):.2g} mm"


def _execute(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image,
             after_iteration: Callable[[], None]) -> sitk.Transform:
    """method.Execute(fixed, moving) calling after_iteration() after every iteration.

    An exception raised by after_iteration (RegistrationCancelled from a
    progress callback) stops the optimisation after that iteration and is
    re-raised here.  SimpleITK cannot carry it through Execute itself (2.2 to
    2.5 turn it into a RuntimeError "error executing the Python Callable" and
    print its traceback), so the command keeps it and asks the optimizer to stop.
    """
    raised = []

    def command():
        if raised:
            return
        try:
            after_iteration()
        except BaseException as error:  # noqa: B902 - KeyboardInterrupt too: re-raised after Execute
            raised.append(error)
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, command)
    try:
        result = method.Execute(fixed, moving)
    except RuntimeError as error:
        if raised:
            raise raised[0] from None
        if _CALLBACK_ERROR in str(error):
            # The command failed before its own handler ran: only an asynchronous exception does
            # that, a Ctrl-C landing on the command's first instruction.
            raise KeyboardInterrupt() from None
        raise
    if raised:
        raise raised[0]
    return result


class _Progress:
    """A stage's progress callback: milestones always, iteration messages at most every REPORT_INTERVAL_S."""

    def __init__(self, progress: ProgressCallback):
        self._progress = progress
        self._last = -math.inf

    def milestone(self, fraction: float, message: str) -> None:
        """Report the start of a step (a few per stage)."""
        self._last = time.monotonic()
        if self._progress is not None:
            self._progress(fraction, message)

    def iteration(self, fraction: float, message: str) -> None:
        """Report an optimizer iteration, unless a message went out less than REPORT_INTERVAL_S ago."""
        if time.monotonic() - self._last >= REPORT_INTERVAL_S:
            self.milestone(fraction, message)


def _kernels():
    """The numba kernel module, imported (compiled or loaded from the cache) on first use only."""
    from . import linear_kernels
    return linear_kernels


def _innermost(transform: sitk.Transform) -> sitk.Transform:
    """The optimised transform that SimpleITK returns wrapped in a composite."""
    if isinstance(transform, sitk.CompositeTransform):
        return transform.GetNthTransform(transform.GetNumberOfTransforms() - 1)
    return transform


def _as_euler(transform: sitk.Transform) -> sitk.Euler3DTransform:
    return sitk.Euler3DTransform(_innermost(transform))


def _as_affine(transform: sitk.Transform, center) -> sitk.AffineTransform:
    """An AffineTransform equal to `transform` (a matrix-offset transform), centred at `center`."""
    transform = _innermost(transform)
    generic = sitk.AffineTransform(3)
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    offset = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    center = np.asarray(center, dtype=float)
    generic.SetMatrix(matrix.ravel().tolist())
    generic.SetCenter(center.tolist())
    generic.SetTranslation((offset + matrix @ center - center).tolist())
    return generic
