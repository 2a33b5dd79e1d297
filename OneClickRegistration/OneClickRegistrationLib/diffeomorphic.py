"""Large-deformation symmetric diffeomorphic registration (SyN-like), in 2D and 3D.

The deformable stage (deformable.py) corrects residual motions of a few
millimetres; this engine recovers deformations of many voxels (a disk warped
into a thick "C", a head warped onto a template) without folding.

Model: a middle space between the two images and two half maps into it,
phi_F (middle -> fixed) and phi_M (middle -> moving), each stored as a
displacement in voxels together with its inverse.  The images are compared
in the middle, F(phi_F(z)) against M(phi_M(z)), so both move halfway and
neither is favoured (Avants et al. 2008, greedy SyN).  The result is
forward = phi_M o phi_F^-1 (fixed -> moving) and inverse = phi_F o phi_M^-1.

Each iteration, for each side (greedy and compositive):

* the metric's gradient with respect to moving that warped image's sampling
  points: LNCC with a box window (ANTs' CC) or SSD for feature stacks;
* plus a log-Jacobian diffusion term, kappa (log J)^2 grad(log J) of the
  half map: it moves each sampling point towards less distorted neighbours,
  so a strong local compression or expansion spreads over its surroundings
  instead of collapsing into a sliver that no grid can invert (a disk pushed
  through the opening of a "C" otherwise squeezes the C's hole into a few
  pixels, and the inverse cannot be represented there);
* smoothed by the "fluid" Gaussian and scaled so that its largest vector is
  step_voxels (a fraction of a voxel, so that id + step is invertible);
* composed after the half map, phi <- phi o (id + step), and the half map's
  displacement smoothed by the "elastic" Gaussian;
* the inverse follows as phi^-1 o (id - step), with a Newton correction
  every few iterations and at the end, which converges whatever the
  amplitude (the plain fixed point does not where a map stretches by more
  than 2).

Small invertible steps composed keep every half map a diffeomorphism however
large the total.  The pyramid runs coarse to fine, its number of levels
chosen from the image size: the coarsest level is about coarsest_size voxels
across, so that an LNCC window there spans a shape's flat interior (a window
that sees only one flat image has no gradient; 32 voxels for a 256 image
leaves the disk-to-C pair stuck with the C's hole unfilled, 16 does not).
Each level has twice the iterations of the next finer one (dipy's
200/100/50/25 for 4 levels) and stops early once its energy stops falling.
The grid is padded by one coarsest voxel on every side so that what the
deformation pushes outwards can leave the field of view instead of piling up
against its edge.  All lengths are in voxels of the current level.

Arrays inside are (channels, z, y, x) float32; a 2D image is one plane
(z = 1) whose z displacement stays zero, so deformable.py's numba kernels
(border-clamped trilinear warping, separable smoothing) serve both.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

import numpy as np
from scipy import ndimage

from . import deformable, smoothing
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

METRICS = ("lncc", "ssd")
# A level stops when its energy fell by less than this fraction over the window (iterations).
# The window is long: filling a large flat region passes through plateaus.
_CONVERGENCE_WINDOW = 20
_CONVERGENCE_TOLERANCE = 1e-3
# LNCC counts a window only where both local variances exceed this (the channels are standardised).
_LNCC_VARIANCE_FLOOR = 1e-4
# Newton corrections of each inverse after moving to a finer level, and at the very end.
_LEVEL_INVERSE_CORRECTIONS = 3
_FINAL_INVERSE_CORRECTIONS = 5
# Within a level, the inverses follow each step to first order and get a Newton correction this often.
_INVERSE_CORRECTION_INTERVAL = 4
# A Newton correction moves an inverse by at most this much (voxels), so a bad start cannot run away.
_MAX_INVERSE_CORRECTION_VOXELS = 0.5
# log J is taken of max(J, this), so that the diffusion term stays finite.
_JACOBIAN_FLOOR = 1e-4
# The coarsest level keeps at least this many voxels along its shortest axis.
_MIN_COARSE_AXIS = 8
# Spatial axes shorter than this cannot be registered.
_MIN_AXIS = 4


@dataclass(frozen=True)
class DiffeomorphicSettings:
    """Knobs of the engine; the defaults suit both binary shapes and head scans.

    metric: 'lncc' (local normalised cross-correlation: intensities of one
        modality, or binary shapes) or 'ssd' (sum of squared differences:
        multi-channel feature stacks such as MIND descriptors).
    coarsest_size: voxels across the largest axis of the coarsest level; the
        number of levels follows from the image size (5 for 256 and 16).
    finest_iterations: most iterations at the finest level; each coarser level
        gets twice as many as the next finer one.
    step_voxels: length of the largest update vector of an iteration.
    fluid_sigma_voxels: Gaussian smoothing of each update (fluid regularisation).
    elastic_sigma_voxels: Gaussian smoothing of each half map's displacement
        after every update (elastic regularisation; 0 turns it off).
    log_jacobian_diffusion: weight of the term that spreads strong compression
        and expansion over their surroundings, relative to the image force
        (0 turns it off; then large deformations may shrink regions to slivers).
    lncc_radius: half width of the LNCC box window (the window is 2 r + 1 voxels).
    """

    metric: str = "lncc"
    coarsest_size: int = 16
    finest_iterations: int = 25
    step_voxels: float = 0.25
    fluid_sigma_voxels: float = 2.0
    elastic_sigma_voxels: float = 0.3
    log_jacobian_diffusion: float = 1.0
    lncc_radius: int = 4

    @classmethod
    def from_dict(cls, values: dict) -> "DiffeomorphicSettings":
        """Validated settings from a dict of some of the fields; errors name the bad key."""
        if not isinstance(values, dict):
            raise InvalidInputError(f"diffeomorphic: expected an object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(
                f"diffeomorphic.{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
        merged = {f.name: values.get(f.name, f.default) for f in fields(cls)}
        if merged["metric"] not in METRICS:
            raise InvalidInputError(
                f"diffeomorphic.metric: expected one of {', '.join(METRICS)}, got {merged['metric']!r}")
        return cls(
            metric=merged["metric"],
            coarsest_size=_whole(merged["coarsest_size"], "coarsest_size", _MIN_AXIS),
            finest_iterations=_whole(merged["finest_iterations"], "finest_iterations", 1),
            step_voxels=_bounded(merged["step_voxels"], "step_voxels", positive=True, below=1.0),
            fluid_sigma_voxels=_bounded(merged["fluid_sigma_voxels"], "fluid_sigma_voxels"),
            elastic_sigma_voxels=_bounded(merged["elastic_sigma_voxels"], "elastic_sigma_voxels"),
            log_jacobian_diffusion=_bounded(merged["log_jacobian_diffusion"], "log_jacobian_diffusion"),
            lncc_radius=_whole(merged["lncc_radius"], "lncc_radius", 1),
        )


@dataclass
class DiffeomorphicOutcome:
    """The registration as two displacement fields on the input grid, in voxels.

    forward: (ndim, *spatial) float32, components in array-axis order; fixed
        point x maps to moving point x + forward[:, x].
    inverse: same shape; moving point y maps back to y + inverse[:, y].
    min_jacobian: smallest Jacobian determinant of x -> x + forward(x) at the
        corners of every grid cell (of the cells touching the mask, if any).
    inverse_consistency_voxels: largest |x + forward(x) + inverse(x + forward(x)) - x|
        over the grid (or the mask).
    iterations_run: iterations done per level, coarse to fine.
    """

    forward: np.ndarray
    inverse: np.ndarray
    min_jacobian: float
    inverse_consistency_voxels: float
    iterations_run: tuple
    seconds: float


@dataclass
class _HalfMap:
    """One side's map middle -> image, and back, as (3, z, y, x) displacements in voxels."""

    forward: np.ndarray
    inverse: np.ndarray


