"""The stages and the score of a 2D registration (planar.py runs them and decides what to keep).

Everything here works in the physical space of the images (spacing, origin,
direction), with its scales tied to the pixels of the fixed image rather than
to millimetres: a photograph's "spacing" may be 1 per pixel or 0.08 mm from its
dpi, and a slice of a scan is in millimetres.

- Working copies: float32, block-averaged by whole factors so that no side
  exceeds WORKING_MAX_PIXELS (a photograph of 4000 pixels costs what one of
  1000 does); the foreground is found on a copy of about FOREGROUND_PIXELS.
- Rigid: from the centres of mass of the foregrounds, every rotation of the
  full circle in steps of LINEAR.rotation_step_deg scored by Mattes mutual
  information at the search level of the pyramid, the REFINED_ROTATIONS best
  refined there, the best of those fitted coarse to fine (Mattes MI, cubic
  B-spline interpolation at the finest level).
- Affine: the same fit with sitk.AffineTransform(2), from the rigid result.
- Deformable: diffeomorphic.register_diffeomorphic on an isotropic grid
  covering the fixed image, its displacement fields made physical and
  composed after the linear transform.
- Score (PlanarScorer): the structure NCC of score.py over the overlap, without
  its chance level (see PlanarScorer).

Transforms follow the ITK convention: fixed physical point -> moving point.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import imageio, score
from .errors import InvalidInputError
from .linear import LinearSettings, _Progress, best_visited_fit, fit_image, initial_rigid, like_regions

logger = logging.getLogger(__name__)

ProgressCallback = Optional[Callable[[float, str], None]]

# Working copies are block-averaged so that no side exceeds this many pixels.
WORKING_MAX_PIXELS = 1024
# The foreground is found on a copy with at most this many pixels along a side.
FOREGROUND_PIXELS = 256
# The linear fits.  shrink_factors and smoothing_sigmas_mm are in pixels of the working
# copy here (a level's sigma is that many of its pixels times the fixed image's spacing).
LINEAR = LinearSettings(
    metric="mattes_mi", histogram_bins=32, sampling_fraction=1.0,
    shrink_factors=(8, 4, 2, 1), smoothing_sigmas_mm=(4.0, 2.0, 1.0, 0.0),
    rigid_iterations=(150, 120, 100, 80), affine_iterations=(150, 120, 100, 80),
    rotation_search_deg=180.0, rotation_step_deg=10.0,
)
# A pyramid level keeps at least this many pixels along the short side of the image.
MIN_LEVEL_PIXELS = 24
# The rotation search runs on the level whose short side is nearest this many pixels.
SEARCH_LEVEL_PIXELS = 48
REFINED_ROTATIONS = 4
COARSE_REFINE_ITERATIONS = 60
# The finest level samples at most this many pixels (regularly), with cubic B-spline interpolation.
MAX_METRIC_SAMPLES = 250_000
SAMPLING_SEED = 20240607
# The deformable grid: isotropic, at most this many pixels along a side, with this margin (pixels).
DEFORMABLE_MAX_PIXELS = 512
DEFORMABLE_MARGIN_PIXELS = 8
# The deformation is driven inside the two foregrounds widened by this many grid pixels.
DEFORMABLE_MASK_MARGIN_PIXELS = 4
# The score: the fixed working grid coarsened to at most this many pixels along a side, both
# images smoothed by this many of its pixels, and the bootstrap of its gain drawn over blocks,
# about this many along the long side.  On an axial slice of the bundled T1 (1 mm pixels): the T2
# and FLAIR of that slice score 0.60 and 0.62 aligned, the T2 shifted by 1, 2, 3 and 5 pixels 0.49,
# 0.32, 0.20 and 0.12, the T1 rotated by 3 and 10 degrees 0.47 and 0.13, other slices and noise 0.02-0.03.
SCORE_MAX_PIXELS = 512
SCORE_SIGMA_PIXELS = 1.0
SCORE_BLOCKS_PER_SIDE = 16


@dataclass
class PlanarImage:
    """One 2D image as the stages see it: float32 working copy, its foreground, the user's mask."""

    image: sitk.Image  # float32
    foreground: sitk.Image  # uint8, on image's grid
    mask: Optional[sitk.Image] = None  # uint8, on image's grid

    @classmethod
    def of(cls, image: sitk.Image, user_mask: Optional[sitk.Image] = None) -> "PlanarImage":
        """The working copy of a validated 2D scalar image; user_mask: binary uint8 on its grid, or None."""
        factor = max(1, math.ceil(max(image.GetSize()) / WORKING_MAX_PIXELS))
        reduced = sitk.BinShrink(image, [factor, factor]) if factor > 1 else image
        reduced = sitk.Cast(reduced, sitk.sitkFloat32)
        mask = None if user_mask is None else mask_on_grid(user_mask, reduced)
        return cls(reduced, foreground(reduced), mask)

    def region_mask(self) -> sitk.Image:
        """Where the fits look: the foreground, narrowed by the user's mask when there is one."""
        return self.foreground if self.mask is None else sitk.And(self.foreground, self.mask)

    def whole_region(self) -> sitk.Image:
        """The foreground, whatever the user's mask says (see linear.like_regions)."""
        return self.foreground

    @property
    def pixel(self) -> float:
        """The working copy's largest pixel side (physical units): the unit of the stages' scales."""
        return max(self.image.GetSpacing())


