"""The quality-control report of a registration: an index.html with PNG pictures, to check and to file.

    write_quality_report(result, "qc")     # or result.quality_report("qc"), or oneclick-register ... --qc qc

Every picture shows the same three orthogonal planes through the centre of the
head in the fixed image (pictures.display_frame), in Slicer's radiological
convention (the patient's right on the left of the screen):

    before.png        the moving image's edges (red) over the fixed image, where its header puts it;
    after.png         the same after registration (the edges of pictures.comparison_panels);
    checkerboard.png  squares of the fixed image and the registered moving image, side by side;
    deformation.png   (deformable result) a 10 mm grid bent by the deformable stage, over the size of its
                      displacement;
    jacobian.png      (deformable result) the Jacobian determinant of that deformation: above 1 the
                      moving image is stretched there, below 1 compressed, at or below 0 folded.

index.html holds the verdict, the recognised modalities, the preset, the table of
stages (score, kept or not, verdict, time, note) and the pictures, embedded, so
the page alone can be mailed or filed; the PNG files are written beside it too.

It is cheap: everything is drawn from 2D planes (the deformation is evaluated
at the planes' pixels, never on a 3D grid).  matplotlib, an optional
dependency (pip install "oneclickregistration[qc]"), is imported here only,
when a report is drawn, through its object-oriented API and Agg canvas: no
pyplot, no global state, no window.  The Slicer module imports this module only when a report is saved (after asking for matplotlib).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from . import pictures, score
from .errors import InvalidInputError

logger = logging.getLogger(__name__)

INDEX = "index.html"
# The head's position and the display windows are found on a copy with voxels about this far apart.
OVERVIEW_SPACING_MM = 2.0
# Pixels per plane panel, and the layout of a picture around its three panels.
PANEL = 256
GAP = 8
CAPTION_ROW = 44
COLOUR_BAR = 70
DPI = 100
CHECKER_SQUARES = 8
# The bent grid: a line every this many millimetres of the fixed image.
GRID_LINE_MM = 10.0
# The head, in a panel of the fixed image normalised to its display window (0: background, 1: bright tissue).
HEAD_LEVEL = 0.05
# Colour scale of the Jacobian determinant (1: no change of volume), and the smallest displacement scale.
JACOBIAN_RANGE = (0.5, 1.5)
MIN_DISPLACEMENT_SCALE_MM = 1.0
ORIENTATION_LETTERS = {"axial": "R", "coronal": "R", "sagittal": "A"}  # the side at the left of each panel


def write_quality_report(result, directory, title: Optional[str] = None) -> Path:
    """Write the report of `result` (a RegistrationResult from register()) into `directory`; returns index.html.

    title: what was registered, e.g. "T2 onto T1" (default: the recognised modalities).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in quality_report_files(result, title).items():
        (directory / name).write_bytes(content)
    return directory / INDEX


def quality_report_files(result, title: Optional[str] = None) -> Dict[str, bytes]:
    """{file name: content} of the report: the PNG pictures and index.html (for writers that stage each file)."""
    fixed, moving = result.fixed_image, result.moving_image
    if fixed is None or moving is None:
        raise InvalidInputError("the quality report needs the result's fixed and moving images; "
                                "make the result with register()")
    start = time.perf_counter()
    figure_class = _figure_class()
    fixed_overview, moving_overview = _overview(fixed), _overview(moving)
    frame = pictures.display_frame(fixed_overview)
    windows = (pictures.display_window(fixed_overview), pictures.display_window(moving_overview))
    panels = pictures.comparison_panels(fixed, moving, result.transform, PANEL, frame, windows)
    pngs = {
        "before.png": _edges_picture(figure_class, panels, "before",
                                     "BEFORE: the moving image's edges (red) where its header puts it"),
        "after.png": _edges_picture(figure_class, panels, "after",
                                    "AFTER: the moving image's edges (red) after registration"),
        "checkerboard.png": _checkerboard_picture(figure_class, panels),
    }
    deformation = _deformation_part(result.transform)
    if deformation is not None:
        planes = _deformation_on_planes(deformation, frame)
        pngs["deformation.png"] = _deformation_picture(figure_class, planes)
        pngs["jacobian.png"] = _jacobian_picture(figure_class, panels, planes)
    pngs[INDEX] = _index_html(result, title, pngs).encode("utf-8")
    logger.info("quality report: %d pictures and the page in %.2f s", len(pngs) - 1, time.perf_counter() - start)
    return pngs