@dataclass(frozen=True)
class _Pyramid:
    """The levels' downsampling factors (coarse to fine), grid shapes and iteration budgets."""

    factors: tuple
    shapes: tuple
    budgets: tuple

    def cost(self, level: int) -> float:
        """Work of a level if it runs its whole budget (iterations x voxels)."""
        return float(self.budgets[level] * math.prod(self.shapes[level]))


def register_diffeomorphic(fixed: np.ndarray, moving: np.ndarray, *, mask: Optional[np.ndarray] = None,
                           settings: Optional[DiffeomorphicSettings] = None,
                           progress: Optional[ProgressCallback] = None) -> DiffeomorphicOutcome:
    """Find the diffeomorphism x -> x + forward(x) with moving(x + forward(x)) ~ fixed(x).

    fixed, moving: arrays shaped (channels, *spatial), 2 or 3 spatial axes, on
    the same isotropic grid.  mask: optional bool array (*spatial), where the
    metric counts (in fixed space).  progress(fraction, message) is called
    every iteration; whatever it raises propagates.  Inputs are not modified.
    """
    start = time.perf_counter()
    settings = settings or DiffeomorphicSettings()
    report = progress or (lambda fraction, message: None)
    fixed_work, moving_work = _checked_images(fixed, moving)
    weight_work = _checked_mask(mask, fixed.shape[1:])
    ndim = fixed.ndim - 1
    if settings.metric == "lncc":
        fixed_work, moving_work = _standardised(fixed_work), _standardised(moving_work)
    report(0.0, "building the pyramid")
    factors = _level_factors(fixed.shape[1:], settings.coarsest_size)
    widths = _margin_widths(fixed_work.shape, factors[0])
    fixed_work = np.pad(fixed_work, widths, mode="edge")
    moving_work = np.pad(moving_work, widths, mode="edge")
    weight_work = None if weight_work is None else np.pad(weight_work, widths)
    pyramid = _pyramid(factors, fixed_work.shape[1:], settings.finest_iterations)
    halves, iterations_run = _run_pyramid(pyramid, fixed_work, moving_work, weight_work, settings, report, ndim)

    report(0.95, "inverting the half maps")
    for half in halves:
        half.inverse = _refined_inverse(half.inverse, half.forward, _FINAL_INVERSE_CORRECTIONS)
    fixed_half, moving_half = halves
    forward = deformable._compose(fixed_half.inverse, moving_half.forward)
    inverse = deformable._compose(moving_half.inverse, fixed_half.forward)
    report(0.98, "checking that the deformation folds nothing")
    inside = (slice(None),) + tuple(slice(before, n - after)
                                    for (before, after), n in zip(widths[1:], fixed_work.shape[1:]))
    region = None if mask is None else np.array(mask, dtype=bool)
    consistency = _inverse_consistency(forward, inverse, inside[1:], region)
    forward_out = _to_output(forward[inside], ndim)
    inverse_out = _to_output(inverse[inside], ndim)
    min_jacobian = _min_jacobian(forward_out, region)
    seconds = time.perf_counter() - start
    logger.info("diffeomorphic registration: min Jacobian %.3f, inverse consistency %.3f voxels, %.1f s",
                min_jacobian, consistency, seconds)
    report(1.0, "done")
    return DiffeomorphicOutcome(forward=forward_out, inverse=inverse_out, min_jacobian=min_jacobian,
                                inverse_consistency_voxels=consistency, iterations_run=tuple(iterations_run),
                                seconds=seconds)


