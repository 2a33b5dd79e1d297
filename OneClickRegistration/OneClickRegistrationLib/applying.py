"""Carry images through a registration: other scans, label maps and segmentations.

    apply_transform(transform, image, reference, kind="auto")

resamples `image` onto the voxel grid of `reference` through `transform`, which
maps points of the reference grid to points of the image (ITK convention, as
`register()` returns it), so the two directions of a registration are:

    moving space -> fixed grid:  apply_transform(result.transform, image, fixed)
    fixed space -> moving grid:  apply_transform(result.inverse_transform, image, moving)

(`RegistrationResult.apply(image, inverse=...)` does exactly this.)  For a
transform read from a file, `inverse_of` gives the inverse, displacement
fields included.

What the image is decides how its values are carried (`kind`):

* "image", a scan: linear interpolation (or cubic B-spline with
  image_interpolation="bspline"), in the image's own pixel type.  Integer
  types are interpolated in floating point, then rounded to the nearest
  integer and clamped to the type's range, never truncated; float types keep
  the interpolated values.  Voxels that map outside the image take its minimum
  (its background).
* "label", a label map or segmentation: no value is blended or invented, the
  pixel type is kept, and every output value is one of the input's labels.
  label_interpolation="nearest" (default) takes the label of the nearest voxel;
  "gaussian" smooths each label's indicator by a Gaussian of 0.3 voxel,
  interpolates it linearly and takes the label with the highest value (the
  label-wise interpolation of ANTs' GenericLabel).  On rotated grids it follows
  the labels' partial-volume majority more closely than nearest neighbour on
  average, one-voxel sheets and lines included, though on a given grid it may
  thin a one-voxel line more (Testing/test_apply.py); at the width SimpleITK
  gives ITK's LabelGaussian (one voxel) a sheet one voxel thick vanishes.
  Voxels that map outside the image take its smallest label (the background).
* "auto": "label" when `imageio.label_map_values` takes the values for a label
  map (integers, at most 64 distinct values, not a quantised scan), else "image".

Large volumes (a 512x512x400 CT grid) are never copied to float64 in full: the
B-spline coefficients and the label-wise scores are float32, and the output is
computed in slabs of at most imageio.RESAMPLE_SLAB_VOXELS voxels.  Inputs are
never modified.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import SimpleITK as sitk

from . import imageio
from .errors import InvalidInputError

KINDS = ("auto", "image", "label")
IMAGE_INTERPOLATIONS = ("linear", "bspline")
LABEL_INTERPOLATIONS = ("nearest", "gaussian")
# Gaussian label interpolation: the standard deviation of the smoothing of each label's indicator, in voxels
# of the image.  Against the partial-volume majority of the labels of Testing/test_apply.py carried onto grids
# rotated by 10 degrees (eight rotations, mean Dice, nearest neighbour in brackets): sphere 0.994 (0.980),
# sheet one voxel thick 0.963 (0.928), rod two voxels thick 0.964 (0.901), line one voxel wide 0.85 (0.75).
# Wider smoothing thins lines faster than it helps sheets (0.35 voxel: line 0.78; 0.5 voxel: 0.30), and
# from 0.7 voxel a one-voxel line vanishes even on the same grid.
GAUSSIAN_LABEL_SIGMA_VOXELS = 0.3
# The indicator of a label is smoothed on its bounding box widened by this many standard deviations.
GAUSSIAN_LABEL_MARGIN_SIGMAS = 4.0


def apply_transform(transform: sitk.Transform, image: sitk.Image, reference: sitk.Image, kind: str = "auto", *,
                    image_interpolation: str = "linear", label_interpolation: str = "nearest") -> sitk.Image:
    """`image` resampled onto the grid of `reference` through `transform` (reference point -> image point).

    kind: "image", "label" or "auto" (see the module docstring).
    image_interpolation: "linear" or "bspline" (cubic), for a scan.
    label_interpolation: "nearest" or "gaussian", for a label map.
    Returns an image with the reference's grid and `image`'s pixel type.
    """
    _check_transform(transform)
    check_carried_image(image, "the image to carry")
    _check_reference(reference)
    _check_choice(image_interpolation, IMAGE_INTERPOLATIONS, "image_interpolation")
    _check_choice(label_interpolation, LABEL_INTERPOLATIONS, "label_interpolation")
    if image_kind(image, kind) == "label":
        if label_interpolation == "gaussian":
            return _gaussian_labels(image, reference, transform)
        return sitk.Resample(image, reference, transform, sitk.sitkNearestNeighbor, _minimum(image),
                             image.GetPixelID())
    if image_interpolation == "bspline":
        return _bspline_scan(image, reference, transform)
    return imageio.resample_onto(image, reference, transform)  # exactly how register() resamples the moving image


def image_kind(image: sitk.Image, kind: str = "auto") -> str:
    """'image' or 'label': `kind` itself, or for "auto" what the values look like (see imageio.label_map_values)."""
    _check_choice(kind, KINDS, "kind")
    if kind != "auto":
        return kind
    return "label" if imageio.label_map_values(sitk.GetArrayViewFromImage(image)) is not None else "image"


def describe_kind(kind: str, image_interpolation: str = "linear", label_interpolation: str = "nearest") -> str:
    """How an image of `kind` ('image' or 'label') is carried, in words, for summaries and reports."""
    if kind == "label":
        return f"label map, {'nearest neighbour' if label_interpolation == 'nearest' else 'label-wise Gaussian'}"
    return f"image, {'linear' if image_interpolation == 'linear' else 'cubic B-spline'} interpolation"


def inverse_of(transform: sitk.Transform) -> sitk.Transform:
    """The inverse of a transform read from a file: linear ones exactly, displacement fields numerically.

    A composite A o B becomes B^-1 o A^-1.  A displacement field is inverted
    by ITK's fixed-point iteration (InvertDisplacementField): within 0.03 mm
    on a registration's field.  A B-spline transform has no inverse here.
    """
    transform = _downcast(transform)
    if isinstance(transform, sitk.CompositeTransform):
        parts = [transform.GetNthTransform(index) for index in range(transform.GetNumberOfTransforms())]
        return sitk.CompositeTransform([inverse_of(part) for part in reversed(parts)])
    if isinstance(transform, sitk.DisplacementFieldTransform):
        field = sitk.InvertDisplacementField(transform.GetDisplacementField(), maximumNumberOfIterations=20,
                                             maxErrorToleranceThreshold=0.01, meanErrorToleranceThreshold=1e-4,
                                             enforceBoundaryCondition=True)
        return sitk.DisplacementFieldTransform(field)
    try:
        return transform.GetInverse()
    except RuntimeError:
        raise InvalidInputError(f"a {transform.GetName()} cannot be inverted here; apply the inverse transform "
                                "instead of --inverse (e.g. one saved from result.inverse_transform)") from None


def check_carried_image(image, role: str) -> None:
    """Refuse what cannot be carried: not a SimpleITK image, not 3D, or several components per voxel."""
    if not isinstance(image, sitk.Image):
        raise InvalidInputError(f"{role} is a {type(image).__name__}, not a SimpleITK image; read it with SimpleITK "
                                "first")
    if image.GetDimension() != 3:
        raise InvalidInputError(f"{role} is {image.GetDimension()}D; give a 3D volume (extract one time point first)")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidInputError(f"{role} has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour "
                                "or vector image); give a scalar volume or label map")


# ---------------------------------------------------------------------------------------------- checks


def _check_transform(transform) -> None:
    if not isinstance(transform, sitk.Transform) or transform.GetDimension() != 3:
        raise InvalidInputError(f"the transform must be a 3D SimpleITK transform, not {type(transform).__name__}; "
                                "read it with SimpleITK.ReadTransform or take result.transform")


def _check_reference(reference) -> None:
    if not isinstance(reference, sitk.Image) or reference.GetDimension() != 3:
        raise InvalidInputError("the reference must be a 3D SimpleITK image: the grid to resample onto (the fixed "
                                "image, or the moving image for the inverse direction)")


def _check_choice(value: str, choices: Tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise InvalidInputError(f"{name} {value!r} is not one of {', '.join(choices)}")


def _downcast(transform: sitk.Transform) -> sitk.Transform:
    """The transform as its own SimpleITK class (a file reads back as a plain Transform)."""
    return transform.Downcast() if type(transform) is sitk.Transform else transform


def _minimum(image: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(image).min())


# ---------------------------------------------------------------------------------------------- slabs


def _on_reference(values: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(reference)
    return image


# ---------------------------------------------------------------------------------------------- scans


def _bspline_scan(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Cubic B-spline resampling in the image's pixel type, from float32 coefficients computed once.

    ITK's own B-spline interpolator would compute float64 coefficients of the
    whole image for every call (every slab); here scipy computes them once in
    float32 with the same mirror boundary, and ITK's B-spline resampler
    evaluates them.
    """
    from scipy import ndimage

    values = sitk.GetArrayViewFromImage(image)
    coefficients = _on_reference(ndimage.spline_filter(values, order=3, output=np.float32, mode="mirror"), image)
    background = float(values.min())
    output = np.empty(reference.GetSize()[::-1], dtype=values.dtype)
    for first, count, slab in imageio.grid_slabs(reference):
        resampled = sitk.Resample(coefficients, slab, transform, sitk.sitkBSplineResamplerOrder3, background,
                                  sitk.sitkFloat32)
        output[first:first + count] = _in_pixel_type(sitk.GetArrayViewFromImage(resampled), values.dtype)  # a view
    return _on_reference(output, reference)


