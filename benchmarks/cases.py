"""Benchmark cases with a known answer, built from aligned real image pairs.

Each pair in `PAIRS` shares one grid, so the true fixed-to-moving mapping of
the files as shipped is the identity.  A case misaligns the moving image by a
known transform and records the truth at points inside the fixed head:

* rigid cases change only the moving image's header (direction and origin):
  its voxels are untouched;
* deformable cases resample the moving image once through a smooth random
  deformation (peak 4-8 mm), then change the header by a known rigid motion;
* held-out rigid cases (one per pair, variant and level band, seed 0) vary
  what the rigid cases hold fixed: the moving image resampled once through
  the rigid motion (cubic B-spline, as a scanner would have sampled it,
  float32) instead of a header change, and the roles swapped (the pair's
  moving image fixed); their pair names say which ("T2->T1 (stroke),
  resampled").

The truth follows the ITK convention used throughout the project: it maps a
fixed physical point (LPS, mm) to the corresponding moving physical point.
The methods see only the two image files, never the truth or the points.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """Two aligned images on one grid: the fixed one and the one to misalign."""

    name: str
    fixed: str
    moving: str


PAIRS = (
    Pair("T1->T2 (stroke)", "cstar_stroke_t1_t2_flair/T1.nii.gz", "cstar_stroke_t1_t2_flair/T2.nii.gz"),
    Pair("T1->FLAIR (stroke)", "cstar_stroke_t1_t2_flair/T1.nii.gz", "cstar_stroke_t1_t2_flair/FLAIR.nii.gz"),
    Pair("T1->T2 (MNI)", "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz", "mni_templates_ct_t1_t2_pd/spm_avg152T2.nii.gz"),
    Pair("T1->PD (MNI)", "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz", "mni_templates_ct_t1_t2_pd/spm_avg152PD.nii.gz"),
    Pair("T1->CT (MNI)", "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz", "mni_templates_ct_t1_t2_pd/clinical_scct.nii.gz"),
)


@dataclass(frozen=True)
class Level:
    """A band of misalignment: rotation angle and translation length ranges."""

    name: str
    degrees: tuple
    millimetres: tuple


LEVELS = (
    Level("<=15deg/15mm", (0.0, 15.0), (0.0, 15.0)),
    Level("15-30deg/15-30mm", (15.0, 30.0), (15.0, 30.0)),
    Level("30-45deg/30-40mm", (30.0, 45.0), (30.0, 40.0)),
)

DEFORMATION_PEAK_MM = (4.0, 8.0)
DEFORMATION_SMOOTHNESS_MM = 20.0
DEFORMATION_LEVEL = LEVELS[0]
TRE_POINTS = 4000


@dataclass
class Case:
    """One registration problem: two files for the methods, the truth for scoring."""

    name: str
    pair: str
    kind: str  # "rigid" or "deformable"
    level: str
    seed: int
    fixed_path: str
    moving_path: str
    mask_path: str
    truth_path: str
    rotation_degrees: float
    translation_mm: float
    deformation_peak_mm: float = 0.0

    def truth(self) -> dict:
        """Point indices, fixed points and their true moving points (arrays)."""
        with np.load(self.truth_path) as data:
            return {key: data[key] for key in data.files}

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- geometry

def index_to_physical(image: sitk.Image, index_xyz: np.ndarray) -> np.ndarray:
    """Physical (LPS) points of continuous indices given as rows (i, j, k)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    origin = np.asarray(image.GetOrigin())
    return (np.asarray(index_xyz, float) * spacing) @ direction.T + origin