def _run_pyramid(pyramid, fixed, moving, weight, settings, report, ndim):
    """Optimise the half maps level by level, coarse to fine; (half maps, iterations per level)."""
    total = sum(pyramid.cost(level) for level in range(len(pyramid.factors)))
    halves = None
    iterations_run = []
    for level, (factor, shape) in enumerate(zip(pyramid.factors, pyramid.shapes)):
        label = f"level {level + 1}/{len(pyramid.factors)} ({' x '.join(str(n) for n in shape[3 - ndim:])})"
        level_report = _level_progress(report, sum(pyramid.cost(done) for done in range(level)),
                                       pyramid.cost(level), total, label)
        level_report(0, 1, "preparing")
        fixed_level = _downsampled(fixed, factor, shape)
        moving_level = _downsampled(moving, factor, shape)
        weight_level = None if weight is None else _downsampled(weight, factor, shape)
        ratio = pyramid.factors[level - 1] / factor if level else None
        halves = _starting_halves(halves, ratio, shape)
        run, energy = _optimise_level(halves, fixed_level, moving_level, weight_level, pyramid.budgets[level],
                                      settings, level_report)
        iterations_run.append(run)
        logger.info("diffeomorphic %s: %d iterations, energy %.5g", label, run, energy)
    return halves, iterations_run


