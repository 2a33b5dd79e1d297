"""Gaussian smoothing of whole volumes, separable, on the worker threads (parallel.py).

The score and the deformable stage smooth the full-resolution working copies
before sampling them on coarser grids.  ITK's recursive Gaussian
(SmoothingRecursiveGaussian) costs about 40 ns a voxel there, over 0.8 s for the
working copy of a head in a 400^3 field of view; a sampled Gaussian of a
voxel or two is a few taps per axis, and the numba kernel does it ten times
faster with the same result within the recursive filter's own approximation.
`separable` is the one convolution of the library: images here, and the
deformable stages' fields and features (deformable.py, diffeomorphic.py).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import SimpleITK as sitk

from .parallel import run_slabs

# Kernels are truncated at this many standard deviations.
TRUNCATE_SIGMAS = 3.0
# Below this many voxels a Gaussian changes nothing worth a pass.
MIN_SIGMA_VOXELS = 0.1


def gaussian_kernel(sigma_voxels: float) -> Optional[np.ndarray]:
    """Normalised 1D Gaussian truncated at TRUNCATE_SIGMAS; None when sigma is negligible."""
    if sigma_voxels < MIN_SIGMA_VOXELS:
        return None
    radius = max(1, int(math.ceil(TRUNCATE_SIGMAS * sigma_voxels)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma_voxels) ** 2)
    return (kernel / kernel.sum()).astype(np.float32)


def gaussian(image: sitk.Image, sigma_mm: float) -> sitk.Image:
    """A 3D scalar image smoothed by a Gaussian of sigma_mm along every axis (edges clamped), as float32.

    Each axis has its own kernel in voxels, so anisotropic spacing is honoured;
    the geometry is the image's.  The input is not modified.
    """
    volume = sitk.GetArrayViewFromImage(image).astype(np.float32, copy=False)[np.newaxis]
    kernels = tuple(gaussian_kernel(sigma_mm / spacing) for spacing in reversed(image.GetSpacing()))  # z, y, x
    result = sitk.GetImageFromArray(separable(volume, kernels)[0])
    result.CopyInformation(image)
    return result


def separable(volume: np.ndarray, kernels) -> np.ndarray:
    """Every channel of a (channels, z, y, x) float32 array convolved along z, y and x with
    kernels[0], [1], [2] (symmetric 1D kernels; None leaves that axis alone), edges clamped.

    `volume` itself when every kernel is None; otherwise a new array (volume is not modified).
    """
    from . import deformable_kernels  # numba, compiled or loaded from its cache on first use only

    source, spare = volume, None
    for axis in (2, 1, 0):
        if kernels[axis] is None:
            continue
        target = spare if spare is not None else np.empty_like(volume)
        planes = volume.shape[2] if axis == 0 else volume.shape[1]
        run_slabs(deformable_kernels.smooth_axis_slab, planes, source, kernels[axis], axis, target)
        spare = source if source is not volume else None
        source = target
    return source
