"""How precise is the bench's truth?  Every rigid method on each pair exactly as shipped.

`python -m benchmarks.reference --output reference_output` registers each
bench pair (and its swapped roles) as shipped, with no motion applied: the
truth is the identity, so whatever a method finds is the offset between the
two images' contents as that method's metric sees it.  When independent
methods (our normalised MI, elastix's and ANTs' Mattes MI, Greedy's NMI) all
find an offset in the same direction, and the offsets of the swapped pair are
its opposite, the offset is in the images, not in a method: the pair's
"aligned" truth is only as precise as that consensus, and differences between
methods smaller than it say where each metric lands, not which is more precise.

The table gives, per pair and method, the median distance (mm) the method
moves the head points away from the identity, and its mean offset vector
(x, y, z, LPS, mm, fixed to moving: about the translation a method finds, as a
rotation about the head's centre averages out over the head); per pair, the
consensus (the mean of the methods' offset vectors), its length, and each
method's distance from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .run import DEFAULT_DATA  # first: benchmarks.run sets the bench's thread limits (2 threads) on import
from .worker import MethodWorker

import numpy as np  # after the thread limits, on purpose
import SimpleITK as sitk

from . import cases, methods

logger = logging.getLogger("benchmarks.reference")

METHOD_NAMES = ("ours rigid", "ANTsPy Rigid", "elastix rigid", "Greedy rigid")
POINT_SEED = 7


@dataclass(frozen=True)
class Offset:
    """What one method found on one pair as shipped."""

    pair: str
    method: str
    median_mm: float
    mean_offset_mm: tuple  # (x, y, z) of (mapped point - point), averaged over the head points


def aligned_cases(data_dir: Path, out_dir: Path, pairs=cases.PAIRS) -> list:
    """Each pair and its swapped roles as shipped, truth the identity at head points of the fixed image."""
    built = []
    for pair in pairs:
        for roles in (pair, cases.swapped_pair(pair)):
            built.append(_aligned_case(Path(data_dir), Path(out_dir), roles))
    return built


def _aligned_case(data_dir: Path, out_dir: Path, pair: cases.Pair) -> cases.Case:
    """The pair's files untouched; the fixed head's mask and points written under out_dir, truth = the points."""
    fixed_path = data_dir / pair.fixed
    fixed = sitk.ReadImage(str(fixed_path))
    mask = cases.head_mask(fixed)
    directory = out_dir / cases.slug(pair.name)
    directory.mkdir(parents=True, exist_ok=True)
    mask_path = directory / "fixed_head_mask.nrrd"
    sitk.WriteImage(cases.mask_image(mask, fixed), str(mask_path), True)
    index = cases.sample_points(mask, np.random.default_rng(POINT_SEED))
    points = cases.index_to_physical(fixed, index)
    truth_path = directory / "aligned_truth.npz"
    np.savez(truth_path, index=index, points=points, truth=points)
    return cases.Case(name=f"{pair.name} | as shipped", pair=pair.name, kind="aligned", level="none", seed=0,
                      fixed_path=str(fixed_path), moving_path=str(data_dir / pair.moving),
                      mask_path=str(mask_path), truth_path=str(truth_path),
                      rotation_degrees=0.0, translation_mm=0.0)


def measure(aligned: list, method_names, warmup, timeout_s: float) -> list:
    """Each available method on every aligned case, in its own worker process; a list of Offset."""
    found = []
    for name in method_names:
        method = methods.method_named(name)
        if not method.available():
            logger.warning("%s: %s is not installed; left out", name, method.requires)
            continue
        worker = MethodWorker(name, warmup.as_dict(), timeout_s)
        try:
            for case in aligned:
                outcome = worker.evaluate(case.as_dict())
                if outcome["status"] != "ok":
                    logger.warning("%s on %s: %s", name, case.name, outcome.get("message", outcome["status"]))
                    continue
                found.append(Offset(case.pair, name, float(np.median(outcome["errors"])),
                                    tuple(float(v) for v in outcome["mean_offset"])))
                logger.info("%-14s %-22s median %.3f mm, mean offset %s mm", name, case.pair,
                            found[-1].median_mm, np.round(found[-1].mean_offset_mm, 2))
        finally:
            worker.close()
    return found


def consensus(offsets: list) -> dict:
    """Per pair: the methods' mean offset vector, its length, and each method's distance from it (mm)."""
    by_pair = {}
    for offset in offsets:
        by_pair.setdefault(offset.pair, []).append(offset)
    summary = {}
    for pair, found in by_pair.items():
        vectors = np.array([offset.mean_offset_mm for offset in found])
        centre = vectors.mean(axis=0)
        summary[pair] = {
            "consensus_mm": tuple(float(v) for v in centre),
            "consensus_length_mm": float(np.linalg.norm(centre)),
            "from_consensus_mm": {offset.method: float(np.linalg.norm(vector - centre))
                                  for offset, vector in zip(found, vectors)},
        }
    return summary


def table(offsets: list) -> str:
    """Markdown: one row per pair and method (grouped by pair), with the pair's consensus."""
    agreed = consensus(offsets)
    pair_order = list(dict.fromkeys(offset.pair for offset in offsets))
    offsets = sorted(offsets, key=lambda offset: pair_order.index(offset.pair))  # stable: methods keep their order
    lines = ["| pair | method | median from identity (mm) | mean offset x, y, z (mm) | consensus length (mm) "
             "| distance from consensus (mm) |", "|---|---|---|---|---|---|"]
    for offset in offsets:
        pair = agreed[offset.pair]
        vector = ", ".join(f"{v:+.2f}" for v in offset.mean_offset_mm)
        lines.append(f"| {offset.pair} | {offset.method} | {offset.median_mm:.2f} | {vector} | "
                     f"{pair['consensus_length_mm']:.2f} | {pair['from_consensus_mm'][offset.method]:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command line: the aligned cases, every method on them, the table printed and written (reference.md, .json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("reference_output"), help="folder for results")
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), help="rigid methods to compare")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per registration")
    args = parser.parse_args(argv)
    data = args.data or DEFAULT_DATA
    if not data.is_dir():
        logger.error("shared data folder %s not found (set ONECLICK_SHARED_DATA)", data)
        return 2
    start = time.perf_counter()
    case_dir = args.output / "cases"
    aligned = aligned_cases(data, case_dir)
    offsets = measure(aligned, args.methods, cases.warmup_case(data, case_dir), args.timeout)
    markdown = table(offsets)
    (args.output / "reference.md").write_text(markdown + "\n")
    (args.output / "reference.json").write_text(json.dumps(
        {"offsets": [offset.__dict__ for offset in offsets], "consensus": consensus(offsets)}, indent=1))
    print(markdown)
    logger.info("results in %s (%.1f min)", args.output, (time.perf_counter() - start) / 60.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
