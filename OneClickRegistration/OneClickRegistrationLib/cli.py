"""The `oneclick-register` command line.

    oneclick-register FIXED MOVING [-o OUTDIR] [--output-transform PATH]
        [--output-volume PATH] [--report PATH] [--fixed-modality M]
        [--moving-modality M] [--stages rigid,affine,deformable]
        [--preset-table FILE] [--fixed-series UID] [--moving-series UID]
        [--also PATH [--also PATH ...]] [--also-kind auto|image|label ...] [--qc DIR]
    oneclick-register --identify IMAGE [IMAGE ...]
    oneclick-register batch MANIFEST -o OUTDIR [--scheduler ADDRESS] [--workers N] [--force] [--qc]
    oneclick-register apply --transform T.h5 --reference FIXED INPUT -o OUTPUT
        [--inverse] [--kind auto|image|label] [--image-interpolation linear|bspline]
        [--label-interpolation nearest|gaussian]

Reads anything SimpleITK reads (NIfTI, NRRD, MHA, a DICOM folder), shows
progress on stderr, prints the modalities, preset, scores and times, and
writes the transform (ITK .h5/.tfm, fixed -> moving), the resampled moving
volume and a JSON report; with --also, more images in the moving image's space
(another scan of the session, a label map, a segmentation) carried onto the
fixed grid beside the registered volume (see applying.py); with --qc, the
quality report (index.html and PNG pictures, see quality_report.py).

`apply` (a first argument of that name) carries an image through a transform
written before: INPUT in the moving image's space onto the grid of the fixed
image given as --reference, or with --inverse, INPUT in the fixed image's space
onto the grid of the moving image given as --reference.

Exit status: 0 done; 2 bad input or output path (one line on stderr, before
any registration work for the output paths); 130 / 143 cancelled by SIGINT /
SIGTERM (one line, within 2 s, nothing of the run left on disk); 1 an
unexpected failure (a bug: a traceback).

Outputs are written to a private folder beside their final paths and renamed
into place together only when all are complete, so an interrupted or failed
run never leaves a partial file under a final name.  A signal that arrives
after that rename does not undo the run.

Interruption: SIGINT and SIGTERM set a flag that the progress callback turns
into RegistrationCancelled at the library's next progress message (several a
second in every stage); a watchdog thread, woken by the signal itself
(signal.set_wakeup_fd), ends the process after CANCEL_GRACE_S if the main
thread is still inside a long C call (reading, writing, a filter), after
removing the run's temporary files.  numpy, SimpleITK and the pipeline are
imported only once the handlers are in place.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional

from .errors import InvalidInputError, RegistrationCancelled

if TYPE_CHECKING:  # imageio imports numpy and SimpleITK, which wait until the signal handlers are in place
    from .imageio import LoadedImage

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
# A run ended by a signal exits with 128 + its number, as a shell reports it: 130 SIGINT, 143 SIGTERM.
EXIT_SIGNAL_BASE = 128
# After a signal, the main thread has this long to stop by itself (at its next progress message)
# before the watchdog removes the run's files and ends the process.
CANCEL_GRACE_S = 1.0
# What each output may be written as: formats whose writer makes one file, which can be renamed into place.
TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt")
REPORT_SUFFIXES = (".json",)
OUTPUT_OPTIONS = {"transform": "--output-transform", "volume": "--output-volume", "report": "--report",
                  "also": "--also", "output": "-o"}
# The private folder an output is written to before it is renamed into place.
PARTIAL_PREFIX = ".oneclick-register-"
PARTIAL_SUFFIX = ".partial"
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one-line InvalidInputErrors (exit status 2), like every bad input."""

    def error(self, message: str):
        raise InvalidInputError(f"{message}; see {self.prog} --help")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (imports the modality, pipeline and applying modules for the allowed values)."""
    from .applying import KINDS
    from .modality import MODALITIES
    from .pipeline import STAGE_NAMES

    parser = _OneLineParser(
        prog="oneclick-register",
        description="Align MOVING to FIXED (two head scans of one patient) with no settings to choose.",
        epilog="Later, to carry more images with a saved transform: oneclick-register apply --help",
    )
    parser.add_argument("fixed", help="fixed image: a file SimpleITK reads or a DICOM folder")
    parser.add_argument("moving", nargs="*", help="moving image (with --identify: more images)")
    parser.add_argument("--identify", action="store_true",
                        help="only recognise the modality of each image, one line per image")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("."),
                        help="folder for the default outputs (default: current folder); for two 2D images, a "
                             ".png, .tif or .tiff name is the registered image itself, the other outputs beside it")
    parser.add_argument("--output-transform", type=Path,
                        help="transform file, .h5 or .tfm (default: OUTDIR/<moving>_to_<fixed>.h5)")
    parser.add_argument("--output-volume", type=Path,
                        help="moving image resampled onto the fixed grid, .nii.gz, .nii, .nrrd or .mha, and for 2D "
                             "images .png, .tif or .tiff too (default: OUTDIR/<moving>_registered.nii.gz; for 2D "
                             "PNG, TIFF or JPEG inputs, .png or .tif as the fixed image)")
    parser.add_argument("--report", type=Path, help="JSON report (default: OUTDIR/<moving>_report.json)")
    parser.add_argument("--fixed-modality", choices=MODALITIES, type=str.upper, help="skip recognition of the fixed image")
    parser.add_argument("--moving-modality", choices=MODALITIES, type=str.upper, help="skip recognition of the moving image")
    parser.add_argument("--fixed-series", metavar="UID",
                        help="SeriesInstanceUID to read when FIXED is a DICOM folder (default: the most slices)")
    parser.add_argument("--moving-series", metavar="UID",
                        help="SeriesInstanceUID to read when MOVING is a DICOM folder (default: the most slices)")
    parser.add_argument("--stages", default=",".join(STAGE_NAMES),
                        help="comma-separated stages to run, in order (default: %(default)s)")
    parser.add_argument("--preset-table", type=Path, help="a preset table of your own (JSON, same schema as the bundled one)")
    subjects = parser.add_mutually_exclusive_group()
    subjects.add_argument("--inter-subject", dest="inter_subject", action="store_const", const=True, default=None,
                          help="the scans show two different people, or a patient and a template (e.g. MNI): keep "
                               "the affine and let the deformable stage reach far (default: detected from the "
                               "affine's scaling)")
    subjects.add_argument("--same-subject", dest="inter_subject", action="store_const", const=False,
                          help="the scans show one patient, however different their sizes look")
    parser.add_argument("--also", action="append", type=Path, default=[], metavar="PATH",
                        help="another image in the moving image's space (a scan of the same session, a label map, a "
                             "segmentation) to carry onto the fixed grid, written beside the registered volume as "
                             "<name>_registered; repeat for more")
    parser.add_argument("--also-kind", action="append", choices=KINDS, default=[],
                        help="how to carry the --also images: one for all, or one per --also in order (default: auto, "
                             "label maps by their values)")
    parser.add_argument("--qc", type=Path, metavar="DIR",
                        help="write the quality report (index.html and PNG pictures) into DIR; needs matplotlib")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return parser


def build_apply_parser() -> argparse.ArgumentParser:
    """The parser of `oneclick-register apply`."""
    from .applying import IMAGE_INTERPOLATIONS, KINDS, LABEL_INTERPOLATIONS

    parser = _OneLineParser(
        prog="oneclick-register apply",
        description="Carry an image through a transform written by oneclick-register: INPUT in the moving image's "
                    "space onto the fixed grid, or with --inverse, INPUT in the fixed image's space onto the moving "
                    "grid.",
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="the image to carry: a scan, a label map, a DICOM folder")
    parser.add_argument("--transform", type=Path, required=True,
                        help="the transform oneclick-register wrote (.h5, .tfm; fixed -> moving, ITK)")
    parser.add_argument("--reference", type=Path, required=True,
                        help="the image whose grid the output takes: the fixed image, or with --inverse the moving image")
    parser.add_argument("-o", "--output", type=Path, required=True, help="output volume, .nii.gz, .nii, .nrrd or .mha")
    parser.add_argument("--inverse", action="store_true",
                        help="INPUT lies in the fixed image's space: carry it with the inverse onto the moving grid")
    parser.add_argument("--kind", choices=KINDS, default="auto",
                        help="image (a scan), label (a label map) or auto (by its values; default)")
    parser.add_argument("--image-interpolation", choices=IMAGE_INTERPOLATIONS, default="linear",
                        help="for a scan (default: %(default)s)")
    parser.add_argument("--label-interpolation", choices=LABEL_INTERPOLATIONS, default="nearest",
                        help="for a label map (default: %(default)s)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; returns the exit status (see the module docstring)."""
    _ProgressLine.open_line = False
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:  # many cases on a Dask cluster, with signals and outputs of its own (batch_cli.py)
        from .batch_cli import main as batch_main

        return batch_main(argv[1:])
    with _Run() as run:
        try:
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
            if argv[:1] == ["apply"]:
                return run_apply(build_apply_parser().parse_args(argv[1:]), run)
            args = build_parser().parse_args(argv)
            if args.identify:
                return identify(args.fixed, args.moving, run)
            if len(args.moving) != 1:
                raise InvalidInputError("give exactly two images, FIXED and MOVING (or use --identify)")
            return run_registration(args, run)
        except InvalidInputError as error:
            run.discard()
            _say(f"error: {error}")
            return EXIT_BAD_INPUT
        except (RegistrationCancelled, KeyboardInterrupt):
            run.discard()
            _say(run.cancelled_message())
            return run.cancelled_status()
        except BaseException:
            run.discard()
            raise