def _optimise_level(halves, fixed, moving, weight, budget, settings, report):
    """Greedy symmetric iterations on one level until the budget or a stall; (iterations, energy)."""
    spatial_axes = _spatial_axes(fixed)
    energies = []
    for iteration in range(budget):
        report(iteration, budget)
        warped_fixed = deformable._warp(fixed, halves[0].forward)
        warped_moving = deformable._warp(moving, halves[1].forward)
        warped_weight = None if weight is None else deformable._warp(weight, halves[0].forward)[0]
        energy, forces = _forces(warped_fixed, warped_moving, warped_weight, settings, spatial_axes)
        energies.append(energy)
        if _stalled(energies):
            break
        steps = [_step(force, half.forward, settings, spatial_axes) for force, half in zip(forces, halves)]
        if all(step is None for step in steps):
            break
        correct = (iteration + 1) % _INVERSE_CORRECTION_INTERVAL == 0
        for half, step in zip(halves, steps):
            if step is not None:
                _advance(half, step, settings.elastic_sigma_voxels, spatial_axes, correct)
    return len(energies), energies[-1]


def _step(force, displacement, settings, spatial_axes):
    """One side's update: image force (largest vector 1) plus log-Jacobian diffusion, smoothed, scaled.

    Returns None when there is nothing to move (the images agree and the
    half map is undistorted).
    """
    largest = _largest_norm(force)
    if largest > 0.0:
        force *= np.float32(1.0 / largest)
    if settings.log_jacobian_diffusion > 0.0:
        _add_log_jacobian_diffusion(force, displacement, settings.log_jacobian_diffusion, spatial_axes)
    smoothed = _smoothed(force, settings.fluid_sigma_voxels, spatial_axes)
    largest = _largest_norm(smoothed)
    if not largest > 0.0:
        return None
    smoothed *= np.float32(settings.step_voxels / largest)
    return smoothed


def _add_log_jacobian_diffusion(force, displacement, weight, spatial_axes):
    """force += weight (log J)^2 grad(log J), J the Jacobian determinant of the half map.

    Moving a sampling point up the gradient of log J samples from a less
    compressed (or, where J > 1 peaks, a less stretched) neighbour; at an
    extremum the divergence of this field moves log J towards its
    surroundings, i.e. log J diffuses, at a rate growing with (log J)^2 so
    that mild distortions are left to the image force.
    """
    log_jacobian = np.log(np.maximum(_jacobian(displacement, spatial_axes), _JACOBIAN_FLOOR))
    rate = np.float32(weight) * log_jacobian * log_jacobian
    for axis in spatial_axes:
        force[axis - 1] += rate * np.gradient(log_jacobian, axis=axis - 1)


def _jacobian(displacement, spatial_axes) -> np.ndarray:
    """det(I + D u) per voxel (central differences) over the spatial axes, float32."""
    columns = [[np.gradient(displacement[component - 1], axis=axis - 1) for component in spatial_axes]
               for axis in spatial_axes]
    return _determinant(columns).astype(np.float32, copy=False)


def _advance(half: _HalfMap, step: np.ndarray, elastic_sigma: float, spatial_axes: tuple, correct: bool) -> None:
    """phi <- phi o (id + step), its displacement smoothed; the inverse follows.

    The inverse of the composition is (id + step)^-1 o phi^-1, and -step is
    that small step's inverse to first order; when `correct`, one Newton
    correction against the smoothed map removes what this and the previous
    iterations left.
    """
    half.forward = _smoothed(deformable._compose(step, half.forward), elastic_sigma, spatial_axes)
    step *= np.float32(-1.0)
    half.inverse = deformable._compose(half.inverse, step)
    if correct:
        half.inverse = _refined_inverse(half.inverse, half.forward, 1)


