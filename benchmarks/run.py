"""Benchmark command line: `python -m benchmarks.run --output bench_output`.

Builds the known-answer cases, runs every method (each in its own process,
2 threads) on the cases of its kind, runs the full-resolution speed case and
the clinical-size section (benchmarks.clinical: a 0.5 mm CT of 512x512x400 and
whole heads in a 400^3 moving field of view, each method in a fresh process per
case), then the classic experiments (benchmarks.classic: circle to C in 2D, a
subject to the MNI template with a known deformation in 3D), and writes
results.csv, summary.csv, results.json and table.md.  Rigid cases are scored
for the rigid methods; deformable cases (which also carry a rigid motion) for
the affine methods and the full chains.
A peer that is not installed is reported as missing.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import sys
import time
from pathlib import Path

from .worker import MethodWorker, limit_thread_environment

THREADS = 2
limit_thread_environment(THREADS)

import numpy as np  # noqa: E402  (after the thread limits, on purpose)

from . import cases, classic, clinical, methods, report, speed  # noqa: E402

logger = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("ONECLICK_SHARED_DATA", ROOT.parent / "shared" / "data"))
KIND_OF_VARIANT = {"rigid": "rigid", "affine": "deformable", "chain": "deformable"}
# What a clinician gets from the button is our default chain: it also runs on the
# rigid-only cases, where it must end as precise as the best rigid peer.
RIGID_ONLY_CHAIN_TOLERANCE_MM = 0.05
BUDGET_MINUTES = 70.0  # 40 before the clinical-size section, 60 before the classic experiments


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("bench_output"), help="folder for results")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one MNI pair, one seed, the hardest level, no speed case")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="method names or tools (ours, SimpleITK, ANTsPy, elastix, Greedy); "
                             "default: all but 'SimpleITK chain'")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="rigid case seeds")
    parser.add_argument("--deformable-seeds", nargs="+", type=int, default=[0], help="deformable case seeds")
    parser.add_argument("--levels", nargs="+", default=None,
                        help=f"rigid levels to run (default all): {[level.name for level in cases.LEVELS]}")
    parser.add_argument("--pairs", nargs="+", default=None,
                        help=f"pairs to run (default all): {[pair.name for pair in cases.PAIRS]}")
    parser.add_argument("--no-held-out", action="store_true",
                        help="skip the held-out rigid cases (moving image resampled, roles swapped)")
    parser.add_argument("--no-speed", action="store_true", help="skip the full-resolution speed case")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per registration")
    section = parser.add_mutually_exclusive_group()
    section.add_argument("--no-clinical", action="store_true", help="skip the clinical-size section")
    section.add_argument("--clinical-only", action="store_true",
                         help=f"run only the clinical-size section: {', '.join(clinical.METHOD_NAMES)}")
    classic_section = parser.add_mutually_exclusive_group()
    classic_section.add_argument("--no-classic", action="store_true",
                                 help="skip the classic experiments (circle to C, subject to template)")
    classic_section.add_argument("--classic-only", action="store_true",
                                 help="run only the classic experiments: circle to C (2D) and a subject to the "
                                      "MNI template with a known deformation (3D)")
    return parser.parse_args(argv)


def build_plan(args: argparse.Namespace) -> cases.BuildPlan:
    if args.quick:
        return cases.BuildPlan(seeds=(0,), levels=(cases.LEVELS[-1],), deformable_seeds=(0,),
                               pairs=(cases.PAIRS[2],), held_out=False)
    levels = cases.LEVELS if args.levels is None else tuple(
        level for level in cases.LEVELS if level.name in args.levels)
    pairs = cases.PAIRS if args.pairs is None else tuple(
        pair for pair in cases.PAIRS if pair.name in args.pairs)
    return cases.BuildPlan(seeds=tuple(args.seeds), levels=levels,
                           deformable_seeds=tuple(args.deformable_seeds), pairs=pairs,
                           held_out=not args.no_held_out)


def selected_methods(names) -> list:
    if not names:
        return [method for method in methods.METHODS if method.default]
    return [method for method in methods.METHODS
            if method.name in names or (method.tool in names and method.default)]


def kinds_of_cases(method) -> tuple:
    """The case kinds a method runs on: its variant's, and the rigid-only cases too for our default chain."""
    if method.tool == "ours" and method.variant == "chain":
        return ("rigid", "deformable")
    return (KIND_OF_VARIANT[method.variant],)


