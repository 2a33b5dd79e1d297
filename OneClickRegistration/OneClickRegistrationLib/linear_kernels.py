"""Numba kernels of the linear stages: the rotation search scores many candidate poses in one
parallel pass; the rigid stage's finest level (linear_precise.py) samples a quadratic B-spline
image and builds and differentiates a Parzen joint histogram.

linear.py and linear_precise.py import this module on first use only, so the
library imports where numba is not installed yet (a stock 3D Slicer).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True, fastmath=True)
def pose_correlations(points, fixed_centered, moving, matrices, offsets):
    """NCC of `fixed_centered` with `moving` sampled at each candidate pose.

    points: (N, 3) fixed physical points; fixed_centered: (N,) fixed values minus their mean;
    moving: (Z, Y, X) volume; matrices (K, 3, 3) and offsets (K, 3) map a fixed point to
    a moving continuous index (i, j, k) = matrix @ point + offset.  Outside is 0.
    Returns (K,) correlations, 0 where the sampled values are constant.
    """
    count = matrices.shape[0]
    n = points.shape[0]
    nz, ny, nx = moving.shape
    fixed_norm = 0.0
    for p in range(n):
        fixed_norm += fixed_centered[p] * fixed_centered[p]
    result = np.zeros(count)
    for k in prange(count):
        total = 0.0
        total_sq = 0.0
        cross = 0.0
        for p in range(n):
            value = 0.0
            ci = matrices[k, 0, 0] * points[p, 0] + matrices[k, 0, 1] * points[p, 1] + matrices[k, 0, 2] * points[p, 2] + offsets[k, 0]
            cj = matrices[k, 1, 0] * points[p, 0] + matrices[k, 1, 1] * points[p, 1] + matrices[k, 1, 2] * points[p, 2] + offsets[k, 1]
            ck = matrices[k, 2, 0] * points[p, 0] + matrices[k, 2, 1] * points[p, 1] + matrices[k, 2, 2] * points[p, 2] + offsets[k, 2]
            if ci >= 0.0 and cj >= 0.0 and ck >= 0.0 and ci <= nx - 1 and cj <= ny - 1 and ck <= nz - 1:
                i0 = min(int(ci), nx - 2) if nx > 1 else 0
                j0 = min(int(cj), ny - 2) if ny > 1 else 0
                k0 = min(int(ck), nz - 2) if nz > 1 else 0
                fi, fj, fk = ci - i0, cj - j0, ck - k0
                c00 = moving[k0, j0, i0] * (1 - fi) + moving[k0, j0, i0 + 1] * fi
                c01 = moving[k0, j0 + 1, i0] * (1 - fi) + moving[k0, j0 + 1, i0 + 1] * fi
                c10 = moving[k0 + 1, j0, i0] * (1 - fi) + moving[k0 + 1, j0, i0 + 1] * fi
                c11 = moving[k0 + 1, j0 + 1, i0] * (1 - fi) + moving[k0 + 1, j0 + 1, i0 + 1] * fi
                value = ((c00 * (1 - fj) + c01 * fj) * (1 - fk) + (c10 * (1 - fj) + c11 * fj) * fk)
            total += value
            total_sq += value * value
            cross += value * fixed_centered[p]
        variance = total_sq - total * total / n
        if variance > 1e-12 and fixed_norm > 1e-12:
            result[k] = cross / np.sqrt(variance * fixed_norm)
    return result


@njit(cache=True, nogil=True, fastmath=True)
def _mirrored(index, size):
    """A B-spline tap's index reflected about the first and last voxel (ITK's and scipy's 'mirror')."""
    if size == 1:
        return 0
    if index < 0:
        return -index
    if index >= size:
        return 2 * size - 2 - index
    return index


@njit(cache=True, nogil=True, fastmath=True)
def sample_quadratic_bspline(points, matrix, offset, coefficients, gradient_matrix, values, gradients, inside,
                             start, stop):
    """Value and physical gradient of a quadratic B-spline image at mapped points [start, stop).

    points: (N, 3) fixed physical points; a point maps to the continuous moving index
    (i, j, k) = matrix @ point + offset; coefficients: (Z, Y, X) quadratic B-spline
    coefficients (mirror boundary); gradient_matrix (3, 3) turns an index gradient into a
    gradient with respect to the moving physical point.  A point whose index lies outside
    [-0.5, size - 0.5) on any axis is marked outside (inside[p] = False, value 0).
    """
    nz, ny, nx = coefficients.shape
    wi = np.empty(3)
    wj = np.empty(3)
    wk = np.empty(3)
    di = np.empty(3)
    dj = np.empty(3)
    dk = np.empty(3)
    ii = np.empty(3, dtype=np.int64)
    jj = np.empty(3, dtype=np.int64)
    kk = np.empty(3, dtype=np.int64)
    for p in range(start, stop):
        x, y, z = points[p, 0], points[p, 1], points[p, 2]
        ci = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] * z + offset[0]
        cj = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] * z + offset[1]
        ck = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2] * z + offset[2]
        if not (-0.5 <= ci < nx - 0.5 and -0.5 <= cj < ny - 0.5 and -0.5 <= ck < nz - 0.5):
            inside[p] = False
            values[p] = 0.0
            gradients[p, 0] = gradients[p, 1] = gradients[p, 2] = 0.0
            continue
        inside[p] = True
        i0 = int(math.floor(ci + 0.5))
        j0 = int(math.floor(cj + 0.5))
        k0 = int(math.floor(ck + 0.5))
        _quadratic_weights(ci - i0, wi, di)
        _quadratic_weights(cj - j0, wj, dj)
        _quadratic_weights(ck - k0, wk, dk)
        for tap in range(3):
            ii[tap] = _mirrored(i0 - 1 + tap, nx)
            jj[tap] = _mirrored(j0 - 1 + tap, ny)
            kk[tap] = _mirrored(k0 - 1 + tap, nz)
        value = 0.0
        gi = 0.0
        gj = 0.0
        gk = 0.0
        for c in range(3):
            for b in range(3):
                row_value = 0.0
                row_derivative = 0.0
                for a in range(3):
                    coefficient = coefficients[kk[c], jj[b], ii[a]]
                    row_value += wi[a] * coefficient
                    row_derivative += di[a] * coefficient
                value += wk[c] * wj[b] * row_value
                gi += wk[c] * wj[b] * row_derivative
                gj += wk[c] * dj[b] * row_value
                gk += dk[c] * wj[b] * row_value
        values[p] = value
        for axis in range(3):
            gradients[p, axis] = (gradient_matrix[axis, 0] * gi + gradient_matrix[axis, 1] * gj
                                  + gradient_matrix[axis, 2] * gk)