def foreground(image: sitk.Image) -> sitk.Image:
    """Binary mask of the object of a 2D image, on its grid.

    Otsu's two classes of the robustly clamped, lightly smoothed image; the
    object is the class that touches the image's border less (the head in a
    slice, the tissue on a white slide), opened, its largest component,
    closed and hole-filled, all on a copy of at most FOREGROUND_PIXELS along a side.
    """
    factor = max(1, math.ceil(max(image.GetSize()) / FOREGROUND_PIXELS))
    coarse = sitk.BinShrink(image, [factor, factor]) if factor > 1 else image
    low, high = imageio.robust_range(coarse)
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Clamp(coarse, sitk.sitkFloat32, low, high),
                                             max(coarse.GetSpacing()))
    bright = sitk.GetArrayFromImage(sitk.OtsuThreshold(smooth, 0, 1, 128)).astype(bool)
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    objects = bright if border.mean() <= 0.5 else ~bright
    mask = sitk.GetImageFromArray(objects.astype(np.uint8))
    mask.CopyInformation(coarse)
    mask = sitk.BinaryMorphologicalOpening(mask, [1, 1])
    components = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    if not np.any(sitk.GetArrayViewFromImage(largest)):
        largest = sitk.Cast(smooth > low, sitk.sitkUInt8)
    filled = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(largest, [2, 2]))
    return mask_on_grid(filled, image)


