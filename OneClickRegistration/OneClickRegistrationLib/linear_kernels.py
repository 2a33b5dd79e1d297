"""Numba kernel of the rotation search: many candidate poses scored in one parallel pass.

linear.py imports this module on first use only (its `_kernels()`), so the
library imports where numba is not installed yet (a stock 3D Slicer).
"""

from __future__ import annotations

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