def _refined_inverse(inverse: np.ndarray, forward: np.ndarray, corrections: int) -> np.ndarray:
    """Newton corrections of psi = id + inverse towards (id + forward)^-1.

    With r = (id + forward) o psi - id the residual, psi <- psi o (id - r):
    psi(y - r) ~ psi(y) - D psi r and D psi ~ (D phi)^-1, a Newton step,
    which converges however strongly the map compresses or stretches.  Each
    correction is capped at _MAX_INVERSE_CORRECTION_VOXELS.
    """
    for _ in range(corrections):
        residual = deformable._compose(inverse, forward)
        length = np.sqrt((residual * residual).sum(axis=0))
        residual *= -np.minimum(1.0, _MAX_INVERSE_CORRECTION_VOXELS / np.maximum(length, 1e-12)).astype(np.float32)
        inverse = deformable._compose(residual, inverse)
    return inverse


def _forces(warped_fixed, warped_moving, weight, settings, spatial_axes):
    """(energy, (force on the fixed side, force on the moving side)) in the middle space.

    Each force is the direction, per voxel, in which moving that warped
    image's sampling point improves the metric, weighted by the mask.
    """
    if settings.metric == "lncc":
        energy_map, fixed_force, moving_force = _lncc_forces(warped_fixed, warped_moving, settings.lncc_radius,
                                                             spatial_axes)
    else:
        energy_map, fixed_force, moving_force = _ssd_forces(warped_fixed, warped_moving, spatial_axes)
    if weight is None:
        return float(energy_map.mean()), (fixed_force, moving_force)
    fixed_force *= weight
    moving_force *= weight
    energy = float((energy_map * weight).sum() / max(float(weight.sum()), 1e-6))
    return energy, (fixed_force, moving_force)


def _lncc_forces(fixed, moving, radius, spatial_axes):
    """Per-voxel 1 - LNCC (summed over channels) and its ANTs-style gradients.

    With box-window means and centred values I~, J~, sIJ, sII, sJJ, the
    correlation is cc = sIJ^2 / (sII sJJ); its derivative with respect to
    the centre voxel of J is 2 sIJ / (sII sJJ) (I~ - sIJ / sJJ J~), times
    grad J for the moving side, and symmetrically for the fixed side.
    Windows where either image is flat count as uncorrelated and push nothing.
    """
    size = [1, 1, 1]
    for axis in spatial_axes:
        size[axis - 1] = 2 * radius + 1
    energy = np.zeros(fixed.shape[1:], dtype=np.float32)
    fixed_force = np.zeros((3,) + fixed.shape[1:], dtype=np.float32)
    moving_force = np.zeros_like(fixed_force)
    for image_f, image_m in zip(fixed, moving):
        mean_f = ndimage.uniform_filter(image_f, size, mode="nearest")
        mean_m = ndimage.uniform_filter(image_m, size, mode="nearest")
        var_f = ndimage.uniform_filter(image_f * image_f, size, mode="nearest") - mean_f * mean_f
        var_m = ndimage.uniform_filter(image_m * image_m, size, mode="nearest") - mean_m * mean_m
        cross = ndimage.uniform_filter(image_f * image_m, size, mode="nearest") - mean_f * mean_m
        valid = (var_f > _LNCC_VARIANCE_FLOOR) & (var_m > _LNCC_VARIANCE_FLOOR)
        var_f = np.where(valid, var_f, np.float32(1.0))
        var_m = np.where(valid, var_m, np.float32(1.0))
        cross = np.where(valid, cross, np.float32(0.0))
        centred_f = image_f - mean_f
        centred_m = image_m - mean_m
        scale = 2.0 * cross / (var_f * var_m)
        energy += 1.0 - cross * cross / (var_f * var_m)
        _add_gradient_force(fixed_force, scale * (centred_m - cross / var_f * centred_f), image_f, spatial_axes)
        _add_gradient_force(moving_force, scale * (centred_f - cross / var_m * centred_m), image_m, spatial_axes)
    return energy, fixed_force, moving_force


