"""Benchmark of the deformable stage in the pipeline, on real pairs with a known deformation.

Each case takes two real images that are already aligned (same grid, header
identity; or aligned once here, see the porcine cases below), deforms the
moving one with a known smooth random diffeomorphism (peak displacement 4-8 mm
inside the head) and moves its header by a known rigid transform.  The
pipeline then registers the pair as a user would run it,
register(fixed, moving, stages=("rigid", "affine", "deformable")) with the
pair's row of the bundled preset table (its deformable part forced on, so that
rows shipped with run_by_default false are measured too).  The rigid and
affine stages do not depend on whether the deformable stage follows, so the
same run gives both columns:

* affine-only: the last accepted rigid/affine stage, i.e. what
  stages=("rigid", "affine") returns;
* with deformable: the pipeline's final transform (the deformable stage counts
  only if the pipeline's score accepted it).

Errors are |mapping(x) - reference(x)| in mm at every fixed voxel inside the
head (Otsu foreground), against two references:

* nominal: header identity composed with the known rigid and deformation;
* fair: the known rigid and deformation composed with the pipeline's own
  registration of the undeformed, unmoved pair, run with the same stages as
  the column (affine-only column: its linear result on that pair; deformable
  column: its full result).  This factors out the pair's own residual (the
  stroke T1/T2 are aligned to ~0.5 mm, the MNI CT/T1 templates to ~1.4 mm),
  so it measures the recovery of the known deformation and rigid.

The porcine CT-MR cases (TCIA MRI-DIR meat phantom: MR T2 fixed, CT moving)
start from a pair that is not aligned (about 12 degrees / 18 mm apart), so the
aligned pair is built once per process (aligned_pair): the MR is
block-averaged to 1 mm in-plane, keeping its 2.5 mm slices (256 x 256 x 94);
our own pipeline aligns the CT to it (stages rigid and affine, T2 and CT);
the CT is resampled once through that affine (linear interpolation) onto its
own field of view placed in the MR frame at 1 mm (200 x 200 x 256), keeping
its Hounsfield units and its -2048 padding.  The known alignment of that pair
is identity by construction, relative to our linear result, so the nominal
columns also contain how far our linear stages land from their own earlier
result on this pair (re-registering the unmoved aligned pair moves it 2.6 mm
for a score gain of 0.002): the fair columns measure the recovery of the known
deformation.  Errors are measured inside the MR's foreground (the meat).
Variants run the CT rows' preset with its deformable metric overridden
("mind" instead of "ngf").

Also reported: how far the deformable stage moves the undeformed, unmoved
pair (mean over the head of |full - affine-only| of the fair reference): the
pair's own disagreement as the stage sees it.  It is part of the nominal
truth's error, so where it approaches 1 mm no method can show a nominal error
below 1 mm on that pair, and the fair columns are the measure of recovery.
Then: min Jacobian determinant of the final mapping over the fixed
grid (finite differences of its displacement field), inverse consistency
|inverse(forward(x)) - x| inside the head, the deformable stage's seconds in a
process whose kernels were compiled beforehand, that process's peak memory
(linear stages included), and the cold-cache kernel compile time.

Run:  .venv/bin/python -m benchmarks.deformable_bench [--output results.json] [--quick] [--cases TEXT]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "OneClickRegistration"))
sys.path.insert(0, str(ROOT))
from OneClickRegistrationLib import evaluation, imageio  # noqa: E402  (needs the path above)

SHARED_DATA = Path(os.environ.get("ONECLICK_SHARED_DATA", ROOT.parent / "shared" / "data"))

logger = logging.getLogger(__name__)

STROKE = "cstar_stroke_t1_t2_flair"
MNI = "mni_templates_ct_t1_t2_pd"
PORCINE_MR = "mridir_porcine_ct_t2/mridir_porcine_MR_T2.nii.gz"
PORCINE_CT = "mridir_porcine_ct_t2/mridir_porcine_CT_binshrink2x2x1.nii.gz"


@dataclass(frozen=True)
class CaseSpec:
    """A benchmark case: an aligned real pair, its modalities and the known misalignment."""

    name: str
    fixed: str
    moving: str
    fixed_modality: str
    moving_modality: str
    peak_mm: float
    seed: int
    rotation_deg: float = 6.0
    translation_mm: float = 5.0
    shrink: int = 1  # block-average both images by this factor (small test cases)
    unaligned: bool = False  # align the pair once with our linear stages first (aligned_pair)
    deformable_metric: str | None = None  # override the preset row's deformable metric


CASES = (
    CaseSpec("T1-T2 stroke, deformed 6 mm", f"{STROKE}/T1.nii.gz", f"{STROKE}/T2.nii.gz", "T1", "T2", 6.0, 1),
    CaseSpec("T1-T2 stroke, rigid only", f"{STROKE}/T1.nii.gz", f"{STROKE}/T2.nii.gz", "T1", "T2", 0.0, 2),
    CaseSpec("T1-FLAIR stroke, deformed 8 mm", f"{STROKE}/T1.nii.gz", f"{STROKE}/FLAIR.nii.gz",
             "T1", "FLAIR", 8.0, 3),
    CaseSpec("T1-FLAIR stroke, rigid only", f"{STROKE}/T1.nii.gz", f"{STROKE}/FLAIR.nii.gz",
             "T1", "FLAIR", 0.0, 6),
    CaseSpec("T1-T2 MNI, deformed 6 mm", f"{MNI}/spm_avg152T1.nii.gz", f"{MNI}/spm_avg152T2.nii.gz",
             "T1", "T2", 6.0, 8),
    CaseSpec("T1-CT MNI, deformed 6 mm", f"{MNI}/spm_avg152T1.nii.gz", f"{MNI}/clinical_scct.nii.gz",
             "T1", "CT", 6.0, 4),
    CaseSpec("T1-CT MNI, rigid only", f"{MNI}/spm_avg152T1.nii.gz", f"{MNI}/clinical_scct.nii.gz",
             "T1", "CT", 0.0, 5),
    CaseSpec("T1-T1 chris full-res, deformed 6 mm", "chris_t1_pd/chris_t1.nii.gz",
             "chris_t1_pd/chris_t1.nii.gz", "T1", "T1", 6.0, 7),
    CaseSpec("T2-CT porcine, deformed 6 mm", PORCINE_MR, PORCINE_CT, "T2", "CT", 6.0, 9, unaligned=True),
    CaseSpec("T2-CT porcine, rigid only", PORCINE_MR, PORCINE_CT, "T2", "CT", 0.0, 10, unaligned=True),
    CaseSpec("T2-CT porcine MIND, deformed 6 mm", PORCINE_MR, PORCINE_CT, "T2", "CT", 6.0, 9,
             unaligned=True, deformable_metric="mind"),
    CaseSpec("T2-CT porcine MIND, rigid only", PORCINE_MR, PORCINE_CT, "T2", "CT", 0.0, 10,
             unaligned=True, deformable_metric="mind"),
)
QUICK_CASES = CASES[:4]

# Correlation length (Gaussian sigma) of the random deformation, mm.
DEFORMATION_SMOOTHNESS_MM = 15.0
DEFORMATION_GRID_MM = 4.0
# Voxel size of the aligned pair built from an unaligned one (aligned_pair), mm.
ALIGNED_SPACING_MM = 1.0


@dataclass
class Case:
    """A built case: images, head mask, the known rigid and the whole known mapping."""

    fixed: sitk.Image
    moving: sitk.Image
    original: sitk.Image  # the moving image before the known deformation and rigid
    head: sitk.Image
    rigid: sitk.Euler3DTransform
    truth: sitk.Transform  # fixed -> moving through the header identity (the nominal truth)


def read_float(relative: str, shrink: int = 1) -> sitk.Image:
    """A shared-data image as float32, block-averaged by `shrink` along every axis."""
    image = sitk.Cast(sitk.ReadImage(str(SHARED_DATA / relative)), sitk.sitkFloat32)
    return sitk.BinShrink(image, [shrink] * 3) if shrink > 1 else image


@functools.lru_cache(maxsize=None)
def aligned_pair(fixed_path: str, moving_path: str, fixed_modality: str,
                 moving_modality: str) -> tuple[sitk.Image, sitk.Image]:
    """An unaligned real pair aligned once by our own rigid + affine stages; (fixed, aligned moving).

    The fixed image is block-averaged to about ALIGNED_SPACING_MM (its thicker
    slices kept).  The moving image is resampled once through the affine
    result (linear interpolation, its own minimum, e.g. a CT's padding,
    outside its field of view) onto its own field of view placed in the fixed
    frame: the moving grid's extent at ALIGNED_SPACING_MM, carried into the
    fixed frame by the affine's inverse and its rotation part (a grid over the
    fixed image's whole extent would be mostly padding).  Its known alignment
    is identity relative to that linear result.
    """
    from OneClickRegistrationLib import register
    fixed = imageio.shrink_to_spacing(read_float(fixed_path), ALIGNED_SPACING_MM)
    moving = read_float(moving_path)
    result = register(fixed, moving, fixed_modality=fixed_modality, moving_modality=moving_modality,
                      stages=("rigid", "affine"))
    logger.warning("aligned %s to %s: %s", moving_path, fixed_path,
                   [[stage.name, stage.accepted, round(stage.score, 4)] for stage in result.stages])
    linear = [stage.transform for stage in result.stages if stage.accepted][-1]
    left, _, right = np.linalg.svd(np.asarray(linear.GetMatrix()).reshape(3, 3))
    rotation = left @ right  # rotation part of the fixed -> moving matrix
    extent = [(n - 1) * s for n, s in zip(moving.GetSize(), moving.GetSpacing())]
    grid = sitk.Image([int(e // ALIGNED_SPACING_MM) + 1 for e in extent], sitk.sitkFloat32)
    grid.SetOrigin(result.inverse_transform.TransformPoint(moving.GetOrigin()))
    grid.SetDirection((rotation.T @ np.asarray(moving.GetDirection()).reshape(3, 3)).ravel().tolist())
    grid.SetSpacing([ALIGNED_SPACING_MM] * 3)
    padding = float(sitk.GetArrayViewFromImage(moving).min())
    aligned = sitk.Resample(moving, grid, result.transform, sitk.sitkLinear, padding, sitk.sitkFloat32)
    return fixed, aligned


def read_pair(spec: CaseSpec) -> tuple[sitk.Image, sitk.Image]:
    """The spec's aligned real pair (fixed, moving) as float32."""
    if spec.unaligned:
        return aligned_pair(spec.fixed, spec.moving, spec.fixed_modality, spec.moving_modality)
    return read_float(spec.fixed, spec.shrink), read_float(spec.moving, spec.shrink)