def run_method(method, chosen: list, warmup, timeout_s: float, rows: list, errors: dict,
               initial: dict) -> None:
    """Evaluate one method on its cases, appending rows and point errors."""
    if not method.available():
        logger.warning("%s: %s is not installed; reported as missing", method.name, method.requires)
        outcomes = [(case, {"status": "missing", "message": f"{method.requires} not installed"})
                    for case in chosen]
    else:
        worker = MethodWorker(method.name, warmup.as_dict(), timeout_s)
        try:
            outcomes = [(case, _timed_outcome(worker, method, case)) for case in chosen]
        finally:
            worker.close()
    for case, outcome in outcomes:
        rows.append(report.case_row(method, case.as_dict(), outcome, initial[case.name]))
        if outcome["status"] == "ok":
            errors[(method.name, case.name)] = outcome["errors"]


def _timed_outcome(worker: MethodWorker, method, case) -> dict:
    outcome = worker.evaluate(case.as_dict())
    if outcome["status"] == "ok":
        step = (outcome.get("details") or {}).get("peak_step")
        logger.info("%-20s %-62s TRE median %6.2f p95 %6.2f mm  %6.1f s  peak %5.0f MB%s", method.name,
                    case.name, np.median(outcome["errors"]), np.percentile(outcome["errors"], 95),
                    outcome["seconds"], outcome["peak_mb"], f" during '{step}'" if step else "")
    else:
        logger.warning("%-20s %-62s %s: %s", method.name, case.name, outcome["status"],
                       outcome.get("message", ""))
    return outcome


def initial_errors(case) -> np.ndarray:
    """The misalignment itself: the identity mapping's error at the case's points."""
    truth = case.truth()
    return np.linalg.norm(truth["truth"] - truth["points"], axis=1)


def acceptance_checks(summaries: list, total_minutes: float) -> list:
    """The issue's promises, each as (passed, sentence)."""
    checks = [(total_minutes < BUDGET_MINUTES,
               f"whole benchmark took {total_minutes:.1f} min (< {BUDGET_MINUTES:g})")]
    by_key = {(s["kind"], s["pair"], s["method"]): s for s in summaries
              if s.get("status") != "missing" and s["kind"] not in (clinical.KIND, *classic.KINDS)}
    for (kind, pair, name), ours in sorted(by_key.items()):
        if ours["tool"] != "ours" or ours["variant"] == "affine" or ours.get("tre_median") is None:
            continue
        peers = [s for (k, p, _), s in by_key.items()
                 if k == kind and p == pair and s["tool"] != "ours" and s["variant"] == ours["variant"]
                 and s.get("tre_median") is not None]
        if kind == "rigid" and ours["variant"] == "chain":
            checks.extend(_rigid_only_chain_checks(ours, by_key))
            continue
        if ours["variant"] == "rigid":
            checks.append((ours["failures"] == 0, f"{name}, {pair}: {ours['failures']} failures"))
            if peers:
                best = min(peers, key=lambda s: s["tre_median"])
                checks.append((ours["tre_median"] <= best["tre_median"],
                               f"{name}, {pair}: median TRE {ours['tre_median']:.2f} mm vs best peer "
                               f"{best['method']} {best['tre_median']:.2f} mm"))
        for peer in peers if ours["variant"] == "chain" else []:
            faster = (peer.get("time_vs_ours") or 0) > 1.0
            as_good = ours["tre_median"] <= peer["tre_median"]
            checks.append((faster and as_good,
                           f"{name} vs {peer['method']}, {pair}: {peer.get('time_vs_ours')}x faster, "
                           f"median TRE {ours['tre_median']:.2f} vs {peer['tre_median']:.2f} mm"))
    return checks + clinical.clinical_checks(summaries) + classic.classic_checks(summaries)


def _rigid_only_chain_checks(ours: dict, by_key: dict) -> list:
    """Our default chain on rigid-only motion: no failure, and within 0.05 mm of the best rigid peer's median."""
    pair = ours["pair"]
    checks = [(ours["failures"] == 0, f"{ours['method']} on rigid-only motion, {pair}: {ours['failures']} failures")]
    rigid_peers = [s for (k, p, _), s in by_key.items() if k == "rigid" and p == pair and s["tool"] != "ours"
                   and s["variant"] == "rigid" and s.get("tre_median") is not None]
    if rigid_peers:
        best = min(rigid_peers, key=lambda s: s["tre_median"])
        checks.append((ours["tre_median"] <= best["tre_median"] + RIGID_ONLY_CHAIN_TOLERANCE_MM,
                       f"{ours['method']} on rigid-only motion, {pair}: median TRE {ours['tre_median']:.2f} mm vs "
                       f"best rigid peer {best['method']} {best['tre_median']:.2f} mm "
                       f"(tolerance {RIGID_ONLY_CHAIN_TOLERANCE_MM:g} mm)"))
    return checks