@njit(cache=True, nogil=True, fastmath=True)
def _quadratic_weights(t, weights, derivatives):
    """Quadratic B-spline weights of the taps at -1, 0, +1 for a fraction t in [-0.5, 0.5], and their derivatives."""
    weights[0] = 0.5 * (0.5 - t) ** 2
    weights[1] = 0.75 - t * t
    weights[2] = 0.5 * (0.5 + t) ** 2
    derivatives[0] = t - 0.5
    derivatives[1] = -2.0 * t
    derivatives[2] = t + 0.5


@njit(cache=True, nogil=True, fastmath=True)
def _cubic_bspline(u):
    u = abs(u)
    if u < 1.0:
        return (4.0 - 6.0 * u * u + 3.0 * u * u * u) / 6.0
    if u < 2.0:
        return (2.0 - u) ** 3 / 6.0
    return 0.0


@njit(cache=True, nogil=True, fastmath=True)
def _cubic_bspline_derivative(u):
    magnitude = abs(u)
    if magnitude < 1.0:
        return -2.0 * u + 1.5 * u * magnitude
    if magnitude < 2.0:
        return -0.5 * (2.0 - magnitude) ** 2 * (1.0 if u > 0 else -1.0)
    return 0.0


@njit(cache=True, nogil=True)
def _parzen_start(position, bins):
    """First of the four moving bins a cubic Parzen window at `position` (in bins) touches."""
    return min(max(int(math.floor(position)) - 1, 0), bins - 4)


@njit(cache=True, nogil=True)
def mattes_joint_histogram(fixed_bins, moving_positions, inside, bins):
    """Mattes' joint histogram: fixed intensities binned (box window), moving ones spread by a cubic B-spline.

    fixed_bins: (N,) integer fixed bins; moving_positions: (N,) moving intensities in
    (fractional) bins.  Points outside the moving image are left out.
    """
    joint = np.zeros((bins, bins))
    for p in range(fixed_bins.shape[0]):
        if not inside[p]:
            continue
        first = _parzen_start(moving_positions[p], bins)
        for m in range(first, first + 4):
            joint[fixed_bins[p], m] += _cubic_bspline(m - moving_positions[p])
    return joint


@njit(cache=True, nogil=True)
def histogram_rigid_gradient(fixed_bins, moving_positions, inside, table, gradients, points, center, rotation):
    """Gradient of minus a joint-histogram similarity with respect to a small rotation vector applied
    after `rotation` about `center` (first three) and to a translation (last three), up to the
    histogram's normalisation (N points times the moving bin size).

    table[f, m]: d similarity / d p(f, m) (see linear_precise); gradients: (N, 3)
    moving-image gradients with respect to the moving point.  A rotation vector w moves a
    mapped point by w x (rotation @ (point - center)).
    """
    bins = table.shape[0]
    result = np.zeros(6)
    for p in range(fixed_bins.shape[0]):
        if not inside[p]:
            continue
        first = _parzen_start(moving_positions[p], bins)
        weight = 0.0
        for m in range(first, first + 4):
            weight += table[fixed_bins[p], m] * _cubic_bspline_derivative(m - moving_positions[p])
        gx, gy, gz = weight * gradients[p, 0], weight * gradients[p, 1], weight * gradients[p, 2]
        dx, dy, dz = points[p, 0] - center[0], points[p, 1] - center[1], points[p, 2] - center[2]
        ax = rotation[0, 0] * dx + rotation[0, 1] * dy + rotation[0, 2] * dz
        ay = rotation[1, 0] * dx + rotation[1, 1] * dy + rotation[1, 2] * dz
        az = rotation[2, 0] * dx + rotation[2, 1] * dy + rotation[2, 2] * dz
        result[0] += ay * gz - az * gy
        result[1] += az * gx - ax * gz
        result[2] += ax * gy - ay * gx
        result[3] += gx
        result[4] += gy
        result[5] += gz
    return result
