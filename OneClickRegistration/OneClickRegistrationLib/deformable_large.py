"""The far-reaching deformable stage: two different people, or a patient and a template.

Between two scans of one patient the deformable stage corrects a few
millimetres (deformable.py); between two people the anatomy differs by a
centimetre or more (ventricles, sulci, skull shape), beyond what its demons
steps reach.  This stage runs the symmetric diffeomorphic engine
(diffeomorphic.py: both images moved half way, greedy compositive steps, no
folding at any amplitude) on an isotropic grid in the fixed image's space,
with the images already aligned by the linear stages:

* one modality: local normalised cross-correlation of the intensities;
* two modalities (a CT against an MR template): sum of squared differences of
  MIND descriptors, which describe local self-similarity whatever the contrast.

The result is the same DeformableOutcome as deformable.register_deformable,
so the pipeline composes, scores and keeps it the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from . import deformable, diffeomorphic
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]

# Room around the fixed image for points a large deformation pushes out of its field of view.
_MARGIN_MM = 10.0
# MIND patch size, in voxels of the working grid.
_MIND_PATCH_VOXELS = 1.0


@dataclass(frozen=True)
class InterSubjectSettings:
    """The preset table's "inter_subject" object: how far-reaching registration is done.

    grid_spacing_mm: the working grid (never finer than the fixed image's finest voxel).
    engine: diffeomorphic.DiffeomorphicSettings; its metric is chosen per pair
        (lncc for one modality, ssd of MIND descriptors for two).
    """

    grid_spacing_mm: float = 2.0
    engine: diffeomorphic.DiffeomorphicSettings = diffeomorphic.DiffeomorphicSettings()

    @classmethod
    def from_dict(cls, values: dict) -> "InterSubjectSettings":
        """Validate the table's "inter_subject" object; errors name the bad key."""
        if not isinstance(values, dict):
            raise InvalidInputError(f"inter_subject: expected an object, got {type(values).__name__}")
        unknown = sorted(set(values) - {"description", "grid_spacing_mm", "engine"})
        if unknown:
            raise InvalidInputError(f"inter_subject.{unknown[0]}: unknown key; known keys: description, "
                                    "engine, grid_spacing_mm")
        spacing = values.get("grid_spacing_mm", cls.grid_spacing_mm)
        if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not spacing > 0:
            raise InvalidInputError(f"inter_subject.grid_spacing_mm: expected a positive number, got {spacing!r}")
        engine = values.get("engine", {})
        if isinstance(engine, dict) and "metric" in engine:
            raise InvalidInputError("inter_subject.engine.metric: chosen per pair (lncc for one modality, "
                                    "MIND descriptors for two); remove the key")
        try:
            engine_settings = diffeomorphic.DiffeomorphicSettings.from_dict(engine)
        except InvalidInputError as error:
            raise InvalidInputError(f"inter_subject.engine: {error}") from None
        return cls(grid_spacing_mm=float(spacing), engine=engine_settings)


def register_large_deformation(
    fixed: sitk.Image,
    moving: sitk.Image,
    initial_transform: sitk.Transform,
    settings: InterSubjectSettings,
    *,
    cross_modality: bool,
    fixed_mask: Optional[sitk.Image] = None,
    progress: Optional[ProgressCallback] = None,
) -> deformable.DeformableOutcome:
    """Find the diffeomorphic correction u with moving(A(x + u(x))) ~ fixed(x), however large.

    fixed, moving: float32 3D working images; initial_transform: A, the linear
    result (fixed -> moving).  fixed_mask: the head on the fixed grid, where the
    metric counts.  progress(fraction, message) may raise, which propagates.
    """
    start = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    report(0.0, "preparing images")
    spacing = max(settings.grid_spacing_mm, min(fixed.GetSpacing()))
    grid = deformable._Grid.covering(fixed, spacing, _MARGIN_MM)
    fixed_grid = deformable._to_grid(fixed, sitk.Transform(3, sitk.sitkIdentity), grid)
    moving_grid = deformable._to_grid(moving, initial_transform, grid)
    mask = deformable._mask_on_grid(fixed_mask, grid) > 0
    report(0.02, "describing the images")
    fixed_features, moving_features, metric = _features(fixed_grid, moving_grid, cross_modality)
    engine = dataclasses.replace(settings.engine, metric=metric)
    outcome = diffeomorphic.register_diffeomorphic(
        fixed_features, moving_features, mask=mask, settings=engine,
        progress=lambda fraction, message: report(0.05 + 0.93 * fraction, message))
    report(0.98, "building the transforms")
    max_displacement = float(np.sqrt((outcome.forward ** 2).sum(axis=0)).max() * grid.spacing)
    seconds = time.perf_counter() - start
    logger.info("far-reaching deformable stage (%s, %g mm grid): max displacement %.1f mm, min Jacobian %.3f, "
                "inverse consistency %.3f mm, %.1f s", metric, grid.spacing, max_displacement, outcome.min_jacobian,
                outcome.inverse_consistency_voxels * grid.spacing, seconds)
    return deformable.DeformableOutcome(
        forward=deformable._displacement_transform(outcome.forward, grid),
        inverse=deformable._displacement_transform(outcome.inverse, grid),
        min_jacobian=outcome.min_jacobian,
        seconds=seconds,
        max_displacement_mm=max_displacement,
        iterations_run=outcome.iterations_run,
    )


def _features(fixed: np.ndarray, moving: np.ndarray, cross_modality: bool):
    """(fixed features, moving features, engine metric): intensities for one modality, MIND for two."""
    if not cross_modality:
        return fixed[np.newaxis], moving[np.newaxis], "lncc"
    return (deformable._mind_descriptors(fixed, _MIND_PATCH_VOXELS),
            deformable._mind_descriptors(moving, _MIND_PATCH_VOXELS), "ssd")
