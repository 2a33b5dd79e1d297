"""Clinical-size cases: a 0.5 mm CT of 512x512x400 and whole heads in a large moving field of view.

Each case is made from one real volume of ../shared/data, so its truth is known
exactly.  A case's images are that volume resampled (linear interpolation,
rounded back to int16) onto new grids, one of them through a known rigid motion
T; the truth follows benchmarks.cases: it maps a fixed head point x to T(x),
its moving point.

* "CT 1 mm -> CT 0.5 mm 512x512x400": the InVesalius head CT (0.96 x 0.96 x
  1.5 mm) *upsampled* onto a 0.5 mm grid of 512x512x400 (the moving image: an
  upsampled real CT, not a native 0.5 mm scan), against a 1 mm copy of the
  same CT on 256x256x200 with a 20 deg / 20 mm motion put into its resampling
  (the fixed image, fixed(x) = CT(T(x))).
* "T1 1 mm -> T1 in a 400^3 FOV": the Philips ADNI MPRAGE (whole head with
  face, 256x256x170 at 1 mm) as shipped (fixed) against the same volume moved
  45 deg / 40 mm and resampled once onto 400x400x400 at 1 mm (moving,
  moving(y) = T1(T^-1(y))): the head in the middle of a much larger field of view.
* "CT 1 mm -> CT in a 400^3 FOV": the same CT on a 1 mm grid of 200x250x220
  (fixed) against a copy moved 45 deg / 40 mm onto 400x400x400 at 1 mm (moving).

Grids keep the source's direction and are centred on where the head is in
them.  Built images are written uncompressed (they are read once per method),
and a case whose files exist is not built again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from . import cases
from .methods import method_named

logger = logging.getLogger(__name__)

KIND = "clinical"
REFERENCE_METHOD = "ours chain"  # "x ours" in this section divides by its time
METHOD_NAMES = ("ours chain", "ours rigid", "Greedy rigid", "Greedy chain", "elastix rigid", "ANTsPy Rigid")
SPEED_PEERS = ("elastix rigid", "Greedy rigid")  # the default chain must beat these on large-FOV cases
ACCURACY_TOLERANCE_MM = 0.1  # ours' median may exceed the best peer's by this much and still pass
CT_SOURCE = "invesalius_ct0051/ct0051_head_CT.nii.gz"
T1_SOURCE = "philips_elition_adni_mprage/ADNI_Sag3D_MPRAGE_1mm.nii.gz"


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size (i, j, k) and isotropic spacing in mm."""

    size: tuple
    spacing_mm: float


@dataclass(frozen=True)
class ClinicalSpec:
    """How one clinical-size case is made from one shared volume.

    moved: which image carries the motion in its resampling ("fixed" or "moving").
    fixed_grid None: the source file itself is the fixed image.
    memory_limit_mb: the bound ours' peak memory is checked against (None: no check).
    speed_check: whether ours chain must be faster than SPEED_PEERS here.
    """

    name: str
    source: str
    fixed_grid: Optional[Grid]
    moving_grid: Grid
    level: cases.Level
    moved: str
    memory_limit_mb: Optional[float]
    speed_check: bool
    description: str


SPECS = (
    ClinicalSpec(
        "CT 1 mm -> CT 0.5 mm 512x512x400", CT_SOURCE, Grid((256, 256, 200), 1.0),
        Grid((512, 512, 400), 0.5), cases.Level("20deg/20mm", (20.0, 20.0), (20.0, 20.0)), "fixed",
        2500.0, False,
        "moving: the InVesalius head CT (0.96x0.96x1.5 mm, int16 HU) upsampled with linear "
        "interpolation onto 512x512x400 at 0.5 mm; fixed: the same CT resampled onto 256x256x200 "
        "at 1 mm through a known rigid motion; both from one real CT"),
    ClinicalSpec(
        "T1 1 mm -> T1 in a 400^3 FOV", T1_SOURCE, None, Grid((400, 400, 400), 1.0),
        cases.Level("45deg/40mm", (45.0, 45.0), (40.0, 40.0)), "moving", 2000.0, True,
        "fixed: the Philips ADNI MPRAGE whole head (256x256x170 at 1 mm) as shipped; moving: the "
        "same volume moved by a known rigid motion and resampled once (linear) onto 400x400x400 "
        "at 1 mm, background 0"),
    ClinicalSpec(
        "CT 1 mm -> CT in a 400^3 FOV", CT_SOURCE, Grid((200, 250, 220), 1.0), Grid((400, 400, 400), 1.0),
        cases.Level("45deg/40mm", (45.0, 45.0), (40.0, 40.0)), "moving", 2000.0, True,
        "fixed: the InVesalius head CT resampled (linear) onto 200x250x220 at 1 mm; moving: the "
        "same CT moved by a known rigid motion and resampled once onto 400x400x400 at 1 mm, "
        "background -1024"),
)


# ---------------------------------------------------------------- building

