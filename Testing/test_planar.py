"""2D images (PNG, TIFF, 2D NIfTI/NRRD, a single slice) through register() and the command line (planar.py).

Real images: an axial slice of the bundled T1 (always there) and of the MNI T1
template from the shared data (2 mm pixels and a flipped direction: physical
space is the truth), moved by known transforms; errors are measured on the
fixed image's foreground, in pixels.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_DATA, shared_file
from OneClickRegistrationLib import InvalidInputError, cli, register
from OneClickRegistrationLib.planar import PlanarRegistrationResult

# On every Slicer release's Python stack too (`make test`, pytest -m stack).
pytestmark = pytest.mark.stack

MNI_T1 = "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz"


def _bundled_slice(name: str = "T1", plane: int = 70, noise: float = 0.0, seed: int = 0) -> sitk.Image:
    """An axial slice of a bundled volume as a 2D uint8 image with 1-unit pixels (a PNG's geometry)."""
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")))[plane].astype(np.float64)
    values = 255.0 * values / values.max()
    if noise:
        values += np.random.default_rng(seed).normal(0.0, noise * 255.0, values.shape)
    return sitk.GetImageFromArray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def _mni_slice() -> sitk.Image:
    """An axial slice of the MNI T1 template: 2 mm pixels, origin (-90, 126), direction diag(1, -1)."""
    return sitk.ReadImage(str(shared_file(MNI_T1)))[:, :, 45]


def _affine(image: sitk.Image, degrees: float, scale=(1.0, 1.0), shear: float = 0.0,
            shift_pixels=(0.0, 0.0)) -> sitk.AffineTransform:
    """A known fixed -> moving transform about the image's centre: rotation, shear, scaling, shift in pixels."""
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    transform = sitk.AffineTransform(2)
    transform.SetMatrix((rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(scale)).ravel().tolist())
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    transform.SetTranslation((np.asarray(shift_pixels) * np.asarray(image.GetSpacing())).tolist())
    return transform


def _moved(image: sitk.Image, truth: sitk.Transform, margin: int = 40, noise: float = 0.0, seed: int = 1):
    """The image seen through `truth` (moving(truth(x)) = image(x)) on a grid `margin` pixels wider, same type."""
    size = [n + 2 * margin for n in image.GetSize()]
    origin = image.TransformContinuousIndexToPhysicalPoint([-margin, -margin])
    moved = sitk.Resample(image, size, truth.GetInverse(), sitk.sitkBSpline, origin, image.GetSpacing(),
                          image.GetDirection(), 0.0, sitk.sitkFloat64)
    values = sitk.GetArrayFromImage(moved)
    if noise:
        values += np.random.default_rng(seed).normal(0.0, noise * values.max(), values.shape)
    dtype = sitk.GetArrayViewFromImage(image).dtype
    if dtype.kind == "u":
        values = np.clip(np.round(values), 0, np.iinfo(dtype).max)
    result = sitk.GetImageFromArray(values.astype(dtype))
    result.CopyInformation(moved)
    return result


def _foreground_points(image: sitk.Image) -> np.ndarray:
    """Physical points of the pixels above 10 % of the image's maximum."""
    values = sitk.GetArrayViewFromImage(image)
    index = np.argwhere(values > 0.1 * values.max())[:, ::-1].astype(float)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(point.tolist()) for point in index])


def _error_pixels(found: sitk.Transform, truth: sitk.Transform, image: sitk.Image) -> np.ndarray:
    """|found(x) - truth(x)| over the image's foreground, in pixels."""
    points = _foreground_points(image)
    distance = [np.linalg.norm(np.subtract(found.TransformPoint(tuple(p)), truth.TransformPoint(tuple(p))))
                for p in points]
    return np.asarray(distance) / min(image.GetSpacing())


# ---------------------------------------------------------------- (a) a known affine, (b) rigid only


@pytest.mark.parametrize("make_fixed", [_bundled_slice, _mni_slice], ids=["bundled T1 slice", "MNI T1 slice"])
def test_known_affine_of_a_real_slice_is_recovered(make_fixed):
    fixed = make_fixed()
    truth = _affine(fixed, 20.0, scale=(1.1, 0.95), shear=0.08, shift_pixels=(10.0, -7.0))
    moving = _moved(fixed, truth)

    result = register(fixed, moving)

    assert isinstance(result, PlanarRegistrationResult) and result.transform.GetDimension() == 2
    assert [stage.name for stage in result.stages][:2] == ["rigid", "affine"]
    assert result.stage("affine").accepted, result.stage("affine").message
    error = _error_pixels(result.transform, truth, fixed)
    assert error.max() < 0.5, f"error on the foreground: mean {error.mean():.3f}, max {error.max():.3f} pixel"
    assert result.verdict == "good"
    assert result.resampled_moving.GetSize() == fixed.GetSize()
    assert result.resampled_moving.GetPixelID() == moving.GetPixelID()