def _overview(image: sitk.Image) -> sitk.Image:
    """Every n-th voxel along each axis, about OVERVIEW_SPACING_MM apart: where the head is and its intensity
    range are found on this (a 1 mm head has 8 times fewer voxels); the panels sample the full image."""
    steps = [max(1, int(round(OVERVIEW_SPACING_MM / spacing))) for spacing in image.GetSpacing()]
    return image[::steps[0], ::steps[1], ::steps[2]]


def _figure_class():
    """matplotlib's Figure (Agg canvas, no pyplot), or an ImportError saying how to install it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("the quality report needs matplotlib: pip install \"oneclickregistration[qc]\" "
                          f"(or matplotlib>=3.5) ({error})") from None
    return Figure


# ---------------------------------------------------------------------------------------------- pictures


def _three_planes(figure_class, caption: str, colour_bar: bool = False):
    """A figure of three square panels (axial, coronal, sagittal) under a caption; (figure, axes per plane)."""
    width = len(pictures.PLANES) * PANEL + (len(pictures.PLANES) + 1) * GAP + (COLOUR_BAR if colour_bar else 0)
    height = PANEL + CAPTION_ROW + GAP
    figure = figure_class(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="black")
    figure.text(GAP / width, 1 - 6 / height, caption, color="white", fontsize=10, va="top")
    axes = {}
    for column, plane in enumerate(pictures.PLANES):
        left = GAP + column * (PANEL + GAP)
        ax = figure.add_axes([left / width, GAP / height, PANEL / width, PANEL / height])
        ax.set_axis_off()
        ax.text(0.5, 1.01, plane, color="white", fontsize=9, ha="center", va="bottom", transform=ax.transAxes)
        ax.text(0.02, 0.5, ORIENTATION_LETTERS[plane], color="#aaaaaa", fontsize=9, va="center",
                transform=ax.transAxes)
        axes[plane] = ax
    return figure, axes


def _colour_bar(figure, image, label: str) -> None:
    """A vertical colour bar for `image` at the right of a three-plane figure."""
    width, height = figure.get_size_inches() * DPI
    bar = figure.add_axes([(width - COLOUR_BAR + 8) / width, GAP / height, 12 / width, PANEL / height])
    colour_bar = figure.colorbar(image, cax=bar)
    colour_bar.set_label(label, color="white", fontsize=8)
    colour_bar.ax.tick_params(colors="white", labelsize=7)


def _png(figure) -> bytes:
    """The figure as PNG bytes; light zlib compression (a third of the time of the default, files a fifth larger)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor=figure.get_facecolor(), pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def _edges_picture(figure_class, panels, moment: str, caption: str) -> bytes:
    """The fixed image in grey with the moving image's edges in red, 'before' or 'after' registration."""
    figure, axes = _three_planes(figure_class, caption)
    for plane, ax in axes.items():
        ax.imshow(pictures.panel_rgb(panels[plane]["fixed"], panels[plane][f"{moment}_edges"]), interpolation="nearest")
    return _png(figure)