def mask_on_grid(mask: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """A binary mask of the same physical space resampled onto `grid` (nearest neighbour), as uint8."""
    return sitk.Resample(mask, grid, sitk.Transform(2, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


# --------------------------------------------------------------------------- linear stages


class PlanarLinear:
    """The rigid and affine stages of one 2D pair, sharing their pyramid levels."""

    def __init__(self, fixed: PlanarImage, moving: PlanarImage):
        self.fixed = fixed
        self.moving = moving
        self.factors = [factor for factor in LINEAR.shrink_factors
                        if min(fixed.image.GetSize()) / factor >= MIN_LEVEL_PIXELS] or [1]
        self._fit_images = (fit_image(fixed.image), fit_image(moving.image))
        self._levels = {}

    def rigid(self, progress: ProgressCallback = None) -> sitk.Euler2DTransform:
        """Rigid fixed->moving transform from scratch: centres, full-circle rotation search, coarse-to-fine fit."""
        report = _Progress(progress)
        report.milestone(0.0, "searching rotations over the full circle")
        start = initial_rigid(*like_regions(self.fixed, self.moving))
        best = self._search_rotations(start, report)
        fitted = self._fit(best, LINEAR.rigid_iterations, report, 0.4, 0.6)
        return sitk.Euler2DTransform(fitted)

    def affine(self, initial: sitk.Transform, progress: ProgressCallback = None) -> sitk.AffineTransform:
        """Affine fixed->moving transform starting from `initial` (the rigid result)."""
        report = _Progress(progress)
        report.milestone(0.0, "preparing the images")
        center = imageio.mask_center(self.fixed.region_mask())
        affine = _as_affine(self._fit(_as_affine(initial, center), LINEAR.affine_iterations, report, 0.0, 1.0),
                            center)
        if np.linalg.det(np.asarray(affine.GetMatrix()).reshape(2, 2)) <= 0:
            raise InvalidInputError("the affine fit collapsed or mirrored the image; keep the rigid result "
                                    "(stages rigid)")
        return affine

    def _search_rotations(self, start: sitk.Euler2DTransform, report: _Progress) -> sitk.Euler2DTransform:
        """The best start over the full circle: every rotation scored, the best few refined at the search level.

        Rotations turn about the fixed foreground's centre of mass, which stays
        on the moving one's, so every candidate keeps the two objects overlapping.
        """
        factor = min(self.factors, key=lambda f: abs(min(self.fixed.image.GetSize()) / f - SEARCH_LEVEL_PIXELS))
        level = self._level(factor)
        angles = np.deg2rad(np.arange(0.0, 360.0, LINEAR.rotation_step_deg))
        values = []
        for number, angle in enumerate(angles):
            report.iteration(0.1 * number / len(angles), f"searching rotations, {math.degrees(angle):.0f} degrees")
            values.append(level.value(_rotated(start, angle)))
        order = np.argsort(values, kind="stable")[:REFINED_ROTATIONS]
        refined = []
        for rank, index in enumerate(order):
            offset = 0.1 + 0.3 * rank / len(order)
            task = f"searching rotations, candidate {rank + 1} of {len(order)}"
            refined.append(level.fit(_rotated(start, angles[index]), COARSE_REFINE_ITERATIONS,
                                     lambda i: report.iteration(
                                         offset + 0.3 * i / (len(order) * COARSE_REFINE_ITERATIONS),
                                         f"{task}, iteration {i}")))
        value, best = min(refined, key=lambda item: item[0])
        logger.info("2D rotation search: %d rotations, best %.0f degrees, metric %.4f", len(angles),
                    math.degrees(best.GetAngle()) % 360, value)
        return best

    def _fit(self, initial, iterations, report: _Progress, offset: float, width: float):
        """Coarse-to-fine fit over the pyramid levels, from `initial`; [offset, offset + width] of the stage."""
        transform = initial
        counts = dict(zip(LINEAR.shrink_factors, iterations))
        levels = [factor for factor in self.factors if counts[factor]]
        for index, factor in enumerate(levels):
            start = offset + width * index / len(levels)
            task = f"refining at 1/{factor} resolution" if factor > 1 else "refining at full resolution"
            _, transform = self._level(factor).fit(transform, counts[factor], lambda i: report.iteration(
                start + width * i / (counts[factor] * len(levels)), f"{task}, iteration {i}"))
        return transform

    def _level(self, factor: int) -> "_PlanarLevel":
        """The pyramid level `factor` times coarser than the working copy (built once)."""
        if factor not in self._levels:
            sigma = dict(zip(LINEAR.shrink_factors, LINEAR.smoothing_sigmas_mm))[factor] * self.fixed.pixel
            size = factor * self.fixed.pixel
            fixed, moving = (_smoothed_to(image, size, sigma) for image in self._fit_images)
            # The region grown by two of this level's pixels, so the metric sees the object's outline:
            # inside a silhouette (a binary shape) the intensities are constant and tell nothing.
            region = sitk.BinaryDilate(self.fixed.region_mask(), [2 * factor] * 2)
            self._levels[factor] = _PlanarLevel(fixed, moving, mask_on_grid(region, fixed), precise=factor == 1)
        return self._levels[factor]


class _PlanarLevel:
    """One pyramid level: both images smoothed and subsampled, the fixed region mask on its grid."""

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, mask: sitk.Image, precise: bool):
        self.fixed = fixed
        self.moving = moving
        self.mask = mask
        self.pixel = max(fixed.GetSpacing())
        self.interpolator = sitk.sitkBSpline if precise else sitk.sitkLinear
        self.samples = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))

    def value(self, transform: sitk.Transform) -> float:
        """The metric at `transform` (lower is better); +inf when it leaves too few samples in the moving image."""
        method = self._method(0)
        method.SetInitialTransform(transform, inPlace=False)
        try:
            return float(method.MetricEvaluate(self.fixed, self.moving))
        except RuntimeError:
            return math.inf

    def fit(self, initial: sitk.Transform, iterations: int, on_iteration: Callable[[int], None]):
        """(metric value, transform) of the best pose the optimizer visited from `initial` (as linear.py's fits)."""
        return best_visited_fit(self._method(iterations), self.fixed, self.moving, initial, on_iteration)

    def _method(self, iterations: int) -> sitk.ImageRegistrationMethod:
        """Mattes MI in the fixed region, regular sampling, step gradient descent scaled to this level's pixel."""
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=LINEAR.histogram_bins)
        method.SetMetricSamplingStrategy(method.REGULAR)
        method.SetMetricSamplingPercentage(min(LINEAR.sampling_fraction, MAX_METRIC_SAMPLES / max(self.samples, 1)),
                                           SAMPLING_SEED)
        method.SetMetricFixedMask(self.mask)
        method.SetInterpolator(self.interpolator)
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=self.pixel, minStep=1e-3 * self.pixel, numberOfIterations=max(1, iterations),
            relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        return method