def test_rigid_pair_is_recovered_and_the_affine_dropped_with_a_reason():
    fixed = _bundled_slice(noise=0.02, seed=1)
    truth = _affine(fixed, -125.0, shift_pixels=(6.0, 9.0))
    moving = _moved(_bundled_slice(noise=0.02, seed=2), truth)

    result = register(fixed, moving)

    error = _error_pixels(result.transform, truth, fixed)
    assert error.max() < 0.3, f"error on the foreground: mean {error.mean():.3f}, max {error.max():.3f} pixel"
    affine = result.stage("affine")
    assert not affine.accepted
    assert affine.message.startswith("dropped:") and "rigid alignment is kept" in affine.message
    assert result.stage("rigid").accepted and result.verdict == "good"


# ---------------------------------------------------------------- (c) colour through the command line


def _colour(grey: sitk.Image) -> sitk.Image:
    """A colour photograph-like RGB uint8 image of a grey one (each channel a different tint)."""
    values = sitk.GetArrayFromImage(grey).astype(np.float64)
    rgb = np.stack([values, 0.8 * values + 10.0, 0.6 * values + 30.0], axis=-1)
    image = sitk.GetImageFromArray(np.clip(np.round(rgb), 0, 255).astype(np.uint8), isVector=True)
    image.CopyInformation(grey)
    return image


def test_colour_pngs_through_the_command_line(tmp_path, capsys):
    grey = _bundled_slice()
    moved = _moved(grey, _affine(grey, 25.0, shift_pixels=(6.0, -4.0)))
    # A PNG keeps no origin: the moving image's read back at (0, 0), the truth shifted by as much.
    truth = sitk.CompositeTransform([sitk.TranslationTransform(2, [-o for o in moved.GetOrigin()]),
                                     _affine(grey, 25.0, shift_pixels=(6.0, -4.0))])
    sitk.WriteImage(_colour(grey), str(tmp_path / "fixed.png"))
    sitk.WriteImage(_colour(moved), str(tmp_path / "moving.png"))
    sitk.WriteImage(sitk.Cast((moved > 60) + (moved > 120), sitk.sitkUInt8), str(tmp_path / "labels.png"))
    out = tmp_path / "out" / "registered.png"

    status = cli.main([str(tmp_path / "fixed.png"), str(tmp_path / "moving.png"), "-o", str(out),
                       "--output-transform", str(tmp_path / "out" / "moving_to_fixed.h5"),
                       "--also", str(tmp_path / "labels.png"), "-q"])

    printed = capsys.readouterr().out
    assert status == 0
    assert "note: fixed image: colour (RGB) converted to luminance" in printed and "Rec. 709" in printed
    written = sitk.ReadImage(str(out))
    assert written.GetDimension() == 2 and written.GetPixelID() == sitk.sitkUInt8
    assert written.GetSize() == grey.GetSize()
    transform = sitk.ReadTransform(str(tmp_path / "out" / "moving_to_fixed.h5"))
    assert transform.GetDimension() == 2
    assert _error_pixels(transform, truth, grey).max() < 0.5
    report = json.loads((tmp_path / "out" / "moving_report.json").read_text())
    assert report["dimension"] == 2 and report["preset"] == "2D"
    assert any("converted to luminance" in note for note in report["notes"])
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "labels_registered.png")))
    assert labels.shape == written.GetSize()[::-1] and set(np.unique(labels)) == {0, 1, 2}
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == \
        ["labels_registered.png", "moving_report.json", "moving_to_fixed.h5", "registered.png"]


def test_float_images_written_as_png_are_rounded_and_clamped_with_a_note(tmp_path, capsys):
    grey = sitk.Cast(_bundled_slice(), sitk.sitkFloat32) * 1.5  # up to 382: beyond 8 bits
    sitk.WriteImage(grey, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteImage(_moved(grey, _affine(grey, 10.0, shift_pixels=(3.0, 2.0))), str(tmp_path / "moving.nrrd"))

    status = cli.main([str(tmp_path / "fixed.nii.gz"), str(tmp_path / "moving.nrrd"), "-o", str(tmp_path),
                       "--output-volume", str(tmp_path / "registered.png"), "--stages", "rigid", "-q"])

    printed = capsys.readouterr().out
    assert status == 0
    assert "note: registered.png: PNG holds uint8 pixels; the float32 values were rounded" in printed
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "registered.png")))
    assert written.dtype == np.uint8 and written.max() == 255