def _checkerboard_picture(figure_class, panels) -> bytes:
    """Squares of the fixed image and of the registered moving image: edges continue across a good alignment."""
    figure, axes = _three_planes(figure_class, f"CHECKERBOARD: fixed and registered moving image in alternating "
                                               f"squares ({CHECKER_SQUARES} per side)")
    for plane, ax in axes.items():
        fixed, moving = panels[plane]["fixed"], panels[plane]["after"]
        rows, columns = np.indices(fixed.shape) * CHECKER_SQUARES // np.asarray(fixed.shape)[:, None, None]
        ax.imshow(np.where((rows + columns) % 2 == 0, fixed, moving), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
    return _png(figure)


def _deformation_picture(figure_class, planes) -> bytes:
    """The deformable stage's displacement size (colour) under a grid of lines it bends."""
    scale = max(MIN_DISPLACEMENT_SCALE_MM, max(float(plane["size_mm"].max()) for plane in planes.values()))
    figure, axes = _three_planes(figure_class, f"DEFORMATION: a {GRID_LINE_MM:g} mm grid bent by the deformable "
                                               "stage, over the size of its displacement", colour_bar=True)
    for plane, ax in axes.items():
        shown = ax.imshow(planes[plane]["size_mm"], cmap="magma", vmin=0, vmax=scale, interpolation="bilinear")
        for coordinate in planes[plane]["bent_mm"]:
            levels = np.arange(np.floor(coordinate.min() / GRID_LINE_MM), np.ceil(coordinate.max() / GRID_LINE_MM)
                               + 1) * GRID_LINE_MM
            ax.contour(coordinate, levels=levels, colors="white", linewidths=0.6)
    _colour_bar(figure, shown, "displacement (mm)")
    return _png(figure)


def _jacobian_picture(figure_class, panels, planes) -> bytes:
    """The Jacobian determinant of the deformation over the fixed image's head; folding (<= 0) in black."""
    low, high = JACOBIAN_RANGE
    figure, axes = _three_planes(figure_class, "JACOBIAN DETERMINANT of the deformation in the head: red "
                                               "stretched, blue compressed, black folded", colour_bar=True)
    for plane, ax in axes.items():
        fixed, determinant = panels[plane]["fixed"], planes[plane]["jacobian"]
        outside = fixed < HEAD_LEVEL
        ax.imshow(fixed, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        shown = ax.imshow(np.ma.masked_where(outside, determinant), cmap="RdBu_r", vmin=low, vmax=high,
                          alpha=0.8, interpolation="nearest")
        folded = np.ma.masked_where(outside | (determinant > 0), np.zeros_like(determinant))
        ax.imshow(folded, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    _colour_bar(figure, shown, "Jacobian determinant")
    return _png(figure)


# ---------------------------------------------------------------------------------------------- the deformation


def _deformation_part(transform: sitk.Transform) -> Optional[sitk.Transform]:
    """The displacement-field part of a result's transform (x -> x + u(x) in fixed space), None for a linear one."""
    parts = _flattened(transform)
    fields = [part for part in parts if isinstance(part, sitk.DisplacementFieldTransform)]
    if not fields:
        return None
    return fields[0] if len(fields) == 1 else sitk.CompositeTransform(fields)


def _flattened(transform: sitk.Transform) -> List[sitk.Transform]:
    transform = transform.Downcast() if type(transform) is sitk.Transform else transform
    if not isinstance(transform, sitk.CompositeTransform):
        return [transform]
    return [leaf for index in range(transform.GetNumberOfTransforms())
            for leaf in _flattened(transform.GetNthTransform(index))]


def _deformation_on_planes(deformation: sitk.Transform, frame) -> Dict[str, dict]:
    """Per plane, at its pixels: 'size_mm' of the displacement, 'bent_mm' (the two in-plane coordinates of
    the displaced points, in mm, screen order) and 'jacobian' (its determinant, by central differences
    across one field voxel along each of the three display axes)."""
    step = _derivative_step_mm(deformation)
    planes = {}
    for plane in pictures.PLANES:
        grid = pictures.plane_grid(frame, plane, PANEL)
        here = _displacement(deformation, grid, plane, frame, np.zeros(3))
        in_plane = [axis for axis, size in enumerate(grid.GetSize()) if size > 1]
        position = pictures.to_screen(np.moveaxis(np.indices(grid.GetSize()[::-1])[::-1], 0, -1), plane)
        jacobian = np.broadcast_to(np.eye(3), here.shape + (3,)).copy()
        for axis in range(3):
            offset = frame.axes[:, axis] * step
            ahead = _displacement(deformation, grid, plane, frame, offset)
            behind = _displacement(deformation, grid, plane, frame, -offset)
            jacobian[..., :, axis] += (ahead - behind) / (2 * step)
        planes[plane] = {
            "size_mm": np.linalg.norm(here, axis=-1),
            "bent_mm": [position[..., axis] * grid.GetSpacing()[0] + here[..., axis] for axis in in_plane],
            "jacobian": np.linalg.det(jacobian),
        }
    return planes


def _displacement(deformation: sitk.Transform, grid: sitk.Image, plane: str, frame, offset: np.ndarray) -> np.ndarray:
    """u(p + offset) at the pixels p of a plane grid, along the display axes (mm), as a (rows, columns, 3) array."""
    field = sitk.TransformToDisplacementField(deformation, sitk.sitkVectorFloat64, grid.GetSize(),
                                              (np.asarray(grid.GetOrigin()) + offset).tolist(), grid.GetSpacing(),
                                              grid.GetDirection())
    return pictures.to_screen(sitk.GetArrayFromImage(field), plane) @ frame.axes


def _derivative_step_mm(deformation: sitk.Transform) -> float:
    """One voxel of the displacement field (the scale on which the deformation can change), from the fixed
    parameters (size, origin, spacing, direction) rather than a copy of the field."""
    return float(min(min(part.GetFixedParameters()[6:9]) for part in _flattened(deformation)
                     if isinstance(part, sitk.DisplacementFieldTransform)))


# ---------------------------------------------------------------------------------------------- the page


def _index_html(result, title: Optional[str], pngs: Dict[str, bytes]) -> str:
    """The report page: verdict, inputs, stages and the pictures, with nothing outside the page."""
    heading = title or f"{result.moving_modality.modality} onto {result.fixed_modality.modality}"
    figures = "\n".join(_figure_html(name, content) for name, content in pngs.items())
    written = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return _PAGE.format(
        title=html.escape(heading),
        verdict=html.escape(result.verdict),
        verdict_class=result.verdict.replace(" ", "-"),
        summary=_summary_rows(result),
        stages=_stage_rows(result),
        figures=figures,
        written=html.escape(written),
    )


def _summary_rows(result) -> str:
    rows = [
        ("Fixed image", _modality_text(result.fixed_modality)),
        ("Moving image", _modality_text(result.moving_modality)),
        ("Preset", result.preset.name),
        ("Score", f"{result.initial_score:.4f} (headers) \u2192 {result.score:.4f}: {result.score_description}"),
        ("Time", f"{result.seconds:.1f} s"),
    ]
    return "\n".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(text)}</td></tr>" for name, text in rows)


def _modality_text(guess) -> str:
    return f"{guess.modality} ({guess.confidence:.0%}, from {guess.source}: {guess.reason})"


def _stage_rows(result) -> str:
    rows = [("headers (start)", result.initial_score, "", score.verdict(result.initial_score), "", "")]
    rows += [(stage.name, stage.score, "kept" if stage.accepted else "dropped", stage.verdict,
              f"{stage.seconds:.1f}", stage.message) for stage in result.stages]
    return "\n".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.4f}</td><td>{kept}</td>"
        f"<td class=\"{verdict.replace(' ', '-')}\">{html.escape(verdict)}</td><td>{seconds}</td>"
        f"<td>{html.escape(message)}</td></tr>"
        for name, value, kept, verdict, seconds, message in rows)


