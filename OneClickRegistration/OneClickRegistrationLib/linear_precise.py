"""The rigid stage's finest level: normalised mutual information with quadratic B-spline interpolation, in numba.

This level decides the rigid stage's precision and used to be most of its
time: SimpleITK's metric interpolates the moving image with B-splines at
about half a microsecond a sample on one thread and recomputes the spline
coefficients single-threaded on every run.  Here the coefficients come from
scipy once per level and the samples are interpolated on the worker threads
(parallel.py), ten times faster:
- samples: a regular stride through the fixed level's voxels (or its mask),
  each moved by a seeded random fraction of a voxel so that the samples do not
  sit on the grid (a grid-locked sample set swung the held-out stroke cases'
  median errors between 0.11 and 0.33 mm), the fixed intensity interpolated
  there with the same quadratic B-spline as the moving image's (ITK interpolates
  the fixed image linearly, which blurs each sample by an amount that depends on
  its offset; the B-spline lowered the held-out bench cases' median errors by
  0.01-0.03 mm on most pairs);
- the joint histogram of Mattes et al.: fixed intensities binned, moving ones
  spread by a cubic B-spline Parzen window, two empty bins at each end;
- the similarity is Studholme's normalised mutual information of that
  histogram, (H(F) + H(M)) / H(F, M), with its analytic gradient with respect
  to a rotation about the transform's centre and a translation.  On the 30
  held-out rigid bench cases it matched the former ITK Mattes MI level
  (mean of median errors 0.470 against 0.467 mm; CT-MR 1.06 against 1.07),
  where plain MI of the same histogram drifted along the CT's shallow rotation
  valley (CT-MR 1.15 mm);
- a regular-step gradient descent in millimetres: a rotation counts as the
  shift it gives a point at the samples' RMS distance from the centre, the
  step shrinks when the gradient turns back, and the best pose visited wins.

Transforms follow the ITK convention: fixed physical point -> moving point.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import numpy as np
import scipy.ndimage
import SimpleITK as sitk

from . import imageio
from .parallel import run_slabs

logger = logging.getLogger(__name__)

# Bins left empty at each end of the histogram, so the Parzen window never falls off it (as ITK).
PADDING_BINS = 2
# The first step (mm), as the coarser levels' at full resolution; it shrinks by RELAXATION whenever
# the gradient turns back, and the fit ends when it falls below the level's minimum step.
FIRST_STEP_MM = 0.5
RELAXATION = 0.6


class PreciseRigidLevel:
    """The finest rigid fit level: fixed samples drawn once, the moving image's B-spline coefficients computed once.

    fixed, moving: the level's images (float32, intensities clamped to a robust range);
    fixed_mask: where samples are drawn (None: the whole fixed image);
    max_samples, fraction: at most this many samples, at most this fraction of the voxels;
    bins: histogram bins; min_step_mm: the step below which the fit ends; seed: the sampling seed.
    """

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, fixed_mask, max_samples: int, fraction: float,
                 bins: int, min_step_mm: float, seed: int):
        self.bins = bins
        self.min_step_mm = min_step_mm
        mask = imageio.on_grid_of(fixed_mask, fixed) if fixed_mask is not None else None
        self.points, fixed_values = _fixed_samples(fixed, mask, max_samples, fraction, seed)
        self.fixed_bins = _fixed_bins(fixed_values, fixed, bins)
        self.coefficients = quadratic_bspline_coefficients(moving)
        self._to_index = np.linalg.inv(np.asarray(moving.GetDirection()).reshape(3, 3) * np.asarray(moving.GetSpacing()))
        self._gradient_matrix = self._to_index.T.copy()  # index gradient -> gradient in the moving space
        self._moving_origin = np.asarray(moving.GetOrigin())
        # Each iteration's samples of the moving image, written in place (no fresh memory per iteration).
        count = self.points.shape[0]
        self._values, self._gradients = np.empty(count), np.empty((count, 3))
        self._inside = np.empty(count, dtype=np.bool_)
        low, high = _intensity_range(moving)
        self._moving_low = low
        self._moving_bin_size = (high - low) / (bins - 2 * PADDING_BINS)

    def fit(self, settings, iterations: int, initial: sitk.Transform, on_iteration: Callable[[int], None]):
        """Optimise the rigid pose from `initial`; (metric value, Euler3DTransform) of the best pose visited.

        The metric is minus the normalised mutual information (lower is better);
        `settings` is unused (the level was built from them), kept so every level fits alike.
        on_iteration(iteration) is called after every iteration (counted from 1); an exception
        it raises ends the fit.
        """
        rotation, translation, center = _rigid_parts(initial)
        radius = float(np.sqrt(np.mean(np.sum((self.points - center) ** 2, axis=1))))
        step = FIRST_STEP_MM
        best = (np.inf, rotation, translation)
        previous, iteration = None, 0
        for iteration in range(1, int(iterations) + 1):
            value, rotation_gradient, translation_gradient = self.value_and_gradient(rotation, translation, center)
            if value < best[0]:
                best = (value, rotation, translation)
            on_iteration(iteration)
            gradient = np.concatenate([rotation_gradient / radius, translation_gradient])
            norm = float(np.linalg.norm(gradient))
            if norm < 1e-12:
                break
            if previous is not None and float(gradient @ previous) < 0:
                step *= RELAXATION
            if step < self.min_step_mm:
                break
            move = -step * gradient / norm
            rotation = _rotation_matrix(move[:3] / radius) @ rotation
            translation = translation + move[3:]
            previous = gradient
        logger.debug("precise rigid level: best metric %.5f after %d iterations, last step %.4f mm",
                     best[0], iteration, step)
        return best[0], _euler(best[1], best[2], center)

    def value_and_gradient(self, rotation: np.ndarray, translation: np.ndarray, center: np.ndarray):
        """Minus the normalised MI at the pose x -> rotation (x - center) + center + translation, and its gradient.

        The gradient is with respect to a small rotation vector (radians) applied
        after `rotation` and to the translation (mm).
        """
        from . import linear_kernels  # numba, compiled or loaded from its cache on first use only

        offset = center + translation - rotation @ center
        matrix = self._to_index @ rotation
        index_offset = self._to_index @ (offset - self._moving_origin)
        values, gradients, inside = self._values, self._gradients, self._inside
        run_slabs(linear_kernels.sample_quadratic_bspline, values.shape[0], self.points, matrix, index_offset,
                  self.coefficients, self._gradient_matrix, values, gradients, inside)
        positions = (values - self._moving_low) / self._moving_bin_size + PADDING_BINS
        joint = linear_kernels.mattes_joint_histogram(self.fixed_bins, positions, inside, self.bins)
        total = joint.sum()
        if total <= 0:  # no sample lands in the moving image: nothing to compare, nowhere to go
            return 0.0, np.zeros(3), np.zeros(3)
        joint /= total
        table, similarity = _normalized_mi_and_table(joint)
        gradient = linear_kernels.histogram_rigid_gradient(self.fixed_bins, positions, inside, table, gradients,
                                                        self.points, center, rotation)
        gradient /= total * self._moving_bin_size
        return -similarity, gradient[:3], gradient[3:]


def _normalized_mi_and_table(joint: np.ndarray):
    """Normalised mutual information (H(F) + H(M)) / H(F, M) of a joint histogram, and the table T
    with d NMI = sum over bins of d p(f, m) T[f, m] (T = 0 where p(f, m) = 0: no point can change it).

    The fixed marginal does not depend on the pose, so only the joint and the
    moving entropies vary: T = (NMI log p(f, m) - log p_moving(m)) / H(F, M).
    """
    fixed_marginal = joint.sum(axis=1)
    moving_marginal = joint.sum(axis=0)
    present = joint > 0
    log_joint = np.log(joint, out=np.zeros_like(joint), where=present)
    log_moving = np.log(moving_marginal, out=np.zeros_like(moving_marginal), where=moving_marginal > 0)
    log_fixed = np.log(fixed_marginal, out=np.zeros_like(fixed_marginal), where=fixed_marginal > 0)
    joint_entropy = -float(np.sum(joint * log_joint))
    marginal_entropies = -float(np.sum(fixed_marginal * log_fixed)) - float(np.sum(moving_marginal * log_moving))
    if joint_entropy <= 0:  # one bin holds everything: no information, no gradient
        return np.zeros_like(joint), 1.0
    similarity = marginal_entropies / joint_entropy
    table = np.where(present, (similarity * log_joint - log_moving[np.newaxis, :]) / joint_entropy, 0.0)
    return table, similarity


def _fixed_samples(fixed: sitk.Image, mask, max_samples: int, fraction: float, seed: int):
    """(N, 3) physical sample points and their fixed intensities (see the module's docstring)."""
    values = sitk.GetArrayViewFromImage(fixed)
    if mask is not None:
        candidates = np.flatnonzero(sitk.GetArrayViewFromImage(mask))
    else:
        candidates = np.arange(values.size)
    wanted = max(1, min(int(fraction * candidates.size), max_samples))
    stride = max(1, int(math.ceil(candidates.size / wanted)))
    chosen = candidates[::stride]
    index_zyx = np.stack(np.unravel_index(chosen, values.shape), axis=1).astype(np.float64)
    index_zyx += np.random.default_rng(seed).uniform(-0.5, 0.5, size=index_zyx.shape)
    index_zyx = np.clip(index_zyx, 0.0, np.asarray(values.shape, dtype=np.float64) - 1.0)
    intensities = scipy.ndimage.map_coordinates(quadratic_bspline_coefficients(fixed), index_zyx.T, order=2,
                                                mode="mirror", prefilter=False)
    index_xyz = index_zyx[:, ::-1]
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    points = index_xyz * np.asarray(fixed.GetSpacing()) @ direction.T + np.asarray(fixed.GetOrigin())
    return np.ascontiguousarray(points), intensities


def quadratic_bspline_coefficients(image: sitk.Image) -> np.ndarray:
    """The (z, y, x) float32 coefficients of the quadratic B-spline through a 3D image's voxels
    (mirror boundary, as ITK's and scipy's), filtered along each axis in slabs on the worker threads."""
    coefficients = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    for axis in (2, 1, 0):
        planes = coefficients.shape[1] if axis == 0 else coefficients.shape[0]
        run_slabs(_filter_slab, planes, coefficients, axis)
    return coefficients


def _filter_slab(volume: np.ndarray, axis: int, start: int, stop: int) -> None:
    """volume's B-spline prefilter along `axis`, in place, on planes [start, stop) of another axis."""
    slab = volume[:, start:stop] if axis == 0 else volume[start:stop]
    scipy.ndimage.spline_filter1d(slab, order=2, axis=axis, mode="mirror", output=slab)


def _fixed_bins(values: np.ndarray, fixed: sitk.Image, bins: int) -> np.ndarray:
    """Each fixed sample's histogram bin (a box window), padding bins left empty."""
    low, high = _intensity_range(fixed)
    size = (high - low) / (bins - 2 * PADDING_BINS)
    return np.clip(np.floor((values - low) / size).astype(np.int64) + PADDING_BINS, PADDING_BINS,
                   bins - PADDING_BINS - 1)


def _intensity_range(image: sitk.Image):
    """(min, max) of the image, widened when flat so bins have a size."""
    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    return low, (high if high > low else low + 1.0)


def _rigid_parts(transform: sitk.Transform):
    """(rotation matrix, translation, centre) of a rigid SimpleITK transform (Euler3D, versor, or such a
    transform last in a composite)."""
    if isinstance(transform, sitk.CompositeTransform):
        transform = transform.GetNthTransform(transform.GetNumberOfTransforms() - 1)
    rigid = transform.Downcast()
    return (np.asarray(rigid.GetMatrix()).reshape(3, 3), np.asarray(rigid.GetTranslation()),
            np.asarray(rigid.GetCenter()))


def _rotation_matrix(vector: np.ndarray) -> np.ndarray:
    """The rotation by |vector| radians about `vector` (Rodrigues)."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-15:
        return np.eye(3)
    axis = vector / angle
    cross = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def _euler(rotation: np.ndarray, translation: np.ndarray, center: np.ndarray) -> sitk.Euler3DTransform:
    result = sitk.Euler3DTransform()
    result.SetCenter(center.tolist())
    result.SetMatrix(rotation.ravel().tolist())
    result.SetTranslation(translation.tolist())
    return result
