"""Many registrations at once: a manifest of cases in; a folder per case and results.csv out; each
case a task on a Dask cluster (a LocalCluster sized to this machine, or the user's own).

    from OneClickRegistrationLib.batch import register_many

    for case in register_many("cohort.csv", output_dir="out"):
        print(case.id, case.status, case.verdict, case.message)

The manifest is a CSV or TSV file whose first line names its columns: `fixed` and `moving` (the two
images of a case) and optionally `id` (the case's folder name), `fixed_modality`, `moving_modality`
(T1, T2, FLAIR, CT: skip recognition), `stages` (e.g. `rigid;affine`) and `also` (more images in the
moving image's space to carry onto the fixed grid, `;`-separated).  Paths are relative to the
manifest's folder.

Each case is run by `cli.register_and_write`, the single-case command's own code path, in the worker
that reads its images: only paths travel, so every worker must see the same paths (one machine, or
a shared file system).  OUTDIR/<id>/ receives transform.h5, registered.nii.gz, report.json, the
carried images (<name>_registered.nii.gz) and with qc the quality report (qc/index.html), renamed
into place together when all are written.  The report's "batch" entry records the SHA-256 checksum
of every input file and the case's settings; a later run skips a case whose report matches both and
whose outputs exist (force=True redoes it).  OUTDIR/results.csv has a row per finished case, in the
manifest's order, rewritten as each finishes.

A case never stops the others: bad input or a bug is its status "error" with a one-line message.  A
worker that dies mid-case (killed, out of memory) costs a second attempt on another worker (the local
cluster allows one; a cluster of the user's allows its scheduler's distributed.scheduler
.allowed-failures, 3 by default), a MemoryError one retry; the stale private folder the dead attempt
wrote into is removed by the next.  On a cancel (Ctrl-C) running cases stop at their next progress
message, removing what they wrote, queued ones never start; both are recorded as "cancelled", and
finished cases keep their outputs.

Each registration uses threads itself (SimpleITK's and numba's), so a worker runs one case at a time
with its machine's cores shared among the task slots there: the local cluster has one single-thread
worker per core (fewer when memory or the number of cases says so), each case one core.  Results
are the same on any cluster with the same threads per case, and to a few 1e-7 of a parameter with
other thread counts (the sums' order).

Only this module and batch_cli import dask; the Slicer module and the rest of the library never do.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import dask
import distributed
import psutil
import SimpleITK as sitk

from . import cli
from .errors import InvalidInputError, RegistrationCancelled
from .fileintegrity import input_files
from .pipeline import STAGE_NAMES
from .batch_manifest import RESULTS_NAME, Case, _with_unique_ids, cases_from_rows, read_manifest

logger = logging.getLogger(__name__)

# What each case writes into OUTDIR/<id>/, and the table beside the case folders.
TRANSFORM_NAME = "transform.h5"
VOLUME_NAME = "registered.nii.gz"
REPORT_NAME = "report.json"
QC_FOLDER = "qc"
RESULT_COLUMNS = (
    "id", "status", "message", "fixed", "moving", "fixed_modality", "moving_modality", "preset", "initial_score",
    *[f"{stage}_{what}" for stage in STAGE_NAMES for what in ("score", "verdict", "accepted")],
    "final_score", "verdict", "seconds", "wall_seconds", "peak_memory_mb", "skipped", "worker",
    "transform", "volume", "report", "also", "quality_report",
)
SKIPPED_MESSAGE = "complete from an earlier run: skipped (force / --force redoes it)"
# Memory a case needs at its peak, to size the local cluster: bytes per voxel of its two images plus the
# process itself (above the README's clinical-size measurements: 1.0-1.25 GB for 64-110 M voxels).
BYTES_PER_VOXEL = 16
PROCESS_BYTES = 400 * 2**20
# After a cancel, running cases have this long to stop at their next progress message and clean up.
CANCEL_GRACE_S = 15.0
# How often a running case asks the scheduler whether the batch was cancelled.
CANCEL_POLL_S = 0.5
# How often a case's worker samples its resident memory.
MEMORY_SAMPLE_S = 0.02
HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------- what a case produced


@dataclass
class CaseSummary:
    """What one case of a batch produced: a row of results.csv."""

    id: str
    status: str  # 'ok', 'error' or 'cancelled'
    message: str = ""
    fixed: str = ""
    moving: str = ""
    fixed_modality: str = ""
    moving_modality: str = ""
    preset: str = ""
    initial_score: Optional[float] = None
    stages: Dict[str, dict] = field(default_factory=dict)  # name -> {'score', 'verdict', 'accepted'}
    final_score: Optional[float] = None
    verdict: str = ""  # 'good', 'check visually' or 'failed' (the registration's; empty unless status is ok)
    seconds: Optional[float] = None  # the registration's, from its report
    wall_seconds: Optional[float] = None  # the whole case in this run: checks, reading, registration, writing
    peak_memory_mb: Optional[float] = None  # the worker process's resident memory at its peak during the case
    skipped: bool = False  # complete from an earlier run
    worker: str = ""
    outputs: Dict[str, str] = field(default_factory=dict)  # transform, volume, report, also, quality_report

    def row(self) -> Dict[str, object]:
        """The results.csv row."""
        row = {"id": self.id, "status": self.status, "message": self.message, "fixed": self.fixed,
               "moving": self.moving, "fixed_modality": self.fixed_modality, "moving_modality": self.moving_modality,
               "preset": self.preset, "initial_score": self.initial_score, "final_score": self.final_score,
               "verdict": self.verdict, "seconds": self.seconds, "wall_seconds": self.wall_seconds,
               "peak_memory_mb": self.peak_memory_mb, "skipped": "yes" if self.skipped else "",
               "worker": self.worker, **self.outputs}
        for name, stage in self.stages.items():
            row.update({f"{name}_{what}": value for what, value in stage.items()})
        return {column: "" if row.get(column) is None else row[column] for column in RESULT_COLUMNS}


def _summary_of_report(case: Case, report: dict, report_path: Path, **measured) -> CaseSummary:
    """The summary of a case that completed, from its report."""
    return CaseSummary(
        id=case.id, status="ok", fixed=str(case.fixed), moving=str(case.moving),
        fixed_modality=report["fixed"]["modality"], moving_modality=report["moving"]["modality"],
        preset=report["preset"], initial_score=report["initial_score"], final_score=report["final_score"],
        stages={stage["name"]: {"score": stage["score"], "verdict": stage["verdict"],
                                "accepted": "yes" if stage["accepted"] else "no"} for stage in report["stages"]},
        verdict=report["verdict"], seconds=report["seconds"],
        outputs={"transform": report["output_transform"], "volume": report["output_volume"],
                 "report": str(report_path), "also": ";".join(item["output"] for item in report.get("also", [])),
                 "quality_report": report.get("quality_report", "")},
        **measured,
    )


def _unfinished(case: Case, status: str, message: str, **measured) -> CaseSummary:
    """The summary of a case that errs or is cancelled."""
    return CaseSummary(id=case.id, status=status, message=message, fixed=str(case.fixed), moving=str(case.moving),
                       **measured)


def _cancelled(case: Case) -> CaseSummary:
    return _unfinished(case, "cancelled", "cancelled before it completed; run the batch again to do it")


class ResultsTable:
    """OUTDIR/results.csv: a row per finished case, in the manifest's order, rewritten whole (atomically:
    a new file renamed over the old one) each time a case finishes."""

    def __init__(self, path: Path, ids: Sequence[str]):
        self.path = path
        self._rows: Dict[str, Optional[dict]] = dict.fromkeys(ids)

    def add(self, summary: CaseSummary) -> None:
        self._rows[summary.id] = summary.row()
        handle, temporary = tempfile.mkstemp(prefix=f".{RESULTS_NAME}.", dir=self.path.parent)
        with os.fdopen(handle, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, RESULT_COLUMNS)
            writer.writeheader()
            writer.writerows(row for row in self._rows.values() if row is not None)
        os.replace(temporary, self.path)

    def finished(self, case_id: str) -> bool:
        return self._rows.get(case_id) is not None


# --------------------------------------------------------------------------- one case, in a worker


@dataclass(frozen=True)
class BatchOptions:
    """The settings of a whole batch: where the case folders go, whether to redo complete cases, QC reports."""

    output_dir: Path
    force: bool = False
    qc: bool = False

    def folder(self, case: Case) -> Path:
        return self.output_dir / case.id


def run_case(case: Case, options: BatchOptions, cancel_event: str, threads_by_host: Mapping[str, int]) -> CaseSummary:
    """The task of one case, run by a worker: paths in, its summary out.

    Bad input, a bug or a cancel of the batch come back as the summary's status; only a MemoryError is
    raised (Dask retries it once) and a dying worker ends it (the scheduler runs it again elsewhere).
    """
    start = time.perf_counter()
    worker = distributed.get_worker()
    where = f"{worker.address} (pid {os.getpid()})"
    folder = options.folder(case)
    with _PeakMemory() as memory, _CaseRun(cancel_event) as run:
        try:
            run.check()
            _remove_unfinished_writes(folder)
            record = {"inputs": _input_checksums(case), "settings": case.settings(options.qc)}
            if not options.force:
                report = _complete_report(folder, record)
                if report is not None:
                    return _summary_of_report(case, report, folder / REPORT_NAME, message=SKIPPED_MESSAGE,
                                              skipped=True, worker=where, wall_seconds=_since(start))
            _use_threads(_threads_per_case(worker, threads_by_host))
            args = cli.build_parser().parse_args(_command_line(case, folder, options.qc))
            cli.register_and_write(args, run, report_extra={"batch": record})
        except InvalidInputError as error:
            run.discard()
            return _unfinished(case, "error", str(error), worker=where, wall_seconds=_since(start))
        except RegistrationCancelled:
            run.discard()
            return _cancelled(case)
        except MemoryError:
            run.discard()
            raise
        except Exception as error:  # a bug: this case fails, the others go on
            run.discard()
            logger.exception("case %s failed", case.id)
            return _unfinished(case, "error", f"unexpected {type(error).__name__}: {_one_line(error)} (a bug; "
                                              "please report it with the case's images)",
                               worker=where, wall_seconds=_since(start))
    report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    return _summary_of_report(case, report, folder / REPORT_NAME, worker=where, wall_seconds=_since(start),
                              peak_memory_mb=round(memory.peak / 2**20, 1))


def _command_line(case: Case, folder: Path, qc: bool) -> List[str]:
    """The single-case command line (cli.build_parser) that runs this case into `folder`."""
    arguments = [str(case.fixed), str(case.moving), "--quiet", "-o", str(folder),
                 "--output-transform", str(folder / TRANSFORM_NAME), "--output-volume", str(folder / VOLUME_NAME),
                 "--report", str(folder / REPORT_NAME), "--stages", ",".join(case.stages)]
    for option, modality in (("--fixed-modality", case.fixed_modality), ("--moving-modality", case.moving_modality)):
        if modality:
            arguments += [option, modality]
    for path in case.also:
        arguments += ["--also", str(path)]
    if qc:
        arguments += ["--qc", str(folder / QC_FOLDER)]
    return arguments


class _CaseRun(cli._Run):
    """The single-case command's run (its atomic outputs), also cancelled when the batch's Event is set."""

    def __init__(self, cancel_event: str):
        super().__init__()
        self._cancel_event = distributed.Event(cancel_event)
        self._next_poll = 0.0

    def check(self) -> None:
        super().check()
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_S
            if self._cancel_event.is_set():
                raise RegistrationCancelled("the batch was cancelled")


class _PeakMemory:
    """The peak resident memory of this process while the block runs, sampled every MEMORY_SAMPLE_S."""

    def __enter__(self) -> "_PeakMemory":
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="oneclick-peak-memory", daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(MEMORY_SAMPLE_S):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._sampler.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def _remove_unfinished_writes(folder: Path, empty_folder_too: bool = False) -> None:
    """The private folders an attempt whose worker died left in the case folder (cli._Run removes its own),
    and the case folder itself when asked and nothing else is in it."""
    if not folder.is_dir():
        return
    for partial in folder.rglob(f"{cli.PARTIAL_PREFIX}*{cli.PARTIAL_SUFFIX}"):
        shutil.rmtree(partial, ignore_errors=True)
    if empty_folder_too and not any(folder.iterdir()):
        folder.rmdir()


def _input_checksums(case: Case) -> dict:
    """SHA-256 of every file each input is read from (a detached header's data file, a DICOM folder's files)."""
    return {"fixed": _checksums(case.fixed), "moving": _checksums(case.moving),
            "also": [_checksums(path) for path in case.also]}


def _checksums(path: Path) -> Dict[str, str]:
    """{file: SHA-256} of the files reading `path` touches; empty when it does not exist (the run says so)."""
    if not path.exists():
        return {}
    sums = {}
    for file in input_files(path):
        digest = hashlib.sha256()
        with open(file, "rb") as stream:
            for chunk in iter(lambda: stream.read(HASH_CHUNK), b""):
                digest.update(chunk)
        sums[str(file)] = digest.hexdigest()
    return sums


def _complete_report(folder: Path, record: dict) -> Optional[dict]:
    """The case's report when the case is complete: it records these inputs' checksums and these settings,
    and the outputs it names exist; else None."""
    try:
        report = json.loads((folder / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("batch") != record:
        return None
    outputs = [report.get("output_transform"), report.get("output_volume"),
               *[item.get("output") for item in report.get("also", [])]]
    if record["settings"]["qc"]:
        outputs.append(report.get("quality_report"))
    return report if all(output and Path(output).is_file() for output in outputs) else None


def _threads_per_case(worker: distributed.Worker, threads_by_host: Mapping[str, int]) -> int:
    """The threads each registration on this worker's machine gets; a machine that joined later: its cores
    shared among this worker's task slots."""
    host = distributed.comm.get_address_host(worker.address)
    return threads_by_host.get(host) or max(1, usable_cores() // worker.nthreads)


def _use_threads(count: int) -> None:
    """Run this case's SimpleITK filters and numba kernels on `count` threads (numba's setting is per thread)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        import numba
    except ImportError:  # the library works without numba where no kernel is needed
        return
    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


# --------------------------------------------------------------------------- the cluster


@contextmanager
def local_client(cases: Sequence[Case], workers: Optional[int] = None) -> Iterator[distributed.Client]:
    """A client of a LocalCluster sized to this machine and these cases; cluster and client closed on exit.

    `workers` single-thread workers (default: one per core, fewer when there are fewer cases or the
    largest case would not fit in memory that many times over), each given an equal share of memory.
    A worker that dies mid-case costs the case one more attempt (allowed-failures 1), and the workers
    ignore SIGINT: a terminal's Ctrl-C reaches every process of its group, and the batch decides what stops.
    """
    cores = usable_cores()
    memory = distributed.system.MEMORY_LIMIT
    largest = max((_case_bytes(case) for case in cases), default=PROCESS_BYTES)
    count = workers or max(1, min(cores, len(cases), memory // largest))
    logger.info("local cluster: %d workers, %.1f GB each; the largest case needs about %.1f GB",
                count, memory / count / 1e9, largest / 1e9)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(n_workers=count, threads_per_worker=1, memory_limit=memory // count)
    try:
        with distributed.Client(cluster) as client:
            client.register_plugin(_IgnoreInterrupts())
            yield client
    finally:
        cluster.close()


class _IgnoreInterrupts(distributed.WorkerPlugin):
    """Makes a worker process ignore SIGINT (setup runs in its main thread, where signals are handled)."""

    def setup(self, worker) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _case_bytes(case: Case) -> int:
    """About the most memory the case's registration holds at once (see BYTES_PER_VOXEL)."""
    return PROCESS_BYTES + BYTES_PER_VOXEL * (_voxel_count(case.fixed) + _voxel_count(case.moving))


def _voxel_count(path: Path) -> int:
    """Voxels of an image from its header alone; of a DICOM folder from its files' sizes (2 bytes a voxel);
    0 for what cannot be read (the case will say why)."""
    if path.is_dir():
        return sum(file.stat().st_size for file in path.iterdir() if file.is_file()) // 2
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return 0
    return math.prod(reader.GetSize()) * reader.GetNumberOfComponents()


def _threads_by_host(client: distributed.Client) -> Dict[str, int]:
    """For each machine of the cluster: its cores shared among the task slots of its workers (at least 1)."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    cores = client.run(usable_cores)
    slots = Counter()
    for info in workers.values():
        slots[info["host"]] += info["nthreads"]
    return {info["host"]: max(1, cores[address] // slots[info["host"]])
            for address, info in workers.items() if address in cores}


# --------------------------------------------------------------------------- the batch


CaseLike = Union[Case, Tuple[object, object], Mapping[str, object]]


def register_many(cases: Union[str, os.PathLike, Iterable[CaseLike]], *, output_dir, client=None,
                  workers: Optional[int] = None, force: bool = False, qc: bool = False) -> Iterator[CaseSummary]:
    """Register many pairs, yielding each case's summary as it finishes (in the order they finish).

    cases: a manifest (CSV or TSV path, see read_manifest), or Case objects, (fixed, moving) pairs and
        rows of manifest cells ({'fixed': ..., 'moving': ..., 'stages': 'rigid;affine', ...}), their
        relative paths taken from the current folder.
    output_dir: receives a folder per case and results.csv.
    client: a dask.distributed Client to run on; default a LocalCluster sized to this machine (see
        local_client; `workers` sets its number of workers), closed at the end.
    force: redo cases that are complete from an earlier run (default: skip them, summary.skipped).
    qc: write each case's quality report into OUTDIR/<id>/qc (needs matplotlib).

    KeyboardInterrupt while waiting (Ctrl-C) cancels the batch: the cases that stop, or finish within
    the grace time, are yielded, then the KeyboardInterrupt is raised again.  Closing the iterator
    early cancels the remaining cases too.  results.csv has every finished case, cancelled ones included.
    """
    cases = _as_cases(cases)
    options = BatchOptions(Path(os.path.abspath(Path(output_dir).expanduser())), force, qc)
    _prepare_output_dir(options.output_dir)
    if client is not None:
        yield from _run(client, cases, options)
        return
    try:
        with local_client(cases, workers) as own_client:
            yield from _run(own_client, cases, options)
    finally:  # the cluster is gone: nothing writes into the case folders any more
        for case in cases:
            _remove_unfinished_writes(options.folder(case), empty_folder_too=True)


def _as_cases(cases) -> List[Case]:
    if isinstance(cases, (str, os.PathLike)):
        return read_manifest(cases)
    items = list(cases)
    if all(isinstance(item, Case) for item in items):
        return _with_unique_ids(items, [item.id for item in items], [f"case {item.id!r}" for item in items])
    rows = [item if isinstance(item, Mapping) else _pair_row(item, index) for index, item in enumerate(items, 1)]
    return cases_from_rows(rows, Path.cwd(), [f"case {index}" for index in range(1, len(rows) + 1)])


def _pair_row(item, index: int) -> dict:
    if isinstance(item, Case) or not isinstance(item, (tuple, list)) or len(item) != 2:
        raise InvalidInputError(f"case {index}: give (fixed, moving) pairs, rows of manifest cells or Case "
                                "objects, not a mixture")
    return {"fixed": item[0], "moving": item[1]}


def _prepare_output_dir(folder: Path) -> None:
    """OUTDIR exists (created if needed) and can be written, or one line saying why not."""
    cli._check_writable_folder(folder, "-o")
    folder.mkdir(parents=True, exist_ok=True)


def _run(client: distributed.Client, cases: List[Case], options: BatchOptions) -> Iterator[CaseSummary]:
    """Submit every case, yield and record each summary as it finishes; on a cancel, see _cancel."""
    table = ResultsTable(options.output_dir / RESULTS_NAME, [case.id for case in cases])
    cancel_event = distributed.Event(f"oneclick-register-cancel-{uuid.uuid4().hex}", client=client)
    threads = _threads_by_host(client)
    batch = uuid.uuid4().hex[:8]
    futures = {client.submit(run_case, case, options, cancel_event.name, threads, key=f"{case.id}-{batch}",
                             pure=False, retries=1): case for case in cases}
    try:
        for future in distributed.as_completed(futures):
            summary = _outcome(future, futures[future])
            table.add(summary)
            yield summary
    except KeyboardInterrupt:
        late = _cancel(client, cancel_event, futures, table)
        for summary in late:
            table.add(summary)
        yield from late
        raise
    finally:  # closed early, or an error of the cluster itself: what is left is cancelled
        if not all(table.finished(case.id) for case in cases):
            for summary in _cancel(client, cancel_event, futures, table):
                table.add(summary)


def _outcome(future: distributed.Future, case: Case) -> CaseSummary:
    """The summary a finished task returned, or one saying why it has none."""
    if future.status == "cancelled":
        return _cancelled(case)
    try:
        return future.result()
    except distributed.KilledWorker:
        return _unfinished(case, "error", "the workers running it died (killed, or out of memory: see "
                                          "the worker's log); run it with fewer cases at once or more memory")
    except MemoryError:
        return _unfinished(case, "error", "out of memory twice; run fewer cases at once (--workers) or give "
                                          "the workers more memory")
    except Exception as error:  # the cluster's own failure for this task
        return _unfinished(case, "error", f"{type(error).__name__}: {_one_line(error)}")


def _cancel(client: distributed.Client, cancel_event: distributed.Event, futures: Dict[distributed.Future, Case],
            table: ResultsTable) -> List[CaseSummary]:
    """Cancel what has not finished: running cases stop at their next progress message (or finish) within
    CANCEL_GRACE_S, queued ones are dropped; the summaries of all of them."""
    cancel_event.set()
    open_futures = [future for future, case in futures.items() if not table.finished(case.id)]
    running = {key for keys in client.processing().values() for key in keys}
    client.cancel([future for future in open_futures if future.key not in running])
    try:
        distributed.wait([future for future in open_futures if future.key in running], timeout=CANCEL_GRACE_S)
    except distributed.TimeoutError:
        logger.warning("cases still running %.0f s after the cancel are recorded as cancelled", CANCEL_GRACE_S)
    summaries = [_outcome(future, futures[future]) if future.done() else _cancelled(futures[future])
                 for future in open_futures]
    client.cancel(open_futures)
    return summaries