def _ssd_forces(fixed, moving, spatial_axes):
    """Per-voxel sum over channels of squared differences, and its gradients (halved)."""
    energy = np.zeros(fixed.shape[1:], dtype=np.float32)
    fixed_force = np.zeros((3,) + fixed.shape[1:], dtype=np.float32)
    moving_force = np.zeros_like(fixed_force)
    for image_f, image_m in zip(fixed, moving):
        difference = image_f - image_m
        energy += difference * difference
        _add_gradient_force(moving_force, difference, image_m, spatial_axes)
        difference *= np.float32(-1.0)
        _add_gradient_force(fixed_force, difference, image_f, spatial_axes)
    return energy, fixed_force, moving_force


def _add_gradient_force(force, coefficient, image, spatial_axes):
    """force[axis] += coefficient * d image / d axis (central differences) along every spatial axis."""
    for axis in spatial_axes:
        force[axis - 1] += coefficient * np.gradient(image, axis=axis - 1)


def _largest_norm(field: np.ndarray) -> float:
    """Length of the longest vector of a (3, z, y, x) field."""
    return float(np.sqrt((field * field).sum(axis=0)).max())


def _stalled(energies: list) -> bool:
    """True when the energy fell by less than the tolerance over the last window."""
    if len(energies) <= _CONVERGENCE_WINDOW:
        return False
    before = energies[-1 - _CONVERGENCE_WINDOW]
    return before - energies[-1] <= _CONVERGENCE_TOLERANCE * abs(before)


def _level_progress(report, done_cost, level_cost, total_cost, label):
    """report(iteration, budget[, what]) for one level, mapped onto 0..0.95 by each level's share of the work."""
    def level_report(iteration: int, budget: int, what: str = "") -> None:
        fraction = (done_cost + level_cost * iteration / budget) / total_cost
        report(0.95 * fraction, f"{label}, {what or f'iteration {iteration + 1}/{budget}'}")
    return level_report


def _level_factors(spatial_shape: tuple, coarsest_size: int) -> tuple:
    """Downsampling factors of the levels, coarse to fine (powers of 2 ending with 1).

    The coarsest level is about coarsest_size voxels across its largest axis
    and keeps at least _MIN_COARSE_AXIS voxels along its shortest.
    """
    levels = 1 + max(0, round(math.log2(max(spatial_shape) / coarsest_size)))
    while levels > 1 and min(spatial_shape) / 2 ** (levels - 1) < _MIN_COARSE_AXIS:
        levels -= 1
    return tuple(2 ** level for level in range(levels - 1, -1, -1))


def _margin_widths(shape: tuple, margin: int) -> list:
    """np.pad widths adding `margin` voxels on both sides of every spatial axis of a (c, z, y, x) array."""
    return [(0, 0)] + [(margin, margin) if n > 1 else (0, 0) for n in shape[1:]]


def _pyramid(factors: tuple, shape: tuple, finest_iterations: int) -> _Pyramid:
    """The level grids (index i of a level at input index i * factor) and their budgets."""
    shapes = tuple(tuple(1 if n == 1 else int(math.ceil((n - 1) / factor)) + 1 for n in shape)
                   for factor in factors)
    budgets = tuple(finest_iterations * 2 ** (len(factors) - 1 - level) for level in range(len(factors)))
    return _Pyramid(factors, shapes, budgets)


def _downsampled(volume: np.ndarray, factor: int, shape: tuple) -> np.ndarray:
    """Every channel smoothed against aliasing, then sampled at index * factor (edges clamped)."""
    if factor == 1:
        return volume
    smoothed = _smoothed(volume, 0.5 * math.sqrt(factor ** 2 - 1.0), _spatial_axes(volume))
    return _resampled(smoothed, shape, factor, 1.0)


def _starting_halves(previous, ratio, shape):
    """The half maps at the start of a level: identities, or the coarser level's upsampled and re-inverted."""
    if previous is None:
        return [_HalfMap(np.zeros((3,) + tuple(shape), dtype=np.float32),
                         np.zeros((3,) + tuple(shape), dtype=np.float32)) for _ in range(2)]
    halves = []
    for half in previous:
        forward = _resampled(half.forward, shape, 1.0 / ratio, ratio)
        inverse = _resampled(half.inverse, shape, 1.0 / ratio, ratio)
        halves.append(_HalfMap(forward, _refined_inverse(inverse, forward, _LEVEL_INVERSE_CORRECTIONS)))
    return halves