def build_clinical_cases(data_dir: Path, out_dir: Path, specs: Sequence[ClinicalSpec] = SPECS,
                         seed: int = 0) -> list:
    """Build (or reuse) every clinical case under out_dir/clinical; return the cases."""
    return [build_clinical_case(Path(data_dir), Path(out_dir) / "clinical", spec, seed, number)
            for number, spec in enumerate(specs)]


def build_clinical_case(data_dir: Path, out_dir: Path, spec: ClinicalSpec, seed: int,
                        number: int) -> cases.Case:
    """One case's images, head mask and truth; reused when a previous run wrote them all."""
    directory = out_dir / cases.slug(spec.name)
    index_path = directory / "case.json"
    if index_path.exists():
        case = cases.Case(**json.loads(index_path.read_text()))
        paths = (case.fixed_path, case.moving_path, case.mask_path, case.truth_path)
        if case.seed == seed and all(Path(path).exists() for path in paths):
            logger.info("%s: reusing the case built in %s", spec.name, directory)
            return case
    directory.mkdir(parents=True, exist_ok=True)
    source_path = data_dir / spec.source
    source = sitk.ReadImage(str(source_path))
    centre = cases.mask_centre(source, cases.head_mask(source))
    rng = np.random.default_rng((seed, 13, number))
    motion = cases.random_rigid(rng, spec.level, centre)
    fixed, moving = _case_images(source, spec, motion, centre)
    if fixed is None:
        fixed_path = source_path
        fixed = source
    else:
        fixed_path = directory / "fixed.nrrd"
        sitk.WriteImage(fixed, str(fixed_path), False)
    moving_path = directory / "moving.nrrd"
    sitk.WriteImage(moving, str(moving_path), False)
    case = _write_truth(spec, seed, fixed, fixed_path, moving_path, motion, rng, directory)
    index_path.write_text(json.dumps(case.as_dict(), indent=1))
    logger.info("%s: built in %s (moving %s voxels)", spec.name, directory, "x".join(map(str, moving.GetSize())))
    return case


def _case_images(source: sitk.Image, spec: ClinicalSpec, motion: cases.RigidMotion, centre: np.ndarray):
    """(fixed or None, moving): fixed(x) = source(T(x)) or moving(y) = source(T^-1(y)), per spec.moved."""
    move = motion_transform(motion)
    if spec.moved == "fixed":
        return (resample_onto(source, spec.fixed_grid, move, centre),
                resample_onto(source, spec.moving_grid, sitk.Euler3DTransform(), centre))
    fixed = None if spec.fixed_grid is None else resample_onto(source, spec.fixed_grid,
                                                               sitk.Euler3DTransform(), centre)
    return fixed, resample_onto(source, spec.moving_grid, move.GetInverse(), centre)


def motion_transform(motion: cases.RigidMotion) -> sitk.AffineTransform:
    """The motion x -> R (x - c) + c + t as a SimpleITK transform."""
    return sitk.AffineTransform(motion.rotation.ravel().tolist(), motion.translation.tolist(),
                                motion.centre.tolist())


