"""`oneclick-register batch MANIFEST -o OUTDIR [--scheduler ADDRESS] [--workers N] [--force] [--qc]`:
a whole cohort in one command (the cases and their outputs: see batch.py).

Prints the Dask dashboard's address, then the progress on stderr (cases done, ok, to check, failed
and the time left: one line rewritten on a terminal, a line per finished case otherwise), and at the
end one summary line on stdout: how many ok, how many need a visual check, how many failed.

Exit status: 0 every case registered; 3 some cases failed to run (status 'error' in results.csv);
2 a bad manifest, option or scheduler address (one line, nothing run); 130 / 143 cancelled by
SIGINT / SIGTERM (the remaining cases recorded as cancelled, finished ones kept).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List

from . import cli
from .errors import InvalidInputError

EXIT_CASES_FAILED = 3
# Characters of the progress bar on a terminal.
BAR_WIDTH = 20
# How long connecting to a --scheduler may take before giving up.
CONNECT_TIMEOUT_S = 10


def build_parser() -> argparse.ArgumentParser:
    """The parser of `oneclick-register batch`."""
    parser = cli._OneLineParser(
        prog="oneclick-register batch",
        description="Register every case of a manifest (CSV or TSV: fixed,moving and optionally id, "
                    "fixed_modality, moving_modality, stages, also) on a Dask cluster, each into OUTDIR/<id>/, "
                    "with OUTDIR/results.csv; cases complete from an earlier run are skipped.",
    )
    parser.add_argument("manifest", type=Path, metavar="MANIFEST", help="CSV or TSV file, one case per line")
    parser.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUTDIR",
                        help="a folder per case and results.csv")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on this Dask scheduler (tcp://host:8786) and its workers, which must see the "
                             "same paths (default: a local cluster sized to this machine)")
    parser.add_argument("--workers", type=_positive_int, metavar="N",
                        help="workers of the local cluster, one case each at a time (default: one per core, fewer "
                             "when memory is short)")
    parser.add_argument("--force", action="store_true", help="redo cases that are complete from an earlier run")
    parser.add_argument("--qc", action="store_true",
                        help="write each case's quality report into OUTDIR/<id>/qc/ (needs matplotlib)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parser


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def main(argv: List[str]) -> int:
    """Run `oneclick-register batch`; returns the exit status (see the module docstring)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser().parse_args(argv)
        _check_options(args)
        from . import batch

        logging.getLogger("distributed").setLevel(logging.WARNING)  # set to INFO when imported: a line per event
        cases = batch.read_manifest(args.manifest)
    except InvalidInputError as error:
        _say(f"error: {error}")
        return cli.EXIT_BAD_INPUT
    progress = _Progress(len(cases), sys.stderr, quiet=args.quiet)
    with _terminating_signal_as_interrupt() as received:
        try:
            with _client(batch, args, cases) as client:
                _say(f"{_count(len(cases), 'case')} on {_describe(client)}; dashboard: {client.dashboard_link}")
                summaries = batch.register_many(cases, client=client, output_dir=args.output_dir,
                                                force=args.force, qc=args.qc)
                try:
                    for summary in summaries:
                        progress.add(summary)
                finally:  # a Ctrl-C between two cases: the batch records the rest as cancelled
                    summaries.close()
        except InvalidInputError as error:
            progress.finish()
            _say(f"error: {error}")
            return cli.EXIT_BAD_INPUT
        except KeyboardInterrupt:
            progress.finish()
            print(progress.summary_line(args.output_dir / batch.RESULTS_NAME))
            _say(f"cancelled by {signal.Signals(received.get('signum', signal.SIGINT)).name}; finished cases kept")
            return cli.EXIT_SIGNAL_BASE + received.get("signum", signal.SIGINT)
    progress.finish()
    print(progress.summary_line(args.output_dir / batch.RESULTS_NAME))
    return EXIT_CASES_FAILED if progress.errors else 0


def _check_options(args) -> None:
    """Refuse, before any work, options that cannot go together, an OUTDIR that cannot be written, and a
    missing dask or matplotlib."""
    if args.scheduler and args.workers:
        raise InvalidInputError("--workers sizes the local cluster; with --scheduler the cluster's own workers run "
                                "the cases: leave out one of them")
    cli._check_writable_folder(args.output_dir, "-o")
    if importlib.util.find_spec("distributed") is None:
        raise InvalidInputError('oneclick-register batch runs on Dask, which is not installed: '
                                'pip install "oneclickregistration[batch]" (or "dask[distributed]")')
    if args.qc and importlib.util.find_spec("matplotlib") is None:
        raise InvalidInputError('--qc draws with matplotlib, which is not installed: '
                                'pip install "oneclickregistration[qc]" (or matplotlib), or leave out --qc')