def _resampled(volume: np.ndarray, shape: tuple, ratio: float, value_scale: float) -> np.ndarray:
    """Every channel sampled (linear, edges clamped) at index * ratio on a grid of `shape`, times value_scale."""
    out = np.empty((volume.shape[0],) + tuple(shape), dtype=np.float32)
    matrix = np.diag([ratio if n > 1 else 1.0 for n in volume.shape[1:]])
    for channel in range(volume.shape[0]):
        ndimage.affine_transform(volume[channel], matrix, output_shape=tuple(shape), output=out[channel],
                                 order=1, mode="nearest")
    if value_scale != 1.0:
        out *= np.float32(value_scale)
    return out


def _smoothed(volume: np.ndarray, sigma: float, spatial_axes: tuple) -> np.ndarray:
    """Every channel convolved with a Gaussian (sigma in voxels) along the spatial axes, edges clamped.

    Returns volume itself when sigma is negligible.
    """
    kernel = smoothing.gaussian_kernel(sigma)
    return smoothing.separable(volume, tuple(kernel if axis in spatial_axes else None for axis in (1, 2, 3)))


def _spatial_axes(volume: np.ndarray) -> tuple:
    """The axes of a (channels, z, y, x) array that are spatial: (2, 3) for one plane, (1, 2, 3) otherwise."""
    return (2, 3) if volume.shape[1] == 1 else (1, 2, 3)


def _standardised(volume: np.ndarray) -> np.ndarray:
    """Each channel shifted and scaled to zero mean and unit variance (LNCC ignores both; its floor needs it)."""
    axes = tuple(range(1, volume.ndim))
    out = volume - volume.mean(axis=axes, keepdims=True, dtype=np.float64)
    spread = out.std(axis=axes, keepdims=True, dtype=np.float64)
    out /= np.where(spread > 0, spread, 1.0)
    return out.astype(np.float32)


def _to_output(displacement: np.ndarray, ndim: int) -> np.ndarray:
    """An internal (3, z, y, x) displacement as a contiguous (ndim, *spatial) array."""
    if ndim == 3:
        return np.ascontiguousarray(displacement)
    return np.ascontiguousarray(displacement[1:, 0])


def _min_jacobian(displacement: np.ndarray, region: Optional[np.ndarray]) -> float:
    """Smallest Jacobian determinant of x -> x + u(x) at the corners of every grid cell.

    At a cell's corner, the multilinear interpolant's derivative along each
    axis is the difference along the cell edge leaving that corner.  Taking
    every corner of every cell finds the exact minimum in 2D (where the
    determinant is linear inside a cell) and, in 3D, folds between voxels
    that central differences smooth away.  region: cells with a corner in it.
    """
    ndim = displacement.shape[0]
    cells = tuple(n - 1 for n in displacement.shape[1:])
    edges = [np.diff(displacement, axis=axis + 1) for axis in range(ndim)]
    inside = None if region is None else _cells_touching(region, cells)
    smallest = math.inf
    for corner in itertools.product((0, 1), repeat=ndim):
        columns = []
        for axis in range(ndim):
            index = tuple(slice(None) if other == axis else slice(corner[other], corner[other] + cells[other])
                          for other in range(ndim))
            columns.append(list(edges[axis][(slice(None),) + index]))
        determinant = _determinant(columns)
        values = determinant if inside is None else determinant[inside]
        if values.size:
            smallest = min(smallest, float(values.min()))
    return smallest


def _determinant(columns: list) -> np.ndarray:
    """det(I + D) per voxel, where columns[a][i] holds d(component i) / d(axis a)."""
    if len(columns) == 2:
        (a, c), (b, d) = columns
        return (1 + a) * (1 + d) - b * c
    (a, d, g), (b, e, h), (c, f, i) = columns
    a, e, i = 1 + a, 1 + e, 1 + i
    return a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)


