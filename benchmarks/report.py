"""Turn per-case results into the published numbers: CSV, JSON and a markdown table.

Target registration error (TRE) is pooled over the head points of every case
of a method and pair.  A case is a failure when its 95th-percentile TRE is
above FAILURE_MM, or when the method raised an error or ran out of time.
Times are the median wall time of the registration call over the pair's
cases; "x ours" divides it by the median of our method of the same kind on
the same pair, measured in the same run (in the clinical-size section: by our
default chain's time on the same case).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

FAILURE_MM = 5.0
VARIANT_ORDER = {"rigid": 0, "affine": 1, "chain": 2}
TOOL_ORDER = {"ours": 0, "SimpleITK": 1, "ANTsPy": 2, "elastix": 3, "Greedy": 4}
CLINICAL = "clinical"  # the clinical-size section's kind of case
# The classic experiments' kinds of case (benchmarks.classic): circle to C, subject to template.
CLASSIC_PLANAR = "classic 2D"
CLASSIC_TEMPLATE = "classic 3D"


def case_row(method, case: dict, outcome: dict, initial_errors: np.ndarray) -> dict:
    """One flat result row for a method on a case (errors summarised, not kept)."""
    row = {
        "method": method.name, "tool": method.tool, "variant": method.variant,
        "case": case["name"], "pair": case["pair"], "kind": case["kind"], "level": case["level"],
        "seed": case["seed"], "status": outcome["status"],
        "initial_tre_median": round(float(np.median(initial_errors)), 3),
    }
    if outcome["status"] != "ok":
        row.update(message=outcome.get("message", ""), failed=outcome["status"] != "missing")
        return row
    errors = outcome["errors"]
    p95 = float(np.percentile(errors, 95))
    row.update(
        tre_median=round(float(np.median(errors)), 3), tre_p95=round(p95, 3),
        tre_max=round(float(errors.max()), 3), failed=bool(p95 > FAILURE_MM),
        seconds=round(outcome["seconds"], 3), cpu_seconds=round(outcome["cpu_seconds"], 3),
        peak_mb=round(outcome["peak_mb"], 1), min_jacobian=outcome.get("min_jacobian"),
        details=outcome.get("details") or {},
    )
    return row


def summarise(rows: list, errors: dict) -> list:
    """One summary per (kind, pair, method); `errors` maps (method, case) to point errors."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["pair"], row["method"])].append(row)
    summaries = [_summary(key, group, errors) for key, group in groups.items()]
    _add_time_ratios(summaries)
    return sorted(summaries, key=_summary_order)


def _summary(key: tuple, group: list, errors: dict) -> dict:
    kind, pair, method = key
    first = group[0]
    summary = {"kind": kind, "pair": pair, "method": method, "tool": first["tool"],
               "variant": first["variant"], "cases": len(group)}
    if all(row["status"] == "missing" for row in group):
        summary["status"] = "missing"
        return summary
    ok = [row for row in group if row["status"] == "ok"]
    pooled = np.concatenate([errors[(method, row["case"])] for row in ok]) if ok else np.array([])
    jacobians = [row["min_jacobian"] for row in ok if row.get("min_jacobian") is not None]
    highest = max(ok, key=lambda row: row["peak_mb"]) if ok else {}
    summary.update(
        status=_status(group),
        failures=sum(bool(row["failed"]) for row in group),
        tre_median=_round(np.median(pooled)) if pooled.size else None,
        tre_p95=_round(np.percentile(pooled, 95)) if pooled.size else None,
        tre_max=_round(pooled.max()) if pooled.size else None,
        min_jacobian=_round(min(jacobians), 3) if jacobians else None,
        seconds=_round(np.median([row["seconds"] for row in ok])) if ok else None,
        cores_used=_round(np.median([row["cpu_seconds"] / row["seconds"] for row in ok])) if ok else None,
        peak_mb=_round(highest["peak_mb"], 0) if ok else None,
        peak_step=(highest.get("details") or {}).get("peak_step") if ok else None,
    )
    return summary


def _status(group: list) -> str:
    """The group's outcome: ok, or how many cases ended otherwise and how ("1 timeout, 2 error")."""
    counts = Counter(row["status"] for row in group if row["status"] != "ok")
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items())) or "ok"


def _add_time_ratios(summaries: list) -> None:
    """time_vs_ours: time / ours' of the same variant, or / ours chain's in the clinical section."""
    ours = {(s["kind"], s["pair"], s["variant"]): s.get("seconds")
            for s in summaries if s["tool"] == "ours"}
    for summary in summaries:
        variant = "chain" if summary["kind"] == CLINICAL else summary["variant"]
        reference = ours.get((summary["kind"], summary["pair"], variant))
        seconds = summary.get("seconds")
        summary["time_vs_ours"] = _round(seconds / reference) if seconds and reference else None


