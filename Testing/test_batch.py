"""A whole cohort in one command (issue 16): `oneclick-register batch` and `batch.register_many` on a
local Dask cluster of two workers, on a scheduler and workers started apart, with a worker killed
mid-case, and cancelled by Ctrl-C.

The cohort: the stroke T1, T2 and FLAIR of ../shared/data and the bundled T2 moved in its header (with
a FLAIR moved alike, carried along), binned to 2 mm to keep each case to a few seconds, and a case
whose moving image is a text file.  Each good case's transform must equal that of the single-case
command run on the same files with the workers' thread count (one), to 1e-6 mm.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, SAMPLE_DATA, shared_file
from OneClickRegistrationLib import InvalidInputError, cli, evaluation, imageio

distributed = pytest.importorskip("distributed", reason="the batch extra (pip install .[batch]) is not installed")
from OneClickRegistrationLib import batch  # noqa: E402  (needs dask)

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "OneClickRegistration"),
                                                                os.environ.get("PYTHONPATH")])),
           NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")))
GOOD_CASES = ("t2_on_t1", "flair_on_t1", "moved_t2_on_t1")
# The header motion of the moved T2 (and of the FLAIR carried with it): degrees, mm.
MOTION = ((8.0, -5.0, 6.0), (6.0, -4.0, 5.0))
# A cluster of our own (scheduler and worker processes) must be up within this many seconds.
CLUSTER_START_S = 90


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """The manifest (in a folder of its own: its paths are relative to it) and its images."""
    folder = tmp_path_factory.mktemp("cohort")
    images = folder / "images"
    images.mkdir()
    for name in ("T1", "T2", "FLAIR"):
        source = sitk.ReadImage(str(shared_file(f"cstar_stroke_t1_t2_flair/{name}.nii.gz")))
        sitk.WriteImage(sitk.BinShrink(source, [2, 2, 2]), str(images / f"{name}.nii.gz"))
    motion = evaluation.rigid_transform(*MOTION, (0, 0, 0))
    for name in ("T2", "FLAIR"):
        binned = sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")), [2, 2, 2])
        sitk.WriteImage(evaluation.move_header(binned, motion), str(images / f"{name}_moved.nii.gz"))
    (images / "notes.nii.gz").write_text("a text file, not an image")
    manifest = folder / "lists" / "cohort.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "id,fixed,moving,moving_modality,stages,also\n"
        "t2_on_t1,../images/T1.nii.gz,../images/T2.nii.gz,,rigid,\n"
        "flair_on_t1,../images/T1.nii.gz,../images/FLAIR.nii.gz,flair,rigid,\n"
        "moved_t2_on_t1,../images/T1.nii.gz,../images/T2_moved.nii.gz,,rigid;affine,../images/FLAIR_moved.nii.gz\n"
        "broken,../images/T1.nii.gz,../images/notes.nii.gz,,rigid,\n")
    return manifest


@pytest.fixture(scope="module")
def local_run(cohort, tmp_path_factory):
    """The cohort run once by the command on a local cluster of two workers: (exit status, OUTDIR, seconds)."""
    out = tmp_path_factory.mktemp("local") / "out"
    start = time.perf_counter()
    status = cli.main(["batch", str(cohort), "-o", str(out), "--workers", "2"])
    return status, out, time.perf_counter() - start


@pytest.fixture(scope="module")
def single_case_runs(cohort, tmp_path_factory):
    """Each good case run by the single-case command in this process, on one thread as in each worker."""
    import numba

    cases = {case.id: case for case in batch.read_manifest(cohort)}
    out = tmp_path_factory.mktemp("single")
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), numba.get_num_threads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    numba.set_num_threads(1)
    try:
        for case_id in GOOD_CASES:
            case = cases[case_id]
            arguments = batch._command_line(case, out / case_id, qc=False)
            assert cli.main(arguments) == 0
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads[0])
        numba.set_num_threads(threads[1])
    return out


def _rows(out: Path) -> dict:
    with open(out / "results.csv", newline="", encoding="utf-8") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


@functools.lru_cache(maxsize=1)
def _head_points(count: int = 1000) -> np.ndarray:
    fixed = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    return evaluation.mask_points(imageio.head_mask(imageio.as_float32(fixed)), count)


def _mapping_difference_mm(one: Path, other: Path) -> float:
    """The largest distance between the points two transforms map head points to."""
    first, second = sitk.ReadTransform(str(one)), sitk.ReadTransform(str(other))
    return max(float(np.linalg.norm(np.subtract(first.TransformPoint(p), second.TransformPoint(p))))
               for p in _head_points().tolist())


def _partial_folders(out: Path) -> list:
    return sorted(str(path) for path in out.rglob(f"{cli.PARTIAL_PREFIX}*"))


# ------------------------------------------------------------------ the manifest


def _write(tmp_path, text, name="cohort.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,expected", [
    ("fixed\nT1.nii.gz\n", r"line 1: no column 'moving'"),
    ("fixed,moving,stage\na,b,rigid\n", r"line 1: column 'stage' is not one a manifest has; rename or remove it"),
    ("fixed,moving,fixed\na,b,c\n", r"line 1: column 'fixed' appears twice"),
    ("fixed,moving\n", r"no case under its first line"),
    ("fixed,moving\na.nii,b.nii\n,c.nii\n", r"line 3, column fixed: empty; give the fixed image's path"),
    ("fixed,moving,fixed_modality\na,b,T3\n", r"line 2, column fixed_modality: 'T3' is not a modality; use one of "
                                              r"T1, T2, FLAIR, CT"),
    ("fixed,moving,stages\na,b,rigid\na,c,rigid;afine\n", r"line 3, column stages: 'afine' is not a stage"),
    ("fixed,moving,stages\na,b,affine;rigid\n", r"line 2, column stages: 'affine;rigid' is out of order"),
    ("id,fixed,moving\nx,a,b\nX,a,c\n", r"line 3: case id 'X' is also the id of .*line 2"),
    ("id,fixed,moving\n../up,a,b\n", r"line 2, column id: '../up' cannot name the case's folder"),
    ("fixed,moving\na,b,c\n", r"line 2: 3 cells for the 2 columns of the first line; quote a cell"),
    ("fixed,moving\nsub-01/T1.nii.gz,sub-01/CT.nii.gz\nsub-01/T1.nii.gz,sub-01/CT.nii.gz\n",
     r"line 3: case id 'sub-01_CT_to_T1' is also the id of .*line 2.*id column"),
])
def test_a_bad_manifest_is_one_line_naming_the_line_and_column(tmp_path, text, expected):
    with pytest.raises(InvalidInputError, match=expected) as raised:
        batch.read_manifest(_write(tmp_path, text))
    assert "\n" not in str(raised.value)


def test_a_tsv_manifest_with_paths_relative_to_it_and_ids_from_the_names(tmp_path):
    (tmp_path / "lists").mkdir()
    manifest = _write(tmp_path / "lists",
                      "Fixed\tMoving\tSTAGES\tMoving_Modality\talso\n"
                      "../sub-01/T1.nii.gz\t../sub-01/CT.nii.gz\trigid affine\tct\t../sub-01/seg.nii.gz; ../x.nrrd\n"
                      "../sub-02/T1.nii.gz\t../sub-02/CT.nii.gz\t\t\t\n"
                      "/data/b/T1.nii.gz\t/data/b/FLAIR.nii\t\t\t\n", name="cohort.tsv")
    cases = batch.read_manifest(manifest)
    assert [case.id for case in cases] == ["sub-01_CT_to_T1", "sub-02_CT_to_T1", "FLAIR_to_T1"]
    assert cases[0].fixed == tmp_path / "sub-01" / "T1.nii.gz" and cases[2].moving == Path("/data/b/FLAIR.nii")
    assert cases[0].stages == ("rigid", "affine") and cases[1].stages == ("rigid", "affine", "deformable")
    assert cases[0].moving_modality == "CT" and cases[1].moving_modality is None
    assert cases[0].also == (tmp_path / "sub-01" / "seg.nii.gz", tmp_path / "x.nrrd")


def test_the_command_refuses_a_bad_manifest_or_options_before_any_work(tmp_path, cohort, capsys):
    bad = _write(tmp_path, "fixed,moving,stages\na,b,warp\n")
    assert cli.main(["batch", str(bad), "-o", str(tmp_path / "out")]) == cli.EXIT_BAD_INPUT
    assert cli.main(["batch", str(cohort), "-o", str(tmp_path / "out"), "--workers", "2",
                     "--scheduler", "tcp://127.0.0.1:8786"]) == cli.EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert "line 2, column stages: 'warp' is not a stage" in lines[0]
    assert "--workers sizes the local cluster" in lines[1]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ a local cluster of two workers


def test_a_local_cluster_of_two_workers_runs_each_case_as_the_single_case_command(local_run, single_case_runs,
                                                                                 cohort):
    status, out, seconds = local_run
    rows = _rows(out)
    cases = {case.id: case for case in batch.read_manifest(cohort)}
    assert status == 3  # a case failed to run
    assert list(rows) == ["t2_on_t1", "flair_on_t1", "moved_t2_on_t1", "broken"]  # the manifest's order
    assert {case_id: row["status"] for case_id, row in rows.items()} == {
        "t2_on_t1": "ok", "flair_on_t1": "ok", "moved_t2_on_t1": "ok", "broken": "error"}
    assert "notes.nii.gz: cannot be read as an image" in rows["broken"]["message"]
    assert not (out / "broken").exists()
    assert rows["flair_on_t1"]["moving_modality"] == "FLAIR" and rows["moved_t2_on_t1"]["preset"] == "T1-T2"
    workers = {rows[case_id]["worker"] for case_id in GOOD_CASES}
    for case_id in GOOD_CASES:
        row = rows[case_id]
        report = json.loads(Path(row["report"]).read_text())
        reference = json.loads((single_case_runs / case_id / "report.json").read_text())
        assert row["verdict"] == report["verdict"] == reference["verdict"] == "good"
        assert float(row["final_score"]) == pytest.approx(reference["final_score"], abs=1e-6)
        assert float(row["peak_memory_mb"]) > 100 and float(row["seconds"]) > 0 and row["skipped"] == ""
        assert _mapping_difference_mm(Path(row["transform"]), single_case_runs / case_id / "transform.h5") < 1e-6
        inputs = report["batch"]["inputs"]
        assert inputs["moving"] == {row["moving"]: hashlib.sha256(Path(row["moving"]).read_bytes()).hexdigest()}
        assert report["batch"]["settings"] == cases[case_id].settings(qc=False)
    assert rows["moved_t2_on_t1"]["rigid_accepted"] == "yes" and rows["moved_t2_on_t1"]["affine_score"] != ""
    carried = Path(rows["moved_t2_on_t1"]["also"])
    assert carried.name == "FLAIR_moved_registered.nii.gz" and carried.is_file()
    assert len(workers) == 2, f"both workers ran cases: {workers}"
    assert _partial_folders(out) == []
    print(f"local cluster of two workers: {len(rows)} cases in {seconds:.1f} s")


def test_a_second_run_skips_every_complete_case(local_run, cohort, capsys):
    _, out, _ = local_run
    before = _rows(out)
    written = {path: path.stat().st_mtime_ns for path in out.rglob("*") if path.is_file() and path.name != "results.csv"}
    assert cli.main(["batch", str(cohort), "-o", str(out), "--workers", "2"]) == 3
    rows = _rows(out)
    for case_id in GOOD_CASES:
        assert rows[case_id]["status"] == "ok" and rows[case_id]["skipped"] == "yes"
        assert "complete from an earlier run" in rows[case_id]["message"]
        for column in ("final_score", "verdict", "rigid_score", "transform", "seconds"):
            assert rows[case_id][column] == before[case_id][column]
    assert rows["broken"]["status"] == "error"  # never complete: tried again
    assert {path: path.stat().st_mtime_ns for path in written} == written
    assert "3 complete from an earlier run, skipped" in capsys.readouterr().out


def test_a_case_is_redone_when_an_input_a_setting_or_an_output_changed(local_run, cohort):
    """What the second run's skips rest on, checked on the recorded report without registering again."""
    _, out, _ = local_run
    case = next(case for case in batch.read_manifest(cohort) if case.id == "moved_t2_on_t1")
    folder = out / case.id
    record = {"inputs": batch._input_checksums(case), "settings": case.settings(qc=False)}
    assert batch._complete_report(folder, record) is not None
    changed_input = json.loads(json.dumps(record))
    changed_input["inputs"]["also"][0][str(case.also[0])] = "0" * 64
    assert batch._complete_report(folder, changed_input) is None
    assert batch._complete_report(folder, {**record, "settings": case.settings(qc=True)}) is None
    volume = folder / batch.VOLUME_NAME
    volume.rename(volume.with_suffix(".away"))
    try:
        assert batch._complete_report(folder, record) is None
    finally:
        volume.with_suffix(".away").rename(volume)


