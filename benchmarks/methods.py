"""One adapter per registration method, all answering the same question.

Every adapter takes the fixed and moving image files and returns a `Mapping`:
the method's fixed-to-moving mapping (ITK convention, LPS mm) either as a
SimpleITK transform or as a dense displacement field sampled on the fixed
grid.  `displacement_on_fixed_grid` turns either into a (z, y, x, 3) array so
the scoring code is the same for every method.

Only the registration itself is timed (`Mapping.seconds`); reading the files
and converting the answer are not.  Peers are imported inside their adapter,
so a peer that is not installed only makes its own methods "missing".
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import SimpleITK as sitk

from .worker import PeakSampler

THREADS = 2


@dataclass
class Mapping:
    """A method's answer: a transform or a displacement field, and how long it took."""

    seconds: float
    transform: Optional[sitk.Transform] = None
    displacement: Optional[np.ndarray] = None  # (z, y, x, 3) mm on the fixed grid
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A registration method as the benchmark runs it."""

    name: str
    tool: str  # "ours", "SimpleITK", "ANTsPy", "elastix", "Greedy"
    variant: str  # "rigid", "affine" or "chain"
    requires: str  # module that must import
    run: Callable[[str, str], Mapping]
    default: bool = True  # run unless asked for by name (--methods)

    def available(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None


def displacement_on_fixed_grid(mapping: Mapping, fixed: sitk.Image) -> np.ndarray:
    """The mapping as x -> mapping(x) - x on the fixed grid, (z, y, x, 3) in mm."""
    if mapping.displacement is not None:
        return mapping.displacement
    field = sitk.TransformToDisplacementField(
        mapping.transform, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
        fixed.GetSpacing(), fixed.GetDirection())
    return sitk.GetArrayFromImage(field)


def limit_threads() -> None:
    """Cap every library this process loads at THREADS threads."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)


# ---------------------------------------------------------------- ours

def _ours(stages: tuple) -> Callable[[str, str], Mapping]:
    """Our register() with `stages`; its details say during which progress step memory peaked."""
    def run(fixed_path: str, moving_path: str) -> Mapping:
        from OneClickRegistrationLib import register
        with PeakSampler("reading the images") as sampler:
            fixed, moving = sitk.ReadImage(fixed_path), sitk.ReadImage(moving_path)
            sampler.progress(0.0, "register(): checking and converting the inputs")
            start = time.perf_counter()
            result = register(fixed, moving, stages=stages, progress=sampler.progress)
            seconds = time.perf_counter() - start
        details = {
            "stages": {stage.name: {"seconds": round(stage.seconds, 3), "accepted": stage.accepted,
                                    "message": stage.message} for stage in result.stages},
            "preset": result.preset.name,
            "modalities": [result.fixed_modality.modality, result.moving_modality.modality],
            "peak_step": sampler.peak_step,
            "sampled_peak_mb": round(sampler.peak_mb, 1),
        }
        return Mapping(seconds, transform=result.transform, details=details)
    return run


# ---------------------------------------------------------------- SimpleITK textbook