def head_mask(image: sitk.Image) -> sitk.Image:
    """Otsu foreground with holes filled: the region where errors are measured."""
    foreground = sitk.OtsuThreshold(image, 0, 1)
    array = sitk.GetArrayFromImage(foreground).astype(bool)
    array = ndimage.binary_fill_holes(ndimage.binary_opening(array, iterations=1))
    mask = sitk.GetImageFromArray(array.astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def random_deformation(fixed: sitk.Image, head: sitk.Image, peak_mm: float, seed: int) -> sitk.Image:
    """A smooth random displacement field (vector float64 image on a coarse grid in fixed space).

    White noise smoothed with a Gaussian of DEFORMATION_SMOOTHNESS_MM, scaled
    so that its largest magnitude inside the head is peak_mm.
    """
    rng = np.random.default_rng(seed)
    extent = np.array([(n - 1) * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())])
    size = [int(np.ceil(e / DEFORMATION_GRID_MM)) + 1 for e in extent]
    sigma = DEFORMATION_SMOOTHNESS_MM / DEFORMATION_GRID_MM
    noise = rng.standard_normal((3,) + tuple(size[::-1]))
    field = np.stack([ndimage.gaussian_filter(component, sigma, mode="reflect") for component in noise])
    grid = sitk.Image(size, sitk.sitkVectorFloat64, 3)
    grid.SetOrigin(fixed.GetOrigin())
    grid.SetDirection(fixed.GetDirection())
    grid.SetSpacing([DEFORMATION_GRID_MM] * 3)
    inside = sitk.GetArrayFromImage(sitk.Resample(head, grid, sitk.Transform(), sitk.sitkNearestNeighbor)) > 0
    magnitude = np.sqrt((field ** 2).sum(axis=0))
    scale = peak_mm / magnitude[inside].max() if peak_mm > 0 else 0.0
    image = sitk.GetImageFromArray(np.moveaxis(field * scale, 0, -1), isVector=True)
    image.CopyInformation(grid)
    return image