# ------------------------------------------------------------------ a cluster started apart


def _start(arguments, log: Path) -> subprocess.Popen:
    """A process in a session of its own (so that its children can be ended with it)."""
    with open(log, "w") as stream:
        return subprocess.Popen(arguments, env=ENV, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def _end(process: subprocess.Popen) -> None:
    """SIGTERM to the process and its children, SIGKILL if they are still there after 10 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def scheduler_and_workers(tmp_path):
    """`dask scheduler` and `dask worker` (two single-thread workers) on localhost; the scheduler's address."""
    scheduler_file = tmp_path / "scheduler.json"
    common = ["--scheduler-file", str(scheduler_file), "--host", "127.0.0.1", "--no-dashboard"]
    processes = [_start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--port", "0", *common],
                        tmp_path / "scheduler.log")]
    try:
        processes.append(_start([sys.executable, "-m", "distributed.cli.dask_worker", "--nworkers", "2",
                                 "--nthreads", "1", *common], tmp_path / "worker.log"))
        deadline = time.monotonic() + CLUSTER_START_S
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=CLUSTER_START_S) as client:
            client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
            yield client.scheduler.address
    finally:
        for process in reversed(processes):
            _end(process)


def test_a_scheduler_and_workers_started_apart_give_the_same_results(local_run, cohort, scheduler_and_workers,
                                                                      tmp_path):
    _, local_out, _ = local_run
    out = tmp_path / "out"
    assert cli.main(["batch", str(cohort), "-o", str(out), "--scheduler", scheduler_and_workers]) == 3
    rows, local_rows = _rows(out), _rows(local_out)
    compared = ("status", "fixed_modality", "moving_modality", "preset", "initial_score", "rigid_score",
                "rigid_verdict", "rigid_accepted", "affine_score", "affine_verdict", "final_score", "verdict")
    for case_id, row in rows.items():
        assert {column: row[column] for column in compared} == {column: local_rows[case_id][column]
                                                                 for column in compared}, case_id
        assert row["worker"] != local_rows[case_id]["worker"]
    for case_id in GOOD_CASES:
        assert _mapping_difference_mm(out / case_id / batch.TRANSFORM_NAME,
                                      local_out / case_id / batch.TRANSFORM_NAME) < 1e-6
    assert rows["broken"]["message"] == local_rows["broken"]["message"]