def _summary_order(summary: dict) -> tuple:
    return (summary["kind"] != "rigid", summary["pair"], VARIANT_ORDER[summary["variant"]],
            TOOL_ORDER.get(summary["tool"], 9))


def _round(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


# ---------------------------------------------------------------- files

def write_outputs(out_dir: Path, rows: list, summaries: list, speed: Optional[dict],
                  checks: list, meta: dict) -> str:
    """Write results.csv, summary.csv, results.json and table.md; return the markdown."""
    out_dir = Path(out_dir)
    _write_csv(out_dir / "results.csv", [_flat(row) for row in rows])
    _write_csv(out_dir / "summary.csv", summaries)
    (out_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "summary": summaries, "cases": rows, "speed": speed, "checks": checks},
        indent=1, default=_jsonable))
    markdown = markdown_report(summaries, rows, speed, checks, meta)
    (out_dir / "table.md").write_text(markdown)
    return markdown


def _flat(row: dict) -> dict:
    flat = dict(row)
    flat["details"] = json.dumps(row.get("details", {}), default=_jsonable)
    return flat


def _write_csv(path: Path, rows: list) -> None:
    columns = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------- markdown

def markdown_report(summaries: list, rows: list, speed: Optional[dict], checks: list, meta: dict) -> str:
    """The tables README.md shows, exactly as `make bench` prints them."""
    parts = [f"Command: `{meta['command']}` ({meta['when']}, {meta['machine']}, "
             f"{meta['threads']} threads per method, total {meta['total_minutes']:.1f} min)", ""]
    if meta.get("plan"):
        parts += [f"Cases: {meta['plan']}.", ""]
    for kind, title in (("rigid", "Rigid misalignment (header only)"),
                        ("deformable", "Rigid misalignment + smooth deformation (one resampling)")):
        chosen = [s for s in summaries if s["kind"] == kind]
        if chosen:
            parts += [f"**{title}**: {_case_description(rows, kind)}", "", *_summary_table(chosen), ""]
    levels = _level_table(rows)
    if levels:
        parts += ["**Rigid-case failures by misalignment level** (all pairs)", "", *levels, ""]
    if speed:
        parts += ["**Full-resolution speed case**", "", *_speed_table(speed), ""]
    clinical = [s for s in summaries if s["kind"] == CLINICAL]
    if clinical:
        parts += ["**Clinical-size cases** (each method in a fresh process per case)", "",
                  *[f"- {line}" for line in meta.get("clinical", [])], "", *_clinical_table(clinical), ""]
    classic = [s for s in summaries if s["kind"] in (CLASSIC_PLANAR, CLASSIC_TEMPLATE)]
    if classic:
        parts += ["**Classic experiments** (issue 17; each method in a fresh process)", "",
                  *[f"- {line}" for line in meta.get("classic", [])], "", *_classic_tables(classic), ""]
    if checks:
        parts += ["**Checks**", "", *[f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in checks], ""]
    parts += [f"TRE: error in mm at {meta['points']} head points per case, pooled over the cases; "
              f"failure: a case whose 95th-percentile TRE is above {FAILURE_MM:g} mm (or that errs). "
              "Time: median wall time of the registration call; x ours: that time divided by ours "
              "of the same kind on the same pair. Cores: CPU time / wall time. "
              "Memory: peak resident memory of the method's process."]
    if clinical:
        parts[-1] += (" Clinical-size cases: x ours chain is the time divided by our default chain's "
                      "on the same case; where ours peaked: our progress step running when the "
                      "largest resident memory was sampled (every 20 ms).")
    return "\n".join(parts) + "\n"


def _case_description(rows: list, kind: str) -> str:
    chosen = {row["case"]: row for row in rows if row["kind"] == kind}
    per_pair = defaultdict(set)
    for row in chosen.values():
        per_pair[row["pair"]].add(row["case"])
    counts = sorted({len(names) for names in per_pair.values()})
    return f"{len(chosen)} cases, {'/'.join(map(str, counts))} per pair"


