"""The deformable stage: a diffeomorphic correction of what rigid and affine leave.

Model: a stationary velocity field v on a working grid in the fixed image's
physical space.  The displacement is u = exp(v) - id, computed by scaling and
squaring, so the mapping x -> x + u(x) is a diffeomorphism and its inverse is
exp(-v) (refined by a few fixed-point steps so that inverse o forward is the
identity to a few hundredths of a millimetre).

Optimisation: log-domain diffeomorphic demons (Vercauteren et al. 2008), run
coarse to fine.  Each iteration warps the moving features and forms, per
voxel, the normal equations of a symmetric (ESM) demons step; numerator and
denominator are smoothed separately ("fluid") before dividing, so the step
is a locally averaged Gauss-Newton step whose fixed point is a minimum of the
smoothed feature difference rather than a balance of per-voxel normalised
forces (which follows noise and contrast differences).  The step is added to
v and v is smoothed ("diffusion"), the Gaussian regulariser.  A level stops
early when its energy stops falling.  The features make the metric:

* 'lncc': intensities standardised by their local mean and standard deviation
  (SSD of these is a local normalised cross-correlation), for same-modality pairs;
* 'mind': MIND descriptors (Heinrich et al. 2012), a modality-independent
  description of local self-similarity, for cross-modality pairs;
* 'ngf': normalised gradient fields as orientation tensors n n^T (where edges
  are and how they are oriented, not their contrast or polarity), for pairs
  whose one image has far less interior detail than the other (CT versus MR).

The moving image is resampled once through the affine result onto the working
grid, so the full mapping is A(x + u(x)) and the result is returned as a
displacement field to compose after the affine.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, fields
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import InvalidInputError
from .parallel import run_slabs as _run_slabs
from .smoothing import gaussian as _gaussian
from .smoothing import gaussian_kernel as _gaussian_kernel
from .smoothing import separable as _separable

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

METRICS = ("lncc", "mind", "ngf")
# Scaling and squaring starts from v / 2^N with |v| / 2^N below this (voxels).
_SQUARING_START_VOXELS = 0.5
# Fixed-point steps that refine exp(-v) into the inverse of exp(v).
_INVERSE_REFINEMENT_STEPS = 6
# Gaussian window of the patches (mind) and local statistics (lncc), in voxels of the
# preset's finest grid (so a finest level clamped to the image's voxel keeps the same scale in mm).
_FEATURE_SIGMA_VOXELS = 1.0
_LNCC_WINDOW_SIGMA_VOXELS = 2.0
# NGF edge threshold: this fraction of the median gradient magnitude of the voxels with any gradient.
_NGF_EPSILON_FRACTION = 1.0
# How far the mask reaches beyond the head, in working voxels, so that edges count.
_MASK_MARGIN_VOXELS = 2
# Margin of the working grid beyond the fixed image, in voxels of the coarsest level.
_MARGIN_COARSE_VOXELS = 2
# A level stops when its energy fell by less than this fraction over the window (iterations).
_CONVERGENCE_WINDOW = 10
_CONVERGENCE_TOLERANCE = 1e-3
# Damping of the step where the smoothed denominator is tiny, relative to its mean in the mask.
_DAMPING_FRACTION = 1e-2


@dataclass(frozen=True)
class DeformableSettings:
    """The "deformable" object of a preset-table row.

    run_by_default: whether the pipeline runs the stage for this pair.
    metric: 'lncc' (same modality), 'mind' or 'ngf' (cross modality).
    grid_spacings_mm: working-grid spacing per level, coarse to fine; a level
        is never finer than the fixed image's finest voxel (clamped, and dropped
        when that repeats the previous level).
    iterations: most demons iterations per level (same length as
        grid_spacings_mm); a level stops early once its energy stops falling.
    regularization_sigma_mm: Gaussian smoothing of the velocity field each
        iteration; larger is stiffer and the main guard against inventing deformation.
    update_sigma_mm: Gaussian smoothing of the step's normal equations (fluid
        regularisation; also the window over which the step is averaged).
    max_step_voxels: bound on the demons step; the update never exceeds half of it.
    """

    run_by_default: bool = True
    metric: str = "mind"
    grid_spacings_mm: tuple = (8.0, 4.0, 2.0)
    iterations: tuple = (50, 50, 30)
    regularization_sigma_mm: float = 4.0
    update_sigma_mm: float = 2.0
    max_step_voxels: float = 1.0

    @classmethod
    def from_dict(cls, values: dict) -> "DeformableSettings":
        """Validate a preset row's "deformable" object; errors name the bad key."""
        if not isinstance(values, dict):
            raise InvalidInputError(f"deformable: expected an object, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(f"deformable.{unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
        merged = {f.name: values.get(f.name, f.default) for f in fields(cls)}
        settings = cls(
            run_by_default=_boolean(merged["run_by_default"], "run_by_default"),
            metric=_metric(merged["metric"]),
            grid_spacings_mm=_positive_list(merged["grid_spacings_mm"], "grid_spacings_mm", float),
            iterations=_positive_list(merged["iterations"], "iterations", int),
            regularization_sigma_mm=_positive(merged["regularization_sigma_mm"], "regularization_sigma_mm"),
            update_sigma_mm=_positive(merged["update_sigma_mm"], "update_sigma_mm", allow_zero=True),
            max_step_voxels=_positive(merged["max_step_voxels"], "max_step_voxels"),
        )
        if len(settings.iterations) != len(settings.grid_spacings_mm):
            raise InvalidInputError(
                f"deformable.iterations: needs one entry per level of grid_spacings_mm "
                f"({len(settings.grid_spacings_mm)}), got {len(settings.iterations)}")
        if list(settings.grid_spacings_mm) != sorted(settings.grid_spacings_mm, reverse=True):
            raise InvalidInputError("deformable.grid_spacings_mm: must go from coarse to fine (decreasing)")
        return settings


@dataclass
class DeformableOutcome:
    """The deformable stage's result, to compose after the affine.

    forward: displacement field u on a grid in fixed space; the full mapping
        is CompositeTransform([affine, forward]): x -> A(x + u(x)).
    inverse: its inverse field; CompositeTransform([inverse, affine.GetInverse()])
        maps moving points back to fixed points.
    min_jacobian: smallest Jacobian determinant of x -> x + u(x) over the fixed grid.
    """

    forward: sitk.DisplacementFieldTransform
    inverse: sitk.DisplacementFieldTransform
    min_jacobian: float
    seconds: float
    max_displacement_mm: float
    iterations_run: tuple


@dataclass(frozen=True)
class _Grid:
    """An isotropic working grid with the fixed image's direction.

    It covers the fixed image plus `margin` mm on every side, so that points
    pushed out of the fixed field of view still have an inverse.  Every level
    of the pyramid shares the origin, so level indices differ by a ratio only.
    """

    origin: tuple
    direction: tuple
    spacing: float
    size: tuple  # SimpleITK order (x, y, z)
    margin: float

    @classmethod
    def covering(cls, image: sitk.Image, spacing: float, margin: float) -> "_Grid":
        extent = [(n - 1) * s + 2 * margin for n, s in zip(image.GetSize(), image.GetSpacing())]
        size = tuple(max(2, int(math.ceil(e / spacing)) + 1) for e in extent)
        direction = np.array(image.GetDirection()).reshape(3, 3)
        origin = np.array(image.GetOrigin()) - direction @ np.full(3, margin)
        return cls(tuple(origin.tolist()), image.GetDirection(), float(spacing), size, float(margin))

    @property
    def shape(self) -> tuple:
        """numpy order (z, y, x)."""
        return self.size[::-1]

    def reference(self) -> sitk.Image:
        image = sitk.Image(list(self.size), sitk.sitkUInt8)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        image.SetSpacing([self.spacing] * 3)
        return image


def register_deformable(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial_transform: sitk.Transform,
    settings: DeformableSettings,
    *,
    fixed_mask: Optional[sitk.Image] = None,
    progress: Optional[ProgressCallback] = None,
    go_on: Optional[Callable[[float], bool]] = None,
) -> DeformableOutcome:
    """Find the smooth diffeomorphic correction u with moving(A(x + u(x))) ~ fixed(x).

    fixed, moving: float32 3D images in their own geometry; initial_transform: A,
    fixed -> moving (ITK convention).  fixed_mask: head mask on the fixed grid,
    where the images drive the deformation.  progress(fraction, message) may
    raise RegistrationCancelled, which propagates.  go_on(change_mm) is asked
    before the finest level with the 95th percentile of |u| so far over the mask
    (not grown: the pipeline judges the deformation of the head, not of the air around it);
    False ends the stage there (the finest level costs most of the stage and
    refines detail, it does not create a deformation the coarser ones missed).
    Inputs are not modified.
    """
    start = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    report(0.0, "preparing images")
    spacings, budgets = _level_plan(settings, fixed)
    margin = _MARGIN_COARSE_VOXELS * spacings[0]
    grids = [_Grid.covering(fixed, spacing, margin) for spacing in spacings]
    finest = grids[-1]
    fixed_work = _to_grid(fixed, sitk.Transform(3, sitk.sitkIdentity), finest)
    moving_work = _to_grid(moving, initial_transform, finest)
    mask_work = _mask_on_grid(fixed_mask, finest)

    # Features are computed once at the finest level and smoothed down the pyramid:
    # MIND of a coarsened T1 and T2 disagree (their tissue contrasts mix differently),
    # which made the coarse levels invent millimetres of deformation on rigid-only pairs.
    scale = settings.grid_spacings_mm[-1] / finest.spacing
    report(0.0, "describing the local structure of the fixed image")
    fixed_fine = _features(fixed_work, settings.metric, scale)
    report(0.0, "describing the local structure of the moving image")
    moving_fine = _features(moving_work, settings.metric, scale)
    velocity = None
    total_iterations = sum(budgets)
    done = 0
    iterations_run = []
    for level, (grid, iterations) in enumerate(zip(grids, budgets)):
        if level == len(grids) - 1 and level > 0 and go_on is not None:
            change = _change_in_mask_mm(velocity, _mask_on_grid(fixed_mask, previous_grid, margin_voxels=0),
                                        previous_grid)
            if not go_on(change):
                logger.info("deformable stage ended at %.3g mm: %.2f mm of deformation cannot become one that "
                            "counts", previous_grid.spacing, change)
                finest = previous_grid
                break
        report(0.95 * done / total_iterations, f"level {level + 1}/{len(grids)} ({grid.spacing:g} mm), preparing")
        ratio = grid.spacing / finest.spacing
        mask_level = _downsample_mask(mask_work, grid, ratio)
        fixed_features = _downsample_channels(fixed_fine, grid, ratio)
        moving_features = _downsample_channels(moving_fine, grid, ratio)
        velocity = _upsampled_velocity(velocity, previous_grid, grid) if velocity is not None \
            else np.zeros((3,) + grid.shape, dtype=np.float32)
        level_report = _level_progress(report, done, total_iterations, level, len(grids), grid)
        velocity, run, energy = _optimise_level(velocity, fixed_features, moving_features, mask_level,
                                                grid, iterations, settings, level_report)
        done += iterations
        iterations_run.append(run)
        logger.info("deformable level %d (%.3g mm): %d iterations, energy %.5g", level + 1, grid.spacing,
                    run, energy / max(1, int(mask_level.sum())))
        previous_grid = grid

    report(0.95, "inverting the field")
    forward = _exponential(velocity)
    inverse = _inverted(forward, _exponential(-velocity))
    report(0.97, "checking that the deformation folds nothing")
    min_jacobian = _min_jacobian_on_fixed_grid(forward, finest, fixed)
    max_displacement = float(np.sqrt((forward ** 2).sum(axis=0)).max() * finest.spacing)
    report(0.98, "building the transforms")
    forward_transform = _displacement_transform(forward, finest)
    inverse_transform = _displacement_transform(inverse, finest)
    seconds = time.perf_counter() - start
    logger.info("deformable stage: max displacement %.2f mm, min Jacobian %.3f, %.1f s",
                max_displacement, min_jacobian, seconds)
    report(1.0, "done")
    return DeformableOutcome(
        forward=forward_transform,
        inverse=inverse_transform,
        min_jacobian=min_jacobian,
        seconds=seconds,
        max_displacement_mm=max_displacement,
        iterations_run=tuple(iterations_run),
    )


def _level_plan(settings: DeformableSettings, fixed: sitk.Image) -> tuple:
    """(grid spacings, iteration budgets) of the levels, none finer than the fixed image's finest voxel.

    A grid finer than the image adds no detail, only time; a level that the
    clamp makes equal to the previous one is dropped with its budget.
    """
    finest_voxel = min(fixed.GetSpacing())
    spacings, budgets = [], []
    for spacing, budget in zip(settings.grid_spacings_mm, settings.iterations):
        spacing = max(spacing, finest_voxel)
        if spacings and math.isclose(spacing, spacings[-1]):
            continue
        spacings.append(spacing)
        budgets.append(budget)
    return tuple(spacings), tuple(budgets)


def _optimise_level(velocity, fixed_features, moving_features, mask, grid, iterations, settings, report):
    """Demons iterations on one level until the budget or convergence; (velocity, iterations, energy)."""
    fluid = _gaussian_kernel(settings.update_sigma_mm / grid.spacing)
    diffusion = _gaussian_kernel(settings.regularization_sigma_mm / grid.spacing)
    inverse_step_sq = np.float32(1.0 / settings.max_step_voxels ** 2)
    energies = []
    for iteration in range(iterations):
        report(iteration, iterations)
        # The energy is measured before each step; a level whose energy stopped
        # falling (or rose: the diffusion regulariser's fixed point is not the
        # energy minimum) stops, so extra iterations cannot drift the field.
        warped = _warp(moving_features, _exponential(velocity))
        terms, energy = _normal_equations(fixed_features, warped, mask, inverse_step_sq)
        energies.append(energy)
        if _converged(energies):
            break
        terms = _smooth(terms, fluid)
        damping = _DAMPING_FRACTION * max(float(terms[3][mask > 0].mean()), 1e-12)
        update = terms[:3] / (terms[3] + np.float32(damping))
        velocity = _smooth(velocity + update, diffusion)
    return velocity, len(energies), energies[-1]


def _change_in_mask_mm(velocity: np.ndarray, mask: np.ndarray, grid: _Grid) -> float:
    """95th percentile over the mask's voxels of the displacement exp(velocity) - id, in mm."""
    magnitude = np.sqrt((_exponential(velocity) ** 2).sum(axis=0))[mask > 0]
    return float(np.percentile(magnitude, 95) * grid.spacing) if magnitude.size else 0.0


def _converged(energies: list) -> bool:
    """True when the energy fell by less than the tolerance over the last window."""
    if len(energies) <= _CONVERGENCE_WINDOW:
        return False
    before = energies[-1 - _CONVERGENCE_WINDOW]
    return before - energies[-1] < _CONVERGENCE_TOLERANCE * before


def _level_progress(report, done, total, level, levels, grid):
    """report(iteration, iterations) for one level, mapped onto the stage's 0..0.95."""
    def level_report(iteration: int, iterations: int) -> None:
        report(0.95 * (done + iteration) / total,
               f"level {level + 1}/{levels} ({grid.spacing:g} mm), iteration {iteration + 1}/{iterations}")
    return level_report


def _to_grid(image: sitk.Image, transform: sitk.Transform, grid: _Grid) -> np.ndarray:
    """image(transform(x)) on the grid, smoothed first so that it does not alias."""
    sigma = _anti_alias_sigma(image.GetSpacing(), grid.spacing)
    source = _gaussian(image, sigma) if sigma > 0 else sitk.Cast(image, sitk.sitkFloat32)
    background = float(sitk.GetArrayViewFromImage(image).min())
    resampled = sitk.Resample(source, grid.reference(), transform, sitk.sitkLinear, background,
                              sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled).astype(np.float32, copy=False)


def _anti_alias_sigma(spacing, target_spacing: float) -> float:
    """Gaussian sigma (mm) taking an image of `spacing` down to `target_spacing`."""
    finest_spacing = min(spacing)
    return 0.5 * math.sqrt(max(0.0, target_spacing ** 2 - finest_spacing ** 2))


def _mask_on_grid(mask: Optional[sitk.Image], grid: _Grid, margin_voxels: int = _MASK_MARGIN_VOXELS) -> np.ndarray:
    """The fixed mask on the working grid, grown by margin_voxels; everything when no mask."""
    if mask is None:
        return np.ones(grid.shape, dtype=np.uint8)
    resampled = sitk.Resample(sitk.Cast(mask > 0, sitk.sitkUInt8), grid.reference(),
                              sitk.Transform(3, sitk.sitkIdentity), sitk.sitkNearestNeighbor, 0)
    array = sitk.GetArrayFromImage(resampled) > 0
    if not array.any():
        return np.ones(grid.shape, dtype=np.uint8)
    if margin_voxels == 0:
        return array.astype(np.uint8)
    return ndimage.binary_dilation(array, iterations=margin_voxels).astype(np.uint8)


def _downsample(volume: np.ndarray, grid: _Grid, ratio: float) -> np.ndarray:
    """A finest-grid volume on a coarser grid of the pyramid (smoothed, then sampled)."""
    if ratio == 1.0:
        return volume
    smoothed = _smooth(volume[np.newaxis], _gaussian_kernel(0.5 * math.sqrt(ratio ** 2 - 1.0)))
    return _scaled_resample(smoothed, grid.shape, ratio, 1.0)[0]


def _downsample_channels(volume, grid, ratio):
    """Every channel of a finest-grid multi-channel volume on a coarser grid."""
    if ratio == 1.0:
        return volume
    return np.stack([_downsample(channel, grid, ratio) for channel in volume])


def _downsample_mask(mask: np.ndarray, grid: _Grid, ratio: float) -> np.ndarray:
    """A mask on a coarser grid: any finest voxel nearby counts."""
    if ratio == 1.0:
        return mask
    coarse = _downsample(mask.astype(np.float32), grid, ratio)
    return (coarse > 0.01).astype(np.uint8)


def _features(volume: np.ndarray, metric: str, scale: float) -> np.ndarray:
    """The channels the demons force compares, shaped (channels, z, y, x).

    scale: the windows' size relative to their default in working voxels.
    """
    if metric == "lncc":
        return _locally_standardised(volume, _LNCC_WINDOW_SIGMA_VOXELS * scale)[np.newaxis]
    if metric == "ngf":
        return _gradient_orientation_tensors(volume, _FEATURE_SIGMA_VOXELS * scale)
    return _mind_descriptors(volume, _FEATURE_SIGMA_VOXELS * scale)


def _locally_standardised(volume: np.ndarray, window_sigma: float) -> np.ndarray:
    """(I - local mean) / local std with a Gaussian window (sigma in voxels); SSD of these is local NCC."""
    window = _gaussian_kernel(window_sigma)
    stacked = np.stack([volume, volume * volume])
    local_mean, local_square = _smooth(stacked, window)
    variance = np.maximum(local_square - local_mean * local_mean, 0.0)
    floor = np.float32(1e-3) * max(float(volume.var()), 1e-12)
    return ((volume - local_mean) / np.sqrt(variance + floor)).astype(np.float32)


def _mind_descriptors(volume: np.ndarray, patch_sigma: float) -> np.ndarray:
    """Six-neighbourhood MIND: exp(-patch distance / local variance) per direction (patch sigma in voxels)."""
    patch = _gaussian_kernel(patch_sigma)
    shifted_differences = []
    for axis in range(3):
        for offset in (-1, 1):
            neighbour = _shifted(volume, axis, offset)
            shifted_differences.append((volume - neighbour) ** 2)
    distances = _smooth(np.stack(shifted_differences).astype(np.float32), patch)
    variance = distances.mean(axis=0)
    mean_variance = max(float(variance.mean()), 1e-12)
    variance = np.clip(variance, 1e-3 * mean_variance, 1e3 * mean_variance)
    return np.exp(-distances / variance).astype(np.float32)


def _gradient_orientation_tensors(volume: np.ndarray, sigma: float) -> np.ndarray:
    """NGF features: the six distinct entries of n n^T, n = grad I / sqrt(|grad I|^2 + eps^2).

    The volume is smoothed (sigma in voxels) before the central differences;
    eps is a fraction of the median gradient magnitude, so weak ramps and flat
    regions give near-zero tensors and only edges drive the force.  Off-diagonal
    entries are weighted by sqrt(2) so that the SSD of features is the
    Frobenius distance of the tensors.
    """
    smoothed = _smooth(volume[np.newaxis], _gaussian_kernel(sigma))[0]
    gradient = np.stack(np.gradient(smoothed)).astype(np.float32)
    magnitude = np.sqrt((gradient ** 2).sum(axis=0))
    nonzero = magnitude[magnitude > 0]
    epsilon = _NGF_EPSILON_FRACTION * (float(np.median(nonzero)) if nonzero.size else 1.0)
    normal = gradient / np.sqrt(magnitude ** 2 + np.float32(epsilon ** 2))
    root2 = np.float32(math.sqrt(2.0))
    return np.stack([normal[0] * normal[0], normal[1] * normal[1], normal[2] * normal[2],
                     root2 * normal[0] * normal[1], root2 * normal[0] * normal[2],
                     root2 * normal[1] * normal[2]]).astype(np.float32)


def _shifted(volume: np.ndarray, axis: int, offset: int) -> np.ndarray:
    """volume at index + offset along axis, edge values repeated."""
    padded = np.pad(volume, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
    start = 1 + offset
    return np.take(padded, range(start, start + volume.shape[axis]), axis=axis)


def _upsampled_velocity(velocity: np.ndarray, coarse: _Grid, fine: _Grid) -> np.ndarray:
    """A coarse-level velocity on the next finer grid, in the finer grid's voxel units."""
    ratio = fine.spacing / coarse.spacing
    return _scaled_resample(velocity, fine.shape, ratio, 1.0 / ratio)


def _scaled_resample(volume: np.ndarray, shape: tuple, ratio: float, value_scale: float) -> np.ndarray:
    """Every channel sampled (trilinear, edges clamped) at index * ratio on a grid of `shape`, times value_scale.

    Moves a volume or field between levels of the pyramid, which share origin
    and direction, and rescales voxel-unit field values.
    """
    out = np.empty((volume.shape[0],) + tuple(shape), dtype=np.float32)
    for channel in range(volume.shape[0]):
        ndimage.affine_transform(volume[channel], np.diag(np.full(3, ratio)), output_shape=tuple(shape),
                                 output=out[channel], order=1, mode="nearest")
    if value_scale != 1.0:
        out *= np.float32(value_scale)
    return out


def _exponential(velocity: np.ndarray) -> np.ndarray:
    """exp(v) - id by scaling and squaring (voxel units)."""
    largest = float(np.sqrt((velocity ** 2).sum(axis=0)).max())
    squarings = max(0, int(math.ceil(math.log2(max(largest, 1e-6) / _SQUARING_START_VOXELS))))
    displacement = (velocity / np.float32(2 ** squarings)).astype(np.float32)
    for _ in range(squarings):
        displacement = _compose(displacement, displacement)
    return displacement


def _inverted(forward: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Refine w so that w(y) = -u(y + w(y)), i.e. (id + u) o (id + w) = id."""
    inverse = estimate
    for _ in range(_INVERSE_REFINEMENT_STEPS):
        inverse = -_warp(forward, inverse)
    return inverse


def _min_jacobian_on_fixed_grid(displacement: np.ndarray, grid: _Grid, fixed: sitk.Image) -> float:
    """min det of the Jacobian of x -> x + u(x) at every fixed voxel.

    The working grid shares the fixed image's direction and is isotropic, so
    the determinant in voxel units equals the physical one.
    """
    index_ratio = np.array(fixed.GetSpacing()[::-1], dtype=np.float64) / grid.spacing
    index_offset = np.full(3, grid.margin / grid.spacing, dtype=np.float64)
    size_z, size_y, size_x = fixed.GetSize()[::-1]
    plane_min = np.empty(size_z, dtype=np.float64)
    _run_slabs(_kernels().min_jacobian_slab, size_z, displacement, index_ratio, index_offset,
               np.array([size_y, size_x], dtype=np.int64), plane_min)
    return float(plane_min.min())


def _kernels():
    """The numba kernel module, imported (compiled or loaded from the cache) on first use only."""
    from . import deformable_kernels
    return deformable_kernels


def _warp(volume: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """volume(x + displacement(x)) for every voxel x and every channel of volume."""
    out = np.empty((volume.shape[0],) + displacement.shape[1:], dtype=np.float32)
    _run_slabs(_kernels().warp_slab, displacement.shape[1], volume, displacement, out)
    return out


def _compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Displacement of (id + second) o (id + first): first(x) + second(x + first(x))."""
    out = _warp(second, first)
    out += first
    return out


def _smooth(volume: np.ndarray, kernel: Optional[np.ndarray]) -> np.ndarray:
    """Separable convolution of every channel with a symmetric 1D kernel along z, y and x, edges clamped."""
    return _separable(volume, (kernel, kernel, kernel))


def _normal_equations(fixed_features, warped, mask, inverse_step_sq):
    """Per-voxel (b_z, b_y, b_x, a) of the symmetric demons step, and the masked energy."""
    terms = np.empty((4,) + mask.shape, dtype=np.float32)
    energy = np.zeros(mask.shape[0], dtype=np.float64)
    _run_slabs(_kernels().normal_equations_slab, mask.shape[0], fixed_features, warped, mask,
               inverse_step_sq, terms, energy)
    return terms, float(energy.sum())


def _displacement_transform(displacement: np.ndarray, grid: _Grid) -> sitk.DisplacementFieldTransform:
    """A voxel-unit (z, y, x) field as a physical-space SimpleITK displacement transform."""
    direction = np.array(grid.direction, dtype=np.float64).reshape(3, 3)
    index_vectors = np.moveaxis(displacement[::-1], 0, -1).astype(np.float64)  # (z, y, x, [dx, dy, dz])
    physical = (index_vectors * grid.spacing) @ direction.T
    image = sitk.GetImageFromArray(physical, isVector=True)
    image.SetOrigin(grid.origin)
    image.SetSpacing([grid.spacing] * 3)
    image.SetDirection(grid.direction)
    return sitk.DisplacementFieldTransform(image)


def _boolean(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"deformable.{key}: expected true or false, got {value!r}")
    return value


def _metric(value) -> str:
    if value not in METRICS:
        raise InvalidInputError(f"deformable.metric: expected one of {', '.join(METRICS)}, got {value!r}")
    return value


def _positive(value, key: str, allow_zero: bool = False) -> float:
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not valid or value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "a positive number"
        raise InvalidInputError(f"deformable.{key}: expected {bound}, got {value!r}")
    return float(value)


def _positive_list(value, key: str, kind) -> tuple:
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidInputError(f"deformable.{key}: expected a non-empty list, got {value!r}")
    items = []
    for item in value:
        wrong_type = isinstance(item, bool) or not isinstance(item, (int, float)) \
            or (kind is int and not float(item).is_integer())
        if wrong_type or not math.isfinite(item) or item <= 0:
            raise InvalidInputError(f"deformable.{key}: expected positive {kind.__name__}s, got {value!r}")
        items.append(kind(item))
    return tuple(items)