def rotation_matrix(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation by `degrees` about the unit vector `axis` (Rodrigues)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.deg2rad(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def random_unit_vector(rng: np.random.Generator) -> np.ndarray:
    vector = rng.normal(size=3)
    return vector / np.linalg.norm(vector)


@dataclass(frozen=True)
class RigidMotion:
    """x -> R (x - c) + c + t: a rotation about the head centre c, then a shift."""

    rotation: np.ndarray
    centre: np.ndarray
    translation: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        return (points - self.centre) @ self.rotation.T + self.centre + self.translation

    @property
    def degrees(self) -> float:
        cosine = np.clip((np.trace(self.rotation) - 1) / 2, -1.0, 1.0)
        return float(np.rad2deg(np.arccos(cosine)))


def random_rigid(rng: np.random.Generator, level: Level, centre: np.ndarray) -> RigidMotion:
    """A rotation about a random axis and a shift in a random direction, in `level`'s bands."""
    degrees = rng.uniform(*level.degrees)
    length = rng.uniform(*level.millimetres)
    rotation = rotation_matrix(random_unit_vector(rng), degrees)
    return RigidMotion(rotation, np.asarray(centre, float), length * random_unit_vector(rng))


def move_header(image: sitk.Image, motion: RigidMotion) -> sitk.Image:
    """The same voxels, with direction and origin moved so every voxel sits at motion(x)."""
    moved = sitk.Image(image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    moved.SetDirection(tuple((motion.rotation @ direction).ravel()))
    moved.SetOrigin(tuple(motion.apply(np.asarray(image.GetOrigin())[None])[0]))
    return moved


# ---------------------------------------------------------------- head mask and points

def head_mask(image: sitk.Image) -> np.ndarray:
    """Boolean (z, y, x) mask of the head: Otsu foreground, holes filled, largest part."""
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.Cast(image, sitk.sitkFloat32))
    mask = sitk.GetArrayFromImage(image) > otsu.GetThreshold()
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum(mask, labels, range(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))


def sample_points(mask: np.ndarray, rng: np.random.Generator, count: int = TRE_POINTS) -> np.ndarray:
    """`count` random voxel indices inside the mask, as rows (i, j, k)."""
    zyx = np.argwhere(mask)
    chosen = np.sort(rng.choice(len(zyx), size=min(count, len(zyx)), replace=False))
    return zyx[chosen][:, ::-1].copy()


def mask_centre(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical centre of the mask's voxels."""
    return index_to_physical(image, np.argwhere(mask)[:, ::-1].mean(axis=0)[None])[0]


# ---------------------------------------------------------------- deformation

def smooth_displacement(reference: sitk.Image, mask: np.ndarray, rng: np.random.Generator,
                        peak_mm: float) -> np.ndarray:
    """A smooth random displacement (z, y, x, 3) in mm whose largest length in the mask is `peak_mm`."""
    spacing = np.asarray(reference.GetSpacing())[::-1]
    sigma = DEFORMATION_SMOOTHNESS_MM / spacing
    field = np.stack([ndimage.gaussian_filter(rng.normal(size=mask.shape), sigma, mode="reflect")
                      for _ in range(3)], axis=-1)
    peak = np.linalg.norm(field[mask], axis=1).max()
    return field * (peak_mm / peak)


def displacement_image(field: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(field.astype(np.float64), isVector=True)
    image.CopyInformation(reference)
    return image


def warp_once(moving: sitk.Image, field: np.ndarray) -> sitk.Image:
    """The moving image resampled once so that its content at x appears at x + field(x)."""
    inverse = sitk.InvertDisplacementField(
        displacement_image(field, moving), maximumNumberOfIterations=50,
        maxErrorToleranceThreshold=0.01, meanErrorToleranceThreshold=0.0001,
        enforceBoundaryCondition=True)
    transform = sitk.DisplacementFieldTransform(inverse)
    warped = sitk.Resample(moving, moving, transform, sitk.sitkLinear, 0.0, moving.GetPixelID())
    return warped


def jacobian_determinant(field: np.ndarray, reference: sitk.Image) -> np.ndarray:
    """det(I + grad u) of a displacement (z, y, x, 3) in physical mm on `reference`'s grid."""
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    # d u_c / d index_k for index order (i, j, k) = array axes (2, 1, 0)
    grads = np.stack([np.stack(np.gradient(field[..., c], axis=(2, 1, 0)), axis=-1)
                      for c in range(3)], axis=-2)
    physical = grads / spacing @ direction.T
    return np.linalg.det(np.eye(3) + physical)


# ---------------------------------------------------------------- building

@dataclass
class BuildPlan:
    """Which cases to build."""

    seeds: Sequence[int] = (0, 1)
    levels: Sequence[Level] = LEVELS
    deformable_seeds: Sequence[int] = (0,)
    pairs: Sequence[Pair] = PAIRS
    held_out: bool = True


def build_cases(data_dir: Path, out_dir: Path, plan: BuildPlan) -> list:
    """Write every case's moving image and truth under out_dir; return the cases."""
    cases = []
    for pair_index, pair in enumerate(plan.pairs):
        fixed_path = Path(data_dir) / pair.fixed
        fixed = sitk.ReadImage(str(fixed_path))
        moving = sitk.ReadImage(str(Path(data_dir) / pair.moving))
        mask = head_mask(fixed)
        pair_dir = Path(out_dir) / slug(pair.name)
        pair_dir.mkdir(parents=True, exist_ok=True)
        mask_path = pair_dir / "fixed_head_mask.nrrd"
        sitk.WriteImage(mask_image(mask, fixed), str(mask_path), True)
        context = PairContext(pair, fixed_path, fixed, moving, mask, mask_path, pair_dir)
        for level_index, level in enumerate(plan.levels):
            for seed in plan.seeds:
                cases.append(rigid_case(context, level, seed, (seed, pair_index, level_index)))
        for seed in plan.deformable_seeds:
            cases.append(_deformable_case(context, seed, (seed, pair_index, 99)))
        if plan.held_out:
            cases += _held_out_cases(context, pair_index)
    _write_index(cases, Path(out_dir) / "cases.json")
    return cases


# (swap the roles, resample the moving image) of the held-out rigid cases; each takes one level band.
HELD_OUT_VARIANTS = ((False, True), (True, False), (True, True))


def _held_out_cases(ctx: "PairContext", pair_index: int) -> list:
    """One rigid case per held-out variant, each in another level band (seed 0)."""
    held_out = []
    for variant_index, (swapped, resampled) in enumerate(HELD_OUT_VARIANTS):
        context = _swapped_context(ctx) if swapped else ctx
        if resampled:
            pair = replace(context.pair, name=f"{context.pair.name}, resampled")
            directory = ctx.directory.parent / slug(pair.name)
            directory.mkdir(parents=True, exist_ok=True)
            context = replace(context, pair=pair, directory=directory)
        level = LEVELS[variant_index % len(LEVELS)]
        held_out.append(rigid_case(context, level, 0, (0, pair_index, 50 + variant_index), resampled))
    return held_out


def _swapped_context(ctx: "PairContext") -> "PairContext":
    """The pair with its roles swapped: the moving image fixed, its head mask and points."""
    pair = swapped_pair(ctx.pair)
    directory = ctx.directory.parent / slug(pair.name)
    directory.mkdir(parents=True, exist_ok=True)
    mask = head_mask(ctx.moving)
    mask_path = directory / "fixed_head_mask.nrrd"
    sitk.WriteImage(mask_image(mask, ctx.moving), str(mask_path), True)
    data_dir = Path(str(ctx.fixed_path)[:-len(ctx.pair.fixed)])
    fixed_path = data_dir / ctx.pair.moving
    return PairContext(pair, fixed_path, ctx.moving, ctx.fixed, mask, mask_path, directory)


def swapped_pair(pair: Pair) -> Pair:
    """The pair with its roles swapped, named accordingly ("T1->T2 (MNI)" -> "T2->T1 (MNI)")."""
    fixed_name, moving_name = pair.name.split(" ", 1)[0].split("->")
    qualifier = pair.name.split(" ", 1)[1] if " " in pair.name else ""
    return Pair(f"{moving_name}->{fixed_name} {qualifier}".strip(), pair.moving, pair.fixed)


@dataclass
class PairContext:
    """One loaded pair and where its cases are written."""

    pair: Pair
    fixed_path: Path
    fixed: sitk.Image
    moving: sitk.Image
    mask: np.ndarray
    mask_path: Path
    directory: Path


def rigid_case(ctx: PairContext, level: Level, seed: int, entropy: tuple, resampled: bool = False) -> Case:
    """A known rigid motion of the moving image: in its header, or (resampled) in its voxels."""
    rng = np.random.default_rng(entropy)
    motion = random_rigid(rng, level, mask_centre(ctx.fixed, ctx.mask))
    name = f"{ctx.pair.name} | rigid {level.name} | seed {seed}"
    index = sample_points(ctx.mask, rng)
    points = index_to_physical(ctx.fixed, index)
    moved = resample_moved(ctx.moving, motion) if resampled else move_header(ctx.moving, motion)
    return _write_case(ctx, name, "rigid", level, seed, moved, index, points, motion.apply(points), motion)


def resample_moved(image: sitk.Image, motion: RigidMotion) -> sitk.Image:
    """The image on its own grid with its content moved by `motion` (cubic B-spline, float32, 0 outside)."""
    output_to_input = sitk.AffineTransform(3)
    output_to_input.SetMatrix(tuple(motion.rotation.T.ravel()))
    output_to_input.SetCenter(tuple(motion.centre))
    output_to_input.SetTranslation(tuple(-motion.rotation.T @ motion.translation))
    return sitk.Resample(image, image, output_to_input, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)


def _deformable_case(ctx: PairContext, seed: int, entropy: tuple) -> Case:
    rng = np.random.default_rng(entropy)
    motion = random_rigid(rng, DEFORMATION_LEVEL, mask_centre(ctx.fixed, ctx.mask))
    peak = rng.uniform(*DEFORMATION_PEAK_MM)
    field = smooth_displacement(ctx.fixed, ctx.mask, rng, peak)
    truth_jacobian = float(jacobian_determinant(field, ctx.fixed)[ctx.mask].min())
    warped = warp_once(ctx.moving, field)
    index = sample_points(ctx.mask, rng)
    points = index_to_physical(ctx.fixed, index)
    deformed = points + field[index[:, 2], index[:, 1], index[:, 0]]
    name = f"{ctx.pair.name} | deformable {peak:.1f}mm + {DEFORMATION_LEVEL.name} | seed {seed}"
    logger.info("%s: true minimum Jacobian %.3f", name, truth_jacobian)
    return _write_case(ctx, name, "deformable", DEFORMATION_LEVEL, seed, move_header(warped, motion),
                       index, points, motion.apply(deformed), motion, peak)


def _write_case(ctx: PairContext, name: str, kind: str, level: Level, seed: int,
                moving: sitk.Image, index: np.ndarray, points: np.ndarray, truth: np.ndarray,
                motion: RigidMotion, peak: float = 0.0) -> Case:
    stem = slug(f"{kind}-{level.name}-seed{seed}")
    moving_path = ctx.directory / f"{stem}_moving.nrrd"
    truth_path = ctx.directory / f"{stem}_truth.npz"
    sitk.WriteImage(moving, str(moving_path), True)
    np.savez(truth_path, index=index, points=points, truth=truth)
    return Case(
        name=name, pair=ctx.pair.name, kind=kind, level=level.name, seed=seed,
        fixed_path=str(ctx.fixed_path), moving_path=str(moving_path),
        mask_path=str(ctx.mask_path), truth_path=str(truth_path),
        rotation_degrees=round(motion.degrees, 3),
        translation_mm=round(float(np.linalg.norm(motion.translation)), 3),
        deformation_peak_mm=round(peak, 3),
    )


def mask_image(mask: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _write_index(cases: list, path: Path) -> None:
    path.write_text(json.dumps([case.as_dict() for case in cases], indent=1))


def slug(text: str) -> str:
    keep = "".join(ch if ch.isalnum() else "_" for ch in text)
    return "_".join(part for part in keep.split("_") if part)


def warmup_case(data_dir: Path, out_dir: Path) -> Case:
    """A tiny case (MNI T1/T2 at 4 mm) to load libraries and compile kernels before timing."""
    pair = PAIRS[2]
    out_dir = Path(out_dir) / "warmup"
    out_dir.mkdir(parents=True, exist_ok=True)
    fixed = sitk.BinShrink(sitk.ReadImage(str(Path(data_dir) / pair.fixed)), [2, 2, 2])
    moving = sitk.BinShrink(sitk.ReadImage(str(Path(data_dir) / pair.moving)), [2, 2, 2])
    fixed_path = out_dir / "fixed.nrrd"
    sitk.WriteImage(fixed, str(fixed_path), True)
    mask = head_mask(fixed)
    ctx = PairContext(Pair("warm-up", pair.fixed, pair.moving), fixed_path, fixed, moving,
                       mask, out_dir / "mask.nrrd", out_dir)
    sitk.WriteImage(mask_image(mask, fixed), str(ctx.mask_path), True)
    return rigid_case(ctx, LEVELS[0], 0, (0, 0, 0))
