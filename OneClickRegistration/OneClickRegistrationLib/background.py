"""`register` in a worker process, so that a GUI stays responsive and Cancel takes effect at once.

3D Slicer runs Python in its GUI thread: a registration run there freezes the
application until it ends.  As SlicerElastix does with elastix, the work goes
to a separate process instead:

    job = BackgroundRegistration(fixed, moving, stages=("rigid", "affine"))
    job.start()
    events = job.poll()       # from a timer: the progress received since the last call; never blocks
    if job.done:
        result = job.result() # a pipeline.RegistrationResult, as register() returns it
    job.cancel()              # at any time: the worker is gone within about CANCEL_GRACE_S

Scripts call `register_in_background(fixed, moving, progress=...)`, which does
the same and blocks until the result is there.

How it works.  The constructor writes both images (and masks) to a private
temporary folder, uncompressed MetaImage, which keeps the geometry exact, and
pickles the other arguments beside them.  `start` runs
`sys.executable -m OneClickRegistrationLib.background FOLDER` with PYTHONPATH
extended by the folder holding this package.  In Slicer, sys.executable is the
PythonSlicer launcher, which runs the real interpreter as its child: the
worker therefore gets its own process group (its own session; a new process
group on Windows) and a cancel ends the whole group, not only the launcher.
The worker writes one JSON line per progress message to its standard output:

    {"fraction": 0.42, "message": "rigid: refining at 2 mm, iteration 40"}

and a last line saying how it ended:

    {"outcome": "done"} | {"outcome": "cancelled"}
    {"outcome": "error", "type": "InvalidInputError", "message": "the fixed image is constant ..."}

With "done" it has pickled the RegistrationResult to the folder, every
SimpleITK object in it as a file beside the pickle (transforms as .h5 files,
transform.h5 and inverse_transform.h5 among them, images as .mha), so the
parent rebuilds the same result exactly.  A worker that ends without that line
(a crash, killed) makes `result` raise RuntimeError with its exit status and
the last lines it wrote to stderr.  The parent reads the worker's output in a
thread, so `poll` never waits.

Cancelling closes the worker's standard input: the worker watches it from a
thread and its next progress message raises RegistrationCancelled there.
After CANCEL_GRACE_S the parent kills the process group anyway.  A worker
whose parent dies sees the same end of input, and ends too.  The temporary
folder is removed when the result has been read, on cancel, and at the
latest when the BackgroundRegistration object is collected.

The worker runs with the thread count a run in this process would use: it
inherits the environment (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS,
NUMBA_NUM_THREADS, NUMBA_CACHE_DIR) and the CPU affinity, and is given
SimpleITK's global default number of threads as set in this process.

This module imports only the standard library when imported; SimpleITK and
the rest of the library are imported where they are used.
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
import importlib
import inspect
import json
import logging
import os
import pickle
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional

logger = logging.getLogger(__name__)

# How long a cancelled worker may take to stop by itself before its process group is killed.
CANCEL_GRACE_S = 1.0
# How long a worker whose standard input closed may take to stop by itself before it exits
# regardless (its parent may be gone, so nobody else would end it).
ORPHAN_GRACE_S = 2.0
# Lines of the worker's stderr quoted when it fails unexpectedly.
STDERR_TAIL_LINES = 15
JOB_FILE = "job.pkl"
RESULT_FILE = "result.pkl"
STDERR_FILE = "worker.log"
# Exit status of a worker that ended itself because its standard input closed and the job did not stop.
EXIT_ORPHANED = 3
# The worker's errors that the parent raises again with their class and message (the others
# become RuntimeError); RegistrationCancelled has an outcome of its own.
_FORWARDED_ERRORS = frozenset({"InvalidInputError", "ModuleNotFoundError", "ImportError", "ValueError"})


class ProgressEvent(NamedTuple):
    """One progress message of the worker; `received` is time.monotonic() when the parent read it."""

    fraction: float
    message: str
    received: float


class BackgroundRegistration:
    """`pipeline.register(fixed, moving, **register_kwargs)` run in a worker process.

    fixed, moving: SimpleITK images; register_kwargs: any keyword of
    `register` except `progress` (use `poll`).  resampled_moving=False skips
    sending the resampled moving image back: the result's `resampled_moving`
    is then None.  The arguments are checked and written to a private
    temporary folder here; nothing runs before `start`.
    """

    def __init__(self, fixed, moving, *, resampled_moving: bool = True, **register_kwargs):
        _check_arguments(fixed, moving, register_kwargs)
        sitk = importlib.import_module("SimpleITK")
        self._folder = Path(tempfile.mkdtemp(prefix="oneclick-registration-"))
        self._remove_folder = weakref.finalize(self, shutil.rmtree, str(self._folder), ignore_errors=True)
        job = {"fixed": fixed, "moving": moving, "options": register_kwargs,
               "resampled_moving": resampled_moving,
               "sitk_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}
        try:
            _dump(job, self._folder / JOB_FILE, {id(fixed): "fixed", id(moving): "moving"})
        except BaseException:
            self._remove_folder()
            raise
        self._fixed, self._moving = fixed, moving  # re-attached to the result (references, not copies)
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._events: "queue.SimpleQueue[ProgressEvent]" = queue.SimpleQueue()
        self._outcome: dict = {}
        self._cancelled = False
        self._result = None

    def start(self) -> None:
        """Launch the worker process (once)."""
        if self._process is not None or self._cancelled:
            raise RuntimeError("this registration was already started; create a new BackgroundRegistration")
        package_parent = str(Path(__file__).resolve().parent.parent)
        python_path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        with open(self._folder / STDERR_FILE, "wb") as stderr:
            self._process = subprocess.Popen(
                [sys.executable, "-m", f"{__package__}.background", str(self._folder)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, cwd=self._folder,
                env=dict(os.environ, PYTHONPATH=python_path), **_own_process_group())
        self._reader = threading.Thread(target=self._read_worker_output, name="oneclick-registration-reader",
                                        daemon=True)
        self._reader.start()
        logger.info("registration worker %d started in %s", self._process.pid, self._folder)

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id (in Slicer: the launcher's), None before `start`."""
        return None if self._process is None else self._process.pid

    @property
    def done(self) -> bool:
        """True once the worker has ended and all it wrote has been read (also after a cancel)."""
        if self._process is None:
            return self._cancelled
        return self._process.poll() is not None and not self._reader.is_alive()

    @property
    def running(self) -> bool:
        """True from `start` until the worker has ended."""
        return self._process is not None and not self.done

    def poll(self) -> List[ProgressEvent]:
        """The progress events received since the last call (possibly none); never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def result(self, timeout: Optional[float] = None):
        """Wait for the worker (at most `timeout` seconds) and return its `pipeline.RegistrationResult`.

        Raises what the worker raised: InvalidInputError, ValueError or
        ImportError with the worker's one-line message, RegistrationCancelled
        after a cancel, RuntimeError with the worker's last stderr lines when
        it failed otherwise or was killed; TimeoutError when the timeout
        passes first (the worker keeps running).
        """
        if self._result is None:
            if self._process is None and not self._cancelled:
                raise RuntimeError("the registration was not started: call start() first")
            if self._process is not None:
                self._wait(timeout)
            try:
                self._result = ("value", self._read_result())
            except Exception as error:  # noqa: BLE001 - kept and raised again on every call
                self._result = ("error", error)
            finally:
                self._remove_folder()
        kind, value = self._result
        if kind == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the worker and remove the temporary folder; `result` then raises RegistrationCancelled.

        Asks the worker to stop (closes its standard input), kills its whole
        process group if it is still there after CANCEL_GRACE_S, and returns
        once it is gone.  Harmless when the worker has already ended.  (A
        group whose leader ended by itself is not signalled: its id may be
        reused; the launcher ends only after its child.)
        """
        if self._result is None:
            self._cancelled = True
        if self._process is not None:
            _close_quietly(self._process.stdin)
            try:
                self._process.wait(CANCEL_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.info("registration worker %d did not stop by itself; killing its process group",
                            self._process.pid)
                _kill_process_group(self._process)
                self._process.wait()
            self._reader.join()
        self._remove_folder()

    def _wait(self, timeout: Optional[float]) -> None:
        """Wait for the worker to end and its output to be read; TimeoutError after `timeout` seconds."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"the registration is still running after {timeout} s") from None
        self._reader.join()
        _close_quietly(self._process.stdin)

    def _read_worker_output(self) -> None:
        """Reader thread: progress lines to the queue, the outcome line kept, until the worker's output ends."""
        for line in self._process.stdout:
            try:
                record = json.loads(line)
                if "outcome" in record:
                    self._outcome = record
                else:
                    self._events.put(ProgressEvent(float(record["fraction"]), str(record["message"]),
                                                   time.monotonic()))
            except (ValueError, KeyError, TypeError):
                logger.warning("unexpected output from the registration worker: %r", line[:200])
        self._process.stdout.close()

    def _read_result(self):
        """The RegistrationResult the worker wrote, or the worker's error raised again here."""
        from .errors import InvalidInputError, RegistrationCancelled

        outcome = self._outcome.get("outcome")
        if self._cancelled or outcome == "cancelled":
            raise RegistrationCancelled("the registration was cancelled")
        if outcome == "done":
            return dataclasses.replace(_load(self._folder / RESULT_FILE), fixed_image=self._fixed,
                                       moving_image=self._moving)
        if outcome == "error":
            error_class = InvalidInputError if self._outcome["type"] == "InvalidInputError" \
                else getattr(builtins, self._outcome["type"])
            raise error_class(self._outcome["message"])
        raise RuntimeError(f"the registration worker stopped unexpectedly ({_exit_description(self._process)}); "
                           f"its last messages:\n{_tail(self._folder / STDERR_FILE)}")


def register_in_background(fixed, moving, *, progress: Optional[Callable[[float, str], None]] = None,
                           poll_interval: float = 0.1, **register_kwargs):
    """`pipeline.register(fixed, moving, **register_kwargs)` run in a worker process, waiting for the result.

    progress(fraction, message) is called in this thread for every message of
    the worker; when it raises (RegistrationCancelled to cancel, or anything
    else, KeyboardInterrupt included) the worker is ended and the exception
    propagates.  Between messages this thread sleeps `poll_interval` seconds.
    Returns the RegistrationResult, or raises like `BackgroundRegistration.result`.
    """
    job = BackgroundRegistration(fixed, moving, **register_kwargs)
    try:
        job.start()
        while True:
            finished = job.done  # read before draining, so that no event can arrive unseen after the last poll
            for event in job.poll():
                if progress is not None:
                    progress(event.fraction, event.message)
            if finished:
                return job.result()
            time.sleep(poll_interval)
    except BaseException:
        job.cancel()
        raise


def _check_arguments(fixed, moving, register_kwargs: dict) -> None:
    """TypeError now, in the caller's process, for arguments `register` would refuse."""
    if "progress" in register_kwargs:
        raise TypeError("a progress callback cannot run in the worker process: read job.poll(), "
                        "or pass progress= to register_in_background")
    from .pipeline import register

    inspect.signature(register).bind(fixed, moving, **register_kwargs)


def _own_process_group() -> dict:
    """Popen arguments that start the worker in its own process group, so that it can be ended as a whole."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def _kill_process_group(process: subprocess.Popen) -> None:
    """End the worker and every process it started (the launcher's child interpreter in Slicer)."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group has already ended


def _close_quietly(stream) -> None:
    """Close a pipe whose other end may already be gone."""
    try:
        stream.close()
    except OSError:
        pass


def _exit_description(process: subprocess.Popen) -> str:
    """'exit status 1' or 'killed by signal 9 (SIGKILL)'."""
    code = process.returncode
    if code is not None and code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exit status {code}"


def _tail(path: Path) -> str:
    """The last STDERR_TAIL_LINES lines of a text file ('(nothing)' when empty or missing)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = collections.deque(stream, maxlen=STDERR_TAIL_LINES)
    except OSError:
        return "(nothing)"
    return "".join(lines).rstrip() or "(nothing)"


class _FilePickler(pickle.Pickler):
    """A pickler that stores SimpleITK images and transforms as files beside the pickle.

    Images become uncompressed MetaImage (.mha: exact geometry and pixels,
    fast to write and read), transforms HDF5 (.h5, exact doubles): files any
    ITK tool reads, in place of SimpleITK's own pickling, which only recent
    versions have.  An object met twice is written once and comes back as
    one object.  `names` maps id(object) to a file name stem.
    """

    def __init__(self, stream, folder: Path, names: dict):
        super().__init__(stream, protocol=pickle.HIGHEST_PROTOCOL)
        self._sitk = importlib.import_module("SimpleITK")
        self._folder = folder
        self._names = names
        self._written = {}

    def persistent_id(self, obj):
        """('image' or 'transform', file name) for SimpleITK objects, None (pickle as usual) for the rest."""
        if isinstance(obj, self._sitk.Image):
            kind, suffix = "image", ".mha"
        elif isinstance(obj, self._sitk.Transform):
            kind, suffix = "transform", ".h5"
        else:
            return None
        if id(obj) not in self._written:
            name = self._names.get(id(obj), f"{kind}{len(self._written)}") + suffix
            if kind == "image":
                self._sitk.WriteImage(self._without_metadata(obj), str(self._folder / name), False)
            else:
                self._sitk.WriteTransform(obj, str(self._folder / name))
            self._written[id(obj)] = (kind, name)
        return self._written[id(obj)]


    def _without_metadata(self, image):
        """`image` without its metadata dictionary, which `register` does not read and MetaImage
        cannot hold in full (it drops NIfTI or DICOM fields of other types than text, with a warning)."""
        if not image.GetMetaDataKeys():
            return image
        copy = self._sitk.Image(image)
        for key in copy.GetMetaDataKeys():
            copy.EraseMetaData(key)
        return copy


class _FileUnpickler(pickle.Unpickler):
    """Reads what _FilePickler wrote, SimpleITK objects from their files (each file read once)."""

    def __init__(self, stream, folder: Path):
        super().__init__(stream)
        self._sitk = importlib.import_module("SimpleITK")
        self._folder = folder
        self._loaded = {}

    def persistent_load(self, pid):
        kind, name = pid
        if name not in self._loaded:
            path = str(self._folder / name)
            self._loaded[name] = (self._sitk.ReadImage(path) if kind == "image"
                                  else self._sitk.ReadTransform(path).Downcast())
        return self._loaded[name]


def _dump(obj, path: Path, names: dict) -> None:
    """Pickle `obj` to `path`, its SimpleITK objects as files in the same folder."""
    with open(path, "wb") as stream:
        _FilePickler(stream, path.parent, names).dump(obj)


def _load(path: Path):
    """Read what _dump wrote.  Only for files of our own private folder: unpickling runs code."""
    with open(path, "rb") as stream:
        return _FileUnpickler(stream, path.parent).load()


# ---------------------------------------------------------------------------- the worker process


def main(argv: Optional[List[str]] = None) -> int:
    """The worker: `python -m OneClickRegistrationLib.background FOLDER`, started by BackgroundRegistration."""
    folder = Path((sys.argv[1:] if argv is None else argv)[0])
    protocol = _protocol_stream()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    stop_requested = threading.Event()
    threading.Thread(target=_watch_parent, args=(stop_requested,), name="parent-watcher", daemon=True).start()
    _send(protocol, _run_job(folder, protocol, stop_requested))
    return 0


def _run_job(folder: Path, protocol, stop_requested: threading.Event) -> dict:
    """Run the registration described in the folder and write its result there; the outcome line to send."""
    from .errors import RegistrationCancelled

    def progress(fraction: float, message: str) -> None:
        if stop_requested.is_set():
            raise RegistrationCancelled("cancelled: the worker's standard input was closed")
        _send(protocol, {"fraction": fraction, "message": message})

    try:
        job = _load(folder / JOB_FILE)
        importlib.import_module("SimpleITK").ProcessObject.SetGlobalDefaultNumberOfThreads(job["sitk_threads"])
        from .pipeline import register

        result = register(job["fixed"], job["moving"], progress=progress, **job["options"])
        # The parent has the inputs already: they are re-attached there, not written back.
        result = dataclasses.replace(result, fixed_image=None, moving_image=None)
        if not job["resampled_moving"]:
            result = dataclasses.replace(result, resampled_moving=None)
        _dump(result, folder / RESULT_FILE, {id(result.transform): "transform",
                                             id(result.inverse_transform): "inverse_transform",
                                             id(result.resampled_moving): "resampled_moving"})
    except RegistrationCancelled:
        return {"outcome": "cancelled"}
    except (ValueError, ImportError) as error:
        return {"outcome": "error", "type": _forwarded_name(error), "message": str(error)}
    return {"outcome": "done"}


def _forwarded_name(error: BaseException) -> str:
    """The most specific class of `error` that the parent re-creates (see _FORWARDED_ERRORS)."""
    return next(cls.__name__ for cls in type(error).__mro__ if cls.__name__ in _FORWARDED_ERRORS)


def _protocol_stream():
    """The worker's real standard output, kept for the protocol alone.

    File descriptor 1 is then pointed at stderr, so that nothing else printed,
    by Python or by C code, can break a protocol line.
    """
    sys.stdout.flush()
    stream = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    return stream


def _send(protocol, record: dict) -> None:
    """Write one protocol line now.  A parent gone away is no error here: _watch_parent ends the job."""
    try:
        protocol.write(json.dumps(record) + "\n")
        protocol.flush()
    except OSError:
        pass


def _watch_parent(stop_requested: threading.Event) -> None:
    """Thread: wait for the end of standard input (a cancel, or the parent died), then stop the job.

    The job stops at its next progress message; if the process is still
    there ORPHAN_GRACE_S later, it exits regardless.  It reads the file
    descriptor itself: a thread blocked in sys.stdin's buffered reader holds
    its lock, and the interpreter's shutdown then waits for that lock and aborts.
    """
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass  # no usable standard input: as good as closed
    stop_requested.set()
    time.sleep(ORPHAN_GRACE_S)
    logger.warning("the parent process is gone and the registration did not stop; exiting")
    os._exit(EXIT_ORPHANED)


if __name__ == "__main__":
    sys.exit(main())