def known_rigid(image: sitk.Image, spec: CaseSpec) -> sitk.Euler3DTransform:
    """A rigid transform about the image centre with the spec's rotation and translation."""
    rng = np.random.default_rng(spec.seed + 100)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    axis = rng.standard_normal(3)
    angles = np.deg2rad(spec.rotation_deg) * axis / np.linalg.norm(axis)
    direction = rng.standard_normal(3)
    translation = spec.translation_mm * direction / np.linalg.norm(direction)
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre)
    rigid.SetRotation(*angles)
    rigid.SetTranslation(translation.tolist())
    return rigid


def build_case(spec: CaseSpec) -> Case:
    """Deform and move the moving image by known transforms; the truth maps fixed -> new moving."""
    fixed, original = read_pair(spec)
    head = head_mask(fixed)
    rigid = known_rigid(fixed, spec)
    deformation = random_deformation(fixed, head, spec.peak_mm, spec.seed)
    inverse_field = sitk.InvertDisplacementField(deformation, maximumNumberOfIterations=50,
                                                 maxErrorToleranceThreshold=0.001,
                                                 meanErrorToleranceThreshold=0.0001,
                                                 enforceBoundaryCondition=False)
    warp_back = sitk.DisplacementFieldTransform(inverse_field)
    background = float(sitk.GetArrayViewFromImage(original).min())
    deformed = sitk.Resample(original, original, warp_back, sitk.sitkBSpline, background, sitk.sitkFloat32)
    moving = evaluation.move_header(deformed, rigid)
    truth = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(deformation)])
    return Case(fixed, moving, original, head, rigid, truth)


