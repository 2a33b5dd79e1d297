"""Clinical-size volumes: the memory of a registration follows the head, not the grid.

The moving image is the bundled sample T1 put on a 0.5 mm grid whose field of
view is 1.6 times the head's along every axis (about 400x500x450 voxels, 8-bit,
as a scanner exports a fine whole-head volume with air around it) and moved
by a known rigid motion in its header.  The registration runs in a fresh
process that samples its own resident memory, so what is measured is every
allocation (SimpleITK's and numba's too), and tracemalloc reports the largest
numpy peak.  Neither may reach the size of a full-resolution float64 copy of
the moving image; the error against the known motion stays sub-millimetre.
Nothing here is timed.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import tracemalloc

import numpy as np
import SimpleITK as sitk

from conftest import SAMPLE_DATA

FINE_SPACING_MM = 0.5
FIELD_OF_VIEW_RATIO = 1.6
SEED, ANGLE_DEG, SHIFT_MM = 4, 30.0, 25.0


def _large_moving(fixed: sitk.Image) -> sitk.Image:
    """The fixed head on a 0.5 mm grid covering 1.6 times its extent, centred on it, in the fixed's pixel type."""
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing()) * FIELD_OF_VIEW_RATIO
    size = np.ceil(extent / FINE_SPACING_MM).astype(int)
    direction = np.asarray(fixed.GetDirection()).reshape(3, 3)
    centre = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint((np.asarray(fixed.GetSize()) - 1) / 2.0))
    origin = centre - direction @ ((size - 1) * FINE_SPACING_MM / 2.0)
    return sitk.Resample(fixed, size.tolist(), sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                         [FINE_SPACING_MM] * 3, fixed.GetDirection(), 0.0, fixed.GetPixelID())


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def _register_and_measure(queue) -> None:
    """In a fresh process: build the case, warm up, then register while sampling memory."""
    from OneClickRegistrationLib import evaluation, imageio, register
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    fixed = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    head = imageio.head_mask(imageio.as_float32(fixed))
    truth = evaluation.random_rigid(np.random.default_rng(SEED), ANGLE_DEG, SHIFT_MM, imageio.mask_center(head))
    moving = evaluation.move_header(_large_moving(fixed), truth)
    register(fixed, evaluation.move_header(fixed, truth), stages=("rigid",))  # numba compiled or loaded
    baseline = _resident_bytes()
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.005)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    result = register(fixed, moving, stages=("rigid", "affine"))
    numpy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    done.set()
    sampler.join()
    errors = evaluation.target_registration_error(result.transform, truth, evaluation.mask_points(head))
    queue.put({"voxels": int(np.prod(moving.GetSize())), "size": moving.GetSize(),
               "resident_increase": peak[0] - baseline, "numpy_peak": numpy_peak,
               "median_error": float(np.median(errors)), "max_error": float(errors.max())})


def test_large_fine_volume_makes_no_full_size_float64_copy():
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_register_and_measure, args=(queue,))
    child.start()
    outcome = queue.get(timeout=600)
    child.join(60)
    full_float64 = 8 * outcome["voxels"]
    mb = 1024 ** 2
    summary = (f"moving {outcome['size']} voxels: resident memory rose {outcome['resident_increase'] / mb:.0f} MB, "
               f"numpy peak {outcome['numpy_peak'] / mb:.0f} MB; a float64 copy is {full_float64 / mb:.0f} MB")
    assert outcome["resident_increase"] < full_float64 / 2, summary
    assert outcome["numpy_peak"] < full_float64 / 4, summary  # not even half a float32 copy
    assert outcome["median_error"] < 0.5 and outcome["max_error"] < 1.5, (
        f"{summary}; error median {outcome['median_error']:.2f}, max {outcome['max_error']:.2f} mm")
