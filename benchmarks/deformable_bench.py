"""Benchmark of the deformable stage on real pairs with a known deformation.

Each case takes two real images that are already aligned (same grid, truth =
identity), deforms the moving one with a known smooth random diffeomorphism
(peak displacement 4-8 mm inside the head) and moves its header by a known
rigid transform.  The deformable stage then starts from the true rigid, as it
would start from a perfect affine, and the recovered mapping is compared with
the truth at every fixed voxel inside the head (Otsu foreground), in mm:

* before: the affine-only error (the deformation left uncorrected);
* after: the error of CompositeTransform([rigid, forward]);
* min Jacobian determinant of x -> x + u(x) over the fixed grid;
* inverse consistency: |inverse(forward(x)) - x| inside the head;
* seconds and peak memory of a separate process running only the stage
  (kernels already compiled), and the cold-cache compile time, measured once.

Rigid-only cases (no deformation) show whether the stage invents deformation.

Run:  .venv/bin/python -m benchmarks.deformable_bench [--output results.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "OneClickRegistration"))
SHARED_DATA = Path(os.environ.get("ONECLICK_SHARED_DATA", ROOT.parent / "shared" / "data"))

logger = logging.getLogger(__name__)

STROKE = "cstar_stroke_t1_t2_flair"
MNI = "mni_templates_ct_t1_t2_pd"


@dataclass(frozen=True)
class CaseSpec:
    """A benchmark case: an aligned real pair, a metric and the known misalignment."""

    name: str
    fixed: str
    moving: str
    metric: str
    peak_mm: float
    seed: int
    rotation_deg: float = 6.0
    translation_mm: float = 5.0
    fixed_moving_same_image: bool = False


CASES = (
    CaseSpec("T1-T2 stroke, deformed 6 mm", f"{STROKE}/T1.nii.gz", f"{STROKE}/T2.nii.gz", "mind", 6.0, 1),
    CaseSpec("T1-T2 stroke, rigid only", f"{STROKE}/T1.nii.gz", f"{STROKE}/T2.nii.gz", "mind", 0.0, 2),
    CaseSpec("T1-FLAIR stroke, deformed 8 mm", f"{STROKE}/T1.nii.gz", f"{STROKE}/FLAIR.nii.gz", "mind", 8.0, 3),
    CaseSpec("T1-CT MNI, deformed 6 mm", f"{MNI}/spm_avg152T1.nii.gz", f"{MNI}/clinical_scct.nii.gz", "mind", 6.0, 4),
    CaseSpec("T1-CT MNI, rigid only", f"{MNI}/spm_avg152T1.nii.gz", f"{MNI}/clinical_scct.nii.gz", "mind", 0.0, 5),
    CaseSpec("T1-T1 chris full-res, deformed 6 mm", "chris_t1_pd/chris_t1.nii.gz",
             "chris_t1_pd/chris_t1.nii.gz", "lncc", 6.0, 7),
    CaseSpec("T1-T1 chris full-res (mind), deformed 6 mm", "chris_t1_pd/chris_t1.nii.gz",
             "chris_t1_pd/chris_t1.nii.gz", "mind", 6.0, 7),
)
QUICK_CASES = CASES[:2] + CASES[3:5]

# Correlation length (Gaussian sigma) of the random deformation, mm.
DEFORMATION_SMOOTHNESS_MM = 15.0
DEFORMATION_GRID_MM = 4.0


@dataclass
class Case:
    """A built case: images, head mask, the true affine part and the whole true mapping."""

    fixed: sitk.Image
    moving: sitk.Image
    head: sitk.Image
    rigid: sitk.Euler3DTransform  # the known rigid, the true affine part
    truth: sitk.Transform  # fixed -> moving, the whole true mapping
    calibration_mm: float  # mean residual rigid misalignment of the source pair in the head


def read_float(relative: str) -> sitk.Image:
    """A shared-data image as float32."""
    return sitk.Cast(sitk.ReadImage(str(SHARED_DATA / relative)), sitk.sitkFloat32)


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
    fixed = read_float(spec.fixed)
    original = read_float(spec.moving)
    head = head_mask(fixed)
    residual = residual_alignment(fixed, original, head)
    rigid = known_rigid(fixed, spec)
    deformation = random_deformation(fixed, head, spec.peak_mm, spec.seed)
    inverse_field = sitk.InvertDisplacementField(deformation, maximumNumberOfIterations=50,
                                                 maxErrorToleranceThreshold=0.001,
                                                 meanErrorToleranceThreshold=0.0001,
                                                 enforceBoundaryCondition=False)
    warp_back = sitk.DisplacementFieldTransform(inverse_field)
    background = float(sitk.GetArrayViewFromImage(original).min())
    deformed = sitk.Resample(original, original, warp_back, sitk.sitkBSpline, background, sitk.sitkFloat32)
    moving = _moved_header(deformed, rigid)
    truth = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(deformation)])
    calibration = float(mapping_error_mm(residual, sitk.Euler3DTransform(), head).mean())
    return Case(fixed, moving, head, rigid, truth, calibration)


def residual_alignment(fixed: sitk.Image, original: sitk.Image, head: sitk.Image) -> sitk.Transform:
    """The small rigid misalignment left in a pair curated as aligned (identity for one image twice).

    The source pairs share a grid, but their anatomy is aligned only to about
    half a millimetre (see ../shared/data/README.md).  A careful rigid MI
    registration measures that residual once, so the truth used here is the
    header identity refined by it; otherwise a stage that corrects the
    residual would be charged for it.
    """
    if sitk.GetArrayViewFromImage(fixed).tobytes() == sitk.GetArrayViewFromImage(original).tobytes():
        return sitk.Euler3DTransform()
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(48)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(0.5, seed=1)
    method.SetMetricFixedMask(head)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(0.5, 1e-4, 300, relaxationFactor=0.7)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    initial = sitk.Euler3DTransform()
    initial.SetCenter(centre)
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, original)


def _moved_header(image: sitk.Image, rigid: sitk.Euler3DTransform) -> sitk.Image:
    """The same voxels with the header moved so that voxel i lies at rigid(p_i)."""
    moved = sitk.Image(image)
    matrix = np.array(rigid.GetMatrix()).reshape(3, 3)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    moved.SetOrigin(rigid.TransformPoint(image.GetOrigin()))
    moved.SetDirection((matrix @ direction).flatten().tolist())
    return moved


def mapping_error_mm(mapping: sitk.Transform, truth: sitk.Transform, head: sitk.Image) -> np.ndarray:
    """|mapping(x) - truth(x)| in mm at every head voxel x of the fixed grid."""
    return np.linalg.norm(_displacements(mapping, head) - _displacements(truth, head), axis=-1)[
        sitk.GetArrayViewFromImage(head) > 0]


def round_trip_error_mm(outcome, rigid: sitk.Transform, head: sitk.Image) -> np.ndarray:
    """|inverse(forward(x)) - x| in mm at every head voxel, through the rigid and back."""
    round_trip = sitk.CompositeTransform([outcome.inverse, rigid.GetInverse(), rigid, outcome.forward])
    return np.linalg.norm(_displacements(round_trip, head), axis=-1)[sitk.GetArrayViewFromImage(head) > 0]


def _displacements(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(),
        reference.GetSpacing(), reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def run_stage(case: Case, metric: str, settings=None):
    """Run the deformable stage on a case from the true rigid; returns the outcome."""
    from OneClickRegistrationLib.deformable import DeformableSettings, register_deformable
    settings = settings or DeformableSettings(metric=metric)
    return register_deformable(case.fixed, case.moving, case.rigid, settings, fixed_mask=case.head)


def summary(errors: np.ndarray) -> dict:
    return {"mean": float(errors.mean()), "p95": float(np.percentile(errors, 95))}


def _stage_worker(case_dir: str, metric: str) -> None:
    """Child process: warm the kernels on a tiny case, then time the stage alone."""
    from OneClickRegistrationLib.deformable import DeformableSettings, register_deformable
    fixed = sitk.ReadImage(f"{case_dir}/fixed.nii.gz", sitk.sitkFloat32)
    moving = sitk.ReadImage(f"{case_dir}/moving.nii.gz", sitk.sitkFloat32)
    head = sitk.ReadImage(f"{case_dir}/head.nii.gz", sitk.sitkUInt8)
    rigid = sitk.ReadTransform(f"{case_dir}/rigid.tfm")
    settings = DeformableSettings(metric=metric)
    warm_start = time.perf_counter()
    _warm_up(settings)
    warm_seconds = time.perf_counter() - warm_start
    memory_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    outcome = register_deformable(fixed, moving, rigid, settings, fixed_mask=head)
    sitk.WriteTransform(outcome.forward, f"{case_dir}/forward.h5")
    sitk.WriteTransform(outcome.inverse, f"{case_dir}/inverse.h5")
    print(json.dumps({
        "seconds": outcome.seconds, "warm_up_seconds": warm_seconds, "min_jacobian": outcome.min_jacobian,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_mb_before_stage": memory_before,
    }))


def _warm_up(settings) -> None:
    """Run the stage once on a tiny synthetic volume so every kernel is compiled or loaded."""
    from OneClickRegistrationLib.deformable import register_deformable
    tiny = sitk.GaussianSource(sitk.sitkFloat32, [24, 24, 24], [4.0] * 3, [12.0] * 3, 100.0,
                               [1.0] * 3, [1.0] * 3)
    register_deformable(tiny, tiny, sitk.Euler3DTransform(), settings)


def compile_seconds() -> float:
    """Cold-cache compile and load time of the kernels: a tiny run in a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = ("import time,sys; sys.path.insert(0, 'OneClickRegistration'); "
                "from benchmarks.deformable_bench import _warm_up; "
                "from OneClickRegistrationLib.deformable import DeformableSettings as S; "
                "t=time.perf_counter(); _warm_up(S(metric='lncc')); _warm_up(S(metric='mind')); "
                "cold=time.perf_counter()-t; t=time.perf_counter(); _warm_up(S(metric='mind')); "
                "print(cold-(time.perf_counter()-t))")
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                                capture_output=True, text=True)
    return float(result.stdout.strip().splitlines()[-1])


