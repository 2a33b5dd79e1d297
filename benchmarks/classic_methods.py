"""The classic experiments' methods, each run in a fresh process of its own.

Every adapter takes the fixed and moving image files and returns a
`methods.Mapping` (the fixed-to-moving mapping, ITK convention), like the
adapters of benchmarks.methods; a planar adapter also puts into its details
how far inverse(forward(x)) lands from x over the shapes' pixels
("round_trip_max_px"), measured with the method's own inverse.

`run_in_fresh_process` starts one child process per method (spawn), warms the
method up on a small pair (library loading, numba compilation: not timed),
then runs the timed pairs one after the other, resetting the peak-memory
counter before each, and sends back the mapping as a displacement field on the
fixed grid.  A pair that runs past the time limit stops the child; the pairs
after it are reported as not run.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import multiprocessing
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from . import methods, worker
from .methods import Mapping

logger = logging.getLogger(__name__)

PLANAR = "planar"
TEMPLATE = "template"
SHAPE_THRESHOLD = 0.5  # a pixel of the circle or the C: value above this
DIPY_LEVEL_ITERS = [200, 100, 50, 25]  # dipy's 2D SyN tutorial (circle to C)
DIPY_INVERSE_ITERS = 50  # idem


@dataclass(frozen=True)
class ClassicMethod:
    """A method of the classic section: which experiment it runs in and how."""

    name: str
    tool: str  # "ours", "dipy", "ANTsPy"
    experiment: str  # PLANAR or TEMPLATE
    requires: str  # module that must import
    run: Callable[[str, str], Mapping]

    def available(self) -> bool:
        return importlib.util.find_spec(self.requires) is not None


# ---------------------------------------------------------------- ours

def _ours_planar(fixed_path: str, moving_path: str) -> Mapping:
    """register(fixed, moving) with no settings, as a user calls it on two 2D images."""
    from OneClickRegistrationLib import register
    fixed, moving = sitk.ReadImage(fixed_path), sitk.ReadImage(moving_path)
    start = time.perf_counter()
    result = register(fixed, moving)
    seconds = time.perf_counter() - start
    points = shape_points(fixed, moving)
    details = _ours_details(result)
    details["round_trip_max_px"] = transform_round_trip(result.transform, result.inverse_transform, points) \
        / min(fixed.GetSpacing())
    return Mapping(seconds, transform=result.transform, details=details)


def _ours_template(fixed_path: str, moving_path: str) -> Mapping:
    """register(fixed, moving, inter_subject=True); plain register(fixed, moving) while that keyword is missing."""
    from OneClickRegistrationLib import register
    keywords, note = inter_subject_keywords(register)
    fixed, moving = sitk.ReadImage(fixed_path), sitk.ReadImage(moving_path)
    start = time.perf_counter()
    result = register(fixed, moving, **keywords)
    seconds = time.perf_counter() - start
    details = _ours_details(result)
    details["inter_subject"] = bool(keywords)
    if note:
        details["note"] = note
    return Mapping(seconds, transform=result.transform, details=details)


def inter_subject_keywords(register: Callable) -> tuple:
    """({'inter_subject': True}, '') when register() takes that keyword, else ({}, why not)."""
    if "inter_subject" in inspect.signature(register).parameters:
        return {"inter_subject": True}, ""
    return {}, "register() has no inter_subject keyword yet: ran register(fixed, moving)"


def _ours_details(result) -> dict:
    """What each of our stages did, and the final verdict."""
    return {"stages": {stage.name: {"seconds": round(stage.seconds, 3), "accepted": stage.accepted,
                                    "message": stage.message} for stage in result.stages},
            "verdict": result.verdict}


def transform_round_trip(forward: sitk.Transform, inverse: sitk.Transform, points: np.ndarray) -> float:
    """max |inverse(forward(x)) - x| over the physical points x (rows), in physical units."""
    returned = np.array([inverse.TransformPoint(forward.TransformPoint(tuple(map(float, point))))
                         for point in points])
    return float(np.linalg.norm(returned - points, axis=1).max())


def shape_points(fixed: sitk.Image, moving: sitk.Image) -> np.ndarray:
    """Physical points of the pixels where the fixed or the moving shape is (both on one grid), rows (x, y)."""
    inside = (sitk.GetArrayViewFromImage(fixed) > SHAPE_THRESHOLD) | \
             (sitk.GetArrayViewFromImage(moving) > SHAPE_THRESHOLD)
    index = np.argwhere(inside)[:, ::-1].astype(float)
    direction = np.asarray(fixed.GetDirection()).reshape(2, 2)
    return (index * np.asarray(fixed.GetSpacing())) @ direction.T + np.asarray(fixed.GetOrigin())


# ---------------------------------------------------------------- dipy

def _dipy_syn(metric_name: str) -> Callable[[str, str], Mapping]:
    """dipy's SymmetricDiffeomorphicRegistration as its 2D tutorial runs it, with the metric named."""
    def run(fixed_path: str, moving_path: str) -> Mapping:
        from dipy.align.imwarp import SymmetricDiffeomorphicRegistration
        from dipy.align.metrics import CCMetric, SSDMetric
        logging.getLogger("dipy").setLevel(logging.WARNING)
        static = sitk.GetArrayFromImage(sitk.ReadImage(fixed_path, sitk.sitkFloat32))
        moving = sitk.GetArrayFromImage(sitk.ReadImage(moving_path, sitk.sitkFloat32))
        metric = SSDMetric(2) if metric_name == "SSD" else CCMetric(2)
        start = time.perf_counter()
        registration = SymmetricDiffeomorphicRegistration(metric, level_iters=DIPY_LEVEL_ITERS,
                                                          inv_iter=DIPY_INVERSE_ITERS)
        mapping = registration.optimize(static, moving)
        seconds = time.perf_counter() - start
        forward = np.asarray(mapping.get_forward_field(), dtype=np.float64)
        backward = np.asarray(mapping.get_backward_field(), dtype=np.float64)
        inside = np.argwhere((static > SHAPE_THRESHOLD) | (moving > SHAPE_THRESHOLD)).astype(float)
        details = {"metric": metric_name, "level_iters": DIPY_LEVEL_ITERS,
                   "round_trip_max_px": field_round_trip(forward, backward, inside)}
        # dipy's fields are in array-index order (row, column); the benchmark's are (x, y) = (column, row).
        return Mapping(seconds, displacement=forward[..., ::-1].copy(), details=details)
    return run


