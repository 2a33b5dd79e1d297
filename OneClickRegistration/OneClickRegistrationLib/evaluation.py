"""Known-transform cases and target registration error, for tests, demo and benchmarks.

A case is built by moving an image *in its header* by a known rigid motion
(no resampling, no interpolation blur): the voxel that sat at physical point
p now sits at truth(p), so truth is exactly the fixed -> moving mapping.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk


def rigid_transform(rotation_deg: Sequence[float], translation_mm: Sequence[float], center) -> sitk.Euler3DTransform:
    """Euler rotation (degrees, about x, y, z) about `center`, then translation (mm)."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(c) for c in center])
    transform.SetRotation(*np.deg2rad(rotation_deg))
    transform.SetTranslation([float(t) for t in translation_mm])
    return transform


def random_rigid(rng: np.random.Generator, max_angle_deg: float, max_shift_mm: float, center) -> sitk.VersorRigid3DTransform:
    """A rotation of exactly max_angle_deg about a random axis and a shift of max_shift_mm in a random direction."""
    axis = rng.normal(size=3)
    direction = rng.normal(size=3)
    transform = sitk.VersorRigid3DTransform()
    transform.SetCenter([float(c) for c in center])
    transform.SetRotation((axis / np.linalg.norm(axis)).tolist(), float(np.deg2rad(max_angle_deg)))
    transform.SetTranslation((direction / np.linalg.norm(direction) * max_shift_mm).tolist())
    return transform


def move_header(image: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """A copy of `image` whose voxels sit at transform(original position): header change only.

    `transform` must be rigid (orthonormal matrix), so the new direction stays valid.
    """
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    moved = sitk.Image(image)
    moved.SetDirection((matrix @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    moved.SetOrigin(transform.TransformPoint(image.GetOrigin()))
    return moved


def mask_points(mask: sitk.Image, max_points: int = 3000, seed: int = 0) -> np.ndarray:
    """Physical points (N, 3) of up to max_points voxels inside `mask`, drawn reproducibly."""
    indices = np.argwhere(sitk.GetArrayViewFromImage(mask))
    if len(indices) > max_points:
        indices = indices[np.random.default_rng(seed).choice(len(indices), max_points, replace=False)]
    return np.array([mask.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]]) for index in indices])


def target_registration_error(estimate: sitk.Transform, truth: sitk.Transform, points: np.ndarray) -> np.ndarray:
    """Distance (mm) between where `estimate` and `truth` send each point."""
    return np.array([np.linalg.norm(np.subtract(estimate.TransformPoint(p), truth.TransformPoint(p)))
                     for p in points.tolist()])