def identify(first: str, others: List[str], run: Optional["_Run"] = None) -> int:
    """Print `path<TAB>modality<TAB>confidence<TAB>reason` for each image."""
    from . import imageio
    from .modality import identify_modality

    for path in [first, *others]:
        loaded = imageio.read_image(path)
        if run is not None:
            run.check()
        _say_series(loaded)
        image = imageio.as_planar_scalar(loaded.image, str(path))[0] if imageio.is_planar(loaded.image) \
            else loaded.image  # a colour photograph as its luminance, a single slice as 2D
        imageio.validate_image(image, str(path))
        guess = identify_modality(imageio.as_float32(image), loaded.hints)
        print(f"{path}\t{guess.modality}\t{guess.confidence:.2f}\t{guess.reason}")
    return 0


def run_registration(args, run: Optional["_Run"] = None) -> int:
    """Check the output paths, read, register, write the outputs atomically, print the summary."""
    result, written = register_and_write(args, run)
    print(summary(result, written))
    return 0


def register_and_write(args, run: Optional["_Run"] = None, report_extra: Optional[dict] = None):
    """One registration as the command line runs it, less the printed summary; (result, {name: path written}).

    Checks the output paths, reads, registers and writes the outputs atomically, the report with the
    entries of `report_extra` added.  `oneclick-register batch` runs each case through it (batch.py).
    """
    import SimpleITK as sitk

    from . import applying, imageio
    from .pipeline import register
    from .presets import load_preset_table

    run = run or _Run()
    inputs = [Path(args.fixed), Path(args.moving[0]), *args.also]
    for path in inputs:
        if not path.exists():
            raise InvalidInputError(f"{path}: no such file or folder; check the path")
    kinds = _carried_kinds(args)
    planar = imageio.planar_file(args.fixed) and imageio.planar_file(args.moving[0])  # two 2D images (planar.py)
    outputs = _output_paths(args, planar)
    checked_inputs = inputs + ([args.preset_table] if args.preset_table else [])
    check_output_paths(outputs, checked_inputs, planar=planar)
    carried_outputs = _carried_output_paths(args.also, outputs)
    check_output_paths({f"also:{source}": path for source, path in carried_outputs.items()}, checked_inputs,
                       planar=planar)
    if args.qc is not None:
        if planar:
            raise InvalidInputError("--qc draws three planes of a 3D volume and has no 2D version; leave out --qc "
                                    "for 2D images")
        _check_qc_folder(args.qc, checked_inputs)
    fixed = imageio.read_image(args.fixed, args.fixed_series)
    run.check()
    moving = imageio.read_image(args.moving[0], args.moving_series)
    run.check()
    for loaded in (fixed, moving):
        _say_series(loaded)
    carried = []
    for source, kind in zip(args.also, kinds):
        carried.append(_read_carried(source, kind, carried_outputs[source], moving.image))
        run.check()
    table = load_preset_table(args.preset_table) if args.preset_table else None
    line = None if args.quiet else _ProgressLine(sys.stderr)

    def progress(fraction: float, message: str) -> None:
        run.check()
        if line is not None:
            line(fraction, message)

    result = register(
        fixed.image, moving.image,
        fixed_modality=args.fixed_modality, moving_modality=args.moving_modality,
        stages=args.stages, preset_table=table, progress=progress,
        fixed_hints=fixed.hints, moving_hints=moving.hints, inter_subject=args.inter_subject,
    )
    written = dict(outputs)
    report = result.report()
    report.update({
        "fixed_path": str(fixed.path), "moving_path": str(moving.path),
        "output_transform": str(outputs["transform"]), "output_volume": str(outputs["volume"]),
        "output_volume_values": imageio.resampled_values_note(result.resampled_moving),
        "transform_convention": "ITK: maps fixed physical points (LPS, mm) to moving physical points",
    })
    for role, loaded in (("fixed_series", fixed), ("moving_series", moving)):
        if loaded.series is not None:
            report[role] = loaded.series.as_dict()
    progress(1.0, f"writing the transform {outputs['transform'].name}")
    run.stage(outputs["transform"], lambda path: sitk.WriteTransform(result.transform, str(path)))
    progress(1.0, f"writing the registered volume {outputs['volume'].name}")
    volume = _in_file_pixel_type(result.resampled_moving, outputs["volume"], result, report)
    if volume is not result.resampled_moving:
        report["output_volume_values"] = result.notes[-1]
    run.stage(outputs["volume"], lambda path: sitk.WriteImage(volume, str(path), True))
    if carried:
        report["also"] = []
    for item in carried:
        how = applying.describe_kind(item.kind)
        progress(1.0, f"carrying {item.loaded.path.name} ({how}) onto the fixed grid")
        moved = _in_file_pixel_type(result.apply(item.loaded.image, kind=item.kind), item.output, result, report)
        run.stage(item.output, lambda path: sitk.WriteImage(moved, str(path), True))
        report["also"].append({"input": str(item.loaded.path), "output": str(item.output), "kind": item.kind,
                               "carried_as": how})
        written[f"also {item.loaded.path.name} ({how})"] = item.output
    if args.qc is not None:
        progress(1.0, f"drawing the quality report in {args.qc}")
        _stage_quality_report(result, args.qc, f"{imageio.image_name(moving.path)} onto "
                                               f"{imageio.image_name(fixed.path)}", run)
        report["quality_report"] = str(args.qc / "index.html")
        written["quality report"] = args.qc / "index.html"
    report.update(report_extra or {})
    progress(1.0, f"writing the report {outputs['report'].name}")
    run.stage(outputs["report"], lambda path: path.write_text(json.dumps(report, indent=2), encoding="utf-8"))
    run.check()
    run.commit()
    if line is not None:
        line.finish()
    return result, written


