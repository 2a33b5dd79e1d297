"""The `oneclick-register` command line.

    oneclick-register FIXED MOVING [-o OUTDIR] [--output-transform PATH]
        [--output-volume PATH] [--report PATH] [--fixed-modality M]
        [--moving-modality M] [--stages rigid,affine,deformable]
        [--preset-table FILE]
    oneclick-register --identify IMAGE [IMAGE ...]

Reads anything SimpleITK reads (NIfTI, NRRD, MHA, a DICOM folder), shows
progress on stderr, prints the modalities, preset, scores and times, and
writes the transform (ITK .h5/.tfm, fixed -> moving), the resampled moving
volume and a JSON report.  Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import SimpleITK as sitk

from . import imageio, score
from .errors import InvalidInputError
from .modality import MODALITIES, identify_modality
from .pipeline import STAGE_NAMES, RegistrationResult, register
from .presets import load_preset_table

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oneclick-register",
        description="Align MOVING to FIXED (two head scans of one patient) with no settings to choose.",
    )
    parser.add_argument("fixed", help="fixed image: a file SimpleITK reads or a DICOM folder")
    parser.add_argument("moving", nargs="*", help="moving image (with --identify: more images)")
    parser.add_argument("--identify", action="store_true",
                        help="only recognise the modality of each image, one line per image")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."),
                        help="folder for the default outputs (default: current folder)")
    parser.add_argument("--output-transform", type=Path,
                        help="transform file, .h5 or .tfm (default: OUTDIR/<moving>_to_<fixed>.h5)")
    parser.add_argument("--output-volume", type=Path,
                        help="moving image resampled onto the fixed grid (default: OUTDIR/<moving>_registered.nii.gz)")
    parser.add_argument("--report", type=Path, help="JSON report (default: OUTDIR/<moving>_report.json)")
    parser.add_argument("--fixed-modality", choices=MODALITIES, type=str.upper, help="skip recognition of the fixed image")
    parser.add_argument("--moving-modality", choices=MODALITIES, type=str.upper, help="skip recognition of the moving image")
    parser.add_argument("--stages", default=",".join(STAGE_NAMES),
                        help="comma-separated stages to run, in order (default: %(default)s)")
    parser.add_argument("--preset-table", type=Path, help="a preset table of your own (JSON, same schema as the bundled one)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.identify:
            return identify(args.fixed, args.moving)
        if len(args.moving) != 1:
            raise InvalidInputError("give exactly two images, FIXED and MOVING (or use --identify)")
        return run_registration(args)
    except InvalidInputError as error:
        print(f"oneclick-register: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("oneclick-register: cancelled", file=sys.stderr)
        return 130


def identify(first: str, others: List[str]) -> int:
    """Print `path<TAB>modality<TAB>confidence<TAB>reason` for each image."""
    for path in [first, *others]:
        loaded = imageio.read_image(path)
        imageio.validate_image(loaded.image, str(path))
        guess = identify_modality(imageio.as_float32(loaded.image), loaded.hints)
        print(f"{path}\t{guess.modality}\t{guess.confidence:.2f}\t{guess.reason}")
    return 0


def run_registration(args) -> int:
    fixed = imageio.read_image(args.fixed)
    moving = imageio.read_image(args.moving[0])
    outputs = _output_paths(args, fixed, moving)
    table = load_preset_table(args.preset_table) if args.preset_table else None
    progress = None if args.quiet else _ProgressLine(sys.stderr)
    result = register(
        fixed.image, moving.image,
        fixed_modality=args.fixed_modality, moving_modality=args.moving_modality,
        stages=args.stages, preset_table=table, progress=progress,
        fixed_hints=fixed.hints, moving_hints=moving.hints,
    )
    if progress is not None:
        progress.finish()
    for path in outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteTransform(result.transform, str(outputs["transform"]))
    sitk.WriteImage(result.resampled_moving, str(outputs["volume"]), useCompression=True)
    report = result.report()
    report.update({
        "fixed_path": str(fixed.path), "moving_path": str(moving.path),
        "output_transform": str(outputs["transform"]), "output_volume": str(outputs["volume"]),
        "transform_convention": "ITK: maps fixed physical points (LPS, mm) to moving physical points",
    })
    outputs["report"].write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(summary(result, outputs))
    return 0


def summary(result: RegistrationResult, outputs: dict) -> str:
    """What a user reads after a run: modalities, preset, each stage's score and time, files."""
    lines = [
        f"fixed:  {result.fixed_modality}",
        f"moving: {result.moving_modality}",
        f"preset: {result.preset.name}",
        f"score:  {result.score_description}",
        f"  {'initial (header)':<12} score {result.initial_score:7.4f}",
    ]
    for stage in result.stages:
        kept = "kept" if stage.accepted else "rejected"
        lines.append(f"  {stage.name:<12} score {stage.score:7.4f}  {stage.seconds:6.1f} s  {kept}, "
                     f"{score.verdict(stage.score, stage.accepted)}"
                     + (f"  ({stage.message})" if stage.message else ""))
    lines.append(f"total {result.seconds:.1f} s")
    lines += [f"{name}: {path}" for name, path in outputs.items()]
    return "\n".join(lines)


def _output_paths(args, fixed: imageio.LoadedImage, moving: imageio.LoadedImage) -> dict:
    stem = moving.hints["name"]
    return {
        "transform": args.output_transform or args.output_dir / f"{stem}_to_{fixed.hints['name']}.h5",
        "volume": args.output_volume or args.output_dir / f"{stem}_registered.nii.gz",
        "report": args.report or args.output_dir / f"{stem}_report.json",
    }


class _ProgressLine:
    """A one-line progress display on a terminal (plain lines when not a terminal)."""

    def __init__(self, stream):
        self.stream = stream
        self.interactive = stream.isatty()
        self.last_message = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.interactive:
            self.stream.write(f"\r[{fraction:4.0%}] {message[:70]:<70}")
            self.stream.flush()
        elif message != self.last_message:
            self.stream.write(f"[{fraction:4.0%}] {message}\n")
        self.last_message = message

    def finish(self) -> None:
        if self.interactive:
            self.stream.write("\n")


if __name__ == "__main__":
    sys.exit(main())