def _command_line(argv) -> str:
    """What reproduces this run: `make bench` when make started it."""
    arguments = argv if argv is not None else sys.argv[1:]
    if os.environ.get("MAKELEVEL") and arguments == ["--output", "bench_output"]:
        return "make bench"
    return " ".join(["python -m benchmarks.run"] + list(arguments))


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_arguments(argv)
    start = time.perf_counter()
    if not args.data.is_dir():
        logger.error("shared data folder %s not found (set ONECLICK_SHARED_DATA)", args.data)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    case_dir = args.output / "cases"
    warmup = cases.warmup_case(args.data, case_dir)
    rows, errors = [], {}
    meta = {"when": datetime.date.today().isoformat(), "command": _command_line(argv),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
            "threads": THREADS, "points": cases.TRE_POINTS}
    speed_result = None
    only_a_section = args.clinical_only or args.classic_only
    if not only_a_section:
        speed_result = run_main_section(args, case_dir, warmup, rows, errors, meta)
    if args.clinical_only or not (only_a_section or args.quick or args.no_clinical):
        run_clinical_section(args, case_dir, warmup, rows, errors, meta)
    classic_rows = []
    if args.classic_only or not (only_a_section or args.quick or args.no_classic):
        classic_rows = run_classic_section(args, case_dir, warmup, meta)

    total_minutes = (time.perf_counter() - start) / 60.0
    meta["total_minutes"] = total_minutes
    summaries = report.summarise(rows, errors) + classic.summaries(classic_rows)
    checks = acceptance_checks(summaries, total_minutes) + (speed.speed_checks(speed_result) if speed_result else [])
    markdown = report.write_outputs(args.output, rows + classic_rows, summaries, speed_result, checks, meta)
    print(markdown)
    logger.info("results in %s (total %.1f min)", args.output, total_minutes)
    return 0


def run_main_section(args: argparse.Namespace, case_dir: Path, warmup, rows: list, errors: dict,
                     meta: dict):
    """The known-answer pairs for every method, then the speed case; returns the speed result."""
    start = time.perf_counter()
    plan = build_plan(args)
    all_cases = cases.build_cases(args.data, case_dir, plan)
    initial = {case.name: initial_errors(case) for case in all_cases}
    logger.info("built %d cases in %.0f s", len(all_cases), time.perf_counter() - start)
    for method in selected_methods(args.methods):
        chosen = [case for case in all_cases if case.kind in kinds_of_cases(method)]
        run_method(method, chosen, warmup, args.timeout, rows, errors, initial)
    meta["plan"] = (f"pairs: {', '.join(pair.name for pair in plan.pairs)}; rigid levels "
                    f"{', '.join(level.name for level in plan.levels)} x seeds {list(plan.seeds)}; "
                    f"deformable seeds {list(plan.deformable_seeds)}"
                    + ("; held-out rigid cases: each pair's moving image resampled, the roles swapped, and both "
                       "(seed 0, one level band each)" if plan.held_out else ""))
    if args.quick or args.no_speed:
        return None
    return speed.run_speed_case(speed.build_speed_case(args.data, case_dir), warmup, args.timeout)


def run_clinical_section(args: argparse.Namespace, case_dir: Path, warmup, rows: list, errors: dict,
                         meta: dict) -> None:
    """Every clinical-size case for each of its methods, a fresh worker process per (case, method)."""
    start = time.perf_counter()
    clinical_cases = clinical.build_clinical_cases(args.data, case_dir)
    initial = {case.name: initial_errors(case) for case in clinical_cases}
    logger.info("clinical-size cases ready in %.0f s", time.perf_counter() - start)
    chosen = [methods.method_named(name) for name in clinical.selected_method_names(args.methods)]
    for case in clinical_cases:
        for method in chosen:
            run_method(method, [case], warmup, args.timeout, rows, errors, initial)
    meta["clinical"] = [clinical.describe(case) for case in clinical_cases]


def run_classic_section(args: argparse.Namespace, case_dir: Path, warmup, meta: dict) -> list:
    """Circle to C and subject to template, each method in a fresh process; their rows (scored in the section)."""
    start = time.perf_counter()
    rows, descriptions = classic.run_section(args.data, case_dir, warmup.as_dict(), args.methods, args.timeout)
    meta["classic"] = descriptions
    logger.info("classic experiments took %.1f min", (time.perf_counter() - start) / 60.0)
    return rows


if __name__ == "__main__":
    sys.exit(main())
