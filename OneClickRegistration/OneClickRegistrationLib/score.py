"""The quality score: masked normalised cross-correlation over the overlap.

What is computed, exactly:

1. A scoring grid: the fixed image's grid, coarsened by whole-voxel factors
   to about 1.5 mm (never finer than the fixed image).  Both images are
   Gaussian-smoothed to that scale in their own space, then sampled on it:
   the fixed image directly, the moving image through the transform.
2. The region: grid voxels whose transformed point falls inside the moving
   image's domain (never padded values), inside the union of the two head
   masks (so a head pushed off the other head is penalised, not ignored) and
   inside the user masks when given.  Voxels next to the moving domain's
   edge are left out of the gradient term.
3. Two numbers, accumulated in float64 (no 16-bit overflow, whatever the
   input type):
   - intensity NCC: Pearson correlation of fixed and moving intensities
     over the region, in [-1, 1];
   - structure NCC: the normalised cross-correlation (cosine) of the
     normalised-gradient tensors n n^T of the two images, i.e.
     sum((n_f . n_m)^2) / sqrt(sum(|n_f|^4) * sum(|n_m|^4)), where
     n = grad I / sqrt(|grad I|^2 + eps^2) and eps is the image's mean
     gradient magnitude in the head.  It compares where edges are and how
     they are oriented, not their brightness or polarity, so it is
     meaningful between a T1 and a CT or a T2; in [0, 1].
4. The score is the intensity NCC for same-modality pairs and the structure
   NCC for cross-modality pairs.  A region with no variance scores 0 (not
   NaN); an empty overlap scores -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from . import smoothing
from .imageio import robust_range, shrink_to_spacing

# A later stage counts as "not worse" when it loses less than this.
TOLERANCE = 1e-3
SCORING_SPACING_MM = 1.5
EMPTY_OVERLAP_SCORE = -1.0
# Plain verdicts for people.  Well-aligned head pairs score 0.7-0.95 on either
# measure; a pair 3 mm or 3 degrees off already loses a few hundredths, and
# header-only alignments of unregistered pairs score 0.1-0.3.
GOOD_SCORE = 0.5
CHECK_SCORE = 0.3


# The uncertainty of a score gain (AlignmentScorer.gain): the scoring region is
# resampled in cubes about this wide, far enough apart for their noise to be
# nearly independent, small enough for a head to hold a few hundred of them.
BLOCK_MM = 12.0
BOOTSTRAP_DRAWS = 200
BOOTSTRAP_SEED = 20241206
# How many linear transforms' samplings a scorer keeps (see AlignmentScorer._sampled).
RECENT_SAMPLINGS = 2


@dataclass(frozen=True)
class ScoreGain:
    """A later stage's score minus an earlier one's, and the standard deviation of that difference."""

    gain: float
    noise: float


@dataclass
class _Sampling:
    """The moving image on the scoring grid for one transform, and where it is scored.

    region: where the correlations are taken; gradient_region: the region less
    the voxels next to the moving domain's edge; normalized_gradient: the moving
    image's, filled in when a structure NCC first needs it.
    """

    moving: np.ndarray
    region: np.ndarray
    gradient_region: np.ndarray
    normalized_gradient: Optional[np.ndarray] = None


@dataclass(frozen=True)
class ScoreDetail:
    """Both correlations and the size of the region they were computed on."""

    value: float
    intensity_ncc: float
    structure_ncc: float
    overlap_voxels: int


VERDICTS = ("failed", "check visually", "good")  # worst to best


def verdict(value: float, accepted: bool = True) -> str:
    """'good', 'check visually' or 'failed' for a stage's score."""
    if value >= GOOD_SCORE and accepted:
        return "good"
    if value >= CHECK_SCORE:
        return "check visually"
    return "failed"


def at_most(stage_verdict: str, bound: str) -> str:
    """The worse of two verdicts: a deformable stage's verdict is bounded by its linear alignment's."""
    return min(stage_verdict, bound, key=VERDICTS.index)