def field_round_trip(forward: np.ndarray, backward: np.ndarray, points: np.ndarray) -> float:
    """max |y + backward(y) - x| with y = x + forward(x), for grid points x (rows of array indices).

    Both fields are (rows, columns, 2) displacements in array-index units; the
    backward one is read with linear interpolation and zero outside its grid,
    as dipy itself reads it.
    """
    index = points.astype(int)
    mapped = points + forward[index[:, 0], index[:, 1]]
    back = np.stack([ndimage.map_coordinates(backward[..., axis], mapped.T, order=1, mode="constant", cval=0.0)
                     for axis in range(2)], axis=1)
    return float(np.linalg.norm(mapped + back - points, axis=1).max())


# ---------------------------------------------------------------- the list

METHODS = (
    ClassicMethod("ours", "ours", PLANAR, "OneClickRegistrationLib", _ours_planar),
    ClassicMethod("dipy SyN SSD", "dipy", PLANAR, "dipy", _dipy_syn("SSD")),
    ClassicMethod("dipy SyN CC", "dipy", PLANAR, "dipy", _dipy_syn("CC")),
    ClassicMethod("ours inter-subject", "ours", TEMPLATE, "OneClickRegistrationLib", _ours_template),
    # methods._antspy composes the forward transform list into one field on the fixed grid.
    ClassicMethod("ANTsPy SyN", "ANTsPy", TEMPLATE, "ants", methods._antspy("SyN")),
)


