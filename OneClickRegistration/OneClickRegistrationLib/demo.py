"""`make demo`: register the bundled sample pair and check the answer.

The bundled T1 and T2 (MIT-licensed, see the module's Resources/OneClickRegistration/SampleData) are already
aligned.  The demo tilts and shifts the T2 by a known rigid motion written
into its header (no resampling), registers it back with the command line,
and prints how far the recovered transform is from the truth, in mm.  The
FLAIR of the same session, moved alike, is carried along (--also), and the
quality report is written to OUTPUT/qc/index.html (--qc) when matplotlib is
installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import cli, evaluation, imageio

DEMO_ROTATION_DEG = (12.0, -8.0, 25.0)
DEMO_TRANSLATION_MM = (14.0, -9.0, 11.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("demo_output"))
    parser.add_argument("--stages", default="rigid,affine,deformable")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.output.mkdir(parents=True, exist_ok=True)
    fixed_path = imageio.SAMPLE_DATA / "T1.nii.gz"
    fixed = sitk.ReadImage(str(fixed_path))
    head = imageio.head_mask(imageio.as_float32(fixed))
    truth = evaluation.rigid_transform(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, imageio.mask_center(head))
    moving_path, also_path = args.output / "T2_misaligned.nii.gz", args.output / "FLAIR_misaligned.nii.gz"
    for name, path in (("T2", moving_path), ("FLAIR", also_path)):
        sitk.WriteImage(evaluation.move_header(sitk.ReadImage(str(imageio.SAMPLE_DATA / f"{name}.nii.gz")), truth),
                        str(path))
    print(f"demo: T2 and FLAIR moved by a known rotation {DEMO_ROTATION_DEG} deg and shift {DEMO_TRANSLATION_MM} mm "
          f"-> {moving_path}, {also_path}")
    transform_path = args.output / "T2_to_T1.h5"
    status = cli.main([str(fixed_path), str(moving_path), "-o", str(args.output), "--also", str(also_path),
                       "--output-transform", str(transform_path), "--stages", args.stages, *_quality_report(args)])
    if status != 0:
        return status
    points = evaluation.mask_points(head)
    errors = evaluation.target_registration_error(sitk.ReadTransform(str(transform_path)), truth, points)
    print(f"demo: error against the known truth inside the head: median {np.median(errors):.2f} mm, "
          f"max {errors.max():.2f} mm")
    return 0


def _quality_report(args) -> list:
    """--qc OUTPUT/qc when matplotlib (an optional dependency) is installed, else nothing and a note."""
    if importlib.util.find_spec("matplotlib") is None:
        print('demo: no quality report: matplotlib is not installed (pip install "oneclickregistration[qc]")')
        return []
    return ["--qc", str(args.output / "qc")]


if __name__ == "__main__":
    sys.exit(main())
