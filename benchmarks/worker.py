"""Run one method in its own process, so time, CPU and peak memory are its own.

A `MethodWorker` starts a child process (spawn) for one method, warms it up
on a tiny case (library loading, numba compilation: none of it timed), then
evaluates cases one at a time.  Before each case the child resets its
peak-RSS counter (Linux /proc/self/clear_refs), so `peak_mb` is that case's
peak resident memory of the whole process, libraries included.  A case that
runs past the time limit kills the child; the next case gets a fresh one.
`PeakSampler` tells during which step of a method that peak happens.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import threading
import traceback
from typing import Optional

import numpy as np

logger = logging.getLogger(__name__)

THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def limit_thread_environment(threads: int) -> None:
    """Set every thread-count variable the methods read, before any child starts."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)


class MethodWorker:
    """A child process that runs one method on case after case."""

    def __init__(self, method_name: str, warmup_case: Optional[dict], timeout_s: float,
                 environment: Optional[dict] = None):
        self.method_name = method_name
        self.warmup_case = warmup_case
        self.timeout_s = timeout_s
        self.environment = environment or {}
        self._process = None
        self._connection = None

    def evaluate(self, case: dict) -> dict:
        """Run the method on `case` (a Case.as_dict()); returns a result row."""
        if self._process is None:
            self._start()
        self._connection.send(case)
        if not self._connection.poll(self.timeout_s):
            logger.warning("%s: no answer within %.0f s on %s; stopping it", self.method_name,
                           self.timeout_s, case["name"])
            self.close()
            return {"status": "timeout", "message": f"no result within {self.timeout_s:.0f} s"}
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            code = self._process.exitcode if self._process is not None else None
            self.close()
            return {"status": "error", "message": f"the worker process died (exit code {code})"}

    def close(self) -> None:
        if self._process is None:
            return
        if self._process.is_alive():
            try:
                self._connection.send(None)
                self._process.join(10)
            except (BrokenPipeError, OSError):
                pass
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._process = self._connection = None

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        saved = {key: os.environ.get(key) for key in self.environment}
        os.environ.update(self.environment)
        try:
            self._process = context.Process(target=_serve, args=(child, self.method_name, self.warmup_case),
                                            name=f"bench {self.method_name}", daemon=True)
            self._process.start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        child.close()
        self._connection = parent


def _serve(connection, method_name: str, warmup_case: Optional[dict]) -> None:
    """The child's loop: warm up, then answer cases until told to stop."""
    logging.basicConfig(level=logging.WARNING)
    from . import methods
    methods.limit_threads()
    method = methods.method_named(method_name)
    if warmup_case is not None:
        try:
            method.run(warmup_case["fixed_path"], warmup_case["moving_path"])
        except Exception:  # the timed cases will report the same problem properly
            logger.exception("%s: warm-up failed", method_name)
    while True:
        case = connection.recv()
        if case is None:
            return
        connection.send(evaluate_case(method, case))


def evaluate_case(method, case: dict) -> dict:
    """Run, time and score one case inside the child process."""
    import SimpleITK as sitk

    from . import cases, methods
    try:
        _reset_peak_memory()
        cpu_start = _cpu_seconds()
        mapping = method.run(case["fixed_path"], case["moving_path"])
        cpu = _cpu_seconds() - cpu_start
        peak_mb = _peak_memory_mb()
        fixed = sitk.ReadImage(case["fixed_path"])
        displacement = methods.displacement_on_fixed_grid(mapping, fixed)
        with np.load(case["truth_path"]) as truth:
            index, points, expected = truth["index"], truth["points"], truth["truth"]
        mapped = points + displacement[index[:, 2], index[:, 1], index[:, 0]]
        row = {
            "status": "ok",
            "seconds": mapping.seconds,
            "cpu_seconds": cpu,
            "peak_mb": peak_mb,
            "errors": np.linalg.norm(mapped - expected, axis=1).astype(np.float32),
            "mean_offset": (mapped - expected).mean(axis=0),  # a bias's direction (benchmarks.reference)
            "details": mapping.details,
        }
        if method.variant == "chain":
            mask = sitk.GetArrayFromImage(sitk.ReadImage(case["mask_path"])) > 0
            row["min_jacobian"] = float(cases.jacobian_determinant(displacement, fixed)[mask].min())
        return row
    except Exception as error:  # one failing case must not stop the benchmark
        logger.exception("%s failed on %s", method.name, case["name"])
        return {"status": "error", "message": f"{type(error).__name__}: {error}",
                "trace": traceback.format_exc(limit=5)}


def _reset_peak_memory() -> None:
    """Start a new peak-RSS measurement (Linux); harmless where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_memory_mb() -> float:
    """Peak resident memory since the last reset, in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def resident_memory_mb() -> float:
    """This process's resident memory now, in MiB (Linux /proc/self/statm; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


class PeakSampler:
    """The largest resident memory seen while a method runs, and the step running at that moment.

    A thread samples the resident memory every INTERVAL_S; `progress` (a
    register() progress callback, or called by hand) names the step running
    now.  A spike shorter than the interval, or inside a call that holds the
    GIL, is attributed to the step seen right after it.
    """

    INTERVAL_S = 0.02

    def __init__(self, step: str):
        self.step = step
        self.peak_mb = 0.0
        self.peak_step: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak sampler", daemon=True)

    def progress(self, fraction: float, message: str) -> None:
        """Name the step running from now on (the fraction is not used)."""
        self.step = message

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.INTERVAL_S):
                return

    def sample(self) -> None:
        """Take one sample now."""
        resident = resident_memory_mb()
        if resident > self.peak_mb:
            self.peak_mb, self.peak_step = resident, self.step