def method_named(name: str) -> ClassicMethod:
    for method in METHODS:
        if method.name == name:
            return method
    raise KeyError(f"unknown classic method {name!r}; choose from {[m.name for m in METHODS]}")


def selected(experiment: str, requested: Optional[Sequence[str]]) -> list:
    """The experiment's methods, narrowed to those named (or whose tool is named) in `requested` if given."""
    chosen = [method for method in METHODS if method.experiment == experiment]
    if not requested:
        return chosen
    return [method for method in chosen if method.name in requested or method.tool in requested]


# ---------------------------------------------------------------- one process per method

def run_in_fresh_process(method: ClassicMethod, warm_up: Optional[tuple], pairs: Sequence[tuple],
                         timeout_s: float) -> list:
    """One outcome dict per (fixed path, moving path) pair, from a new process that runs only `method`.

    An outcome: status "ok" with seconds, cpu_seconds, peak_mb, the mapping's
    displacement on the fixed grid and the method's details; or status
    "missing", "error" or "timeout" with a message.
    """
    if not method.available():
        logger.warning("%s: %s is not installed; reported as missing", method.name, method.requires)
        return [{"status": "missing", "message": f"{method.requires} not installed"} for _ in pairs]
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(child, method.name, warm_up, list(pairs)),
                              name=f"bench {method.name}", daemon=True)
    process.start()
    child.close()
    outcomes = []
    try:
        for fixed_path, moving_path in pairs:
            outcome = _next_outcome(parent, process, timeout_s)
            outcomes.append(outcome)
            if outcome["status"] != "ok":
                logger.warning("%s on %s: %s: %s", method.name, moving_path, outcome["status"], outcome["message"])
                if not process.is_alive():
                    break
    finally:
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
    not_run = {"status": "error", "message": "not run: the method's process stopped on an earlier pair"}
    return outcomes + [dict(not_run) for _ in pairs[len(outcomes):]]


def _next_outcome(connection, process, timeout_s: float) -> dict:
    if not connection.poll(timeout_s):
        process.kill()
        process.join()
        return {"status": "timeout", "message": f"no result within {timeout_s:.0f} s"}
    try:
        return connection.recv()
    except (EOFError, OSError):
        process.join(5)
        return {"status": "error", "message": f"the worker process died (exit code {process.exitcode})"}


def _serve(connection, method_name: str, warm_up: Optional[tuple], pairs: list) -> None:
    """The child: limit threads, warm up (untimed), then answer each pair in turn."""
    logging.basicConfig(level=logging.WARNING)
    methods.limit_threads()
    method = method_named(method_name)
    if warm_up is not None:
        try:
            method.run(*warm_up)
        except Exception:  # the timed pairs report the same problem properly
            logger.exception("%s: warm-up failed", method_name)
    for fixed_path, moving_path in pairs:
        connection.send(evaluate_pair(method, fixed_path, moving_path))


def evaluate_pair(method: ClassicMethod, fixed_path: str, moving_path: str) -> dict:
    """Run and time one registration; its mapping as a displacement on the fixed grid, or the error."""
    try:
        worker._reset_peak_memory()
        cpu_start = worker._cpu_seconds()
        mapping = method.run(fixed_path, moving_path)
        cpu = worker._cpu_seconds() - cpu_start
        peak_mb = worker._peak_memory_mb()
        displacement = methods.displacement_on_fixed_grid(mapping, sitk.ReadImage(fixed_path))
        return {"status": "ok", "seconds": mapping.seconds, "cpu_seconds": cpu, "peak_mb": peak_mb,
                "displacement": np.asarray(displacement, dtype=np.float64), "details": mapping.details}
    except Exception as error:  # one failing method must not stop the section
        logger.exception("%s failed on %s", method.name, moving_path)
        return {"status": "error", "message": f"{type(error).__name__}: {error}",
                "trace": traceback.format_exc(limit=5)}