def _smoothed_to(image: sitk.Image, pixel: float, sigma: float) -> sitk.Image:
    """`image` block-averaged to pixels of about `pixel` (whole factors per axis), then smoothed by `sigma`."""
    factors = [max(1, int(round(pixel / spacing))) for spacing in image.GetSpacing()]
    shrunk = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    box_variance = max((f * f - 1) * s * s / 12.0 for f, s in zip(factors, image.GetSpacing()))
    rest = math.sqrt(max(0.0, sigma ** 2 - box_variance))
    return sitk.SmoothingRecursiveGaussian(shrunk, rest) if rest > 0 else shrunk


def _rotated(start: sitk.Euler2DTransform, angle: float) -> sitk.Euler2DTransform:
    candidate = sitk.Euler2DTransform(start)
    candidate.SetAngle(float(angle))
    return candidate


def _as_affine(transform: sitk.Transform, center) -> sitk.AffineTransform:
    """An AffineTransform(2) equal to `transform` (a 2D matrix-offset transform), centred at `center`."""
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(transform.GetNumberOfTransforms() - 1)
    matrix = np.asarray(transform.GetMatrix()).reshape(2, 2)
    offset = np.asarray(transform.TransformPoint((0.0, 0.0)))
    center = np.asarray(center, dtype=float)
    affine = sitk.AffineTransform(2)
    affine.SetMatrix(matrix.ravel().tolist())
    affine.SetCenter(center.tolist())
    affine.SetTranslation((offset + matrix @ center - center).tolist())
    return affine


# --------------------------------------------------------------------------- deformable stage


@dataclass
class PlanarDeformation:
    """The deformable stage's result: whole transforms (linear included) and what the engine measured."""

    forward: sitk.Transform  # fixed -> moving: x -> L(x + u(x))
    inverse: sitk.Transform
    min_jacobian: float
    inverse_consistency: float  # largest |inverse(forward(x)) - x| in the engine's mask, physical units


def deformable(fixed: PlanarImage, moving: PlanarImage, linear: sitk.Transform,
               progress: ProgressCallback = None) -> PlanarDeformation:
    """The diffeomorphic correction u after the linear transform L, with moving(L(x + u(x))) ~ fixed(x).

    Both images are put on an isotropic grid covering the fixed image (the
    moving one through L), intensities clamped and scaled to 0..1; the engine
    is driven inside the two foregrounds (the moving one through L), widened.
    """
    from .diffeomorphic import register_diffeomorphic  # the engine is imported when the stage runs

    report = progress or (lambda fraction, message: None)
    report(0.0, "resampling the images onto the deformation grid")
    grid = _deformable_grid(fixed.image)
    identity = sitk.Transform(2, sitk.sitkIdentity)
    fixed_values = _unit_range(fixed.image, grid, identity)
    moving_values = _unit_range(moving.image, grid, linear)
    region = (_nearest(fixed.region_mask(), grid, identity) | _nearest(moving.region_mask(), grid, linear))
    region = sitk.GetArrayFromImage(sitk.BinaryDilate(_like(region.astype(np.uint8), grid),
                                                      [DEFORMABLE_MASK_MARGIN_PIXELS] * 2)).astype(bool)
    outcome = register_diffeomorphic(fixed_values[np.newaxis], moving_values[np.newaxis], mask=region,
                                     settings=None, progress=progress)
    report(1.0, "building the transforms")
    forward = displacement_transform(outcome.forward, grid)
    inverse = displacement_transform(outcome.inverse, grid)
    return PlanarDeformation(
        forward=sitk.CompositeTransform([linear, forward]),
        inverse=sitk.CompositeTransform([inverse, linear.GetInverse()]),
        min_jacobian=float(outcome.min_jacobian),
        inverse_consistency=float(outcome.inverse_consistency_voxels) * grid.GetSpacing()[0],
    )