def _cells_touching(region: np.ndarray, cells: tuple) -> np.ndarray:
    """Cells (indexed by their lowest corner) that have at least one corner in the region."""
    inside = np.zeros(cells, dtype=bool)
    for corner in itertools.product((0, 1), repeat=region.ndim):
        inside |= region[tuple(slice(c, c + n) for c, n in zip(corner, cells))]
    return inside


def _inverse_consistency(forward, inverse, inside, region) -> float:
    """Largest |x + forward(x) + inverse(x + forward(x)) - x| over the input grid or the region (voxels).

    Computed on the padded grid, so that points mapped into the margin find
    their inverse there, then restricted to the input grid (`inside`).
    """
    residual = deformable._compose(forward, inverse)
    lengths = np.sqrt((residual * residual).sum(axis=0))[inside]
    if region is not None:
        lengths = lengths.reshape(region.shape)[region]
    return float(lengths.max())


def _checked_images(fixed, moving) -> tuple:
    """fixed and moving as float32 (channels, z, y, x) copies, or a one-line error naming the problem."""
    for name, image in (("fixed", fixed), ("moving", moving)):
        if not isinstance(image, np.ndarray) or image.ndim not in (3, 4):
            raise InvalidInputError(f"{name}: expected a numpy array shaped (channels, *spatial) with 2 or 3 "
                                    f"spatial axes, got {type(image).__name__} of shape "
                                    f"{getattr(image, 'shape', None)}")
        if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
            raise InvalidInputError(f"{name}: expected real numbers, got dtype {image.dtype}; convert to float32")
        if image.shape[0] < 1 or min(image.shape[1:]) < _MIN_AXIS:
            raise InvalidInputError(f"{name}: shape {image.shape} is too small; it needs a channel and at least "
                                    f"{_MIN_AXIS} voxels along each spatial axis")
        if not np.isfinite(image).all():
            raise InvalidInputError(f"{name}: contains NaN or infinite values; replace them before registering")
        if all(float(channel.min()) == float(channel.max()) for channel in image):
            raise InvalidInputError(f"{name}: every channel is constant; there is nothing to register")
    if fixed.shape != moving.shape:
        raise InvalidInputError(f"fixed {fixed.shape} and moving {moving.shape}: need the same channels and grid; "
                                f"resample both onto one isotropic grid first")
    return tuple(np.array(image[:, np.newaxis] if image.ndim == 3 else image, dtype=np.float32)
                 for image in (fixed, moving))


def _checked_mask(mask, spatial_shape: tuple) -> Optional[np.ndarray]:
    """The mask as a (1, z, y, x) float32 weight, or None; a one-line error if it cannot be used."""
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray) or mask.shape != tuple(spatial_shape):
        raise InvalidInputError(f"mask: expected a bool array shaped {tuple(spatial_shape)} like the images' "
                                f"spatial axes, got shape {getattr(mask, 'shape', None)}")
    if mask.dtype != bool:
        raise InvalidInputError(f"mask: expected dtype bool, got {mask.dtype}; pass mask > 0")
    if not mask.any():
        raise InvalidInputError("mask: is empty; pass None to use the whole grid")
    weight = mask.astype(np.float32)
    return weight[np.newaxis, np.newaxis] if mask.ndim == 2 else weight[np.newaxis]


def _whole(value, key: str, smallest: int) -> int:
    """value as an int of at least `smallest`, or an error naming the key."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and float(value).is_integer() and value >= smallest
    if not valid:
        raise InvalidInputError(f"diffeomorphic.{key}: expected a whole number of at least {smallest}, "
                                f"got {value!r}")
    return int(value)


def _bounded(value, key: str, positive: bool = False, below: float = math.inf) -> float:
    """value as a finite float, >= 0 (> 0 if positive) and < below, or an error naming the key."""
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > 0 if positive else value >= 0) and value < below
    if not valid:
        lower = "above 0" if positive else "0 or more"
        upper = f" and below {below:g}" if math.isfinite(below) else ""
        raise InvalidInputError(f"diffeomorphic.{key}: expected a number {lower}{upper}, got {value!r}")
    return float(value)