def _in_pixel_type(interpolated: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated values in `dtype`: integers rounded half away from zero and clamped, floats as they are."""
    if dtype.kind not in "iu":
        return interpolated.astype(dtype, copy=False)
    limits = np.iinfo(dtype)
    rounded = np.copysign(np.floor(np.abs(interpolated) + 0.5), interpolated)
    return np.clip(rounded, limits.min, limits.max)


# ---------------------------------------------------------------------------------------------- label maps


def _gaussian_labels(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform) -> sitk.Image:
    """Label-wise Gaussian interpolation: each output voxel takes the label whose smoothed indicator is highest.

    The background (the smallest label) is not smoothed: the smoothed
    indicators of all labels add up to one, so its score is one minus the
    others', and it wins only where it beats every label (everywhere outside
    the image).  Each other label is smoothed on its own bounding box only.
    """
    values = sitk.GetArrayViewFromImage(image)
    background = values.min()
    smoothed = _smoothed_indicators(image, background)
    output = np.empty(reference.GetSize()[::-1], dtype=values.dtype)
    for first, count, slab in imageio.grid_slabs(reference):
        best = np.zeros((count,) + output.shape[1:], dtype=np.float32)
        total = np.zeros_like(best)
        chosen = output[first:first + count]
        chosen[:] = background
        for label, indicator in smoothed:
            resampled = sitk.Resample(indicator, slab, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
            score = sitk.GetArrayViewFromImage(resampled)  # a view: `resampled` must outlive it
            total += score
            better = score > best
            best[better] = score[better]
            chosen[better] = label
        chosen[(1.0 - total) > best] = background
    return _on_reference(output, reference)


def _smoothed_indicators(image: sitk.Image, background) -> List[Tuple[float, sitk.Image]]:
    """(label, its indicator smoothed by the Gaussian, as float32 on its bounding box and margin) per label."""
    labelled = image if sitk.GetArrayViewFromImage(image).dtype.kind in "iu" else sitk.Cast(image, sitk.sitkInt64)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.SetBackgroundValue(int(background))
    shapes.Execute(labelled)
    spacing = np.asarray(image.GetSpacing())
    variance = ((GAUSSIAN_LABEL_SIGMA_VOXELS * spacing) ** 2).tolist()
    margin = int(np.ceil(GAUSSIAN_LABEL_MARGIN_SIGMAS * GAUSSIAN_LABEL_SIGMA_VOXELS)) + 1
    size = np.asarray(image.GetSize())
    smoothed = []
    for label in shapes.GetLabels():
        box = np.asarray(shapes.GetBoundingBox(label)).reshape(2, 3)
        low = np.maximum(box[0] - margin, 0)
        high = np.minimum(box[0] + box[1] + margin, size)
        region = sitk.RegionOfInterest(labelled, (high - low).tolist(), low.tolist())
        indicator = sitk.Cast(region == label, sitk.sitkFloat32)
        smoothed.append((label, sitk.DiscreteGaussian(indicator, variance, 32, 0.001, True)))
    return smoothed