def _deformable_grid(image: sitk.Image) -> sitk.Image:
    """An empty isotropic grid with `image`'s direction covering it plus DEFORMABLE_MARGIN_PIXELS on every side.

    Its pixel is the image's smallest spacing, or coarser so that no side exceeds DEFORMABLE_MAX_PIXELS.
    """
    extent = np.asarray([(n - 1) * s for n, s in zip(image.GetSize(), image.GetSpacing())])
    spacing = max(min(image.GetSpacing()), float(extent.max()) / (DEFORMABLE_MAX_PIXELS - 2 * DEFORMABLE_MARGIN_PIXELS))
    margin = DEFORMABLE_MARGIN_PIXELS * spacing
    size = [int(math.ceil((e + 2 * margin) / spacing)) + 1 for e in extent]
    direction = np.asarray(image.GetDirection()).reshape(2, 2)
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([spacing, spacing])
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin((np.asarray(image.GetOrigin()) - direction @ np.full(2, margin)).tolist())
    return grid


def _unit_range(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    """`image` through `transform` on `grid`, clamped to its robust range and scaled to 0..1 (float32, (y, x))."""
    low, high = imageio.robust_range(image)
    sampled = sitk.Resample(sitk.Clamp(image, sitk.sitkFloat32, low, high), grid, transform, sitk.sitkLinear, low,
                            sitk.sitkFloat32)
    return ((sitk.GetArrayFromImage(sampled) - low) / max(high - low, 1e-12)).astype(np.float32)


def _nearest(mask: sitk.Image, grid: sitk.Image, transform: sitk.Transform) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(mask, grid, transform, sitk.sitkNearestNeighbor, 0,
                                                sitk.sitkUInt8)).astype(bool)