def _sitk_method(fixed: sitk.Image, moving: sitk.Image, shrink=(4, 2, 1), sigmas=(2, 1, 0)):
    """The textbook framework setup: Mattes MI on 5% random samples, 3 levels (shrink 4-2-1).

    The notebooks' 1% of voxels is too few samples on these small volumes (the
    optimiser stops within a few mm of the start), so 5% is used.
    """
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.05, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel(list(sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _sitk_linear(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform) -> sitk.Transform:
    method = _sitk_method(fixed, moving)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=100,
                                                    relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def _sitk_rigid(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY)
    return _sitk_linear(fixed, moving, initial)


def _sitk_affine(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    rigid = _single(_sitk_rigid(fixed, moving))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(rigid.GetMatrix())
    affine.SetTranslation(rigid.GetTranslation())
    affine.SetCenter(rigid.GetCenter())
    return _sitk_linear(fixed, moving, affine)


def _sitk_bspline(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    affine = _single(_sitk_affine(fixed, moving))
    mesh = [max(1, int(round(size * spacing / 50.0)))
            for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method = _sitk_method(fixed, moving)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=50,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=200,
                                costFunctionConvergenceFactor=1e7)
    method.SetMovingInitialTransform(affine)
    method.SetInitialTransform(bspline, inPlace=True)
    method.Execute(fixed, moving)
    return sitk.CompositeTransform([affine, bspline])


def _single(transform: sitk.Transform) -> sitk.Transform:
    """The one transform inside a registration result, which may come wrapped in a composite."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        assert composite.GetNumberOfTransforms() == 1
        transform = composite.GetNthTransform(0)
    return transform.Downcast()


def _simpleitk(register: Callable) -> Callable[[str, str], Mapping]:
    def run(fixed_path: str, moving_path: str) -> Mapping:
        fixed = sitk.ReadImage(fixed_path, sitk.sitkFloat32)
        moving = sitk.ReadImage(moving_path, sitk.sitkFloat32)
        start = time.perf_counter()
        transform = register(fixed, moving)
        return Mapping(time.perf_counter() - start, transform=transform)
    return run


# ---------------------------------------------------------------- ANTsPy

def _antspy(type_of_transform: str) -> Callable[[str, str], Mapping]:
    def run(fixed_path: str, moving_path: str) -> Mapping:
        import ants
        fixed, moving = ants.image_read(fixed_path), ants.image_read(moving_path)
        with tempfile.TemporaryDirectory(prefix="bench_ants_") as tmp:
            start = time.perf_counter()
            result = ants.registration(fixed, moving, type_of_transform=type_of_transform,
                                       outprefix=str(Path(tmp) / "reg_"))
            seconds = time.perf_counter() - start
            # One displacement field on the fixed grid equal to the whole forward list,
            # exactly as antsApplyTransforms resamples the moving image with it.
            composed = ants.apply_transforms(fixed, moving, result["fwdtransforms"],
                                             compose=str(Path(tmp) / "composed_"))
            displacement = sitk.GetArrayFromImage(sitk.ReadImage(composed)).astype(np.float64)
        return Mapping(seconds, displacement=displacement)
    return run


# ---------------------------------------------------------------- elastix

def _elastix(maps: tuple) -> Callable[[str, str], Mapping]:
    def run(fixed_path: str, moving_path: str) -> Mapping:
        import itk
        # The thread cap is ITK's global default: elastix's own SetNumberOfThreads
        # crashes (segfault) with the B-spline map in itk-elastix 0.25.
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(THREADS)
        fixed = itk.imread(fixed_path, itk.F)
        moving = itk.imread(moving_path, itk.F)
        parameters = itk.ParameterObject.New()
        for name in maps:
            parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
        start = time.perf_counter()
        registration = itk.ElastixRegistrationMethod.New(fixed, moving)
        registration.SetParameterObject(parameters)
        registration.SetLogToConsole(False)
        registration.UpdateLargestPossibleRegion()
        seconds = time.perf_counter() - start
        field = itk.transformix_deformation_field(moving, registration.GetTransformParameterObject())
        displacement = np.asarray(itk.array_from_image(field), dtype=np.float64)
        return Mapping(seconds, displacement=displacement)
    return run


# ---------------------------------------------------------------- Greedy (picsl-greedy)

# Rigid: image centres matched, then Greedy's random search over any rotation (1000 tries,
# 10 mm shifts) before its NMI optimisation; affine and deformable start from the previous
# result (-ia, -it), as Greedy's quick start chains them.  NMI throughout, since the
# benchmark's pairs are mostly cross-modality; -sv is the quick start's diffeomorphic mode.
GREEDY_RIGID = "-a -dof 6 -ia-image-centers -search 1000 any 10 -m NMI -n 100x50x10"
GREEDY_AFFINE = "-a -dof 12 -ia rigid -m NMI -n 100x50x10"
GREEDY_DEFORMABLE = "-it affine -m NMI -sv -n 100x50x10"


def _greedy(chain: bool) -> Callable[[str, str], Mapping]:
    """Greedy rigid (with its rotation search), or rigid then affine then deformable."""
    def run(fixed_path: str, moving_path: str) -> Mapping:
        from picsl_greedy import Greedy3D
        fixed = sitk.ReadImage(fixed_path, sitk.sitkFloat32)
        moving = sitk.ReadImage(moving_path, sitk.sitkFloat32)
        greedy = Greedy3D()
        common = f"-threads {THREADS} -seed 1 -V 0"
        with _console_silenced():
            start = time.perf_counter()
            greedy.execute(f"{common} -i fixed moving {GREEDY_RIGID} -o rigid",
                           fixed=fixed, moving=moving, rigid=None)
            transforms = "rigid"
            if chain:
                greedy.execute(f"{common} -i fixed moving {GREEDY_AFFINE} -o affine", affine=None)
                greedy.execute(f"{common} -i fixed moving {GREEDY_DEFORMABLE} -o warp", warp=None)
                transforms = "warp affine"
            seconds = time.perf_counter() - start
            # Greedy composes its transforms into one displacement field on the fixed grid (LPS mm).
            greedy.execute(f"{common} -rf fixed -rc composed -r {transforms}", composed=None)
        displacement = sitk.GetArrayFromImage(greedy["composed"]).astype(np.float64)
        return Mapping(seconds, displacement=displacement)
    return run


@contextlib.contextmanager
def _console_silenced():
    """Send what a compiled library prints on standard output to /dev/null meanwhile.

    Greedy prints its rotation search and optimiser messages even at -V 0.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


# ---------------------------------------------------------------- the list

METHODS = (
    Method("ours rigid", "ours", "rigid", "OneClickRegistrationLib", _ours(("rigid",))),
    Method("ours affine", "ours", "affine", "OneClickRegistrationLib", _ours(("rigid", "affine"))),
    Method("ours chain", "ours", "chain", "OneClickRegistrationLib",
           _ours(("rigid", "affine", "deformable"))),
    Method("SimpleITK rigid", "SimpleITK", "rigid", "SimpleITK", _simpleitk(_sitk_rigid)),
    Method("SimpleITK affine", "SimpleITK", "affine", "SimpleITK", _simpleitk(_sitk_affine)),
    # Off by default: not one of the issue's peers' chains, and 3-5x slower than them on 2 cores.
    Method("SimpleITK chain", "SimpleITK", "chain", "SimpleITK", _simpleitk(_sitk_bspline), default=False),
    Method("ANTsPy Rigid", "ANTsPy", "rigid", "ants", _antspy("Rigid")),
    Method("ANTsPy Affine", "ANTsPy", "affine", "ants", _antspy("Affine")),
    Method("ANTsPy SyNQuick[s]", "ANTsPy", "chain", "ants", _antspy("antsRegistrationSyNQuick[s]")),
    Method("elastix rigid", "elastix", "rigid", "itk", _elastix(("rigid",))),
    Method("elastix affine", "elastix", "affine", "itk", _elastix(("rigid", "affine"))),
    Method("elastix chain", "elastix", "chain", "itk", _elastix(("rigid", "affine", "bspline"))),
    Method("Greedy rigid", "Greedy", "rigid", "picsl_greedy", _greedy(chain=False)),
    Method("Greedy chain", "Greedy", "chain", "picsl_greedy", _greedy(chain=True)),
)


def method_named(name: str) -> Method:
    for method in METHODS:
        if method.name == name:
            return method
    raise KeyError(f"unknown method {name!r}; choose from {[m.name for m in METHODS]}")
