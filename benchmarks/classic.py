"""Classic experiments (issue 17, "Beyond one patient's head"): circle to C in 2D, subject to template in 3D.

* Circle to C (dipy's 2D SyN tutorial): dipy's `circle.npy` (moving) and
  `C.npy` (fixed), 256x256 binary float32 images, read from the installed dipy
  package (BSD licence); without dipy, the same shapes are built here (a disk
  of radius 79.5 px, and a ring of radii 79.5 and 48 px that opens to the
  right, as measured on dipy's files).  Both become 2D SimpleITK images with
  1 px spacing.  Methods: ours, register(fixed, moving) with no settings; dipy's
  SymmetricDiffeomorphicRegistration with level_iters [200, 100, 50, 25] and
  SSDMetric(2) (the metric its tutorial uses on this pair) or CCMetric(2).
  Scored: the Dice of the warped circle (linear interpolation, > 0.5) against
  the C; the minimum Jacobian determinant of the fixed-to-moving mapping over
  the whole grid (central differences); how far inverse(forward(x)) lands from
  x, at most, over the circle's and the C's pixels, with the method's own
  inverse.

* Subject to template with a known large smooth deformation (3D): fixed = the
  MNI T1 template (spm_avg152T1, 91x109x91 at 2 mm, its native grid: no
  resampling); moving = the Philips ADNI MPRAGE whole head (a different person,
  256x256x170 at 1 mm).  A known deformation D(p) = p + u(p), u a sum of three
  Gaussian bumps (sigma 30-40 mm) scaled to a peak |u| of 10-15 mm over the
  subject's head (drawn from the seed), is put into the subject's voxels:
  deformed(q) = subject(D(q)) on the subject's grid (linear interpolation).
  The true subject-to-template mapping is unknown, so the truth is relative:
  each method registers both the undeformed and the deformed pair, and its
  error at a template head voxel x is

      | phi_deformed(x) - D^-1(phi_undeformed(x)) |   (mm),

  since the subject point phi_undeformed(x) appears at D^-1 of it in the
  deformed image.  D^-1 is computed by fixed-point iteration, r <- p - u(r),
  which converges because u's Lipschitz constant is below 1 (which also makes
  D a diffeomorphism of all of space); its residual |D(r) - p| is reported
  and checked (< 0.05 mm).  The error thus measures how exactly a method
  follows a known change of the anatomy, not its absolute accuracy.

Images, the deformation's parameters (deformation.json, with the seed) and the
template's head mask are written to the case folder; the shared data is read
in place, never copied.  Each method runs in a fresh process (a warm-up, then
its timed registrations; see classic_methods).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import cases
from .classic_methods import PLANAR, SHAPE_THRESHOLD, TEMPLATE, ClassicMethod, run_in_fresh_process, selected
from .report import CLASSIC_PLANAR as KIND_PLANAR
from .report import CLASSIC_TEMPLATE as KIND_TEMPLATE

logger = logging.getLogger(__name__)

KINDS = (KIND_PLANAR, KIND_TEMPLATE)
PLANAR_PAIR = "circle -> C"
TEMPLATE_PAIR = "ADNI T1 -> MNI T1 template"
TEMPLATE_SOURCE = "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz"
SUBJECT_SOURCE = "philips_elition_adni_mprage/ADNI_Sag3D_MPRAGE_1mm.nii.gz"
REFERENCE_TOOL = "ours"  # "x ours" divides by the time of ours in the same experiment

# The bars for ours.
PLANAR_DICE_MIN = 0.97
PLANAR_ROUND_TRIP_MAX_PX = 0.5
PLANAR_SECONDS_MAX = 10.0
TEMPLATE_MEAN_ERROR_MAX_MM = 1.5
INVERSION_RESIDUAL_MAX_MM = 0.05

# The shapes, as in dipy's files: (row, column) centre, radii and the C's opening (a band to the right).
SHAPE_SIZE = 256
SHAPE_CENTRE_PX = (131.5, 122.5)
OUTER_RADIUS_PX = 79.5
INNER_RADIUS_PX = 48.0
OPENING_HALF_HEIGHT_PX = 43.0
DIPY_CIRCLE_PIXELS = 19792
DIPY_C_PIXELS = 9456

# The known deformation.
BUMPS = 3
BUMP_SIGMA_MM = (30.0, 40.0)
DEFORMATION_PEAK_MM = (10.0, 15.0)
BUMP_CENTRE_RADIUS_MM = 50.0  # bump centres: subject head voxels this close to the head's centre
MAX_LIPSCHITZ = 0.8  # bumps are drawn again until u's Lipschitz bound is below this
INVERSION_TOLERANCE_MM = 1e-6
INVERSION_MAX_ITERATIONS = 200


# ---------------------------------------------------------------- circle and C

def dipy_shape_folder() -> Optional[Path]:
    """dipy's data/files folder holding circle.npy and C.npy, or None when dipy is not installed."""
    spec = importlib.util.find_spec("dipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "files"
    return folder if (folder / "circle.npy").exists() and (folder / "C.npy").exists() else None


def circle_and_c() -> tuple:
    """(circle, C, where they come from): dipy's arrays when dipy is installed, else built ones."""
    folder = dipy_shape_folder()
    if folder is None:
        circle, c = built_circle_and_c()
        return circle, c, "built here (dipy is not installed)"
    return (np.load(folder / "circle.npy").astype(np.float32), np.load(folder / "C.npy").astype(np.float32),
            "dipy's data/files/circle.npy and C.npy")


def built_circle_and_c() -> tuple:
    """A filled disk and a thick C opening to the right, 256x256 float32 in {0, 1}, shaped as dipy's."""
    rows, columns = np.mgrid[:SHAPE_SIZE, :SHAPE_SIZE].astype(float)
    row_offset, column_offset = rows - SHAPE_CENTRE_PX[0], columns - SHAPE_CENTRE_PX[1]
    radius = np.hypot(row_offset, column_offset)
    disk = radius <= OUTER_RADIUS_PX
    opening = (column_offset > 0) & (np.abs(row_offset) < OPENING_HALF_HEIGHT_PX)
    c = disk & (radius >= INNER_RADIUS_PX) & ~opening
    return disk.astype(np.float32), c.astype(np.float32)


@dataclass(frozen=True)
class PlanarCase:
    """The circle-to-C files, a small copy of them to warm a method up with, and where the shapes came from."""

    fixed_path: str
    moving_path: str
    warm_up: tuple
    source: str


def build_planar_case(out_dir: Path) -> PlanarCase:
    """Write the C (fixed), the circle (moving) and a 2x smaller warm-up pair under out_dir/circle_to_c.

    4x would be too small for dipy's CCMetric with four pyramid levels (its coarsest level must exceed 9 px).
    """
    directory = Path(out_dir) / "circle_to_c"
    directory.mkdir(parents=True, exist_ok=True)
    circle, c, source = circle_and_c()
    paths = {}
    for name, array in (("fixed", c), ("moving", circle), ("warm_up_fixed", _block_average(c, 2)),
                        ("warm_up_moving", _block_average(circle, 2))):
        paths[name] = str(directory / f"{name}.nrrd")
        sitk.WriteImage(sitk.GetImageFromArray(array), paths[name], True)
    return PlanarCase(paths["fixed"], paths["moving"], (paths["warm_up_fixed"], paths["warm_up_moving"]), source)


def _block_average(array: np.ndarray, factor: int) -> np.ndarray:
    rows, columns = array.shape[0] // factor, array.shape[1] // factor
    return array[:rows * factor, :columns * factor].reshape(rows, factor, columns, factor).mean(axis=(1, 3))


def shape_array(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path, sitk.sitkFloat32))


