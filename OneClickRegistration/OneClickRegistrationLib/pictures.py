"""Pictures of a registration: the moving image's edges over the fixed image, before and after.

    write_comparison_png(fixed, moving, result_or_transform, "check.png")

draws three orthogonal planes (axial, coronal, sagittal) through the centre of
the head in the fixed image, twice: with the moving image where its header puts
it ("before") and resampled through the registration ("after").  Each panel is
the fixed image in grey with the moving image's edges in red, the way FSL's
slicesdir shows a registration: edges compare across modalities (T1 against T2
or CT) where colours would not.  Planes follow the fixed image's own axes,
snapped to the nearest anatomical axis, in Slicer's radiological convention
(the patient's right on the left of the screen, anterior at the top of an axial
panel and on the left of a sagittal one).

Only numpy and SimpleITK are imported here (no numba, scipy or matplotlib): the
PNG is written by SimpleITK, and labels use a small built-in bitmap font.

    python -m OneClickRegistrationLib.pictures --screenshot Resources/Screenshots/OneClickRegistration.png

(`make screenshot`) registers the bundled sample T2, moved by the known rigid
motion of `make demo`, back to the bundled T1 and draws the Extensions Index
screenshot.  Only that command imports the registration itself.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

PLANES = ("axial", "coronal", "sagittal")

# Layout of the picture, in pixels: a label column on the left, three square
# panels per row, a title bar and a row of plane names at the top.
PANEL = 280
GAP = 10
LABEL_COLUMN = 124
TITLE_BAR = 64
PLANE_ROW = 24
# Field of view: the head's extent (robust, see _display_frame) plus this margin.
FIELD_MARGIN = 1.12

BACKGROUND = (22, 22, 26)
TEXT = (235, 235, 235)
DIM_TEXT = (170, 170, 170)
EDGE_COLOUR = (255, 48, 48)

# Canny on the moving panel normalised to 0..1 (robust range): Gaussian variance in
# panel pixels and the hysteresis thresholds on the gradient magnitude.
EDGE_VARIANCE = 2.0
EDGE_LOWER = 0.04
EDGE_UPPER = 0.10


# ---------------------------------------------------------------------------------------------
# Geometry and panels


@dataclass(frozen=True)
class DisplayFrame:
    """Where the panels look: axes (columns: left, posterior, superior, LPS), a centre and a field of view."""

    axes: np.ndarray
    center: np.ndarray
    slice_center: np.ndarray
    field_mm: float


def _as_transform(transform) -> sitk.Transform:
    """A SimpleITK transform from a transform, a RegistrationResult-like object (`.transform`) or None."""
    if transform is None:
        return sitk.Transform(3, sitk.sitkIdentity)
    if isinstance(transform, sitk.Transform):
        return transform
    inner = getattr(transform, "transform", None)
    if isinstance(inner, sitk.Transform):
        return inner
    raise TypeError(f"expected a SimpleITK transform or an object with a .transform, got {type(transform).__name__}")


def _anatomical_axes(image: sitk.Image) -> np.ndarray:
    """The image's direction columns, permuted and signed to be nearest to L, P, S (a proper rotation)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    axes = np.zeros((3, 3))
    used = set()
    # Assign the most clear-cut axes first so that an oblique image cannot give one column twice.
    order = np.argsort(-np.abs(direction).max(axis=1))
    for world in order:
        candidates = [c for c in np.argsort(-np.abs(direction[world])) if c not in used]
        column = candidates[0]
        used.add(column)
        axes[:, world] = direction[:, column] * np.sign(direction[world, column] or 1.0)
    # Orthonormalise (a header's direction is orthonormal only to float precision).
    u, _, vt = np.linalg.svd(axes)
    axes = u @ vt
    if np.linalg.det(axes) < 0:
        axes[:, 2] = -axes[:, 2]
    return axes


def _foreground_points(image: sitk.Image, max_points: int = 200_000) -> np.ndarray:
    """Physical points (N, 3) of the Otsu foreground of `image` (the head), thinned to at most max_points."""
    values = sitk.Cast(image, sitk.sitkFloat32)
    foreground = sitk.GetArrayFromImage(sitk.OtsuThreshold(values, 0, 1, 128)) > 0
    indices = np.argwhere(foreground)[:, ::-1]  # (x, y, z) indices
    if len(indices) == 0:
        indices = np.argwhere(np.ones(foreground.shape, bool))[:, ::-1]
    if len(indices) > max_points:
        indices = indices[:: int(np.ceil(len(indices) / max_points))]
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    return np.asarray(image.GetOrigin()) + (indices * spacing) @ direction.T