def _summary_table(summaries: Iterable[dict]) -> list:
    header = ("| pair | method | cases | median TRE | p95 TRE | max TRE | failures | min Jac "
              "| time s | x ours | cores | peak MB |")
    lines = [header, "|" + "---|" * 12]
    for s in summaries:
        if s["status"] == "missing":
            lines.append(f"| {s['pair']} | {s['method']} | {s['cases']} | missing (not installed) "
                         "| | | | | | | | |")
            continue
        cells = [s["pair"], s["method"], s["cases"], _cell(s["tre_median"]), _cell(s["tre_p95"]),
                 _cell(s["tre_max"]), f"{s['failures']}" + ("" if s["status"] == "ok" else f" ({s['status']})"),
                 _cell(s["min_jacobian"], 3), _cell(s["seconds"], 1), _cell(s["time_vs_ours"]),
                 _cell(s["cores_used"], 1), _cell(s["peak_mb"], 0)]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def _clinical_table(summaries: Iterable[dict]) -> list:
    """One row per (case, method): errors, time, time / ours chain's, peak memory and where ours peaked."""
    header = ("| case | method | median TRE | p95 TRE | max TRE | failures | time s | x ours chain "
              "| peak MB | where ours peaked |")
    lines = [header, "|" + "---|" * 10]
    for s in summaries:
        if s["status"] == "missing":
            lines.append(f"| {s['pair']} | {s['method']} | missing (not installed) | | | | | | | |")
            continue
        cells = [s["pair"], s["method"], _cell(s["tre_median"]), _cell(s["tre_p95"]), _cell(s["tre_max"]),
                 f"{s['failures']}" + ("" if s["status"] == "ok" else f" ({s['status']})"),
                 _cell(s["seconds"], 1), _cell(s["time_vs_ours"]), _cell(s["peak_mb"], 0),
                 s.get("peak_step") or "-"]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def _classic_tables(summaries: list) -> list:
    """Circle to C: Dice, min Jacobian, round trip, time; subject to template: errors, Jacobian, time, memory."""
    lines = []
    planar = [s for s in summaries if s["kind"] == CLASSIC_PLANAR]
    if planar:
        lines += ["| circle -> C | Dice | min Jac | inverse(forward) max px | time s | x ours | status |",
                  "|" + "---|" * 7]
        lines += ["| " + " | ".join(str(cell) for cell in (
            s["method"], _cell(s.get("dice"), 3), _cell(s.get("min_jacobian"), 3),
            _cell(s.get("round_trip_max_px"), 3), _cell(s.get("seconds"), 1), _cell(s.get("time_vs_ours")),
            _classic_status(s))) + " |" for s in planar]
    template = [s for s in summaries if s["kind"] == CLASSIC_TEMPLATE]
    if template:
        lines += ([""] if lines else []) + [
            "| subject -> template | mean error | p95 | max | D alone | min Jac | time s | x ours | peak MB "
            "| status |", "|" + "---|" * 10]
        lines += ["| " + " | ".join(str(cell) for cell in (
            s["method"], _cell(s.get("tre_mean")), _cell(s.get("tre_p95")), _cell(s.get("tre_max")),
            _cell(s.get("deformation_mean_mm")), _cell(s.get("min_jacobian"), 3), _cell(s.get("seconds"), 1),
            _cell(s.get("time_vs_ours")), _cell(s.get("peak_mb"), 0), _classic_status(s))) + " |" for s in template]
    return lines


def _classic_status(summary: dict) -> str:
    """ok (with the method's note, if any), or how it ended and why."""
    if summary["status"] == "ok":
        return "ok" + (f" ({summary['note']})" if summary.get("note") else "")
    return f"{summary['status']}: {summary.get('message', '')}".replace("|", "/")


def _level_table(rows: list) -> list:
    rigid = [row for row in rows if row["kind"] == "rigid" and row["status"] != "missing"]
    if not rigid:
        return []
    levels = list(dict.fromkeys(row["level"] for row in rigid))
    methods = sorted(dict.fromkeys(row["method"] for row in rigid),
                     key=lambda name: next((VARIANT_ORDER[r["variant"]], TOOL_ORDER.get(r["tool"], 9))
                                           for r in rigid if r["method"] == name))
    lines = ["| method | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for method in methods:
        cells = []
        for level in levels:
            chosen = [row for row in rigid if row["method"] == method and row["level"] == level]
            cells.append(f"{sum(bool(row['failed']) for row in chosen)}/{len(chosen)}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _speed_table(speed: dict) -> list:
    lines = [f"Fixed: {speed['description']}", "",
             "| step | seconds |", "|---|---|"]
    for name, seconds in speed.get("stages", {}).items():
        lines.append(f"| stage {name} | {_cell(seconds, 1)} |")
    lines += [f"| whole register() call | {_cell(speed.get('seconds'), 1)} |",
              f"| numba compile, cold cache (its compile events, first call) | "
              f"{_cell(speed.get('numba_compile_seconds'), 1)} |",
              "", f"Peak memory {_cell(speed.get('peak_mb'), 0)} MB; median TRE "
              f"{_cell(speed.get('tre_median'))} mm; status {speed.get('status')}."]
    return lines


def _cell(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