def _in_file_pixel_type(image, path: Path, result, report: dict):
    """`image` as the format of `path` holds it (imageio.in_file_pixel_type: a 2D image written as PNG); a change
    of its values is a note of the result and of the report."""
    from . import imageio

    written, note = imageio.in_file_pixel_type(image, path, result.fixed_image)
    if note is not None:
        result.notes.append(note)
        report["notes"] = list(result.notes)
    return written


def run_apply(args, run: Optional["_Run"] = None) -> int:
    """`oneclick-register apply`: check the paths, read, carry INPUT through the transform, write it atomically."""
    import SimpleITK as sitk

    from . import applying, imageio

    run = run or _Run()
    for path, option in ((args.transform, "--transform"), (args.reference, "--reference"), (args.input, "INPUT")):
        if not path.exists():
            raise InvalidInputError(f"{option} {path}: no such file or folder; check the path")
    check_output_paths({"output": args.output}, [args.transform, args.reference, args.input])
    transform = _read_transform(args.transform)
    if args.inverse:
        transform = applying.inverse_of(transform)
    reference = imageio.read_image(args.reference).image
    run.check()
    loaded = imageio.read_image(args.input)
    run.check()
    applying.check_carried_image(loaded.image, f"INPUT {args.input}")
    kind = applying.image_kind(loaded.image, args.kind)
    moved = applying.apply_transform(transform, loaded.image, reference, kind,
                                     image_interpolation=args.image_interpolation,
                                     label_interpolation=args.label_interpolation)
    run.check()
    run.stage(args.output, lambda path: sitk.WriteImage(moved, str(path), True))
    run.check()
    run.commit()
    how = applying.describe_kind(kind, args.image_interpolation, args.label_interpolation)
    direction = "inverse of " if args.inverse else ""
    print(f"{args.input} ({how}) -> {args.output}, on the grid of {args.reference}, through the "
          f"{direction}{args.transform}")
    return 0