def grid_origin(grid: Grid, direction: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Origin of `grid` (with `direction`) whose middle voxel sits at the physical point `centre`."""
    half_extent = (np.asarray(grid.size) - 1) * grid.spacing_mm / 2.0
    return np.asarray(centre, float) - np.asarray(direction).reshape(3, 3) @ half_extent


def resample_onto(source: sitk.Image, grid: Grid, to_source: sitk.Transform, centre: np.ndarray) -> sitk.Image:
    """`source` seen through `to_source` (output point -> source point) on `grid`, int16, rounded.

    The grid keeps the source's direction and is centred on where the head
    (at `centre` in the source) appears in the output.  Outside the source:
    its minimum (-1024 for the CT, 0 for the T1).
    """
    head = np.asarray(to_source.GetInverse().TransformPoint(tuple(float(v) for v in centre)))
    direction = source.GetDirection()
    background = float(sitk.GetArrayViewFromImage(source).min())
    resampled = sitk.Resample(source, grid.size, to_source, sitk.sitkLinear,
                              tuple(grid_origin(grid, np.asarray(direction), head)),
                              (grid.spacing_mm,) * 3, direction, background, sitk.sitkFloat32)
    image = sitk.GetImageFromArray(np.rint(sitk.GetArrayViewFromImage(resampled)).astype(np.int16))
    image.CopyInformation(resampled)
    return image


def _write_truth(spec: ClinicalSpec, seed: int, fixed: sitk.Image, fixed_path: Path, moving_path: Path,
                 motion: cases.RigidMotion, rng: np.random.Generator, directory: Path) -> cases.Case:
    """Head mask, TRE points and their true moving points, stored as benchmarks.cases stores them."""
    mask = cases.head_mask(fixed)
    mask_path = directory / "fixed_head_mask.nrrd"
    sitk.WriteImage(cases.mask_image(mask, fixed), str(mask_path), True)
    index = cases.sample_points(mask, rng)
    points = cases.index_to_physical(fixed, index)
    truth_path = directory / "truth.npz"
    np.savez(truth_path, index=index, points=points, truth=motion.apply(points))
    return cases.Case(
        name=f"{spec.name} | seed {seed}", pair=spec.name, kind=KIND, level=spec.level.name, seed=seed,
        fixed_path=str(fixed_path), moving_path=str(moving_path), mask_path=str(mask_path),
        truth_path=str(truth_path), rotation_degrees=round(motion.degrees, 3),
        translation_mm=round(float(np.linalg.norm(motion.translation)), 3))


def describe(case: cases.Case, specs: Sequence[ClinicalSpec] = SPECS) -> str:
    """One line saying how a built case was made, with its actual motion."""
    spec = spec_named(case.pair, specs)
    return (f"{case.pair}: {spec.description}; motion {case.rotation_degrees:.1f} deg / "
            f"{case.translation_mm:.1f} mm")


def spec_named(name: str, specs: Sequence[ClinicalSpec] = SPECS) -> ClinicalSpec:
    return next(spec for spec in specs if spec.name == name)


# ---------------------------------------------------------------- methods

def selected_method_names(requested: Optional[Sequence[str]]) -> list:
    """METHOD_NAMES, narrowed to those named (or whose tool is named) in `requested` if given."""
    if not requested:
        return list(METHOD_NAMES)
    return [name for name in METHOD_NAMES
            if name in requested or method_named(name).tool in requested]


# ---------------------------------------------------------------- checks

def clinical_checks(summaries: list, specs: Sequence[ClinicalSpec] = SPECS) -> list:
    """The section's promises as (passed, sentence): memory, speed on large FOVs, accuracy."""
    checks = []
    for spec in specs:
        chosen = {s["method"]: s for s in summaries if s["kind"] == KIND and s["pair"] == spec.name}
        ours = [s for s in chosen.values() if s["tool"] == "ours"]
        peers = [s for s in chosen.values() if s["tool"] != "ours" and s.get("status") != "missing"]
        if spec.memory_limit_mb is not None:
            checks += [_memory_check(spec, s) for s in ours]
        if spec.speed_check and REFERENCE_METHOD in chosen:
            checks += [_speed_check(spec, chosen[REFERENCE_METHOD], chosen[name])
                       for name in SPEED_PEERS if name in chosen]
        checks += [_accuracy_check(spec, s, peers) for s in ours]
    return checks


def _memory_check(spec: ClinicalSpec, ours: dict) -> tuple:
    peak = ours.get("peak_mb")
    if peak is None:
        return False, f"{ours['method']}, {spec.name}: peak memory not measured ({ours.get('status')})"
    where = f" during '{ours['peak_step']}'" if ours.get("peak_step") else ""
    return (peak < spec.memory_limit_mb,
            f"{ours['method']}, {spec.name}: peak {peak:.0f} MB{where} (< {spec.memory_limit_mb:.0f} MB)")


def _speed_check(spec: ClinicalSpec, ours: dict, peer: dict) -> tuple:
    """Ours chain faster than `peer`; a peer that ran out of time counts as slower."""
    label = f"{REFERENCE_METHOD} vs {peer['method']}, {spec.name}"
    if ours.get("seconds") is None:
        return False, f"{label}: ours not measured ({ours.get('status')})"
    if peer.get("status") == "missing":
        return False, f"{label}: peer not measured (not installed)"
    if peer.get("seconds") is None:
        timed_out = "timeout" in str(peer.get("status"))
        return timed_out, f"{label}: ours {ours['seconds']:.1f} s, peer {peer.get('status')}"
    ratio = peer["seconds"] / ours["seconds"]
    return (ratio > 1.0, f"{label}: the peer takes {ratio:.2f}x ours' time (ours {ours['seconds']:.1f} s, "
                         f"{peer['method']} {peer['seconds']:.1f} s)")


def _accuracy_check(spec: ClinicalSpec, ours: dict, peers: list) -> tuple:
    """Ours' median TRE at most the best peer's plus ACCURACY_TOLERANCE_MM."""
    scored = [peer for peer in peers if peer.get("tre_median") is not None]
    label = f"{ours['method']}, {spec.name}"
    if ours.get("tre_median") is None:
        return False, f"{label}: no error measured ({ours.get('status')})"
    if not scored:
        return True, f"{label}: median TRE {ours['tre_median']:.2f} mm (no peer measured)"
    best = min(scored, key=lambda peer: peer["tre_median"])
    return (ours["tre_median"] <= best["tre_median"] + ACCURACY_TOLERANCE_MM,
            f"{label}: median TRE {ours['tre_median']:.2f} mm vs best peer {best['method']} "
            f"{best['tre_median']:.2f} mm (tolerance {ACCURACY_TOLERANCE_MM:g} mm)")