# ------------------------------------------------------------------ a worker that dies, a cancel


def _kill_the_worker_running(client, case_id: str, after_s: float, killed: list) -> None:
    """Wait until a worker runs the case, let it work `after_s`, then SIGKILL that worker's process."""
    deadline = time.monotonic() + CLUSTER_START_S
    while time.monotonic() < deadline:
        running = [address for address, keys in client.processing().items()
                   if any(str(key).startswith(f"{case_id}-") for key in keys)]
        if running:
            time.sleep(after_s)
            pid = client.run(os.getpid, workers=running)[running[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_case_whose_worker_is_killed_is_run_again_on_another(cohort, local_run, tmp_path):
    """Also with qc: the quality report is part of a complete case."""
    _, local_out, _ = local_run
    case = next(case for case in batch.read_manifest(cohort) if case.id == "moved_t2_on_t1")
    out = tmp_path / "out"
    leftover = out / case.id / f"{cli.PARTIAL_PREFIX}dead{cli.PARTIAL_SUFFIX}"  # as a killed attempt leaves it
    leftover.mkdir(parents=True)
    (leftover / batch.VOLUME_NAME).write_bytes(b"half a volume")
    killed = []
    with batch.local_client([case], workers=2) as client:
        killer = threading.Thread(target=_kill_the_worker_running, args=(client, case.id, 2.0, killed))
        killer.start()
        try:
            summaries = list(batch.register_many([case], client=client, output_dir=out, qc=True))
        finally:
            killer.join()
    assert killed, "the case was never seen running"
    [summary] = summaries
    assert summary.status == "ok", summary.message
    assert f"(pid {killed[0]})" not in summary.worker
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert Path(summary.outputs["quality_report"]).is_file()
    assert _partial_folders(out) == []
    assert _mapping_difference_mm(out / case.id / batch.TRANSFORM_NAME,
                                  local_out / case.id / batch.TRANSFORM_NAME) < 1e-6


def test_ctrl_c_cancels_the_rest_and_keeps_the_finished_cases(cohort, tmp_path):
    """SIGINT to the whole process group, as a terminal's Ctrl-C, a second into the case after the first ok."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "OneClickRegistrationLib.cli", "batch", str(cohort), "-o", str(out),
               "--workers", "1"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + CLUSTER_START_S
        while not _any_ok(out) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # into the next case
        os.killpg(process.pid, signal.SIGINT)
        sent = time.monotonic()
        stdout, stderr = process.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        _end(process)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "oneclick-register batch: cancelled by SIGINT; finished cases kept"
    assert "cancelled; table:" in stdout
    rows = _rows(out)
    assert list(rows) == ["t2_on_t1", "flair_on_t1", "moved_t2_on_t1", "broken"]
    statuses = [row["status"] for row in rows.values()]
    assert "ok" in statuses and "cancelled" in statuses
    for case_id, row in rows.items():
        if row["status"] == "ok":
            assert Path(row["transform"]).is_file() and Path(row["volume"]).is_file()
        elif row["status"] == "cancelled":
            assert not (out / case_id).exists()
    assert _partial_folders(out) == []
    assert took < 15
    assert _group_ends(process.pid, within_s=10), "a worker outlived the batch"


def _any_ok(out: Path) -> bool:
    try:
        return any(row["status"] == "ok" for row in _rows(out).values())
    except (OSError, KeyError):
        return False


def _group_ends(group: int, within_s: float) -> bool:
    """True once no process of the group is left (a zombie waiting for init to reap it counts as ended)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        states = subprocess.run(["ps", "-o", "stat=", "-g", str(group)], capture_output=True, text=True).stdout.split()
        if all(state.startswith("Z") for state in states):
            return True
        time.sleep(0.2)
    return False