# ---------------------------------------------------------------- circle and C: scores

def warp_planar(image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """`image` (1 px spacing, origin 0) read at x + u(x) for every pixel x; u is (rows, columns, 2) as (x, y)."""
    rows, columns = np.mgrid[:image.shape[0], :image.shape[1]].astype(float)
    where = [rows + displacement[..., 1], columns + displacement[..., 0]]
    return ndimage.map_coordinates(image.astype(np.float64), where, order=1, mode="constant", cval=0.0)


def dice(first: np.ndarray, second: np.ndarray) -> float:
    return float(2.0 * np.sum(first & second) / (np.sum(first) + np.sum(second)))


def planar_jacobian(displacement: np.ndarray) -> np.ndarray:
    """det(I + grad u) of a 2D displacement (rows, columns, 2) given as (x, y) in pixels."""
    du_dy, du_dx = np.gradient(displacement[..., 0])
    dv_dy, dv_dx = np.gradient(displacement[..., 1])
    return (1.0 + du_dx) * (1.0 + dv_dy) - du_dy * dv_dx


def planar_row(method: ClassicMethod, case: PlanarCase, outcome: dict) -> dict:
    """The circle-to-C result row: Dice, minimum Jacobian, round trip, time; or why there is none."""
    row = _row_start(method, KIND_PLANAR, PLANAR_PAIR, 0, outcome)
    if outcome["status"] != "ok":
        return row
    displacement = outcome["displacement"]
    warped = warp_planar(shape_array(case.moving_path), displacement) > SHAPE_THRESHOLD
    details = outcome.get("details") or {}
    row.update(dice=round(dice(warped, shape_array(case.fixed_path) > SHAPE_THRESHOLD), 4),
               min_jacobian=round(float(planar_jacobian(displacement).min()), 4),
               round_trip_max_px=_rounded(details.get("round_trip_max_px"), 4),
               **_timing(outcome), details=details)
    return row


# ---------------------------------------------------------------- known deformation

@dataclass(frozen=True)
class KnownDeformation:
    """D(p) = p + u(p), u(p) = sum_k vector_k exp(-|p - centre_k|^2 / (2 sigma_k^2)), physical mm (LPS)."""

    centres_mm: np.ndarray  # (bumps, 3)
    vectors_mm: np.ndarray  # (bumps, 3)
    sigmas_mm: np.ndarray  # (bumps,)
    seed: int
    peak_mm: float

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """u at the points (rows x, y, z)."""
        return self._weights(points) @ self.vectors_mm

    def gradient(self, points: np.ndarray) -> np.ndarray:
        """du_i / dp_j at the points, (n, 3, 3)."""
        offsets = points[:, None, :] - self.centres_mm[None]  # (n, bumps, 3)
        slopes = -self._weights(points)[..., None] * offsets / self.sigmas_mm[None, :, None] ** 2
        return np.einsum("ki,nkj->nij", self.vectors_mm, slopes)

    def apply(self, points: np.ndarray) -> np.ndarray:
        return points + self.displacement(points)

    def inverse(self, points: np.ndarray) -> tuple:
        """(D^-1 at the points, largest residual |D(result) - point| in mm), by fixed-point iteration.

        r <- p - u(r) is a contraction (u's Lipschitz constant is below 1), so
        it converges to the one r with D(r) = p.
        """
        result = points - self.displacement(points)
        for _ in range(INVERSION_MAX_ITERATIONS):
            following = points - self.displacement(result)
            step = float(np.linalg.norm(following - result, axis=1).max()) if len(points) else 0.0
            result = following
            if step < INVERSION_TOLERANCE_MM:
                break
        residual = np.linalg.norm(self.apply(result) - points, axis=1)
        return result, float(residual.max()) if len(points) else 0.0

    def lipschitz_bound(self) -> float:
        """An upper bound of |grad u| over all of space: each bump's slope is at most |vector| e^-1/2 / sigma."""
        return float(np.sum(np.linalg.norm(self.vectors_mm, axis=1) * np.exp(-0.5) / self.sigmas_mm))

    def as_dict(self) -> dict:
        return {"centres_mm": self.centres_mm.tolist(), "vectors_mm": self.vectors_mm.tolist(),
                "sigmas_mm": self.sigmas_mm.tolist(), "seed": self.seed, "peak_mm": self.peak_mm}

    @classmethod
    def from_dict(cls, values: dict) -> "KnownDeformation":
        return cls(np.asarray(values["centres_mm"], float), np.asarray(values["vectors_mm"], float),
                   np.asarray(values["sigmas_mm"], float), int(values["seed"]), float(values["peak_mm"]))

    def _weights(self, points: np.ndarray) -> np.ndarray:
        squared = np.sum((points[:, None, :] - self.centres_mm[None]) ** 2, axis=-1)
        return np.exp(-squared / (2.0 * self.sigmas_mm[None] ** 2))


def known_deformation(subject: sitk.Image, head: np.ndarray, seed: int) -> KnownDeformation:
    """Gaussian bumps centred in the subject's head, scaled so the largest |u| over its head voxels is the peak."""
    rng = np.random.default_rng((seed, 17))
    points = head_points(subject, head)
    centre = points.mean(axis=0)
    candidates = points[np.linalg.norm(points - centre, axis=1) < BUMP_CENTRE_RADIUS_MM]
    peak = float(rng.uniform(*DEFORMATION_PEAK_MM))
    while True:
        centres = candidates[rng.choice(len(candidates), size=BUMPS, replace=False)]
        vectors = np.stack([cases.random_unit_vector(rng) * rng.uniform(0.5, 1.0) for _ in range(BUMPS)])
        sigmas = rng.uniform(*BUMP_SIGMA_MM, size=BUMPS)
        unit = KnownDeformation(centres, vectors, sigmas, seed, peak)
        largest = max(float(np.linalg.norm(unit.displacement(chunk), axis=1).max())
                      for chunk in np.array_split(points, max(1, len(points) // 500_000)))
        deformation = KnownDeformation(centres, vectors * (peak / largest), sigmas, seed, peak)
        if deformation.lipschitz_bound() < MAX_LIPSCHITZ:
            return deformation


def head_points(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """Physical points (rows x, y, z) of the mask's voxels, in the mask's (z, y, x) scan order."""
    return cases.index_to_physical(image, np.argwhere(mask)[:, ::-1])


def deformation_statistics(deformation: KnownDeformation, points: np.ndarray) -> dict:
    """Largest |u|, smallest det(I + grad u) and largest |grad u| (spectral norm) at the points."""
    gradient = deformation.gradient(points)
    return {"peak_mm": float(np.linalg.norm(deformation.displacement(points), axis=1).max()),
            "min_jacobian": float(np.linalg.det(np.eye(3) + gradient).min()),
            "max_gradient": float(np.linalg.norm(gradient, ord=2, axis=(1, 2)).max()),
            "lipschitz_bound": deformation.lipschitz_bound()}


def deformed_image(subject: sitk.Image, deformation: KnownDeformation, slab: int = 16) -> sitk.Image:
    """deformed(q) = subject(D(q)) on the subject's grid (linear interpolation, its pixel type, 0 outside)."""
    array = sitk.GetArrayFromImage(subject)
    intensities = array.astype(np.float32)
    values = np.empty(array.shape, dtype=np.float32)
    direction = np.asarray(subject.GetDirection()).reshape(3, 3)
    to_index = np.linalg.inv(direction * np.asarray(subject.GetSpacing()))  # physical offset -> (i, j, k)
    origin = np.asarray(subject.GetOrigin())
    size_x, size_y, size_z = subject.GetSize()
    for start in range(0, size_z, slab):
        k, j, i = np.mgrid[start:min(start + slab, size_z), :size_y, :size_x]
        index = np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)
        source = (deformation.apply(cases.index_to_physical(subject, index)) - origin) @ to_index.T
        values[start:start + slab] = ndimage.map_coordinates(
            intensities, source[:, ::-1].T, order=1, mode="constant", cval=0.0).reshape(k.shape)
    if np.issubdtype(array.dtype, np.integer):
        values = np.rint(values)
    image = sitk.GetImageFromArray(values.astype(array.dtype))
    image.CopyInformation(subject)
    return image


# ---------------------------------------------------------------- subject to template: the case

@dataclass(frozen=True)
class TemplateCase:
    """The template (fixed), the subject (moving) as shipped and deformed, the head mask and D."""

    name: str
    fixed_path: str
    subject_path: str
    deformed_path: str
    mask_path: str
    deformation_path: str
    seed: int
    statistics: dict

    def deformation(self) -> KnownDeformation:
        return KnownDeformation.from_dict(json.loads(Path(self.deformation_path).read_text()))

    def as_dict(self) -> dict:
        return asdict(self)


def build_template_case(data_dir: Path, out_dir: Path, seed: int = 0) -> TemplateCase:
    """Deform the subject by a known D (seeded) and write it, D and the template's head mask; reuse a built case."""
    directory = Path(out_dir) / "subject_to_template"
    index_path = directory / "case.json"
    if index_path.exists():
        case = TemplateCase(**json.loads(index_path.read_text()))
        if case.seed == seed and all(Path(path).exists() for path in (
                case.fixed_path, case.subject_path, case.deformed_path, case.mask_path, case.deformation_path)):
            logger.info("%s: reusing the case built in %s", case.name, directory)
            return case
    directory.mkdir(parents=True, exist_ok=True)
    fixed_path, subject_path = Path(data_dir) / TEMPLATE_SOURCE, Path(data_dir) / SUBJECT_SOURCE
    subject = sitk.ReadImage(str(subject_path))
    subject_head = cases.head_mask(subject)
    deformation = known_deformation(subject, subject_head, seed)
    statistics = deformation_statistics(deformation, head_points(subject, every_other_voxel(subject_head)))
    deformation_path = directory / "deformation.json"
    deformation_path.write_text(json.dumps({**deformation.as_dict(), "statistics": statistics}, indent=1))
    deformed_path = directory / "deformed_subject.nrrd"
    sitk.WriteImage(deformed_image(subject, deformation), str(deformed_path), True)
    fixed = sitk.ReadImage(str(fixed_path))
    mask_path = directory / "fixed_head_mask.nrrd"
    sitk.WriteImage(cases.mask_image(cases.head_mask(fixed), fixed), str(mask_path), True)
    case = TemplateCase(f"{TEMPLATE_PAIR} | deformation peak {deformation.peak_mm:.1f} mm | seed {seed}",
                        str(fixed_path), str(subject_path), str(deformed_path), str(mask_path),
                        str(deformation_path), seed, {key: round(value, 4) for key, value in statistics.items()})
    index_path.write_text(json.dumps(case.as_dict(), indent=1))
    logger.info("%s: built in %s (%s)", case.name, directory, case.statistics)
    return case


def every_other_voxel(mask: np.ndarray) -> np.ndarray:
    """The mask kept at every other voxel along each axis (a 2 mm sample of a 1 mm head), same shape."""
    sparse = np.zeros_like(mask)
    sparse[::2, ::2, ::2] = mask[::2, ::2, ::2]
    return sparse


def describe_template(case: TemplateCase) -> str:
    """One line saying how the subject-to-template case was made and what its truth is."""
    stats = case.statistics
    return (f"{TEMPLATE_PAIR}: fixed the MNI T1 template (spm_avg152T1, 91x109x91 at 2 mm, native grid); "
            f"moving the Philips ADNI MPRAGE whole head (another person, 256x256x170 at 1 mm), as shipped and "
            f"deformed by a known D = id + u, u a sum of {BUMPS} Gaussian bumps (sigma "
            f"{BUMP_SIGMA_MM[0]:g}-{BUMP_SIGMA_MM[1]:g} mm, seed {case.seed}): peak |u| {stats['peak_mm']:.1f} mm "
            f"over the subject's head, min det(I + grad u) {stats['min_jacobian']:.2f}, |grad u| <= "
            f"{stats['lipschitz_bound']:.2f} everywhere (so D is a diffeomorphism). Each method registers both "
            "pairs; its error at a template head voxel x is |phi_deformed(x) - D^-1(phi_undeformed(x))| "
            "(a relative truth: the true subject-to-template mapping is unknown), D^-1 by fixed-point "
            "iteration; 'D alone' is the mean |D^-1(phi_undeformed(x)) - phi_undeformed(x)|, the error of an "
            "answer that ignored the deformation")


def describe_planar(case: PlanarCase) -> str:
    """One line saying where the shapes come from and how they are scored."""
    return (f"{PLANAR_PAIR}: {case.source} (256x256, binary, 1 px spacing), the circle moving and the C fixed; "
            "ours: register(fixed, moving) with no settings; dipy: SymmetricDiffeomorphicRegistration, "
            "level_iters [200, 100, 50, 25], with SSDMetric(2) (its tutorial's metric for this pair) or "
            "CCMetric(2). Dice of the warped circle (linear, > 0.5) against the C; min Jacobian over the whole "
            "grid; round trip: max |inverse(forward(x)) - x| over the circle's and the C's pixels, with the "
            "method's own inverse")


# ---------------------------------------------------------------- subject to template: scores

def template_row(method: ClassicMethod, case: TemplateCase, undeformed: dict, deformed: dict) -> dict:
    """The subject-to-template row: errors against the relative truth, min Jacobian, time, memory."""
    failed = next((outcome for outcome in (undeformed, deformed) if outcome["status"] != "ok"), None)
    row = _row_start(method, KIND_TEMPLATE, TEMPLATE_PAIR, case.seed, failed or deformed)
    if failed is not None:
        return row
    fixed = sitk.ReadImage(case.fixed_path)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(case.mask_path)) > 0
    errors, ignoring, residual = relative_errors(case.deformation(), head_points(fixed, mask),
                                                 undeformed["displacement"][mask], deformed["displacement"][mask])
    min_jacobian = float(cases.jacobian_determinant(deformed["displacement"], fixed)[mask].min())
    details = dict(deformed.get("details") or {})
    details["undeformed_seconds"] = round(undeformed["seconds"], 3)
    row.update(tre_mean=_rounded(errors.mean()), tre_median=_rounded(np.median(errors)),
               tre_p95=_rounded(np.percentile(errors, 95)), tre_max=_rounded(errors.max()),
               deformation_mean_mm=_rounded(ignoring.mean()), min_jacobian=round(min_jacobian, 4),
               inversion_residual_mm=float(f"{residual:.3g}"), **_timing(deformed), details=details)
    row["peak_mb"] = round(max(undeformed["peak_mb"], deformed["peak_mb"]), 1)  # the process's peak over both pairs
    return row


def relative_errors(deformation: KnownDeformation, points: np.ndarray, undeformed: np.ndarray,
                    deformed: np.ndarray) -> tuple:
    """(errors, errors of ignoring D, inversion residual) at fixed points x, given both displacements there.

    phi(x) = x + displacement(x); the truth for the deformed pair is
    D^-1(phi_undeformed(x)).
    """
    undeformed_points = points + undeformed
    expected, residual = deformation.inverse(undeformed_points)
    errors = np.linalg.norm(points + deformed - expected, axis=1)
    return errors, np.linalg.norm(undeformed_points - expected, axis=1), residual


# ---------------------------------------------------------------- rows and summaries

def _row_start(method: ClassicMethod, kind: str, pair: str, seed: int, outcome: dict) -> dict:
    row = {"method": method.name, "tool": method.tool, "variant": "chain", "case": f"{pair} | seed {seed}",
           "pair": pair, "kind": kind, "level": "-", "seed": seed, "status": outcome["status"]}
    if outcome["status"] != "ok":
        row.update(message=outcome.get("message", ""), failed=outcome["status"] != "missing")
    return row


def _timing(outcome: dict) -> dict:
    seconds = outcome["seconds"]
    return {"seconds": round(seconds, 3), "cpu_seconds": round(outcome["cpu_seconds"], 3),
            "cores_used": round(outcome["cpu_seconds"] / seconds, 2) if seconds > 0 else None,
            "peak_mb": round(outcome["peak_mb"], 1), "failed": False}


def _rounded(value, digits: int = 3):
    return None if value is None else round(float(value), digits)


def add_time_ratios(rows: list) -> None:
    """time_vs_ours: a row's seconds divided by ours' in the same experiment."""
    ours = {row["kind"]: row.get("seconds") for row in rows if row["tool"] == REFERENCE_TOOL}
    for row in rows:
        reference, seconds = ours.get(row["kind"]), row.get("seconds")
        row["time_vs_ours"] = round(seconds / reference, 2) if seconds and reference else None


SUMMARY_KEYS = ("kind", "pair", "method", "tool", "variant", "status", "message", "dice", "round_trip_max_px",
                "tre_mean", "tre_median", "tre_p95", "tre_max", "deformation_mean_mm", "inversion_residual_mm",
                "min_jacobian", "seconds", "time_vs_ours", "cores_used", "peak_mb")


def summaries(rows: list) -> list:
    """One summary per row (each experiment has one case): the row's numbers, as summary.csv lists them."""
    return [{**{key: row[key] for key in SUMMARY_KEYS if key in row}, "cases": 1,
             "failures": int(bool(row.get("failed"))), "note": (row.get("details") or {}).get("note", "")}
            for row in rows]


# ---------------------------------------------------------------- the section

def run_section(data_dir: Path, case_dir: Path, warm_up_case: dict, requested: Optional[Sequence[str]],
                timeout_s: float) -> tuple:
    """Both experiments for their selected methods, each method in a fresh process; (rows, description lines)."""
    out_dir = Path(case_dir) / "classic"
    rows, descriptions = [], []
    planar_methods = selected(PLANAR, requested)
    if planar_methods:
        planar = build_planar_case(out_dir)
        rows += [run_planar(method, planar, timeout_s) for method in planar_methods]
        descriptions.append(describe_planar(planar))
    template_methods = selected(TEMPLATE, requested)
    if template_methods:
        template = build_template_case(data_dir, out_dir)
        warm_up = (warm_up_case["fixed_path"], warm_up_case["moving_path"])
        rows += [run_template(method, template, warm_up, timeout_s) for method in template_methods]
        descriptions.append(describe_template(template))
    add_time_ratios(rows)
    for row in rows:
        logger.info("%-20s %-28s %s", row["method"], row["pair"], _log_summary(row))
    return rows, descriptions


def run_planar(method: ClassicMethod, case: PlanarCase, timeout_s: float) -> dict:
    """The method on circle to C, in a process of its own warmed up on the small copy; its row."""
    (outcome,) = run_in_fresh_process(method, case.warm_up, [(case.fixed_path, case.moving_path)], timeout_s)
    return planar_row(method, case, outcome)


def run_template(method: ClassicMethod, case: TemplateCase, warm_up: tuple, timeout_s: float) -> dict:
    """The method on the undeformed and the deformed subject, one process for both; its row."""
    pairs = [(case.fixed_path, case.subject_path), (case.fixed_path, case.deformed_path)]
    undeformed, deformed = run_in_fresh_process(method, warm_up, pairs, timeout_s)
    return template_row(method, case, undeformed, deformed)


def _log_summary(row: dict) -> str:
    if row["status"] != "ok":
        return f"{row['status']}: {row.get('message', '')}"
    if row["kind"] == KIND_PLANAR:
        return (f"Dice {row['dice']:.3f}  min Jac {row['min_jacobian']:.3f}  round trip "
                f"{row['round_trip_max_px']} px  {row['seconds']:.1f} s")
    return (f"error mean {row['tre_mean']:.2f} p95 {row['tre_p95']:.2f} max {row['tre_max']:.2f} mm  min Jac "
            f"{row['min_jacobian']:.3f}  {row['seconds']:.1f} s  peak {row['peak_mb']:.0f} MB")


# ---------------------------------------------------------------- checks

def classic_checks(summaries: list) -> list:
    """The issue's bars for ours as (passed, sentence), and the relative truth's own check."""
    planar = {s["tool"]: s for s in summaries if s["kind"] == KIND_PLANAR}
    template = [s for s in summaries if s["kind"] == KIND_TEMPLATE]
    checks = _planar_checks(planar["ours"]) if "ours" in planar else []
    ours = next((s for s in template if s["tool"] == REFERENCE_TOOL), None)
    if ours is not None:
        checks += _template_checks(ours, next((s for s in template if s["method"] == "ANTsPy SyN"), None))
    residuals = [s["inversion_residual_mm"] for s in template if s.get("inversion_residual_mm") is not None]
    if residuals:
        checks.append((max(residuals) < INVERSION_RESIDUAL_MAX_MM,
                       f"{TEMPLATE_PAIR}: D^-1 residual |D(D^-1(p)) - p| at most {max(residuals):.2g} mm over every "
                       f"method's points (< {INVERSION_RESIDUAL_MAX_MM:g} mm)"))
    return checks


def _planar_checks(ours: dict) -> list:
    label = f"{ours['method']}, {PLANAR_PAIR}"
    if ours["status"] != "ok":
        return [(False, f"{label}: not measured ({ours['status']}: {ours.get('message', '')})")]
    round_trip = ours.get("round_trip_max_px")
    return [
        (ours["dice"] >= PLANAR_DICE_MIN, f"{label}: Dice {ours['dice']:.3f} (>= {PLANAR_DICE_MIN:g})"),
        (ours["min_jacobian"] > 0, f"{label}: min Jacobian {ours['min_jacobian']:.3f} (> 0)"),
        (round_trip is not None and round_trip <= PLANAR_ROUND_TRIP_MAX_PX,
         f"{label}: inverse(forward(x)) within {round_trip} px of x (<= {PLANAR_ROUND_TRIP_MAX_PX:g} px)"),
        (ours["seconds"] < PLANAR_SECONDS_MAX, f"{label}: {ours['seconds']:.1f} s (< {PLANAR_SECONDS_MAX:g} s)"),
    ]


def _template_checks(ours: dict, peer: Optional[dict]) -> list:
    label = f"{ours['method']}, {TEMPLATE_PAIR}"
    if ours["status"] != "ok":
        return [(False, f"{label}: not measured ({ours['status']}: {ours.get('message', '')})")]
    note = f" [{ours['note']}]" if ours.get("note") else ""
    checks = [(ours["tre_mean"] <= TEMPLATE_MEAN_ERROR_MAX_MM,
               f"{label}: mean error {ours['tre_mean']:.2f} mm (<= {TEMPLATE_MEAN_ERROR_MAX_MM:g} mm){note}"),
              (ours["min_jacobian"] > 0, f"{label}: min Jacobian in the head {ours['min_jacobian']:.3f} (> 0)")]
    if peer is None or peer.get("tre_mean") is None:
        state = "not run" if peer is None else f"{peer['status']}: {peer.get('message', '')}"
        return checks + [(False, f"{label} vs ANTsPy SyN: the peer was not measured ({state})")]
    return checks + [(ours["tre_mean"] <= peer["tre_mean"],
                      f"{label} vs ANTsPy SyN: mean error {ours['tre_mean']:.2f} vs {peer['tre_mean']:.2f} mm")]