def masked_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of a and b over mask, in float64; 0 when either is constant there."""
    if not np.any(mask):
        return EMPTY_OVERLAP_SCORE
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denominator = np.sqrt(np.dot(x, x) * np.dot(y, y))
    if denominator <= np.finfo(np.float64).tiny:
        return 0.0
    return float(np.dot(x, y) / denominator)


def normalized_gradient(volume: np.ndarray, spacing_zyx, eps: float) -> np.ndarray:
    """n = grad I / sqrt(|grad I|^2 + eps^2) as a (3, z, y, x) float64 array."""
    gradient = np.stack(np.gradient(volume.astype(np.float64), *spacing_zyx))
    norm = np.sqrt(np.sum(gradient * gradient, axis=0) + eps * eps)
    return gradient / norm


def structure_ncc(n_fixed: np.ndarray, n_moving: np.ndarray, mask: np.ndarray) -> float:
    """Cosine of the normalised-gradient tensors n n^T over mask (sign- and contrast-invariant)."""
    if not np.any(mask):
        return EMPTY_OVERLAP_SCORE
    f = n_fixed[:, mask]
    m = n_moving[:, mask]
    dot = np.sum(f * m, axis=0)
    f_norm2 = np.sum(f * f, axis=0)
    m_norm2 = np.sum(m * m, axis=0)
    denominator = np.sqrt(np.dot(f_norm2, f_norm2) * np.dot(m_norm2, m_norm2))
    if denominator <= np.finfo(np.float64).tiny:
        return 0.0
    return float(np.dot(dot, dot) / denominator)


def _mean_gradient_magnitude(volume: np.ndarray, spacing_zyx, mask: np.ndarray) -> float:
    gradient = np.stack(np.gradient(volume.astype(np.float64), *spacing_zyx))
    magnitude = np.sqrt(np.sum(gradient * gradient, axis=0))
    values = magnitude[mask] if np.any(mask) else magnitude.ravel()
    return max(float(values.mean()), 1e-12)


class AlignmentScorer:
    """Scores any fixed-to-moving transform of one image pair; see the module docstring."""

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, *, cross_modality: bool,
                 fixed_head: sitk.Image, moving_head: sitk.Image,
                 fixed_mask: Optional[sitk.Image] = None, moving_mask: Optional[sitk.Image] = None,
                 moving_domain: Optional[sitk.Image] = None):
        """moving_domain: the image whose domain `moving` was cropped from (only its geometry is read);
        its points outside the crop count as background (`moving`'s 0.5th percentile)."""
        self.cross_modality = cross_modality
        self._domain = None if moving_domain is None or _same_geometry(moving_domain, moving) else (
            _physical_to_index(moving_domain), np.asarray(moving_domain.GetSize()))
        self._background = robust_range(moving)[0]
        self.grid = shrink_to_spacing(fixed, SCORING_SPACING_MM)
        self._grid_points = None if self._domain is None else _voxel_centres(self.grid)
        sigma = max(self.grid.GetSpacing()) / 2.0
        self._spacing_zyx = tuple(reversed(self.grid.GetSpacing()))
        fixed_smooth = smoothing.gaussian(fixed, sigma)
        self._moving_smooth = smoothing.gaussian(moving, sigma)
        self._fixed = self._on_grid(fixed_smooth, sitk.Transform(3, sitk.sitkIdentity))
        self._fixed_region = self._mask_on_grid(fixed_head, sitk.Transform(3, sitk.sitkIdentity))
        self._fixed_user = (self._mask_on_grid(fixed_mask, sitk.Transform(3, sitk.sitkIdentity))
                            if fixed_mask is not None else None)
        self._moving_head = moving_head
        self._moving_mask = moving_mask
        self._fixed_eps = _mean_gradient_magnitude(self._fixed, self._spacing_zyx, self._fixed_region)
        # The moving image's edge scale, measured like the fixed one's: on its own grid coarsened to the score's.
        moving_coarse = shrink_to_spacing(self._moving_smooth, SCORING_SPACING_MM)
        moving_head_coarse = sitk.GetArrayFromImage(shrink_to_spacing(moving_head, SCORING_SPACING_MM)) > 0
        self._moving_eps = _mean_gradient_magnitude(
            sitk.GetArrayViewFromImage(moving_coarse), tuple(reversed(moving_coarse.GetSpacing())),
            moving_head_coarse)
        self._n_fixed = None  # see _fixed_gradient
        self._cube_index = _cube_index(self._fixed.shape, self.grid.GetSpacing())
        self._recent = {}  # see _sampled
        kind = "structure NCC (normalised-gradient tensors)" if cross_modality else "intensity NCC"
        self.description = (
            f"{kind} over the overlap of the two image domains within the head masks, "
            f"on a {'x'.join(f'{s:.2g}' for s in self.grid.GetSpacing())} mm grid; 1 is perfect"
        )

    def __call__(self, transform: sitk.Transform) -> float:
        """The score of `transform` (only the correlation the pair is scored by is computed)."""
        sampled = self._sampled(transform)
        if sampled is None:
            return EMPTY_OVERLAP_SCORE
        if self.cross_modality:
            return structure_ncc(self._fixed_gradient(), self._moving_gradient(sampled), sampled.gradient_region)
        return masked_ncc(self._fixed, sampled.moving, sampled.region)

    def evaluate(self, transform: sitk.Transform) -> ScoreDetail:
        """Both correlations for `transform` (fixed physical point -> moving physical point)."""
        sampled = self._sampled(transform)
        if sampled is None:
            return ScoreDetail(EMPTY_OVERLAP_SCORE, EMPTY_OVERLAP_SCORE, EMPTY_OVERLAP_SCORE, 0)
        intensity = masked_ncc(self._fixed, sampled.moving, sampled.region)
        structure = structure_ncc(self._fixed_gradient(), self._moving_gradient(sampled), sampled.gradient_region)
        value = structure if self.cross_modality else intensity
        return ScoreDetail(value, intensity, structure, int(np.count_nonzero(sampled.region)))

    def gain(self, before: sitk.Transform, after: sitk.Transform, draws: int = BOOTSTRAP_DRAWS) -> ScoreGain:
        """How much `after` scores above `before`, and how far that gain can be trusted.

        The uncertainty is the spread of the gain when the scoring region is
        resampled cube by cube (a block bootstrap over cubes of BLOCK_MM): a gain
        that comes from a few places, or that the luck of which tissue is
        counted could produce, is not larger than its noise.  Both transforms
        are scored on the same draws, so what they share cancels.
        """
        sums = [self._block_sums(transform) for transform in (before, after)]
        if sums[0] is None or sums[1] is None:
            return ScoreGain(self(after) - self(before), 0.0)
        blocks = sums[0].shape[0]
        weights = np.random.default_rng(BOOTSTRAP_SEED).multinomial(
            blocks, np.full(blocks, 1.0 / blocks), size=draws).astype(np.float64)
        scores = [self._score_from_sums(block_sums.sum(axis=0)) for block_sums in sums]
        drawn = [self._score_from_sums(weights @ block_sums) for block_sums in sums]
        return ScoreGain(float(scores[1] - scores[0]), float(np.std(drawn[1] - drawn[0])))

    def _sampled(self, transform: sitk.Transform):
        """The moving image sampled on the grid and the regions scored (a _Sampling); None if no overlap.

        The last RECENT_SAMPLINGS linear transforms' samplings are kept: a stage's
        result is scored, then its gain over the previous result is weighed, and that
        previous result was scored by the stage before; a transform is recognised by
        its type and parameters (never by identity: transforms are mutable).
        """
        if not _is_matrix_offset(transform):
            return self._sample(transform)
        key = (transform.GetName(), tuple(transform.GetParameters()), tuple(transform.GetFixedParameters()))
        if key not in self._recent:
            while len(self._recent) >= RECENT_SAMPLINGS:
                del self._recent[next(iter(self._recent))]
            self._recent[key] = self._sample(transform)
        return self._recent[key]

    def _sample(self, transform: sitk.Transform):
        """_sampled, computed."""
        moving = self._on_grid(self._moving_smooth, transform)
        inside = np.isfinite(moving) if self._domain is None else self._inside_domain(transform)
        region = inside & (self._fixed_region | self._mask_on_grid(self._moving_head, transform))
        if self._fixed_user is not None:
            region &= self._fixed_user
        if self._moving_mask is not None:
            region &= self._mask_on_grid(self._moving_mask, transform)
        if not np.any(region):
            return None
        moving = np.where(inside, np.nan_to_num(moving, nan=self._background), 0.0)
        return _Sampling(moving, region, region & _interior(inside))

    def _fixed_gradient(self) -> np.ndarray:
        """The fixed image's normalised gradient on the grid (computed once, when first needed)."""
        if self._n_fixed is None:
            self._n_fixed = normalized_gradient(self._fixed, self._spacing_zyx, self._fixed_eps)
        return self._n_fixed

    def _moving_gradient(self, sampled: "_Sampling") -> np.ndarray:
        """The sampled moving image's normalised gradient (computed once per sampling, when first needed)."""
        if sampled.normalized_gradient is None:
            sampled.normalized_gradient = normalized_gradient(sampled.moving, self._spacing_zyx, self._moving_eps)
        return sampled.normalized_gradient

    def _block_sums(self, transform: sitk.Transform) -> Optional[np.ndarray]:
        """Per-cube sums from which the score is computed, shape (cubes, terms); None if no overlap.

        Intensity NCC: count, sum x, sum y, sum x^2, sum y^2, sum xy (x, y centred
        on the fixed region's means for accuracy); structure NCC: the sums of
        (n_f . n_m)^2, |n_f|^4 and |n_m|^4 (see structure_ncc).
        """
        sampled = self._sampled(transform)
        if sampled is None:
            return None
        moving, region = sampled.moving, sampled.region
        cubes = self._cube_index.ravel()
        count = int(cubes.max()) + 1
        if self.cross_modality:
            n_fixed, n_moving = self._fixed_gradient(), self._moving_gradient(sampled)
            dot = np.sum(n_fixed * n_moving, axis=0)
            terms = (dot * dot, np.sum(n_fixed ** 2, axis=0) ** 2, np.sum(n_moving ** 2, axis=0) ** 2)
            keep = sampled.gradient_region.ravel()
        else:
            x = self._fixed - self._fixed[region].mean()
            y = moving - moving[region].mean()
            terms = (np.ones_like(x), x, y, x * x, y * y, x * y)
            keep = region.ravel()
        return np.stack([np.bincount(cubes[keep], weights=np.ravel(term)[keep], minlength=count)
                         for term in terms], axis=1)

    def _score_from_sums(self, sums: np.ndarray) -> np.ndarray:
        """The score from summed block terms (last axis: the terms of _block_sums), vectorised."""
        if self.cross_modality:
            dot2, fixed4, moving4 = np.moveaxis(sums, -1, 0)
            return dot2 / np.sqrt(np.maximum(fixed4 * moving4, np.finfo(np.float64).tiny))
        n, sx, sy, sxx, syy, sxy = np.moveaxis(sums, -1, 0)
        n = np.maximum(n, 1.0)
        covariance = sxy - sx * sy / n
        variances = (sxx - sx * sx / n) * (syy - sy * sy / n)
        return covariance / np.sqrt(np.maximum(variances, np.finfo(np.float64).tiny))

    def _inside_domain(self, transform: sitk.Transform) -> np.ndarray:
        """Scoring grid voxels that `transform` maps inside the original moving image's domain."""
        to_index, size = self._domain
        if _is_matrix_offset(transform):
            return self._inside_domain_linear(transform, to_index, size)
        grid = self.grid
        displacement = sitk.TransformToDisplacementField(
            transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(),
            grid.GetDirection())
        points = self._grid_points + sitk.GetArrayViewFromImage(displacement)
        index = points @ to_index[0].T + to_index[1]
        return np.all((index >= -0.5) & (index <= size - 0.5), axis=-1)

    def _inside_domain_linear(self, transform: sitk.Transform, to_index, size) -> np.ndarray:
        """_inside_domain for a linear transform: the moving index is an affine function of the grid index,
        so each axis's test is a sum of three broadcast lines (no per-voxel point array)."""
        grid = self.grid
        start = np.asarray(transform.TransformPoint(grid.TransformIndexToPhysicalPoint((0, 0, 0))))
        steps = [np.asarray(transform.TransformPoint(grid.TransformIndexToPhysicalPoint(tuple(
            int(axis == column) for axis in range(3))))) - start for column in range(3)]
        origin_index = to_index[0] @ start + to_index[1]
        step_index = np.stack([to_index[0] @ step for step in steps], axis=1)  # moving axis x grid axis
        lines = [np.arange(n, dtype=np.float64) for n in grid.GetSize()]  # x, y, z
        inside = np.ones(tuple(reversed(grid.GetSize())), dtype=bool)
        for axis in range(3):
            value = (origin_index[axis] + (step_index[axis, 2] * lines[2])[:, None, None]
                     + (step_index[axis, 1] * lines[1])[None, :, None]
                     + (step_index[axis, 0] * lines[0])[None, None, :])
            inside &= (value >= -0.5) & (value <= size[axis] - 0.5)
        return inside

    def _on_grid(self, image: sitk.Image, transform: sitk.Transform) -> np.ndarray:
        """Image values at the scoring grid points; NaN where the point is outside the image."""
        resampled = sitk.Resample(image, self.grid, transform, sitk.sitkLinear, float("nan"), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(resampled)

    def _mask_on_grid(self, mask: sitk.Image, transform: sitk.Transform) -> np.ndarray:
        resampled = sitk.Resample(mask, self.grid, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        return sitk.GetArrayViewFromImage(resampled).astype(bool)


def _is_matrix_offset(transform: sitk.Transform) -> bool:
    """Whether `transform` is linear (rigid, affine...): a composite or a deformation is not."""
    return hasattr(transform, "GetMatrix") and not isinstance(transform, sitk.CompositeTransform)


def _cube_index(shape_zyx, spacing_xyz) -> np.ndarray:
    """For every scoring grid voxel, the number of the BLOCK_MM cube it lies in."""
    sides = [max(1, int(round(BLOCK_MM / spacing))) for spacing in reversed(spacing_xyz)]
    coordinates = np.meshgrid(*(np.arange(n) // side for n, side in zip(shape_zyx, sides)), indexing="ij")
    counts = [int(np.ceil(n / side)) for n, side in zip(shape_zyx, sides)]
    return np.ravel_multi_index(coordinates, counts)


def _voxel_centres(image: sitk.Image) -> np.ndarray:
    """Physical coordinates of `image`'s voxel centres, shape (z, y, x, 3) with (x, y, z) last."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in reversed(image.GetSize())), indexing="ij")
    to_physical = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return np.stack([i, j, k], axis=-1) @ to_physical.T + np.asarray(image.GetOrigin())


def _same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin())
            and np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetDirection(), b.GetDirection()))


def _physical_to_index(image: sitk.Image):
    """(matrix, offset) mapping a physical point p to the continuous index matrix @ p + offset, in (x, y, z)."""
    matrix = np.linalg.inv(np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing()))
    return matrix, -matrix @ np.asarray(image.GetOrigin())


def _interior(inside: np.ndarray) -> np.ndarray:
    """Voxels whose six neighbours are also inside (valid central differences)."""
    interior = inside.copy()
    for axis in range(3):
        interior &= np.roll(inside, 1, axis) & np.roll(inside, -1, axis)
        edge = [slice(None)] * 3
        edge[axis] = 0
        interior[tuple(edge)] = False
        edge[axis] = -1
        interior[tuple(edge)] = False
    return interior