# ---------------------------------------------------------------- (d) 2D with 3D, single slices, bad 2D input


def test_a_2d_image_with_a_volume_is_refused_in_one_line(tmp_path, capsys):
    image = _bundled_slice()
    volume = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    for fixed, moving in ((image, volume), (volume, image)):
        with pytest.raises(InvalidInputError, match=r"is 2D but the (moving|fixed) image is 3D") as refused:
            register(fixed, moving)
        assert "\n" not in str(refused.value) and "extract the matching slice" in str(refused.value)
    sitk.WriteImage(image, str(tmp_path / "slice.png"))
    status = cli.main([str(tmp_path / "slice.png"), str(SAMPLE_DATA / "T2.nii.gz"), "-o", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "is 2D but the moving image is 3D" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def test_a_single_slice_volume_is_registered_as_2d_with_a_note():
    fixed = _bundled_slice()
    truth = _affine(fixed, 15.0, shift_pixels=(4.0, -3.0))
    moving = sitk.JoinSeries(_moved(fixed, truth))  # 3D, one slice thick

    result = register(fixed, moving, stages=("rigid",))

    assert any("one voxel thick along z, registered as a 2D image" in note for note in result.notes)
    assert _error_pixels(result.transform, truth, fixed).max() < 0.3


def test_a_single_slice_with_a_volume_keeps_the_3d_message():
    volume = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    with pytest.raises(InvalidInputError, match="124x160x1 voxels, too small"):
        register(volume, volume[:, :, 70:71])


@pytest.mark.parametrize("make_bad,expected", [
    (lambda: sitk.Image([10, 40], sitk.sitkFloat32) + sitk.GetImageFromArray(
        np.random.default_rng(0).normal(size=(40, 10)).astype(np.float32)), "10x40 pixels, too small"),
    (lambda: sitk.Image([64, 64], sitk.sitkUInt8), "empty"),
    (lambda: sitk.GetImageFromArray((np.arange(64 * 64).reshape(64, 64) % 3).astype(np.uint8)), "label map"),
])
def test_bad_2d_images_are_refused_with_a_named_reason(make_bad, expected):
    with pytest.raises(InvalidInputError, match=expected):
        register(_bundled_slice(), make_bad(), stages=("rigid",))


# ---------------------------------------------------------------- the result: report, apply, masks


def test_a_2d_result_reports_carries_images_and_refuses_the_3d_quality_report(tmp_path):
    fixed = _bundled_slice()
    truth = _affine(fixed, 30.0, shift_pixels=(5.0, 5.0))
    moving = _moved(fixed, truth)
    labels = sitk.Cast(moving > 60, sitk.sitkUInt8) + sitk.Cast(moving > 120, sitk.sitkUInt8)

    result = register(fixed, moving, stages=("rigid",), fixed_mask=sitk.Cast(fixed > 20, sitk.sitkUInt8))

    summary = result.report()
    json.dumps(summary)
    assert summary["dimension"] == 2 and summary["stages"][0]["name"] == "rigid" and summary["notes"] == []
    carried = result.apply(moving)
    assert np.array_equal(sitk.GetArrayViewFromImage(carried), sitk.GetArrayViewFromImage(result.resampled_moving))
    carried_labels = result.apply(labels)
    assert set(np.unique(sitk.GetArrayViewFromImage(carried_labels))) <= {0, 1, 2}
    back = result.apply(fixed, inverse=True)
    assert back.GetSize() == moving.GetSize()
    with pytest.raises(InvalidInputError, match="no 2D version"):
        result.quality_report(tmp_path / "qc")
    with pytest.raises(InvalidInputError, match="covers only 1 pixel"):
        register(fixed, moving, stages=("rigid",), moving_mask=_one_pixel(moving))


def _one_pixel(image: sitk.Image) -> sitk.Image:
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    mask[10, 10] = 1
    return mask


def test_an_engine_displacement_becomes_the_physical_2d_transform():
    """The engine's field, in grid pixels and (row, column) order, read as a physical (x, y) vector on any direction."""
    from OneClickRegistrationLib.planar_stages import displacement_transform

    grid = sitk.Image([30, 20], sitk.sitkUInt8)
    grid.SetSpacing([0.5, 0.5])
    grid.SetOrigin([10.0, -4.0])
    grid.SetDirection([0.0, -1.0, 1.0, 0.0])  # the grid's columns run along physical y, its rows along -x
    field = np.zeros((2, 20, 30), dtype=np.float32)
    field[0], field[1] = 2.0, 3.0  # two rows and three columns
    linear = sitk.TranslationTransform(2, (1.0, 1.0))
    whole = sitk.CompositeTransform([linear, displacement_transform(field, grid)])

    point = grid.TransformContinuousIndexToPhysicalPoint([12.0, 7.0])
    expected = np.asarray(grid.TransformContinuousIndexToPhysicalPoint([15.0, 9.0])) + 1.0
    assert np.allclose(whole.TransformPoint(point), expected, atol=1e-9)


# ---------------------------------------------------------------- (e) the deformable stage in 2D


def _smooth_blob(shape_mask: np.ndarray) -> sitk.Image:
    """A binary shape as a scan-like float image: 200 inside, edges blurred over a pixel (not a label map)."""
    from scipy import ndimage

    return sitk.GetImageFromArray(ndimage.gaussian_filter(200.0 * shape_mask, 1.0).astype(np.float32))


def _disk_and_c(size: int = 256):
    """A filled disk (radius 79 pixels) and a thick C (radii 55-79, open over 60 degrees on the right)."""
    y, x = np.mgrid[0:size, 0:size] - (size - 1) / 2.0
    radius, angle = np.hypot(x, y), np.degrees(np.arctan2(y, x))
    disk = radius <= 79
    c_shape = disk & (radius >= 55) & (np.abs(angle) >= 30)
    return disk, c_shape


def _jacobian_on_grid(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """Jacobian determinant of the whole mapping at the grid's pixels."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                              grid.GetSpacing(), grid.GetDirection())
    return sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))


def test_a_disk_is_warped_into_a_c_without_folding():
    disk, c_shape = _disk_and_c()
    fixed, moving = _smooth_blob(c_shape), _smooth_blob(disk)

    result = register(fixed, moving)

    deformable = result.stage("deformable")
    assert deformable.accepted, deformable.message
    warped = sitk.GetArrayFromImage(result.resampled_moving) > 100
    dice = 2.0 * np.count_nonzero(warped & c_shape) / (np.count_nonzero(warped) + np.count_nonzero(c_shape))
    assert dice > 0.9, f"Dice {dice:.3f} (the disk on the C: 0.60)"
    assert _jacobian_on_grid(result.transform, fixed).min() > 0


def test_dipys_binary_circle_becomes_the_c_with_no_settings():
    """dipy's classic pair as dipy ships it: two-valued float images (silhouettes), the circle moving."""
    disk, c_shape = _disk_and_c()
    fixed = sitk.GetImageFromArray(c_shape.astype(np.float32))
    moving = sitk.GetImageFromArray(disk.astype(np.float32))

    result = register(fixed, moving)

    warped = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0)) > 0.5
    dice = 2.0 * np.count_nonzero(warped & c_shape) / (np.count_nonzero(warped) + np.count_nonzero(c_shape))
    assert dice >= 0.97, f"Dice {dice:.3f}"
    assert _jacobian_on_grid(result.transform, fixed).min() > 0
    shapes = np.argwhere(disk | c_shape)[::7][:, ::-1].astype(float)
    round_trip = [np.linalg.norm(np.subtract(result.inverse_transform.TransformPoint(
        result.transform.TransformPoint(tuple(point))), point)) for point in shapes]
    assert max(round_trip) <= 0.5, f"inverse o forward off by up to {max(round_trip):.2f} px"


def test_a_smooth_deformation_of_a_slice_is_recovered():
    fixed = _bundled_slice()
    rows, columns = np.mgrid[0:fixed.GetHeight(), 0:fixed.GetWidth()].astype(np.float64)
    bend = np.stack([4.0 * np.sin(2 * np.pi * rows / 80.0), 3.0 * np.cos(2 * np.pi * columns / 70.0)], axis=-1)
    warp = sitk.DisplacementFieldTransform(sitk.GetImageFromArray(bend, isVector=True))  # moving y -> fixed y + bend
    moving = sitk.Resample(fixed, fixed, warp, sitk.sitkBSpline, 0.0, sitk.sitkUInt8)

    result = register(fixed, moving)

    assert result.stage("deformable").accepted, result.stage("deformable").message
    points = _foreground_points(fixed)
    # found(x) is the moving point of fixed point x, which the known warp takes back to x.
    error = np.array([np.linalg.norm(np.subtract(warp.TransformPoint(result.transform.TransformPoint(tuple(p))), p))
                      for p in points])
    assert np.percentile(error, 95) < 1.0, f"error: mean {error.mean():.2f}, 95th percentile " \
                                           f"{np.percentile(error, 95):.2f} pixel"
    assert _jacobian_on_grid(result.transform, fixed).min() > 0