def display_frame(fixed: sitk.Image) -> DisplayFrame:
    """Planes through the head centre of `fixed` (centre of mass of its foreground), framing the whole head."""
    axes = _anatomical_axes(fixed)
    points = _foreground_points(fixed)
    local = points @ axes  # coordinates along the display axes
    low, high = np.percentile(local, [0.2, 99.8], axis=0)
    field = float(np.max(high - low)) * FIELD_MARGIN
    return DisplayFrame(axes=axes, center=axes @ ((low + high) / 2.0),
                        slice_center=points.mean(axis=0), field_mm=max(field, 1e-3))


def plane_grid(frame: DisplayFrame, plane: str, pixels: int) -> sitk.Image:
    """An empty image that is one plane of `frame`: (pixels x pixels x 1) in the plane's two axes."""
    # In-plane centre: the frame's centre; along the normal: through the head's centre of mass.
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    in_plane = [a for a in range(3) if a != normal]
    center = frame.center + frame.axes[:, normal] * float(frame.axes[:, normal] @ (frame.slice_center - frame.center))
    spacing = frame.field_mm / pixels
    size = [pixels, pixels, pixels]
    size[normal] = 1
    origin = center.copy()
    for axis in in_plane:
        origin -= frame.axes[:, axis] * spacing * (pixels - 1) / 2.0
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing([spacing] * 3)
    grid.SetDirection(frame.axes.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def to_screen(volume: np.ndarray, plane: str) -> np.ndarray:
    """The 2D screen array of a resampled plane (array order z, y, x), radiological convention."""
    if plane == "axial":
        return volume[0]  # rows: anterior -> posterior, columns: patient right -> left
    if plane == "coronal":
        return volume[::-1, 0, :]  # rows: superior -> inferior
    return volume[::-1, :, 0]  # sagittal; columns: anterior -> posterior


def sample_plane(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform, plane: str,
                 interpolator=sitk.sitkLinear) -> np.ndarray:
    """`image` through `transform` on the plane `grid` (see plane_grid), as a float32 screen array (0 outside)."""
    resampled = sitk.Resample(image, grid, transform, interpolator, 0.0, sitk.sitkFloat32)
    return to_screen(sitk.GetArrayFromImage(resampled), plane)


def display_window(image: sitk.Image) -> Tuple[float, float]:
    """Display window: the 0.5th percentile of all voxels (the background, black) to the 99.5th percentile of
    the voxels above the minimum (so that a large empty background does not make the head white)."""
    values = sitk.GetArrayViewFromImage(image).astype(np.float64, copy=False).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    inside = values[values > values.min()]
    low = float(np.percentile(values, 0.5))
    high = float(np.percentile(inside, 99.5)) if inside.size else float(values.max())
    return low, max(high, low + 1e-6)


def _normalise(values: np.ndarray, window: Tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _edges(panel: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Canny edges of a normalised panel, away from the border of the moving image's domain."""
    image = sitk.GetImageFromArray(panel.astype(np.float32))
    edges = sitk.GetArrayFromImage(sitk.CannyEdgeDetection(image, EDGE_LOWER, EDGE_UPPER, [EDGE_VARIANCE] * 2)) > 0
    domain = sitk.GetImageFromArray(inside.astype(np.uint8))
    interior = sitk.GetArrayFromImage(sitk.BinaryErode(domain, [3, 3])) > 0
    return edges & interior


def comparison_panels(fixed: sitk.Image, moving: sitk.Image, transform=None, panel_pixels: int = PANEL,
                      frame: Optional[DisplayFrame] = None,
                      windows: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None
                      ) -> Dict[str, Dict[str, np.ndarray]]:
    """For each plane: 'fixed', 'before' and 'after' (moving) as 0..1 arrays, and their edge masks.

    `transform` maps fixed physical points to moving ones (ITK convention, as
    `register()` returns it); it may be a RegistrationResult (its `.transform`).
    'before' shows the moving image where its header puts it (identity).
    `frame`: the planes to show (default: display_frame(fixed)) and `windows`:
    the fixed and moving display windows (default: display_window of each),
    for a caller that draws more pictures of the same planes or finds them on
    a smaller copy of the images.
    """
    after_transform = _as_transform(transform)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    frame = frame or display_frame(fixed)
    fixed_window, moving_window = windows or (display_window(fixed), display_window(moving))
    domain = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    domain.CopyInformation(moving)
    panels = {}
    for plane in PLANES:
        grid = plane_grid(frame, plane, panel_pixels)
        entry = {"fixed": _normalise(sample_plane(fixed, grid, identity, plane), fixed_window)}
        for name, mapping in (("before", identity), ("after", after_transform)):
            values = _normalise(sample_plane(moving, grid, mapping, plane), moving_window)
            inside = sample_plane(domain, grid, mapping, plane, sitk.sitkNearestNeighbor) > 0
            entry[name] = values
            entry[name + "_edges"] = _edges(values, inside)
        panels[plane] = entry
    return panels


# ---------------------------------------------------------------------------------------------
# Drawing: a 5x7 bitmap font and the layout

_GLYPHS = {
    "A": ".###.|#...#|#...#|#####|#...#|#...#|#...#", "B": "####.|#...#|#...#|####.|#...#|#...#|####.",
    "C": ".###.|#...#|#....|#....|#....|#...#|.###.", "D": "####.|#...#|#...#|#...#|#...#|#...#|####.",
    "E": "#####|#....|#....|####.|#....|#....|#####", "F": "#####|#....|#....|####.|#....|#....|#....",
    "G": ".###.|#...#|#....|#.###|#...#|#...#|.####", "H": "#...#|#...#|#...#|#####|#...#|#...#|#...#",
    "I": ".###.|..#..|..#..|..#..|..#..|..#..|.###.", "J": "..###|...#.|...#.|...#.|...#.|#..#.|.##..",
    "K": "#...#|#..#.|#.#..|##...|#.#..|#..#.|#...#", "L": "#....|#....|#....|#....|#....|#....|#####",
    "M": "#...#|##.##|#.#.#|#.#.#|#...#|#...#|#...#", "N": "#...#|#...#|##..#|#.#.#|#..##|#...#|#...#",
    "O": ".###.|#...#|#...#|#...#|#...#|#...#|.###.", "P": "####.|#...#|#...#|####.|#....|#....|#....",
    "Q": ".###.|#...#|#...#|#...#|#.#.#|#..#.|.##.#", "R": "####.|#...#|#...#|####.|#.#..|#..#.|#...#",
    "S": ".####|#....|#....|.###.|....#|....#|####.", "T": "#####|..#..|..#..|..#..|..#..|..#..|..#..",
    "U": "#...#|#...#|#...#|#...#|#...#|#...#|.###.", "V": "#...#|#...#|#...#|#...#|#...#|.#.#.|..#..",
    "W": "#...#|#...#|#...#|#.#.#|#.#.#|#.#.#|.#.#.", "X": "#...#|#...#|.#.#.|..#..|.#.#.|#...#|#...#",
    "Y": "#...#|#...#|.#.#.|..#..|..#..|..#..|..#..", "Z": "#####|....#|...#.|..#..|.#...|#....|#####",
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.", "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####", "3": "#####|...#.|..#..|...#.|....#|#...#|.###.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.", "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.", "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.", "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    " ": ".....|.....|.....|.....|.....|.....|.....", ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...", ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "-": ".....|.....|.....|#####|.....|.....|.....", "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...", "/": ".....|....#|...#.|..#..|.#...|#....|.....",
    ">": ".#...|..#..|...#.|....#|...#.|..#..|.#...", "=": ".....|.....|#####|.....|#####|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....", "?": ".###.|#...#|....#|...#.|..#..|.....|..#..",
}
_GLYPHS = {char: np.array([[c == "#" for c in row] for row in rows.split("|")]) for char, rows in _GLYPHS.items()}


def text_width(text: str, scale: int) -> int:
    """Width in pixels of `text` drawn at `scale` (6 pixels per character at scale 1, the last without its gap)."""
    return max(len(text) * 6 * scale - scale, 0)


def draw_text(canvas: np.ndarray, text: str, x: int, y: int, scale: int = 2, colour=TEXT) -> None:
    """Draw `text` (upper-cased; unknown characters as '?') with its top-left corner at (x, y), clipped."""
    height, width = canvas.shape[:2]
    for index, char in enumerate(text.upper()):
        glyph = _GLYPHS.get(char, _GLYPHS["?"])
        block = np.kron(glyph, np.ones((scale, scale), bool))
        left = x + index * 6 * scale
        top = y
        rows = slice(max(top, 0), min(top + block.shape[0], height))
        cols = slice(max(left, 0), min(left + block.shape[1], width))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        sub = block[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
        canvas[rows, cols][sub] = colour


def panel_rgb(fixed: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The fixed panel in grey with the edges drawn over it, two pixels wide (a cross-shaped dilation)."""
    grey = (fixed * 255.0).round().astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    thick = edges.copy()
    thick[1:] |= edges[:-1]
    thick[:-1] |= edges[1:]
    thick[:, 1:] |= edges[:, :-1]
    thick[:, :-1] |= edges[:, 1:]
    rgb[thick] = EDGE_COLOUR
    return rgb


def compose_picture(panels: Dict[str, Dict[str, np.ndarray]], title: str = "", subtitle: str = "",
                    row_labels: Sequence[str] = ("BEFORE", "AFTER")) -> np.ndarray:
    """The (H, W, 3) uint8 picture: a title bar, plane names, and rows 'before' and 'after' of three panels."""
    size = next(iter(panels.values()))["fixed"].shape[0]
    width = LABEL_COLUMN + len(PLANES) * size + (len(PLANES) + 1) * GAP
    height = TITLE_BAR + PLANE_ROW + 2 * size + 2 * GAP
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    draw_text(canvas, title, GAP + 4, 10, scale=3)
    draw_text(canvas, subtitle, GAP + 4, 10 + 21 + 10, scale=2, colour=DIM_TEXT)
    orientation = {"axial": "R", "coronal": "R", "sagittal": "A"}
    for column, plane in enumerate(PLANES):
        left = LABEL_COLUMN + GAP + column * (size + GAP)
        draw_text(canvas, plane, left + (size - text_width(plane, 2)) // 2, TITLE_BAR + 4, scale=2)
        for row, name in enumerate(("before", "after")):
            top = TITLE_BAR + PLANE_ROW + row * (size + GAP)
            edges = panels[plane][name + "_edges"]
            canvas[top:top + size, left:left + size] = panel_rgb(panels[plane]["fixed"], edges)
            draw_text(canvas, orientation[plane], left + 4, top + size // 2 - 7, scale=2, colour=DIM_TEXT)
    # One size for every row label: the largest at which the widest one fits the label column.
    scale = next((s for s in (3, 2) if max(text_width(label, s) for label in row_labels) <= LABEL_COLUMN - GAP - 4), 1)
    for row, label in enumerate(row_labels):
        top = TITLE_BAR + PLANE_ROW + row * (size + GAP)
        draw_text(canvas, label, GAP, top + size // 2 - 7 * scale // 2, scale=scale)
    return canvas


def write_png(picture: np.ndarray, path) -> Path:
    """Write an (H, W, 3) uint8 array as an RGB PNG (SimpleITK's PNG writer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(picture, dtype=np.uint8), isVector=True)
    sitk.WriteImage(image, str(path))
    return path


def write_comparison_png(fixed: sitk.Image, moving: sitk.Image, transform, path, *, title: str = "",
                         subtitle: str = "MOVING IMAGE EDGES IN RED OVER THE FIXED IMAGE",
                         panel_pixels: int = PANEL) -> np.ndarray:
    """Write the before/after picture of a registration to `path` (PNG) and return it as an (H, W, 3) array.

    fixed, moving: the registration's inputs (SimpleITK 3D images, never modified).
    transform: the fixed -> moving mapping, or a RegistrationResult (its `.transform`).
    """
    panels = comparison_panels(fixed, moving, transform, panel_pixels)
    picture = compose_picture(panels, title=title, subtitle=subtitle)
    write_png(picture, path)
    return picture


# ---------------------------------------------------------------------------------------------
# `make screenshot`


def screenshot(path, moving_name: str = "T2", stages: Sequence[str] = ("rigid", "affine", "deformable")):
    """Register the bundled sample `moving_name`, moved by `make demo`'s known motion, to the T1; draw it.

    Returns (picture array, RegistrationResult, median error against the known motion in mm).
    """
    from . import evaluation, imageio
    from .demo import DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM
    from .pipeline import register

    fixed = sitk.ReadImage(str(imageio.SAMPLE_DATA / "T1.nii.gz"))
    head = imageio.head_mask(imageio.as_float32(fixed))
    truth = evaluation.rigid_transform(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, imageio.mask_center(head))
    moving = evaluation.move_header(sitk.ReadImage(str(imageio.SAMPLE_DATA / f"{moving_name}.nii.gz")), truth)
    result = register(fixed, moving, stages=tuple(stages))
    error = float(np.median(evaluation.target_registration_error(result.transform, truth,
                                                                 evaluation.mask_points(head))))
    # Nothing machine-dependent (such as the time) goes into the picture, so regenerating it gives the same PNG.
    subtitle = (f"{moving_name} EDGES IN RED OVER THE T1. SCORE {result.initial_score:.2f} -> {result.score:.2f} "
                f"({result.verdict}), MEDIAN ERROR {error:.2f} MM")
    picture = write_comparison_png(fixed, moving, result, path,
                                   title=f"ONE-CLICK REGISTRATION: {moving_name} ONTO T1", subtitle=subtitle)
    return picture, result, error


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG to write")
    parser.add_argument("--moving", choices=("T2", "FLAIR"), default="T2", help="bundled image registered to the T1")
    parser.add_argument("--stages", default="rigid,affine,deformable")
    args = parser.parse_args(argv)
    picture, result, error = screenshot(args.screenshot, args.moving, [s for s in args.stages.split(",") if s])
    print(f"pictures: {args.screenshot} ({picture.shape[1]}x{picture.shape[0]}); score "
          f"{result.initial_score:.3f} -> {result.score:.3f}; median error against the known motion {error:.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