@contextmanager
def _client(batch, args, cases):
    """A client of the --scheduler given, or of a local cluster sized to the cases (closed on exit)."""
    if args.scheduler is None:
        with batch.local_client(cases, args.workers) as client:
            yield client
        return
    import distributed

    try:
        client = distributed.Client(args.scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, ValueError) as error:  # OSError: refused or timed out; ValueError: a malformed address
        raise InvalidInputError(f"--scheduler {args.scheduler}: cannot reach a Dask scheduler there "
                                f"({str(error).strip().splitlines()[-1]}); start "
                                "one (dask scheduler) with its workers (dask worker ADDRESS), or check the "
                                "address") from None
    with client:
        if not client.scheduler_info(n_workers=-1)["workers"]:
            _say(f"the scheduler at {args.scheduler} has no workers yet; cases start when workers join")
        yield client


def _describe(client) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    slots = sum(info["nthreads"] for info in workers)
    return f"{_count(len(workers), 'Dask worker')} ({_count(slots, 'case')} at a time)"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@contextmanager
def _terminating_signal_as_interrupt():
    """SIGTERM ends the batch as Ctrl-C does (a KeyboardInterrupt in the main thread); the signal received
    is put in the dict yielded, under 'signum'."""
    received = {}

    def interrupt(signum, frame):
        received["signum"] = signum
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in cli.HANDLED_SIGNALS}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class _Progress:
    """Cases done, ok, to check visually and failed, and the time left, on a stream (stderr)."""

    def __init__(self, total: int, stream, quiet: bool = False):
        self.total = total
        self.stream = stream
        self.quiet = quiet
        self.interactive = stream.isatty()
        self.start = time.monotonic()
        self.done = self.ok = self.check = self.failed = self.errors = self.cancelled = self.skipped = 0
        self.open_line = False

    def add(self, summary) -> None:
        """Count a finished case and show the progress."""
        self.done += 1
        self.skipped += summary.skipped
        if summary.status == "cancelled":
            self.cancelled += 1
        elif summary.status == "error":
            self.errors += 1
            self.failed += 1
        elif summary.verdict == "good":
            self.ok += 1
        elif summary.verdict == "failed":
            self.failed += 1
        else:
            self.check += 1
        if self.quiet:
            return
        line = (f"[{self.done}/{self.total}] {self.ok} ok, {self.check} to check, {self.failed} failed"
                f"{self._time_left()}")
        if self.interactive:
            bar = "#" * round(BAR_WIDTH * self.done / self.total)
            self.stream.write(f"\r{bar:-<{BAR_WIDTH}} {line:<64}")
            self.open_line = True
        else:
            what = summary.message if summary.status != "ok" or summary.skipped else summary.verdict
            self.stream.write(f"{line}   {summary.id}: {summary.status}, {what}\n")
        self.stream.flush()

    def _time_left(self) -> str:
        """From the pace of the cases run so far (skipped ones are not work); empty before the first."""
        ran = self.done - self.skipped
        if ran == 0 or self.done == self.total:
            return ""
        seconds = (time.monotonic() - self.start) / ran * (self.total - self.done)
        return f", about {_duration(seconds)} left"

    def finish(self) -> None:
        """End a terminal's progress line."""
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def summary_line(self, results: Path) -> str:
        """The line printed at the end."""
        not_run = self.total - self.done + self.cancelled
        parts = [f"{self.ok} ok", f"{self.check} need a visual check",
                 f"{self.failed} failed" + (f" ({self.errors} did not run)" if self.errors else "")]
        if not_run:
            parts.append(f"{not_run} cancelled")
        skipped = f"; {self.skipped} complete from an earlier run, skipped" if self.skipped else ""
        return f"{_count(self.total, 'case')}: {', '.join(parts)}{skipped}; table: {results}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _say(message: str) -> None:
    """One line on stderr, prefixed with the program name."""
    print(f"oneclick-register batch: {message}", file=sys.stderr, flush=True)