def _figure_html(name: str, content: bytes) -> str:
    encoded = base64.b64encode(content).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{encoded}\" alt=\"{html.escape(name)}\">"
            f"<figcaption>{html.escape(name)}</figcaption></figure>")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Registration quality report: {title}</title>
<style>
body {{ font-family: sans-serif; background: #16161a; color: #e8e8e8; margin: 24px; }}
table {{ border-collapse: collapse; margin: 12px 0 24px; }}
th, td {{ border: 1px solid #444; padding: 4px 10px; text-align: left; vertical-align: top; }}
th {{ background: #26262c; }}
.good {{ color: #5fd35f; }} .check-visually {{ color: #f0c040; }} .failed {{ color: #ff5050; }}
figure {{ margin: 0 0 24px; }} figcaption {{ color: #aaa; font-size: small; }}
</style>
</head>
<body>
<h1>Registration quality report: {title}</h1>
<p>Verdict: <strong class="{verdict_class}">{verdict}</strong></p>
<table>
{summary}
</table>
<h2>Stages</h2>
<table>
<tr><th>Stage</th><th>Score</th><th>Result</th><th>Verdict</th><th>Time (s)</th><th>Note</th></tr>
{stages}
</table>
<h2>Pictures</h2>
<p>Three planes through the centre of the head in the fixed image; the patient's right is on the left.</p>
{figures}
<p><small>Written {written} by OneClickRegistration.</small></p>
</body>
</html>
"""