def summary(result, outputs: dict) -> str:
    """What a user reads after a run: modalities, preset, each stage's score and time, files."""
    lines = [
        f"fixed:  {result.fixed_modality}",
        f"moving: {result.moving_modality}",
        f"preset: {result.preset.name}",
        f"score:  {result.score_description}",
        f"  {'initial (header)':<12} score {result.initial_score:7.4f}",
    ]
    for stage in result.stages:
        kept = "kept" if stage.accepted else "dropped"
        lines.append(f"  {stage.name:<12} score {stage.score:7.4f}  {stage.seconds:6.1f} s  {kept}, "
                     f"{stage.verdict}"
                     + (f"  ({stage.message})" if stage.message else ""))
    lines.append(f"verdict: {result.verdict}")
    if not result.subjects.reason.startswith("assumed"):  # detected by the affine stage, or as asked
        lines.append(f"subjects: {result.subjects.case} ({result.subjects.reason})")
    lines += [f"note: {note}" for note in getattr(result, "notes", [])]  # 2D results: colour, slices, PNG values
    lines.append(f"total {result.seconds:.1f} s")
    lines += [f"{name}: {path}" for name, path in outputs.items()]
    return "\n".join(lines)


def _output_paths(args, planar: bool = False) -> Dict[str, Path]:
    """The three output paths: as given, else named after the inputs in OUTDIR.

    planar (two 2D images): `-o OUT.png` (or .tif, .tiff) names the registered
    image and puts the other outputs beside it; the default registered image
    of PNG, TIFF or JPEG inputs is a .png or .tif like the fixed image.
    """
    from .imageio import PLANAR_IMAGE_SUFFIXES, image_name

    stem = image_name(args.moving[0])
    folder, volume = args.output_dir, args.output_volume
    if planar and args.output_dir.name.lower().endswith(PLANAR_IMAGE_SUFFIXES) and not args.output_dir.is_dir():
        folder, volume = args.output_dir.parent, volume or args.output_dir
    return {
        "transform": args.output_transform or folder / f"{stem}_to_{image_name(args.fixed)}.h5",
        "volume": volume or folder / f"{stem}_registered{_planar_suffix(args.fixed) if planar else '.nii.gz'}",
        "report": args.report or folder / f"{stem}_report.json",
    }


