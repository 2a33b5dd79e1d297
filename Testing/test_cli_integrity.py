"""The command line never damages a file: output paths checked first, outputs written atomically,
SIGINT / SIGTERM at any moment end the run cleanly (issue 12, items 3 and 4).

Signal tests run `python -m OneClickRegistrationLib.cli` in a subprocess, send a real signal when a
chosen progress line appears on its stderr, and check the exit status, the last line, the time to
end, the files left and that the inputs are byte-identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, SAMPLE_DATA
from test_bad_input import LOCALIZER_UID, MPRAGE_UID, write_dicom_series
from OneClickRegistrationLib import cli, evaluation

# A signal must end the run within this many seconds (the bound).
SIGNAL_DEADLINE_S = 2.0
# A bad output path must be refused within this many seconds of starting the command (imports included).
OUTPUT_CHECK_DEADLINE_S = 5.0
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "OneClickRegistration"),
                                                                os.environ.get("PYTHONPATH")])),
           NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache")))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Small real inputs: the bundled T1 and T2 binned to 2 mm, and a T2 whose resampled copy takes
    about half a second to write (float64 with noise in the last digits, which compresses slowly)."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {}
    for name in ("T1", "T2"):
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")), [2, 2, 2]), str(paths[name]))
    t2 = sitk.ReadImage(str(SAMPLE_DATA / "T2.nii.gz"))
    values = sitk.GetArrayFromImage(t2).astype(np.float64)
    values += np.random.default_rng(0).uniform(0.0, 1e-3, values.shape)
    slow = sitk.GetImageFromArray(values)
    slow.CopyInformation(t2)
    paths["T2_slow"] = folder / "T2_slow.nii.gz"
    sitk.WriteImage(slow, str(paths["T2_slow"]))
    t1 = sitk.ReadImage(str(paths["T1"]))
    paths["T1_moved"] = folder / "T1_moved.nii.gz"  # 8-bit, moved off the grid by a known motion in its header
    sitk.WriteImage(evaluation.move_header(t1, evaluation.rigid_transform((4, -3, 2), (1.3, -0.7, 0.9), (0, 0, 0))),
                    str(paths["T1_moved"]))
    return paths


def _digest(paths) -> dict:
    return {str(path): hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in paths}


def _tree(folder: Path) -> list:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def _cli(*args) -> list:
    return [sys.executable, "-m", "OneClickRegistrationLib.cli", *map(str, args)]


# ------------------------------------------------------------------ output paths, checked before any work


def _prepare(tmp, inputs):
    """The files some bad output paths need: a file, a folder, links to the inputs, a detached header."""
    (tmp / "a_file").write_text("not a folder")
    (tmp / "existing_folder.nii.gz").mkdir()
    os.link(inputs["T1"], tmp / "hardlink_to_fixed.h5")
    (tmp / "symlink_to_moving.nii.gz").symlink_to(inputs["T2"])
    sitk.WriteImage(sitk.ReadImage(str(inputs["T2"])), str(tmp / "detached.nhdr"), True)  # + detached.raw.gz


# name: (fixed, moving, extra arguments, expected in the message), paths built from (tmp folder, inputs)
BAD_OUTPUTS = {
    "volume over the moving scan": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-volume", inp["T2"]], "would overwrite the scan"),
    "volume over the moving scan, spelled another way": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-volume", inp["T2"].parent / ".." / inp["T2"].parent.name / "T2.nii.gz"],
        f"is the input {inp['T2']}"),
    "transform over a hard link to the fixed scan": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-transform", tmp / "hardlink_to_fixed.h5"], f"is the input {inp['T1']}"),
    "volume through a symbolic link to the moving scan": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-volume", tmp / "symlink_to_moving.nii.gz"], f"is the input {inp['T2']}"),
    "volume over a detached header's data file": lambda tmp, inp: (
        inp["T1"], tmp / "detached.nhdr", ["--output-volume", tmp / "detached.raw.gz"],
        f"is the input {tmp / 'detached.raw.gz'}"),
    "report as .txt": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--report", tmp / "report.txt"], "end the name with .json"),
    "transform as .mat": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-transform", tmp / "t.mat"], "end the name with .h5, .hdf5, .tfm, .txt"),
    "volume as .png": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-volume", tmp / "v.png"], "end the name with .nii.gz, .nii, .nrrd, .mha"),
    "volume as a detached .mhd": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-volume", tmp / "v.mhd"], "cannot be written as .mhd"),
    "output folder under a file": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["-o", tmp / "a_file" / "out"], "a_file is a file, not a folder"),
    "output folder on a read-only file system": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["-o", "/proc/oneclick-register-test"], "cannot write in /proc"),
    "volume is an existing folder": lambda tmp, inp: (
        inp["T1"], inp["T2"], ["--output-volume", tmp / "existing_folder.nii.gz"], "is a folder"),
}


@pytest.mark.parametrize("case", list(BAD_OUTPUTS))
def test_bad_output_path_is_refused_before_any_work(tmp_path, inputs, capsys, case):
    """Exit 2, one line naming the path and the fix, nothing written, inputs unchanged."""
    _prepare(tmp_path, inputs)
    fixed, moving, extra, expected = BAD_OUTPUTS[case](tmp_path, inputs)
    before_tree, before = _tree(tmp_path), _digest([fixed, moving, *[p for p in tmp_path.iterdir() if p.is_file()]])
    start = time.perf_counter()
    status = cli.main([str(fixed), str(moving), "-o", str(tmp_path / "out"), "-q", *map(str, extra)])
    seconds = time.perf_counter() - start
    error = capsys.readouterr().err.strip()
    assert status == 2, error
    assert error.startswith("oneclick-register: error:") and "\n" not in error
    assert expected in error
    assert seconds < 2.0  # checked before reading the images (this includes the first import of the library)
    assert _tree(tmp_path) == before_tree and _digest(before) == before


def test_output_over_the_moving_scan_fails_within_seconds_in_a_fresh_process(tmp_path, inputs):
    """The whole command, interpreter start and imports included, refuses at once."""
    before = _digest([inputs["T1"], inputs["T2"]])
    start = time.monotonic()
    done = subprocess.run(_cli(inputs["T1"], inputs["T2"], "--output-volume", inputs["T2"], "-o", tmp_path),
                          capture_output=True, text=True, env=ENV, timeout=60)
    seconds = time.monotonic() - start
    print(f"time to fail: {seconds:.2f} s")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "would overwrite the scan" in done.stderr
    assert seconds < OUTPUT_CHECK_DEADLINE_S
    assert not list(tmp_path.iterdir()) and _digest(before) == before


def test_output_inside_an_input_dicom_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "dicom"
    folder.mkdir()
    image = sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz")), [2, 2, 2])
    write_dicom_series(image, folder, MPRAGE_UID, "T1 MPRAGE", "a")
    status = cli.main([str(folder), str(SAMPLE_DATA / "T2.nii.gz"), "-o", str(folder), "-q"])
    assert status == 2 and "is inside the input DICOM folder" in capsys.readouterr().err
    assert len(list(folder.iterdir())) == 70


# ------------------------------------------------------------------ a complete run: atomic outputs, rounding, DICOM


def test_complete_run_leaves_exactly_its_outputs_with_integer_volume_rounded(tmp_path, inputs):
    """Moving = the 8-bit T1 moved off the grid: the registered volume stays 8-bit, rounded (not truncated);
    an older output is replaced; no temporary file or folder remains."""
    out = tmp_path / "folder"
    out.mkdir()
    (out / "T1_moved_report.json").write_text("an older report")
    before = _digest([inputs["T2"], inputs["T1_moved"]])
    done = subprocess.run(_cli(inputs["T2"], inputs["T1_moved"], "-o", out, "--stages", "rigid"),
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _tree(out) == ["T1_moved_registered.nii.gz", "T1_moved_report.json", "T1_moved_to_T2.h5"]
    report = json.loads((out / "T1_moved_report.json").read_text())
    assert "rounded to the nearest integer and clamped to 0..255" in report["output_volume_values"]
    registered = sitk.ReadImage(str(out / "T1_moved_registered.nii.gz"))
    assert registered.GetPixelID() == sitk.sitkUInt8
    fixed, moving = (sitk.ReadImage(str(inputs[name])) for name in ("T2", "T1_moved"))
    exact = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.ReadTransform(str(out / "T1_moved_to_T2.h5")),
                                                 sitk.sitkLinear, float(sitk.GetArrayViewFromImage(moving).min()),
                                                 sitk.sitkFloat64))
    written = sitk.GetArrayFromImage(registered).astype(np.float64)
    assert np.abs(written - exact).max() <= 0.5 + 1e-3  # rounded: never the up-to-1 loss of truncation
    fractional = np.abs(exact - np.floor(exact) - 0.75) < 0.2  # where truncating would lose 0.55..0.95
    assert fractional.sum() > 1000 and np.array_equal(written[fractional], np.ceil(exact[fractional]))
    assert _digest(before) == before


def test_dicom_folder_run_says_which_series_and_reports_it(tmp_path, inputs):
    folder = tmp_path / "dicom"
    folder.mkdir()
    image = sitk.ReadImage(str(inputs["T1"]))
    write_dicom_series(image, folder, MPRAGE_UID, "T1 MPRAGE", "a")
    write_dicom_series(image[:, :, 10:30], folder, LOCALIZER_UID, "localizer", "b")
    out = tmp_path / "out"
    done = subprocess.run(_cli(folder, inputs["T2"], "-o", out, "--stages", "rigid", "-q"),
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (f'oneclick-register: {folder}: using DICOM series {MPRAGE_UID} ("T1 MPRAGE", 70 files), the one with the '
            f'most slices; the folder also holds {LOCALIZER_UID} ("localizer", 20 files)') in done.stderr
    report = json.loads((out / "T2_report.json").read_text())
    assert report["fixed_series"]["used"] == MPRAGE_UID and report["fixed_series"]["others"][0]["files"] == 20


# ------------------------------------------------------------------ signals


class _Command:
    """The command line in a subprocess, its stderr read line by line in a thread."""

    def __init__(self, args):
        self.lines = []
        self.process = subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        self._watchers = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def when(self, text: str, action) -> None:
        """Call action() (in the reader thread) at the first stderr line containing `text`."""
        self._watchers.append([text, action])

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            for watcher in self._watchers:
                if watcher[1] is not None and watcher[0] in line:
                    action, watcher[1] = watcher[1], None
                    action()

    def finish(self, timeout: float = 300.0) -> float:
        """Wait for the end; returns time.monotonic() at the end."""
        self.process.wait(timeout)
        ended = time.monotonic()
        self._reader.join(10)
        return ended


def _interrupt(command: _Command, signum: int, sent: list, before=None):
    def send():
        if before is not None:
            before()
        command.process.send_signal(signum)
        sent.append(time.monotonic())
    return send


def _assert_cancelled(command, signum, sent, out, before):
    ended = command.finish()
    assert sent, f"the moment never came; stderr: {command.lines[-5:]}"
    seconds = ended - sent[0]
    print(f"ended {seconds:.2f} s after {signal.Signals(signum).name}")
    assert command.process.returncode == 128 + signum, command.lines[-5:]
    assert command.lines[-1] == f"oneclick-register: cancelled by {signal.Signals(signum).name}; no output written"
    assert not any("Traceback" in line for line in command.lines)
    assert seconds < SIGNAL_DEADLINE_S
    assert not out.exists() or _tree(out) == []
    assert _digest(before) == before
    return seconds


MOMENTS = [("recognising modalities", signal.SIGTERM), ("preparing working copies", signal.SIGINT),
           ("rigid: searching rotations", signal.SIGINT), ("rigid: refining", signal.SIGTERM),
           ("affine:", signal.SIGTERM), ("deformable:", signal.SIGINT)]


@pytest.mark.parametrize("moment,signum", MOMENTS, ids=[f"{m.split(':')[0]}-{s.name}" for m, s in MOMENTS])
def test_signal_during_a_stage_ends_the_run_cleanly(tmp_path, inputs, moment, signum):
    before = _digest([inputs["T1"], inputs["T2"]])
    out = tmp_path / "out"
    command = _Command([inputs["T1"], inputs["T2"], "-o", out, "--fixed-modality", "T1", "--moving-modality", "T2"])
    sent = []
    command.when(moment, _interrupt(command, signum, sent))
    _assert_cancelled(command, signum, sent, out, before)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_the_volume_is_written_leaves_no_file(tmp_path, inputs, signum):
    """The signal arrives while the registered volume's temporary file grows (about 0.5 s of writing):
    nothing of the run remains, and the older outputs under the final names are untouched."""
    fixed = SAMPLE_DATA / "T1.nii.gz"  # full size: the registered volume is written on its grid
    before = _digest([fixed, inputs["T2_slow"]])
    out = tmp_path / "out"
    out.mkdir()
    older = {out / "T2_slow_registered.nii.gz": b"older volume", out / "T2_slow_to_T1.h5": b"older transform"}
    for path, content in older.items():
        path.write_bytes(content)
    command = _Command([fixed, inputs["T2_slow"], "-o", out, "--stages", "rigid"])
    partial = []

    def wait_for_the_partial_volume():
        deadline = time.monotonic() + 2.0
        while not partial and time.monotonic() < deadline:
            partial.extend(out.glob(".oneclick-register-*.partial/T2_slow_registered.nii.gz"))
            time.sleep(0.002)

    sent = []
    command.when("writing the registered volume", _interrupt(command, signum, sent, wait_for_the_partial_volume))
    ended = command.finish()
    assert partial, "the registered volume was not being written when the signal was sent"
    assert command.process.returncode == 128 + signum
    assert command.lines[-1] == f"oneclick-register: cancelled by {signal.Signals(signum).name}; no output written"
    assert not any("Traceback" in line for line in command.lines)
    print(f"ended {ended - sent[0]:.2f} s after {signal.Signals(signum).name} during writing")
    assert ended - sent[0] < SIGNAL_DEADLINE_S
    assert {path: path.read_bytes() for path in older} == older and _tree(out) == sorted(p.name for p in older)
    assert _digest(before) == before


def test_signal_during_a_long_call_that_never_returns_is_ended_by_the_watchdog(tmp_path):
    """The main thread stuck in a call that outlives the signal (as a writer deep in C would be): the
    watchdog removes the temporary file and the folders the run created, and ends the process."""
    out = tmp_path / "created" / "by_the_run"
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from OneClickRegistrationLib import cli, evaluation

        def write(path):
            path.write_bytes(b"half a volume")
            print("writing", file=sys.stderr, flush=True)
            time.sleep(60)

        with cli._Run() as run:
            run.stage(Path({str(out / "volume.nii.gz")!r}), write)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True, env=ENV)
    assert process.stderr.readline().strip() == "writing"
    assert len(list(out.glob(".oneclick-register-*.partial/volume.nii.gz"))) == 1
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    seconds = time.monotonic() - sent
    print(f"watchdog ended the process {seconds:.2f} s after SIGTERM")
    assert process.returncode == 143
    assert process.stderr.read().strip() == "oneclick-register: cancelled by SIGTERM; no output written"
    assert cli.CANCEL_GRACE_S <= seconds < SIGNAL_DEADLINE_S
    assert list(tmp_path.iterdir()) == []  # the partial file, its folder and the two folders created: all gone


def test_keyboard_interrupt_in_the_python_api_stays_keyboard_interrupt():
    """register() installs no handler: Ctrl-C during the rigid stage comes out as KeyboardInterrupt, promptly,
    not as SimpleITK's RuntimeError."""
    script = textwrap.dedent(f"""
        import signal, sys, time
        import SimpleITK as sitk
        from OneClickRegistrationLib import register

        # Ctrl-C as in a console: a process started in the background of a shell inherits SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        pair = [sitk.BinShrink(sitk.ReadImage({str(SAMPLE_DATA)!r} + f"/{{n}}.nii.gz"), [2, 2, 2]) for n in ("T1", "T2")]

        def progress(fraction, message):
            print(message, file=sys.stderr, flush=True)

        try:
            register(*pair, progress=progress)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", time.monotonic(), flush=True)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=ENV)
    sent = None
    for line in process.stderr:
        # During an optimizer's iterations (SimpleITK's, in the rotation search, or the finest level's), as a
        # user would: a signal that lands while Python runs an object's finaliser is reported as
        # "Exception ignored" and lost, whatever the library does.
        if line.startswith("rigid:") and "iteration" in line:
            sent = time.monotonic()
            process.send_signal(signal.SIGINT)
            break
    output, errors = process.communicate(timeout=60)
    assert sent is not None, "the rigid stage never reported"
    assert output.startswith("KeyboardInterrupt"), errors[-2000:]
    assert float(output.split()[1]) - sent < SIGNAL_DEADLINE_S
