"""Numba kernels for the deformable stage: the loops that run every iteration.

All arrays are float32 and C-contiguous.  Fields and multi-channel images are
4D arrays shaped (channels, z, y, x) on one working grid; a displacement field
has three channels holding the (z, y, x) displacement in voxels of that grid.
Points outside the grid take the value of the nearest border voxel, which keeps
warps and compositions defined near the edge without inventing edges.

Every kernel is serial, releases the GIL (nogil) and works on one slab of
planes [start, stop) of a preallocated output, so deformable.py runs slabs on
a thread pool.  Serial kernels compile in a fraction of the time that numba's
parallel (prange) kernels take; there is one signature per kernel, no
fastmath, and each is compiled on first use only and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def _corner(position, size):
    """Lower grid index and weight of the upper neighbour, clamped to the grid."""
    if position <= 0.0:
        return 0, np.float32(0.0)
    if position >= size - 1:
        return max(size - 2, 0), np.float32(1.0 if size > 1 else 0.0)
    lower = int(position)
    return lower, np.float32(position - lower)


@njit(cache=True, nogil=True)
def warp_slab(volume, displacement, out, start, stop):
    """out[c, z] = volume[c](x + displacement(x)) for the planes start <= z < stop."""
    channels = volume.shape[0]
    nz, ny, nx = volume.shape[1], volume.shape[2], volume.shape[3]
    for z in range(start, stop):
        for y in range(displacement.shape[2]):
            for x in range(displacement.shape[3]):
                z0, wz = _corner(z + displacement[0, z, y, x], nz)
                y0, wy = _corner(y + displacement[1, z, y, x], ny)
                x0, wx = _corner(x + displacement[2, z, y, x], nx)
                z1 = min(z0 + 1, nz - 1)
                y1 = min(y0 + 1, ny - 1)
                x1 = min(x0 + 1, nx - 1)
                for c in range(channels):
                    c00 = volume[c, z0, y0, x0] * (1 - wx) + volume[c, z0, y0, x1] * wx
                    c01 = volume[c, z0, y1, x0] * (1 - wx) + volume[c, z0, y1, x1] * wx
                    c10 = volume[c, z1, y0, x0] * (1 - wx) + volume[c, z1, y0, x1] * wx
                    c11 = volume[c, z1, y1, x0] * (1 - wx) + volume[c, z1, y1, x1] * wx
                    out[c, z, y, x] = (c00 * (1 - wy) + c01 * wy) * (1 - wz) + (c10 * (1 - wy) + c11 * wy) * wz


@njit(cache=True, nogil=True)
def normal_equations_slab(fixed_features, warped_features, mask, inverse_step_sq, out, energy, start, stop):
    """Per-voxel terms of a symmetric (ESM) demons / Gauss-Newton step, planes start <= z < stop.

    With r_c = F_c - W_c and g_c = (grad F_c + grad W_c) / 2 (central
    differences), out[0:3] = sum_c r_c g_c and out[3] = sum_c |g_c|^2 +
    sum_c r_c^2 * inverse_step_sq; energy[z] = sum of r_c^2 over the plane.
    Voxels outside the mask get zeros.  The caller smooths the four channels
    and divides, so the step solves locally averaged normal equations.
    """
    channels = fixed_features.shape[0]
    nz, ny, nx = mask.shape
    for z in range(start, stop):
        zm = max(z - 1, 0)
        zp = min(z + 1, nz - 1)
        plane = 0.0
        for y in range(ny):
            ym = max(y - 1, 0)
            yp = min(y + 1, ny - 1)
            for x in range(nx):
                for k in range(4):
                    out[k, z, y, x] = 0.0
                if mask[z, y, x] == 0:
                    continue
                xm = max(x - 1, 0)
                xp = min(x + 1, nx - 1)
                bz = np.float32(0.0)
                by = np.float32(0.0)
                bx = np.float32(0.0)
                grad_sq = np.float32(0.0)
                residual_sq = np.float32(0.0)
                for c in range(channels):
                    residual = fixed_features[c, z, y, x] - warped_features[c, z, y, x]
                    gz = (warped_features[c, zp, y, x] - warped_features[c, zm, y, x]
                          + fixed_features[c, zp, y, x] - fixed_features[c, zm, y, x]) * np.float32(0.25)
                    gy = (warped_features[c, z, yp, x] - warped_features[c, z, ym, x]
                          + fixed_features[c, z, yp, x] - fixed_features[c, z, ym, x]) * np.float32(0.25)
                    gx = (warped_features[c, z, y, xp] - warped_features[c, z, y, xm]
                          + fixed_features[c, z, y, xp] - fixed_features[c, z, y, xm]) * np.float32(0.25)
                    bz += residual * gz
                    by += residual * gy
                    bx += residual * gx
                    grad_sq += gz * gz + gy * gy + gx * gx
                    residual_sq += residual * residual
                out[0, z, y, x] = bz
                out[1, z, y, x] = by
                out[2, z, y, x] = bx
                out[3, z, y, x] = grad_sq + residual_sq * inverse_step_sq
                plane += residual_sq
        energy[z] = plane


@njit(cache=True, nogil=True)
def smooth_axis_slab(volume, kernel, axis, out, start, stop):
    """Convolve every channel along `axis` (0 = z, 1 = y, 2 = x) with a symmetric kernel, edges clamped.

    The slab [start, stop) runs over z for axis 1 and 2, over y for axis 0.
    Each output row of x is accumulated tap by tap over a whole row, so the
    innermost loop is contiguous and vectorises; the symmetric kernel pairs
    taps k and -k, halving the multiplications.
    """
    channels, nz, ny, nx = volume.shape
    radius = kernel.shape[0] // 2
    row = np.empty(nx + 2 * radius, dtype=np.float32)
    for c in range(channels):
        for outer in range(start, stop):
            if axis == 2:
                for y in range(ny):
                    _padded_row(volume[c, outer, y], radius, row)
                    _convolve_row(row, kernel, radius, out[c, outer, y])
            elif axis == 1:
                for y in range(ny):
                    _accumulate_rows(volume[c, outer], y, ny, kernel, radius, out[c, outer, y])
            else:
                for z in range(nz):
                    _accumulate_rows(volume[c, :, outer], z, nz, kernel, radius, out[c, z, outer])


@njit(cache=True, nogil=True, inline="always")
def _padded_row(source, radius, row):
    """source copied into the middle of row, its end values repeated `radius` times on each side."""
    n = source.shape[0]
    for i in range(radius):
        row[i] = source[0]
        row[radius + n + i] = source[n - 1]
    row[radius:radius + n] = source


@njit(cache=True, nogil=True, inline="always")
def _convolve_row(row, kernel, radius, out):
    """out[x] = sum_k kernel[k] row[x + k] for a symmetric kernel, row padded by radius."""
    n = out.shape[0]
    centre = kernel[radius]
    for x in range(n):
        out[x] = centre * row[x + radius]
    for k in range(radius):
        weight = kernel[k]
        low = k
        high = 2 * radius - k
        for x in range(n):
            out[x] += weight * (row[x + low] + row[x + high])


@njit(cache=True, nogil=True, inline="always")
def _accumulate_rows(plane, index, size, kernel, radius, out):
    """out = sum_k kernel[k] plane[clamp(index + k - radius)], whole rows at a time."""
    centre = kernel[radius]
    source = plane[index]
    for x in range(out.shape[0]):
        out[x] = centre * source[x]
    for k in range(radius):
        weight = kernel[k]
        below = plane[max(index + k - radius, 0)]
        above = plane[min(index + radius - k, size - 1)]
        for x in range(out.shape[0]):
            out[x] += weight * (below[x] + above[x])


@njit(cache=True, nogil=True, inline="always")
def _cell_gradient(field, c, z0, z1, y0, y1, x0, x1, wz, wy, wx):
    """Exact (d/dz, d/dy, d/dx) of the trilinear interpolant of field[c] inside one cell."""
    v000 = field[c, z0, y0, x0]
    v001 = field[c, z0, y0, x1]
    v010 = field[c, z0, y1, x0]
    v011 = field[c, z0, y1, x1]
    v100 = field[c, z1, y0, x0]
    v101 = field[c, z1, y0, x1]
    v110 = field[c, z1, y1, x0]
    v111 = field[c, z1, y1, x1]
    dz = ((v100 - v000) * (1 - wx) + (v101 - v001) * wx) * (1 - wy) \
        + ((v110 - v010) * (1 - wx) + (v111 - v011) * wx) * wy
    dy = ((v010 - v000) * (1 - wx) + (v011 - v001) * wx) * (1 - wz) \
        + ((v110 - v100) * (1 - wx) + (v111 - v101) * wx) * wz
    dx = ((v001 - v000) * (1 - wy) + (v011 - v010) * wy) * (1 - wz) \
        + ((v101 - v100) * (1 - wy) + (v111 - v110) * wy) * wz
    return dz, dy, dx


@njit(cache=True, nogil=True)
def min_jacobian_slab(displacement, index_ratio, index_offset, shape_yx, plane_min, start, stop):
    """Smallest det(I + grad u) of the trilinear field at index * index_ratio + index_offset.

    The points form a finer grid (the fixed image, same direction, `shape_yx`
    in-plane) inside the field's grid; planes start <= k < stop are done and
    plane_min[k] receives each plane's minimum.  The gradient is the exact one
    of the trilinear interpolant inside the cell holding each point.
    """
    nz, ny, nx = displacement.shape[1], displacement.shape[2], displacement.shape[3]
    for k in range(start, stop):
        z0, wz = _corner(k * index_ratio[0] + index_offset[0], nz)
        z1 = min(z0 + 1, nz - 1)
        smallest = np.inf
        for j in range(shape_yx[0]):
            y0, wy = _corner(j * index_ratio[1] + index_offset[1], ny)
            y1 = min(y0 + 1, ny - 1)
            for i in range(shape_yx[1]):
                x0, wx = _corner(i * index_ratio[2] + index_offset[2], nx)
                x1 = min(x0 + 1, nx - 1)
                a_z, a_y, a_x = _cell_gradient(displacement, 0, z0, z1, y0, y1, x0, x1, wz, wy, wx)
                b_z, b_y, b_x = _cell_gradient(displacement, 1, z0, z1, y0, y1, x0, x1, wz, wy, wx)
                c_z, c_y, c_x = _cell_gradient(displacement, 2, z0, z1, y0, y1, x0, x1, wz, wy, wx)
                a_z += 1
                b_y += 1
                c_x += 1
                det = (a_z * (b_y * c_x - b_x * c_y)
                       - a_y * (b_z * c_x - b_x * c_z)
                       + a_x * (b_z * c_y - b_y * c_z))
                if det < smallest:
                    smallest = det
        plane_min[k] = smallest