def _planar_suffix(fixed) -> str:
    """The default format of a registered 2D image: the fixed image's PNG or TIFF (JPEG: PNG), else .nii.gz."""
    name = Path(fixed).name.lower()
    if name.endswith((".png", ".jpg", ".jpeg")):
        return ".png"
    return ".tif" if name.endswith((".tif", ".tiff")) else ".nii.gz"


@dataclass
class _Carried:
    """An --also image: as read, how it is carried ('image' or 'label') and where it is written."""

    loaded: "LoadedImage"
    kind: str
    output: Path


def _carried_kinds(args) -> List[str]:
    """One --also-kind per --also image: none given means auto for all, one given applies to all."""
    kinds, count = args.also_kind, len(args.also)
    if kinds and not count:
        raise InvalidInputError("--also-kind applies to --also images, and none was given; add --also PATH")
    if len(kinds) > 1 and len(kinds) != count:
        raise InvalidInputError(f"{len(kinds)} --also-kind for {count} --also images: give one for all of them "
                                "or one per --also image, in the same order")
    return kinds * count if len(kinds) == 1 else kinds or ["auto"] * count


def _carried_output_paths(sources: List[Path], outputs: Dict[str, Path]) -> Dict[Path, Path]:
    """Each --also image's output: <name>_registered, beside the registered volume and in its format."""
    from .imageio import PLANAR_IMAGE_SUFFIXES, VOLUME_SUFFIXES, image_name

    volume = outputs["volume"]
    suffix = next(end for end in VOLUME_SUFFIXES + PLANAR_IMAGE_SUFFIXES if volume.name.lower().endswith(end))
    taken = {path.resolve(): f"{OUTPUT_OPTIONS[role]} {path}" for role, path in outputs.items()}
    carried = {}
    for source in sources:
        output = volume.parent / f"{image_name(source)}_registered{suffix}"
        if output.resolve() in taken:
            raise InvalidInputError(f"--also {source} would be written as {output}, as is {taken[output.resolve()]}; "
                                    "give images with different names (the outputs are named after them)")
        taken[output.resolve()] = f"--also {source}"
        carried[source] = output
    return carried