def mapping_error_mm(mapping: sitk.Transform, truth: sitk.Transform, head: sitk.Image) -> np.ndarray:
    """|mapping(x) - truth(x)| in mm at every head voxel x of the fixed grid."""
    return np.linalg.norm(_displacements(mapping, head) - _displacements(truth, head), axis=-1)[
        sitk.GetArrayViewFromImage(head) > 0]


def round_trip_error_mm(forward: sitk.Transform, inverse: sitk.Transform, head: sitk.Image) -> np.ndarray:
    """|inverse(forward(x)) - x| in mm at every head voxel."""
    round_trip = sitk.CompositeTransform([inverse, forward])
    return np.linalg.norm(_displacements(round_trip, head), axis=-1)[sitk.GetArrayViewFromImage(head) > 0]


def min_jacobian(mapping: sitk.Transform, fixed: sitk.Image) -> float:
    """Smallest Jacobian determinant of the mapping over the fixed grid (finite differences)."""
    field = sitk.TransformToDisplacementField(
        mapping, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(), fixed.GetSpacing(),
        fixed.GetDirection())
    determinant = sitk.DisplacementFieldJacobianDeterminant(field)
    return float(sitk.GetArrayFromImage(determinant).min())


def _displacements(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
        reference.GetSpacing(), reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def pipeline_preset(fixed_modality: str, moving_modality: str, metric: str | None = None):
    """The bundled preset row for the pair, its deformable stage switched on (and its metric, if given)."""
    from OneClickRegistrationLib.presets import load_preset_table
    preset = load_preset_table().lookup(fixed_modality, moving_modality)
    deformable = dataclasses.replace(preset.deformable, run_by_default=True,
                                     metric=metric or preset.deformable.metric)
    return dataclasses.replace(preset, deformable=deformable)


def run_pipeline(fixed: sitk.Image, moving: sitk.Image, fixed_modality: str, moving_modality: str,
                 metric: str | None = None):
    """register() with all three stages; (affine-only transform, final transform, result)."""
    from OneClickRegistrationLib import register
    result = register(fixed, moving, fixed_modality=fixed_modality, moving_modality=moving_modality,
                      preset=pipeline_preset(fixed_modality, moving_modality, metric))
    linear = [stage for stage in result.stages if stage.name != "deformable" and stage.accepted]
    affine_only = linear[-1].transform if linear else sitk.Euler3DTransform()
    return affine_only, result.transform, result


def summary(errors: np.ndarray) -> dict:
    """Mean and 95th percentile of errors in mm."""
    return {"mean": float(errors.mean()), "p95": float(np.percentile(errors, 95))}


def _pipeline_worker(case_dir: str, fixed_modality: str, moving_modality: str, pair: str,
                     metric: str | None = None) -> None:
    """Child process: compile the kernels, run the pipeline on the case (or the source pair), save results."""
    fixed = sitk.ReadImage(f"{case_dir}/fixed.nii.gz", sitk.sitkFloat32)
    moving = sitk.ReadImage(f"{case_dir}/{pair}.nii.gz", sitk.sitkFloat32)
    _warm_up(fixed_modality, moving_modality, metric)
    affine_only, final, result = run_pipeline(fixed, moving, fixed_modality, moving_modality, metric)
    sitk.WriteTransform(affine_only, f"{case_dir}/{pair}_affine.h5")
    sitk.WriteTransform(final, f"{case_dir}/{pair}_final.h5")
    sitk.WriteTransform(result.inverse_transform, f"{case_dir}/{pair}_inverse.h5")
    deformable = [stage for stage in result.stages if stage.name == "deformable"]
    print(json.dumps({
        "seconds": deformable[0].seconds if deformable else 0.0,
        "deformable_accepted": bool(deformable and deformable[0].accepted),
        "stages": [[stage.name, stage.accepted, round(stage.score, 4)] for stage in result.stages],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def _warm_up(fixed_modality: str, moving_modality: str, metric: str | None = None) -> None:
    """Run the stage once on a tiny synthetic volume so that its kernels are compiled or loaded."""
    from OneClickRegistrationLib.deformable import register_deformable
    tiny = sitk.GaussianSource(sitk.sitkFloat32, [24, 24, 24], [4.0] * 3, [12.0] * 3, 100.0,
                               [1.0] * 3, [1.0] * 3)
    register_deformable(tiny, tiny, sitk.Euler3DTransform(),
                        pipeline_preset(fixed_modality, moving_modality, metric).deformable)


def compile_seconds() -> float:
    """Cold-cache compile time of the kernels: a tiny run in an empty NUMBA_CACHE_DIR, minus a warm one."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = ("import time; from benchmarks.deformable_bench import _warm_up; "
                "t=time.perf_counter(); _warm_up('T1', 'T1'); _warm_up('T1', 'T2'); "
                "cold=time.perf_counter()-t; t=time.perf_counter(); _warm_up('T1', 'T1'); _warm_up('T1', 'T2'); "
                "print(cold-(time.perf_counter()-t))")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                                capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def _run_child(case_dir: Path, spec: CaseSpec, pair: str) -> dict:
    """Run _pipeline_worker in a fresh process (own timing and peak memory); its JSON line."""
    child = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.deformable_bench import _pipeline_worker; "
                               f"_pipeline_worker({str(case_dir)!r}, {spec.fixed_modality!r}, "
                               f"{spec.moving_modality!r}, {pair!r}, {spec.deformable_metric!r})"],
        cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def _reference_transforms(case: Case, case_dir: Path, spec: CaseSpec, cache: dict):
    """The pipeline's (affine-only, full) registration of the undeformed, unmoved pair, once per pair."""
    key = (spec.fixed, spec.moving, spec.deformable_metric)
    if key not in cache:
        if spec.fixed == spec.moving:
            cache[key] = (sitk.Euler3DTransform(), sitk.Euler3DTransform())
        else:
            sitk.WriteImage(case.original, str(case_dir / "original.nii.gz"))
            _run_child(case_dir, spec, "original")
            cache[key] = tuple(sitk.ReadTransform(str(case_dir / f"original_{kind}.h5"))
                               for kind in ("affine", "final"))
    return cache[key]


def evaluate(spec: CaseSpec, work_dir: Path, reference_cache: dict) -> dict:
    """Build a case, run the pipeline in a child process, measure errors in mm against both references."""
    case = build_case(spec)
    case_dir = work_dir / f"case{spec.seed}"
    case_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(case.fixed, str(case_dir / "fixed.nii.gz"))
    sitk.WriteImage(case.moving, str(case_dir / "moving.nii.gz"))
    measured = _run_child(case_dir, spec, "moving")
    affine_only, final, inverse = (sitk.ReadTransform(str(case_dir / f"moving_{kind}.h5"))
                                   for kind in ("affine", "final", "inverse"))
    reference_affine, reference_final = _reference_transforms(case, case_dir, spec, reference_cache)
    fair_affine = sitk.CompositeTransform([case.truth, reference_affine])
    fair_final = sitk.CompositeTransform([case.truth, reference_final])
    round_trip = round_trip_error_mm(final, inverse, case.head)
    row = {
        "case": spec.name, "modalities": [spec.fixed_modality, spec.moving_modality],
        "deformable_metric": pipeline_preset(spec.fixed_modality, spec.moving_modality,
                                             spec.deformable_metric).deformable.metric,
        "size": list(case.fixed.GetSize()), "spacing_mm": [round(s, 3) for s in case.fixed.GetSpacing()],
        "nominal": {"affine_only": summary(mapping_error_mm(affine_only, case.truth, case.head)),
                    "with_deformable": summary(mapping_error_mm(final, case.truth, case.head))},
        "fair": {"affine_only": summary(mapping_error_mm(affine_only, fair_affine, case.head)),
                 "with_deformable": summary(mapping_error_mm(final, fair_final, case.head))},
        "undeformed_pair_stage_mm": float(mapping_error_mm(reference_final, reference_affine, case.head).mean()),
        "min_jacobian": min_jacobian(final, case.fixed),
        "inverse_consistency_mm": {"mean": float(round_trip.mean()), "max": float(round_trip.max())},
        **measured,
    }
    logger.warning("%s: %s", spec.name, json.dumps(row))
    return row


def print_table(rows: list, compile_s: float) -> None:
    """The results as a plain-text table (errors: mean/p95 mm; own: the stage's mean motion on the undeformed pair)."""
    header = (f"{'case':38s} {'affine nominal':>14s} {'+deform nominal':>15s} {'affine fair':>12s} "
              f"{'+deform fair':>12s} {'own':>5s} {'minJac':>6s} {'inv max':>7s} {'sec':>5s} {'peak MB':>7s} acc")
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = [f"{row[ref][col]['mean']:.2f}/{row[ref][col]['p95']:.2f}"
                 for ref in ("nominal", "fair") for col in ("affine_only", "with_deformable")]
        print(f"{row['case']:38s} {cells[0]:>14s} {cells[1]:>15s} {cells[2]:>12s} {cells[3]:>12s} "
              f"{row['undeformed_pair_stage_mm']:5.2f} {row['min_jacobian']:6.3f} "
              f"{row['inverse_consistency_mm']['max']:7.3f} "
              f"{row['seconds']:5.1f} {row['peak_mb']:7.0f} {'yes' if row['deformable_accepted'] else 'no'}")
    print(f"cold-cache kernel compile time (excluded above): {compile_s:.1f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="only the stroke cases")
    parser.add_argument("--cases", help="only the cases whose name contains this text (case-insensitive)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    specs = QUICK_CASES if arguments.quick else CASES
    if arguments.cases:
        specs = tuple(spec for spec in specs if arguments.cases.lower() in spec.name.lower())
    compile_s = compile_seconds()
    reference_cache = {}
    with tempfile.TemporaryDirectory() as work:
        rows = [evaluate(spec, Path(work), reference_cache) for spec in specs
                if (SHARED_DATA / spec.fixed).exists() and (SHARED_DATA / spec.moving).exists()]
    print_table(rows, compile_s)
    if arguments.output:
        Path(arguments.output).write_text(json.dumps(
            {"compile_seconds": compile_s, "threads": os.cpu_count(), "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