def _like(values: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(grid)
    return image


def displacement_transform(displacement: np.ndarray, grid: sitk.Image) -> sitk.DisplacementFieldTransform:
    """A (2, y, x) field in pixels of `grid`, components in array order (row, column), as a physical 2D transform.

    The engine's fixed point x maps to x + displacement[:, x] in pixels; ITK
    wants the physical vector in (x, y) order: columns first, times the
    spacing, turned by the grid's direction.
    """
    direction = np.asarray(grid.GetDirection()).reshape(2, 2)
    index_vectors = np.stack([displacement[1], displacement[0]], axis=-1).astype(np.float64)
    physical = (index_vectors * np.asarray(grid.GetSpacing())) @ direction.T
    field = sitk.GetImageFromArray(physical, isVector=True)
    field.CopyInformation(grid)
    return sitk.DisplacementFieldTransform(field)


# --------------------------------------------------------------------------- score


class PlanarScorer:
    """The 2D score: structure NCC over the overlap, within the foregrounds, with its chance level taken out.

    What is computed: a scoring grid, the fixed working grid coarsened by whole
    factors to at most SCORE_MAX_PIXELS along a side; both images smoothed by
    SCORE_SIGMA_PIXELS of it in their own space, the fixed one sampled on it,
    the moving one through the transform; the region is the grid pixels the
    transform maps inside the moving image (never its padding), inside the
    union of the two foregrounds and inside the user masks; normalised
    gradients n (score.normalized_gradient, edge scale the mean gradient
    magnitude in each foreground), in float64.

    Modalities are not recognised in 2D, so any pair may differ in contrast:
    it is scored on where its edges are and how they are oriented, as 3D pairs
    with an unknown modality are.  But score.structure_ncc, the cosine of the
    tensors n n^T, has a floor in 2D: two unrelated edge directions give
    (n_f . n_m)^2 = |n_f|^2 |n_m|^2 / 2 on average (a third in 3D), so unrelated
    or misaligned 2D images score 0.30-0.40 and could never be called
    "failed".  The 2D score is the cosine of the traceless tensors
    n n^T - |n|^2 I / 2 instead: 2 s - c, with s the structure NCC and c the
    same cosine of |n|^2 (where edges coincide, whatever their direction).  It
    is 1 for a perfect match, about 0 for unrelated images, in [-1, 1].
    """

    def __init__(self, fixed: PlanarImage, moving: PlanarImage):
        factor = max(1, math.ceil(max(fixed.image.GetSize()) / SCORE_MAX_PIXELS))
        self.grid = sitk.BinShrink(fixed.image, [factor, factor]) if factor > 1 else fixed.image
        sigma = SCORE_SIGMA_PIXELS * max(self.grid.GetSpacing())
        identity = sitk.Transform(2, sitk.sitkIdentity)
        self._spacing_yx = tuple(reversed(self.grid.GetSpacing()))
        self._fixed = self._on_grid(sitk.SmoothingRecursiveGaussian(fixed.image, sigma), identity)
        self._moving_smooth = sitk.SmoothingRecursiveGaussian(moving.image, sigma)
        self._background = imageio.robust_range(moving.image)[0]
        self._fixed_region = self._mask_on_grid(fixed.foreground, identity)
        self._fixed_user = None if fixed.mask is None else self._mask_on_grid(fixed.mask, identity)
        self._moving = moving
        self._n_fixed = score.normalized_gradient(
            self._fixed, self._spacing_yx, _mean_gradient(self._fixed, self._spacing_yx, self._fixed_region))
        moving_coarse = sitk.BinShrink(self._moving_smooth, [factor, factor]) if factor > 1 else self._moving_smooth
        moving_head = sitk.GetArrayViewFromImage(mask_on_grid(moving.foreground, moving_coarse)) > 0
        self._moving_eps = _mean_gradient(sitk.GetArrayFromImage(moving_coarse),
                                          tuple(reversed(moving_coarse.GetSpacing())), moving_head)
        self._blocks = _block_index(self._fixed.shape)
        self.description = (
            "2D preset: structure NCC of the traceless normalised-gradient tensors (chance level 0) over the "
            "overlap of the two image domains within the foregrounds, on a grid of "
            f"{'x'.join(f'{s:.3g}' for s in self.grid.GetSpacing())} pixels; 1 is perfect. Modalities are not "
            "recognised in 2D, so every 2D pair is scored on where its edges are, whatever its contrasts")

    def __call__(self, transform: sitk.Transform) -> float:
        return self.evaluate(transform).value

    def evaluate(self, transform: sitk.Transform) -> score.ScoreDetail:
        """The score of `transform`, the intensity NCC and the structure NCC (score.py's, with its floor)."""
        sampled = self._sampled(transform)
        if sampled is None:
            return score.ScoreDetail(score.EMPTY_OVERLAP_SCORE, score.EMPTY_OVERLAP_SCORE,
                                     score.EMPTY_OVERLAP_SCORE, 0)
        moving, region, gradient_region, n_moving = sampled
        sums = np.asarray([term[gradient_region].sum() for term in self._terms(n_moving)])
        return score.ScoreDetail(float(_score_from_sums(sums)), score.masked_ncc(self._fixed, moving, region),
                                 score.structure_ncc(self._n_fixed, n_moving, gradient_region),
                                 int(np.count_nonzero(region)))

    def gain(self, before: sitk.Transform, after: sitk.Transform,
             draws: int = score.BOOTSTRAP_DRAWS) -> score.ScoreGain:
        """`after`'s score minus `before`'s and its noise: a block bootstrap over the scoring region, as score.py's."""
        sums = [self._block_sums(transform) for transform in (before, after)]
        if sums[0] is None or sums[1] is None:
            return score.ScoreGain(self(after) - self(before), 0.0)
        blocks = sums[0].shape[0]
        weights = np.random.default_rng(score.BOOTSTRAP_SEED).multinomial(
            blocks, np.full(blocks, 1.0 / blocks), size=draws).astype(np.float64)
        scores = [_score_from_sums(block_sums.sum(axis=0)) for block_sums in sums]
        drawn = [_score_from_sums(weights @ block_sums) for block_sums in sums]
        return score.ScoreGain(float(scores[1] - scores[0]), float(np.std(drawn[1] - drawn[0])))

    def _sampled(self, transform: sitk.Transform):
        """(moving values, region, gradient region, moving normalised gradient) on the grid; None if no overlap."""
        moving = self._on_grid(self._moving_smooth, transform)
        inside = np.isfinite(moving)
        region = inside & (self._fixed_region | self._mask_on_grid(self._moving.foreground, transform))
        if self._fixed_user is not None:
            region &= self._fixed_user
        if self._moving.mask is not None:
            region &= self._mask_on_grid(self._moving.mask, transform)
        if not np.any(region):
            return None
        moving = np.where(inside, moving, self._background)
        n_moving = score.normalized_gradient(moving, self._spacing_yx, self._moving_eps)
        return moving, region, region & _interior(inside), n_moving

    def _terms(self, n_moving: np.ndarray) -> tuple:
        """Per pixel: (n_f . n_m)^2, |n_f|^2 |n_m|^2, |n_f|^4, |n_m|^4, whose sums give the score."""
        dot = np.sum(self._n_fixed * n_moving, axis=0)
        fixed2 = np.sum(self._n_fixed ** 2, axis=0)
        moving2 = np.sum(n_moving ** 2, axis=0)
        return dot * dot, fixed2 * moving2, fixed2 * fixed2, moving2 * moving2

    def _block_sums(self, transform: sitk.Transform) -> Optional[np.ndarray]:
        """Per-block sums of the score's terms (see _terms) over the gradient region, shape (blocks, 4)."""
        sampled = self._sampled(transform)
        if sampled is None:
            return None
        _, _, gradient_region, n_moving = sampled
        keep = gradient_region.ravel()
        blocks = self._blocks.ravel()
        count = int(blocks.max()) + 1
        return np.stack([np.bincount(blocks[keep], weights=np.ravel(term)[keep], minlength=count)
                         for term in self._terms(n_moving)], axis=1)

    def _on_grid(self, image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
        """Image values at the scoring grid points (float64); NaN where the point is outside the image."""
        resampled = sitk.Resample(image, self.grid, transform, sitk.sitkLinear, math.nan, sitk.sitkFloat64)
        return sitk.GetArrayFromImage(resampled)

    def _mask_on_grid(self, mask: sitk.Image, transform: sitk.Transform) -> np.ndarray:
        resampled = sitk.Resample(mask, self.grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayViewFromImage(resampled).astype(bool)


def _score_from_sums(sums: np.ndarray) -> np.ndarray:
    """The score from summed terms (last axis: those of PlanarScorer._terms), vectorised: 2 s - c (see PlanarScorer)."""
    dot2, both2, fixed4, moving4 = np.moveaxis(sums, -1, 0)
    return (2.0 * dot2 - both2) / np.sqrt(np.maximum(fixed4 * moving4, np.finfo(np.float64).tiny))


def _mean_gradient(values: np.ndarray, spacing_yx, region: np.ndarray) -> float:
    """Mean gradient magnitude in `region` (everywhere when it is empty): the edge scale of the normalised gradient."""
    gradient = np.stack(np.gradient(values.astype(np.float64), *spacing_yx))
    magnitude = np.sqrt(np.sum(gradient * gradient, axis=0))
    return max(float((magnitude[region] if np.any(region) else magnitude).mean()), 1e-12)


def _interior(inside: np.ndarray) -> np.ndarray:
    """Pixels whose four neighbours are inside too (valid central differences), edges of the grid excluded."""
    interior = inside.copy()
    interior[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    interior[[0, -1], :] = False
    interior[:, [0, -1]] = False
    return interior


def _block_index(shape_yx) -> np.ndarray:
    """For every scoring grid pixel, the number of the bootstrap block it lies in (square blocks)."""
    side = max(1, int(round(max(shape_yx) / SCORE_BLOCKS_PER_SIDE)))
    rows, columns = np.meshgrid(np.arange(shape_yx[0]) // side, np.arange(shape_yx[1]) // side, indexing="ij")
    return rows * int(math.ceil(shape_yx[1] / side)) + columns