def _read_carried(path: Path, kind: str, output: Path, moving) -> _Carried:
    """Read an --also image and refuse one that cannot be carried or lies outside the moving image's space."""
    from . import applying, imageio

    loaded = imageio.read_image(path)
    if not (imageio.is_planar(loaded.image) and imageio.is_planar(moving)):  # 2D images: planar.py carries them
        applying.check_carried_image(loaded.image, f"--also {path}")
    if imageio.physical_overlap_fraction(loaded.image, moving) == 0.0:
        raise InvalidInputError(f"--also {path} does not overlap the moving image in physical space; --also takes "
                                "images in the moving image's space (of the same session), or fix its origin")
    return _Carried(loaded, applying.image_kind(loaded.image, kind), output)


def _check_qc_folder(folder: Path, inputs: List[Path]) -> None:
    """The --qc folder can be made and written, is not inside an input DICOM folder, and matplotlib is there."""
    if importlib.util.find_spec("matplotlib") is None:
        raise InvalidInputError("--qc draws with matplotlib, which is not installed: "
                                "pip install \"oneclickregistration[qc]\" (or matplotlib), or leave out --qc")
    if folder.exists() and not folder.is_dir():
        raise InvalidInputError(f"--qc {folder} is a file; give a folder for the report")
    resolved = folder.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if source.is_dir() and (resolved == source or source in resolved.parents):
            raise InvalidInputError(f"--qc {folder} is inside the input DICOM folder {source}; "
                                    "write the report to another folder")
    _check_writable_folder(folder, "--qc")


def _stage_quality_report(result, folder: Path, title: str, run: "_Run") -> None:
    """Draw the quality report and stage its files (index.html, PNGs) in `folder` like every other output."""
    from .quality_report import quality_report_files

    for name, content in quality_report_files(result, title).items():
        run.stage(folder / name, lambda path: path.write_bytes(content))


def _read_transform(path: Path):
    """The transform in `path`, or a one-line error naming the file and the fix."""
    import SimpleITK as sitk

    if path.is_dir():
        raise InvalidInputError(f"--transform {path} is a folder; give the transform file oneclick-register wrote")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise InvalidInputError(f"--transform {path} cannot be read as an ITK transform ({_itk_reason(error)}); give "
                                "the .h5 or .tfm file oneclick-register wrote (--output-transform)") from None


def _itk_reason(error: RuntimeError) -> str:
    """The sentence of an ITK exception after 'ITK ERROR: Class(0x...):', without the source location and lists."""
    for line in str(error).splitlines():
        if "ITK ERROR:" in line:
            return line.split("ITK ERROR:", 1)[1].split("): ", 1)[-1].strip()
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


# --------------------------------------------------------------------------- output paths


def check_output_paths(outputs: Dict[str, Path], inputs: List[Path], planar: bool = False) -> None:
    """Refuse, before any work, an output path that cannot be written or would destroy an input.

    Each output needs a suffix its writer supports, a folder that exists or
    can be created and can be written (tried with a file created and removed
    at once), must not be a folder, must not be one of the inputs (the files
    read, a detached header's data file, a file inside an input DICOM folder:
    by resolved path and by file identity, so hard and symbolic links count).
    planar: the images are 2D, whose registered image may be a PNG or TIFF too.
    """
    from .imageio import PLANAR_IMAGE_SUFFIXES, VOLUME_SUFFIXES, input_files

    images = VOLUME_SUFFIXES + (PLANAR_IMAGE_SUFFIXES if planar else ())
    allowed = {"transform": TRANSFORM_SUFFIXES, "volume": images, "report": REPORT_SUFFIXES, "also": images,
               "output": VOLUME_SUFFIXES}
    sources = [(Path(source), file) for source in inputs if Path(source).exists()
               for file in [Path(source), *input_files(source)]]
    for name, path in outputs.items():  # each output's name differs (checked beforehand for --also images)
        role = name.split(":", 1)[0]  # "transform", "volume", "report", "output" (apply) or "also:<image>"
        option = OUTPUT_OPTIONS[role]
        resolved = path.resolve()
        for source, file in sources:
            if source.is_dir() and (resolved == source.resolve() or source.resolve() in resolved.parents):
                raise InvalidInputError(f"{option} {path} is inside the input DICOM folder {source}; "
                                        "write the outputs to another folder (-o)")
            if resolved == file.resolve() or _same_file(path, file):
                raise InvalidInputError(f"{option} {path} is the input {file}; writing it would overwrite the scan: "
                                        "choose another output path")
        if not path.name.lower().endswith(allowed[role]):
            written_as = _suffix(path) or "a file without suffix"
            noun = "volume" if role in ("also", "output") else role
            raise InvalidInputError(f"{option} {path}: a {noun} cannot be written as {written_as}; "
                                    f"end the name with {', '.join(allowed[role])}")
        if path.is_dir():
            raise InvalidInputError(f"{option} {path} is a folder; give a file name")
        _check_writable_folder(path.parent, option)