def evaluate(spec: CaseSpec, work_dir: Path) -> dict:
    """Build a case, run the stage in a child process, measure errors in mm."""
    case = build_case(spec)
    case_dir = work_dir / f"case{spec.seed}"
    case_dir.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(case.fixed, str(case_dir / "fixed.nii.gz"))
    sitk.WriteImage(case.moving, str(case_dir / "moving.nii.gz"))
    sitk.WriteImage(case.head, str(case_dir / "head.nii.gz"))
    sitk.WriteTransform(case.rigid, str(case_dir / "rigid.tfm"))
    child = subprocess.run(
        [sys.executable, "-c", f"from benchmarks.deformable_bench import _stage_worker; "
                               f"_stage_worker({str(case_dir)!r}, {spec.metric!r})"],
        cwd=ROOT, check=True, capture_output=True, text=True)
    measured = json.loads(child.stdout.strip().splitlines()[-1])

    class _Loaded:
        forward = sitk.ReadTransform(str(case_dir / "forward.h5"))
        inverse = sitk.ReadTransform(str(case_dir / "inverse.h5"))

    before = mapping_error_mm(case.rigid, case.truth, case.head)
    after = mapping_error_mm(sitk.CompositeTransform([case.rigid, _Loaded.forward]), case.truth, case.head)
    round_trip = round_trip_error_mm(_Loaded, case.rigid, case.head)
    return {
        "case": spec.name, "metric": spec.metric, "size": list(case.fixed.GetSize()),
        "spacing_mm": [round(s, 3) for s in case.fixed.GetSpacing()],
        "source_pair_residual_mm": case.calibration_mm,
        "before": summary(before), "after": summary(after),
        "inverse_consistency_mm": {"mean": float(round_trip.mean()), "max": float(round_trip.max())},
        **measured,
    }


def print_table(rows: list, compile_s: float) -> None:
    header = (f"{'case':44s} {'before mean/p95':>16s} {'after mean/p95':>15s} {'minJac':>7s} "
              f"{'inv max':>8s} {'sec':>6s} {'peak MB':>8s}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['case']:44s} {row['before']['mean']:7.2f}/{row['before']['p95']:5.2f} mm "
              f"{row['after']['mean']:6.2f}/{row['after']['p95']:5.2f} mm {row['min_jacobian']:7.3f} "
              f"{row['inverse_consistency_mm']['max']:8.3f} {row['seconds']:6.1f} {row['peak_mb']:8.0f}")
    print(f"cold-cache kernel compile time (excluded above): {compile_s:.1f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="only the four small cases")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    specs = QUICK_CASES if arguments.quick else CASES
    compile_s = compile_seconds()
    with tempfile.TemporaryDirectory() as work:
        rows = [evaluate(spec, Path(work)) for spec in specs if (SHARED_DATA / spec.fixed).exists()]
    print_table(rows, compile_s)
    if arguments.output:
        Path(arguments.output).write_text(json.dumps(
            {"compile_seconds": compile_s, "threads": os.cpu_count(), "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
