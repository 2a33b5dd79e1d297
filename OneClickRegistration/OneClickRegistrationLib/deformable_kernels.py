"""Numba kernels for the deformable stage: the loops that run every iteration.

All arrays are float32 and C-contiguous.  Fields and multi-channel images are
4D arrays shaped (channels, z, y, x) on one working grid; a displacement field
has three channels holding the (z, y, x) displacement in voxels of that grid.
Points outside the grid take the value of the nearest border voxel, which keeps
warps and compositions defined near the edge without inventing edges.

Each kernel is compiled for one signature only and cached on disk
(cache=True), so the compile cost is paid once per machine.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _corner(position: float, size: int):
    """Lower grid index and weight of the upper neighbour, clamped to the grid."""
    if position <= 0.0:
        return 0, np.float32(0.0)
    if position >= size - 1:
        return max(size - 2, 0), np.float32(1.0 if size > 1 else 0.0)
    lower = int(position)
    return lower, np.float32(position - lower)


@njit(cache=True, inline="always")
def _trilinear(volume, channel, z, y, x):
    """Value of volume[channel] at the continuous index (z, y, x)."""
    nz, ny, nx = volume.shape[1], volume.shape[2], volume.shape[3]
    z0, wz = _corner(z, nz)
    y0, wy = _corner(y, ny)
    x0, wx = _corner(x, nx)
    z1 = min(z0 + 1, nz - 1)
    y1 = min(y0 + 1, ny - 1)
    x1 = min(x0 + 1, nx - 1)
    c00 = volume[channel, z0, y0, x0] * (1 - wx) + volume[channel, z0, y0, x1] * wx
    c01 = volume[channel, z0, y1, x0] * (1 - wx) + volume[channel, z0, y1, x1] * wx
    c10 = volume[channel, z1, y0, x0] * (1 - wx) + volume[channel, z1, y0, x1] * wx
    c11 = volume[channel, z1, y1, x0] * (1 - wx) + volume[channel, z1, y1, x1] * wx
    return (c00 * (1 - wy) + c01 * wy) * (1 - wz) + (c10 * (1 - wy) + c11 * wy) * wz


@njit(cache=True, parallel=True, fastmath=True)
def warp(volume, displacement):
    """volume(x + displacement(x)) for every voxel x and every channel of volume."""
    channels = volume.shape[0]
    nz, ny, nx = displacement.shape[1], displacement.shape[2], displacement.shape[3]
    out = np.empty((channels, nz, ny, nx), dtype=np.float32)
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                pz = z + displacement[0, z, y, x]
                py = y + displacement[1, z, y, x]
                px = x + displacement[2, z, y, x]
                for c in range(channels):
                    out[c, z, y, x] = _trilinear(volume, c, pz, py, px)
    return out


@njit(cache=True, parallel=True, fastmath=True)
def compose(first, second):
    """Displacement of (id + second) o (id + first): first(x) + second(x + first(x))."""
    nz, ny, nx = first.shape[1], first.shape[2], first.shape[3]
    out = np.empty_like(first)
    for z in prange(nz):
        for y in range(ny):
            for x in range(nx):
                pz = z + first[0, z, y, x]
                py = y + first[1, z, y, x]
                px = x + first[2, z, y, x]
                for c in range(3):
                    out[c, z, y, x] = first[c, z, y, x] + _trilinear(second, c, pz, py, px)
    return out


@njit(cache=True, parallel=True, fastmath=True)
def resample_scaled(volume, shape, index_ratio, value_scale):
    """volume sampled at index * index_ratio on a grid of `shape`, times value_scale.

    Moves a field between levels of the pyramid (same origin and direction,
    spacing ratio index_ratio) and rescales its voxel-unit values.
    """
    channels = volume.shape[0]
    out = np.empty((channels, shape[0], shape[1], shape[2]), dtype=np.float32)
    for z in prange(shape[0]):
        for y in range(shape[1]):
            for x in range(shape[2]):
                for c in range(channels):
                    value = _trilinear(volume, c, z * index_ratio[0], y * index_ratio[1],
                                       x * index_ratio[2])
                    out[c, z, y, x] = value * value_scale
    return out


@njit(cache=True, parallel=True, fastmath=True)
def demons_step(fixed_features, warped_features, mask, max_step):
    """Multi-channel demons update (voxels) and the masked sum of squared differences.

    For each voxel: u = sum_c r_c grad W_c / (sum_c |grad W_c|^2 + sum_c r_c^2 / max_step^2),
    with r_c = F_c - W_c.  The update vanishes where the images already agree,
    never exceeds max_step / 2 voxels, and is zero outside the mask.
    """
    channels = fixed_features.shape[0]
    nz, ny, nx = mask.shape
    update = np.zeros((3, nz, ny, nx), dtype=np.float32)
    inverse_step_sq = np.float32(1.0 / (max_step * max_step))
    plane_energy = np.zeros(nz, dtype=np.float64)
    for z in prange(nz):
        zm = max(z - 1, 0)
        zp = min(z + 1, nz - 1)
        for y in range(ny):
            ym = max(y - 1, 0)
            yp = min(y + 1, ny - 1)
            for x in range(nx):
                if mask[z, y, x] == 0:
                    continue
                xm = max(x - 1, 0)
                xp = min(x + 1, nx - 1)
                gz_sum = np.float32(0.0)
                gy_sum = np.float32(0.0)
                gx_sum = np.float32(0.0)
                grad_sq = np.float32(0.0)
                residual_sq = np.float32(0.0)
                for c in range(channels):
                    residual = fixed_features[c, z, y, x] - warped_features[c, z, y, x]
                    gz = (warped_features[c, zp, y, x] - warped_features[c, zm, y, x]) * np.float32(0.5)
                    gy = (warped_features[c, z, yp, x] - warped_features[c, z, ym, x]) * np.float32(0.5)
                    gx = (warped_features[c, z, y, xp] - warped_features[c, z, y, xm]) * np.float32(0.5)
                    gz_sum += residual * gz
                    gy_sum += residual * gy
                    gx_sum += residual * gx
                    grad_sq += gz * gz + gy * gy + gx * gx
                    residual_sq += residual * residual
                plane_energy[z] += residual_sq
                denominator = grad_sq + residual_sq * inverse_step_sq
                if denominator > np.float32(1e-9):
                    update[0, z, y, x] = gz_sum / denominator
                    update[1, z, y, x] = gy_sum / denominator
                    update[2, z, y, x] = gx_sum / denominator
    return update, plane_energy.sum()


@njit(cache=True, parallel=True, fastmath=True)
def smooth(volume, kernel):
    """Separable convolution of every channel with a symmetric 1D kernel, edges clamped."""
    channels, nz, ny, nx = volume.shape
    radius = kernel.shape[0] // 2
    along_x = np.empty_like(volume)
    for index in prange(channels * nz):
        c = index // nz
        z = index % nz
        for y in range(ny):
            for x in range(nx):
                total = np.float32(0.0)
                for k in range(kernel.shape[0]):
                    total += kernel[k] * volume[c, z, y, min(max(x + k - radius, 0), nx - 1)]
                along_x[c, z, y, x] = total
    along_y = np.empty_like(volume)
    for index in prange(channels * nz):
        c = index // nz
        z = index % nz
        for y in range(ny):
            for x in range(nx):
                total = np.float32(0.0)
                for k in range(kernel.shape[0]):
                    total += kernel[k] * along_x[c, z, min(max(y + k - radius, 0), ny - 1), x]
                along_y[c, z, y, x] = total
    out = along_x
    for index in prange(channels * ny):
        c = index // ny
        y = index % ny
        for z in range(nz):
            for x in range(nx):
                total = np.float32(0.0)
                for k in range(kernel.shape[0]):
                    total += kernel[k] * along_y[c, min(max(z + k - radius, 0), nz - 1), y, x]
                out[c, z, y, x] = total
    return out


@njit(cache=True, inline="always")
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


@njit(cache=True, parallel=True, fastmath=True)
def min_jacobian_at(displacement, shape, index_ratio, index_offset):
    """Smallest det(I + grad u) of the trilinear field at the points index * index_ratio + index_offset.

    `shape`, `index_ratio` and `index_offset` place a finer grid (the fixed
    image, same direction) inside the field's grid; the gradient is the exact
    one of the trilinear interpolant inside the cell holding each point.
    """
    nz, ny, nx = displacement.shape[1], displacement.shape[2], displacement.shape[3]
    plane_min = np.full(shape[0], np.inf, dtype=np.float32)
    for k in prange(shape[0]):
        z0, wz = _corner(k * index_ratio[0] + index_offset[0], nz)
        z1 = min(z0 + 1, nz - 1)
        for j in range(shape[1]):
            y0, wy = _corner(j * index_ratio[1] + index_offset[1], ny)
            y1 = min(y0 + 1, ny - 1)
            for i in range(shape[2]):
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
                if det < plane_min[k]:
                    plane_min[k] = det
    return plane_min.min()