def _check_writable_folder(folder: Path, option: str) -> None:
    """The folder exists or can be created, and a file can be created in it (tried, then removed)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidInputError(f"{option}: cannot create the folder {folder}: {existing} is a file, not a folder; "
                                "choose another output folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=".probe", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        where = folder if existing == folder else f"{existing} (to create {folder})"
        raise InvalidInputError(f"{option}: cannot write in {where}: {error.strerror}; "
                                "choose a folder you can write to") from None


def _same_file(a: Path, b: Path) -> bool:
    """True when both paths exist and are the same file (a hard link too)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix


# --------------------------------------------------------------------------- one run: signals and outputs


class _SignalCancel(RegistrationCancelled):
    """Raised at a progress message once SIGINT or SIGTERM has arrived."""


class _Run:
    """One run of the command line: its signal handling and its outputs, written atomically.

    As a context manager it installs handlers for SIGINT and SIGTERM (in the
    main thread only; elsewhere signals are left alone) and a watchdog thread,
    and restores the previous handlers on exit.  `stage` writes an output to a
    private folder beside its final path; `commit` renames every staged output
    into place; `discard` removes what the run created.  One lock orders the
    main thread and the watchdog: once the watchdog has started to end the
    process nothing new is created, and once `commit` has started the
    watchdog leaves the run alone.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._state = "running"  # running -> committing -> committed, or -> aborted (watchdog) / discarded
        self.signum: Optional[int] = None
        self._staged: List[tuple] = []
        self._partial_folders: Dict[Path, Path] = {}
        self._created_folders: List[Path] = []
        self._finished = threading.Event()
        self._previous_handlers: dict = {}
        self._previous_wakeup = -1
        self._pipe: Optional[tuple] = None
        self._watchdog: Optional[threading.Thread] = None

    def __enter__(self) -> "_Run":
        if threading.current_thread() is not threading.main_thread():
            return self
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self._pipe = (read_end, write_end)
        for signum in HANDLED_SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        self._previous_wakeup = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self._watchdog = threading.Thread(target=self._watch, name="oneclick-register-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._finished.set()
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup)
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        os.close(self._pipe[1])  # the watchdog reads the end of the pipe and returns
        self._watchdog.join()
        os.close(self._pipe[0])

    # -- signals

    def _on_signal(self, signum, frame) -> None:
        """Python-level handler (main thread): only record the signal; `check` acts on it."""
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        """Raise _SignalCancel if a signal arrived and the outputs are not being committed."""
        if self.signum is not None and self._state == "running":
            raise _SignalCancel(f"cancelled by {signal.Signals(self.signum).name}")

    def _watch(self) -> None:
        """Watchdog thread: on a signal, give the main thread CANCEL_GRACE_S, then end the process itself."""
        while True:
            try:
                data = os.read(self._pipe[0], 64)
            except OSError:
                return
            if not data:
                return  # the run is over: __exit__ closed the pipe
            handled = [number for number in data if number in {int(s) for s in HANDLED_SIGNALS}]
            if not handled:
                continue
            if self.signum is None:
                self.signum = handled[0]
            if self._finished.wait(CANCEL_GRACE_S):
                return
            with self._lock:
                if self._state != "running":
                    continue  # committing or committed: the run completes; discarded: the main thread is ending
                self._state = "aborted"
                self._remove_created()
            logger.debug("main thread did not stop within %.1f s; ending the process", CANCEL_GRACE_S)
            _write_stderr(self.cancelled_message())
            os._exit(self.cancelled_status())

    def cancelled_message(self) -> str:
        """The one line printed when the run is cancelled."""
        name = signal.Signals(self.signum).name if self.signum else "an interrupt"
        return f"cancelled by {name}; no output written"

    def cancelled_status(self) -> int:
        """128 + the signal number (130 for SIGINT, also for a KeyboardInterrupt without a handler)."""
        return EXIT_SIGNAL_BASE + (self.signum or int(signal.SIGINT))

    # -- outputs

    def stage(self, final: Path, write: Callable[[Path], None]) -> None:
        """Write one output with `write(temporary path)` in a private folder beside `final`, flushed to disk."""
        folder = final.parent
        with self._lock:
            if self._state != "running":
                raise _SignalCancel("cancelled")
            if folder not in self._partial_folders:
                self._create_folders(folder)
                self._partial_folders[folder] = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, suffix=PARTIAL_SUFFIX,
                                                                      dir=folder))
            temporary = self._partial_folders[folder] / final.name
            self._staged.append((temporary, final))
        try:
            write(temporary)
            with open(temporary, "rb") as written:
                os.fsync(written.fileno())
        except (OSError, RuntimeError) as error:  # RuntimeError: SimpleITK's writers
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise InvalidInputError(f"cannot write {final} ({reason}); check the free space and the folder") from None

    def commit(self) -> None:
        """Rename every staged output into place, then remove the private folders; signals no longer cancel."""
        with self._lock:
            if self._state != "running":
                raise _SignalCancel("cancelled")
            self._state = "committing"
            for temporary, final in self._staged:
                try:
                    os.replace(temporary, final)
                except OSError as error:  # checked beforehand; the folder changed during the run
                    raise InvalidInputError(f"cannot move the finished {final.name} into place at {final} "
                                            f"({error.strerror}); the outputs before it are in place") from None
            for partial in self._partial_folders.values():
                shutil.rmtree(partial, ignore_errors=True)
            self._state = "committed"

    def discard(self) -> None:
        """Remove every file and folder this run created (after a failure or a cancel)."""
        with self._lock:
            if self._state in ("running", "committing"):
                self._state = "discarded"
                self._remove_created()

    def _create_folders(self, folder: Path) -> None:
        """mkdir -p, remembering each folder created so that `discard` can remove it."""
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self._created_folders.append(path)

    def _remove_created(self) -> None:
        """The private folders and their files, then the folders created, deepest first (called under the lock)."""
        for partial in self._partial_folders.values():
            for _ in range(3):  # a writer still running in C may create its file while the folder goes
                shutil.rmtree(partial, ignore_errors=True)
                if not partial.exists():
                    break
        for folder in reversed(self._created_folders):
            try:
                folder.rmdir()
            except OSError:
                pass
        self._partial_folders.clear()
        self._created_folders.clear()


def _say(message: str) -> None:
    """One line on stderr, prefixed with the program name, on a line of its own (after a progress line)."""
    print(f"{_line_break()}oneclick-register: {message}", file=sys.stderr, flush=True)


def _write_stderr(message: str) -> None:
    """The same line written to file descriptor 2 directly: the watchdog's, while the main thread may be mid-print."""
    try:
        os.write(2, f"{_line_break()}oneclick-register: {message}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _line_break() -> str:
    """A newline that ends a terminal's progress line, when one is open."""
    return "\n" if _ProgressLine.open_line else ""


def _say_series(loaded) -> None:
    """Which DICOM series a folder with several was read from, and the others."""
    if loaded.series is not None and loaded.series.others:
        _say(loaded.series.message(loaded.path))


class _ProgressLine:
    """A one-line progress display on a terminal (plain lines when not a terminal)."""

    # True while a terminal's progress line waits for its newline (messages then start a new line).
    open_line = False

    def __init__(self, stream):
        self.stream = stream
        self.interactive = stream.isatty()
        self.last_message = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.interactive:
            self.stream.write(f"\r[{fraction:4.0%}] {message[:70]:<70}")
            self.stream.flush()
            _ProgressLine.open_line = True
        elif message != self.last_message:
            self.stream.write(f"[{fraction:4.0%}] {message}\n")
            self.stream.flush()
        self.last_message = message

    def finish(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            _ProgressLine.open_line = False


if __name__ == "__main__":
    sys.exit(main())
