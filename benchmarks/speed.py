"""The full-resolution speed case: our whole chain on a 1 mm, 256x256x180 head.

The volume is the chris_t1 head (0.88 mm, whole head with face) put on a
1 mm grid of 256x256x180 voxels centred on the head.  The moving image is the
same volume with a known rigid motion in its header, so the run also reports
its error.  Each of our stages is timed by the pipeline itself; the numba
compile time is measured in a fresh process with an empty kernel cache as the
first call's time minus the second call's on the small warm-up case.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import cases
from .worker import MethodWorker

logger = logging.getLogger(__name__)

SOURCE = "chris_t1_pd/chris_t1.nii.gz"
SIZE = (256, 256, 180)
SPACING_MM = 1.0
METHOD = "ours chain"


def build_speed_case(data_dir: Path, out_dir: Path) -> cases.Case:
    """Write the 1 mm fixed volume and its rigidly moved copy; return the case."""
    source = sitk.ReadImage(str(Path(data_dir) / SOURCE))
    centre = cases.mask_centre(source, cases.head_mask(source))
    direction = np.asarray(source.GetDirection()).reshape(3, 3)
    half_extent = (np.asarray(SIZE) - 1) * SPACING_MM / 2
    origin = centre - direction @ half_extent
    fixed = sitk.Resample(source, SIZE, sitk.Transform(), sitk.sitkLinear, tuple(origin),
                          (SPACING_MM,) * 3, source.GetDirection(), 0.0, source.GetPixelID())
    directory = Path(out_dir) / "speed"
    directory.mkdir(parents=True, exist_ok=True)
    fixed_path = directory / "fixed_1mm.nrrd"
    sitk.WriteImage(fixed, str(fixed_path), True)
    mask = cases.head_mask(fixed)
    pair = cases.Pair("T1->T1 1 mm 256x256x180 (chris_t1)", SOURCE, SOURCE)
    context = cases.PairContext(pair, fixed_path, fixed, fixed, mask, directory / "mask.nrrd", directory)
    sitk.WriteImage(cases.mask_image(mask, fixed), str(context.mask_path), True)
    return cases.rigid_case(context, cases.LEVELS[1], 0, (0, 7, 1))


def run_speed_case(case: cases.Case, warmup: cases.Case, timeout_s: float) -> dict:
    """Time our chain stage by stage on the speed case, plus the cold-cache compile time."""
    worker = MethodWorker(METHOD, warmup.as_dict(), timeout_s)
    try:
        outcome = worker.evaluate(case.as_dict())
    finally:
        worker.close()
    speed = {"description": f"{case.pair}, moving: same volume, {case.rotation_degrees:.1f} deg / "
                            f"{case.translation_mm:.1f} mm header motion",
             "status": outcome["status"]}
    if outcome["status"] == "ok":
        stages = outcome["details"].get("stages", {})
        speed.update(
            seconds=outcome["seconds"], peak_mb=outcome["peak_mb"],
            stages={name: stage["seconds"] for name, stage in stages.items()},
            tre_median=float(np.median(outcome["errors"])),
        )
    else:
        speed["message"] = outcome.get("message", "")
    speed["numba_compile_seconds"] = numba_compile_seconds(warmup, timeout_s)
    return speed


def numba_compile_seconds(warmup: cases.Case, timeout_s: float):
    """First-call minus second-call time of our chain in a process with an empty numba cache."""
    with tempfile.TemporaryDirectory(prefix="bench_numba_cold_") as cache:
        worker = MethodWorker(METHOD, None, timeout_s, environment={"NUMBA_CACHE_DIR": cache})
        try:
            first = worker.evaluate(warmup.as_dict())
            second = worker.evaluate(warmup.as_dict())
        finally:
            worker.close()
    if first["status"] != "ok" or second["status"] != "ok":
        logger.warning("numba compile time not measured: %s", first.get("message") or second.get("message"))
        return None
    return max(0.0, first["seconds"] - second["seconds"])
