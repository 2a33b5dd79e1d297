"""Bad input gets one clear error naming the problem and the fix, and changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_DATA
from OneClickRegistrationLib import InvalidInputError, RegistrationCancelled, cli, imageio, register

# On every Slicer release's Python stack too (`make test`, pytest -m stack).
pytestmark = pytest.mark.stack


def _volume(size=(24, 24, 24), spacing=(2.0, 2.0, 2.0), dtype=np.float32, seed=0):
    values = np.random.default_rng(seed).normal(100, 20, size[::-1]).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    return image


@pytest.fixture
def sample():
    return sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))


@pytest.mark.parametrize("make_bad,expected", [
    (lambda: sitk.Image(24, 24, 24, sitk.sitkFloat32), "empty"),
    (lambda: sitk.Image(24, 24, 24, sitk.sitkInt16) + 7, "constant"),
    (lambda: sitk.JoinSeries([_volume(seed=1), _volume(seed=2)]), "4D"),
    (lambda: sitk.Image([24, 24, 24], sitk.sitkVectorFloat32, 3), "components"),
    (lambda: sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(24, 24, 24)).astype(np.float32)
                                    * np.where(np.arange(24) == 5, np.nan, 1.0).astype(np.float32)), "NaN"),
    (lambda: sitk.GetImageFromArray(np.where(np.arange(24 ** 3).reshape(24, 24, 24) == 9, np.inf, 1.0)
                                    .astype(np.float32)), "infinite"),
    (lambda: _with_spacing(_volume(), (0.0001, 0.0001, 0.0001)), "spacing"),
    (lambda: _with_spacing(_volume(), (120.0, 1.0, 1.0)), "spacing"),
    (lambda: np.zeros((24, 24, 24)), "SimpleITK image"),
])
def test_bad_image_is_refused_with_a_named_reason(make_bad, expected, sample):
    bad = make_bad()
    with pytest.raises(InvalidInputError, match=expected):
        register(sample, bad, stages=("rigid",))
    with pytest.raises(InvalidInputError, match=expected):
        register(bad, sample, stages=("rigid",))


def _with_spacing(image, spacing):
    image.SetSpacing(spacing)
    return image


def test_images_that_cannot_overlap(sample):
    far = sitk.Image(sample)
    far.SetOrigin([o + 5000.0 for o in sample.GetOrigin()])
    with pytest.raises(InvalidInputError, match="do not overlap"):
        register(sample, far, stages=("affine",))


def test_same_image_twice_gives_identity_and_a_perfect_score(sample):
    result = register(sample, sample)
    assert np.allclose(result.transform.TransformPoint((10.0, -20.0, 30.0)), (10.0, -20.0, 30.0))
    assert result.score == pytest.approx(1.0)
    assert all(stage.accepted for stage in result.stages)


def test_inputs_are_never_modified(sample):
    moving = sitk.ReadImage(str(SAMPLE_DATA / "T2.nii.gz"))
    moving.SetOrigin([o + 7.0 for o in moving.GetOrigin()])
    before = [(im.GetOrigin(), im.GetDirection(), im.GetSpacing(), sitk.GetArrayFromImage(im).copy())
              for im in (sample, moving)]
    register(sample, moving, stages=("rigid",))
    for image, (origin, direction, spacing, values) in zip((sample, moving), before):
        assert (image.GetOrigin(), image.GetDirection(), image.GetSpacing()) == (origin, direction, spacing)
        assert np.array_equal(sitk.GetArrayViewFromImage(image), values)


def test_cancel_from_progress_propagates(sample):
    def cancel(fraction, message):
        if fraction > 0.1:
            raise RegistrationCancelled()
    with pytest.raises(RegistrationCancelled):
        register(sample, sitk.ReadImage(str(SAMPLE_DATA / "T2.nii.gz")), progress=cancel)


@pytest.mark.parametrize("stages,expected", [(("warp",), "unknown stages"), (("affine", "rigid"), "order"), ((), "unknown")])
def test_bad_stage_list(sample, stages, expected):
    with pytest.raises(InvalidInputError, match=expected):
        register(sample, sample, stages=stages)


def test_bad_modality_name(sample):
    with pytest.raises(InvalidInputError, match="unknown modality 'PET'"):
        register(sample, sample, fixed_modality="PET")


def test_missing_file(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        imageio.read_image(tmp_path / "nothing.nii.gz")


def test_unreadable_file(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(b"this is not an image")
    with pytest.raises(InvalidInputError, match="cannot be read as an image"):
        imageio.read_image(path)


def test_empty_dicom_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="no DICOM series"):
        imageio.read_image(tmp_path)


def test_zero_spacing_in_a_file_header(tmp_path):
    """An NRRD whose header gives a zero voxel size is refused, naming the spacing."""
    path = tmp_path / "zero.nrrd"
    sitk.WriteImage(_volume(), str(path), False)
    path.write_bytes(path.read_bytes().replace(b"space directions: (2,0,0)", b"space directions: (0,0,0)"))
    with pytest.raises(InvalidInputError, match="zero or negative voxel spacing"):
        imageio.read_image(path)


def test_empty_mask_is_refused(sample):
    empty = sitk.Image(sample.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(sample)
    with pytest.raises(InvalidInputError, match="mask is empty"):
        register(sample, sample, fixed_mask=empty)


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    status = cli.main([str(tmp_path / "missing.nii.gz"), str(SAMPLE_DATA / "T2.nii.gz"), "-o", str(tmp_path)])
    error = capsys.readouterr().err.strip()
    assert status == 2
    assert error.startswith("oneclick-register: error:") and "no such file" in error and "\n" not in error
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- integrity of what is read (issue 12, item 2)


@pytest.fixture(scope="module")
def small_pair():
    """The bundled T1 and T2 binned to 2 mm: real heads, quick to register."""
    return tuple(sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")), [2, 2, 2]) for name in ("T1", "T2"))


FORMATS = [  # (suffix, compressed): every way the readers below may meet a file
    (".nii.gz", True), (".nii", False), (".nrrd", True), (".nrrd", False),
    (".mha", True), (".mha", False), (".nhdr", True), (".mhd", True),
]


def _written(image, folder, suffix, compressed):
    """`image` written as `suffix`; returns (the path to read, the file holding the voxel data)."""
    path = folder / f"scan{suffix}"
    sitk.WriteImage(image, str(path), compressed)
    return path, imageio.input_files(path)[-1]


@pytest.mark.parametrize("suffix,compressed", FORMATS)
def test_truncated_file_is_refused_in_every_format(tmp_path, small_pair, suffix, compressed):
    """ITK zero-fills a truncated .nii and .nii.gz without a word; here every format names the truncation."""
    path, data = _written(small_pair[1], tmp_path, suffix, compressed)
    assert imageio.read_image(path).image.GetSize() == small_pair[1].GetSize()  # intact: read
    whole = data.read_bytes()
    data.write_bytes(whole[: len(whole) * 9 // 10])
    with pytest.raises(InvalidInputError, match="truncated") as refused:
        imageio.read_image(path)
    assert "\n" not in str(refused.value) and "copy the complete file again" in str(refused.value)


@pytest.mark.parametrize("suffix,compressed", [f for f in FORMATS if f[1]])
def test_corrupt_compressed_file_is_refused(tmp_path, small_pair, suffix, compressed):
    """One flipped byte inside the compressed data: ITK would read wrong voxels (or print and go on)."""
    path, data = _written(small_pair[1], tmp_path, suffix, compressed)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) * 3 // 4] ^= 0x55
    data.write_bytes(bytes(damaged))
    with pytest.raises(InvalidInputError, match="corrupt") as refused:
        imageio.read_image(path)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_voxels_are_refused_in_every_format(tmp_path, small_pair, capsys, suffix, bad_value):
    values = sitk.GetArrayFromImage(small_pair[1])
    values[10, 20, 30] = bad_value
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(small_pair[1])
    path = tmp_path / f"bad{suffix}"
    sitk.WriteImage(image, str(path), True)
    status = cli.main([str(SAMPLE_DATA / "T1.nii.gz"), str(path), "-o", str(tmp_path / "out"), "-q"])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "1 NaN or infinite voxels" in error and "\n" not in error
    assert not (tmp_path / "out").exists()


def _quantised(image, levels):
    return sitk.Cast(sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0, levels - 1), sitk.sitkUInt8)


def _parcellation(image, dtype):
    """Tissue classes split by octant, numbered class*8 + octant + 1: a label map with 25 sparse labels."""
    classes = sitk.GetArrayFromImage(sitk.OtsuMultipleThresholds(sitk.Cast(image, sitk.sitkFloat32), 3)).astype(int)
    z, y, x = np.indices(classes.shape)
    octant = (z > classes.shape[0] // 2) * 4 + (y > classes.shape[1] // 2) * 2 + (x > classes.shape[2] // 2)
    labels = sitk.GetImageFromArray(np.where(classes > 0, classes * 8 + octant + 1, 0).astype(dtype))
    labels.CopyInformation(image)
    return labels


@pytest.mark.parametrize("make_label_map", [
    lambda t1: sitk.Cast(imageio.head_mask(sitk.Cast(t1, sitk.sitkFloat32)), sitk.sitkUInt8),  # a binary mask
    lambda t1: sitk.OtsuMultipleThresholds(sitk.Cast(t1, sitk.sitkFloat32), 3),              # 4 tissue classes
    lambda t1: _parcellation(t1, np.int16),
    lambda t1: _parcellation(t1, np.float32),                                                 # labels stored as float
    lambda t1: _quantised(t1, 16),                                                            # 16 levels: no scan
], ids=["mask", "tissue-classes", "parcellation", "float-parcellation", "16-levels"])
def test_label_maps_are_never_registered_as_scans(small_pair, make_label_map):
    label_map = make_label_map(small_pair[0])
    for fixed, moving in ((small_pair[0], label_map), (label_map, small_pair[0])):
        with pytest.raises(InvalidInputError, match="looks like a label map") as refused:
            register(fixed, moving, stages=("rigid",))
        assert "nearest-neighbour interpolation" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("levels", [256, 64, 32])
def test_integer_scans_with_few_grey_levels_are_still_scans(small_pair, levels):
    """8-bit scans (the bundled T1 has 249 values) and scans quantised to 64 or 32 levels are not label maps."""
    image = small_pair[0] if levels == 256 else _quantised(small_pair[0], levels)
    imageio.validate_image(image, "fixed image")  # no error


# ---------------------------------------------------------------- failures from a new user's hands (item 5)


@pytest.mark.parametrize("size,spacing,expected", [
    ((15, 40, 35), 2.0, "15x40x35 voxels, too small"),
    ((8, 8, 8), 4.0, "8x8x8 voxels, too small"),
    ((20, 20, 20), 1.0, "spans only 20x20x20 mm, too small"),
])
def test_tiny_volume_gets_a_clear_error(small_pair, size, spacing, expected):
    tiny = sitk.RegionOfInterest(small_pair[0], size, [(n - s) // 2 for n, s in zip(small_pair[0].GetSize(), size)])
    tiny.SetSpacing([spacing] * 3)
    for fixed, moving in ((small_pair[0], tiny), (tiny, small_pair[0])):
        with pytest.raises(InvalidInputError, match=expected):
            register(fixed, moving, stages=("rigid",))


def test_smallest_accepted_volume_fails_with_a_message_not_a_crash(small_pair):
    """16 voxels of 2 mm across: accepted, but too small for the rotation search to keep an overlap."""
    crops = [sitk.RegionOfInterest(image, [16, 40, 35], [23, 20, 17]) for image in small_pair]
    with pytest.raises(InvalidInputError, match="lost the overlap of the two images"):
        register(*crops, stages=("rigid",))


@pytest.mark.parametrize("grid", ["coarser", "finer"])
@pytest.mark.parametrize("role", ["fixed_mask", "moving_mask"])
def test_mask_on_another_grid_is_resampled_onto_its_image(small_pair, grid, role):
    """A head mask at 4 mm or at 1 mm for a 2 mm image: resampled (nearest), not an IndexError."""
    image = small_pair[0] if role == "fixed_mask" else small_pair[1]
    head = imageio.head_mask(imageio.as_float32(image))
    mask = (sitk.BinShrink(head, [2, 2, 2]) if grid == "coarser" else
            sitk.Resample(head, sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz")), sitk.Transform(), sitk.sitkNearestNeighbor))
    on_grid = imageio.validated_mask(mask, image, role)
    assert on_grid.GetSize() == image.GetSize() and on_grid.GetOrigin() == image.GetOrigin()
    result = register(*small_pair, stages=("rigid",), **{role: mask})
    assert result.score > 0.5


@pytest.mark.parametrize("role", ["fixed_mask", "moving_mask"])
def test_single_voxel_mask_is_refused(small_pair, role):
    mask = sitk.Image(small_pair[0].GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(small_pair[0])
    mask[30, 40, 35] = 1
    with pytest.raises(InvalidInputError, match=r"covers only 1 voxel \(0.008 ml\).*at least 8 ml"):
        register(*small_pair, stages=("rigid",), **{role: mask})


def test_preset_by_name(small_pair):
    """A name, in any case and pair order, or a Preset; an unknown name lists the table's names."""
    from OneClickRegistrationLib import pipeline, presets

    table = presets.load_preset_table()
    assert register(*small_pair, stages=("rigid",), preset="t2-t1").preset.name == "T1-T2"
    assert pipeline._preset_argument("T1-CT", None) == table.by_name("T1-CT")
    assert pipeline._preset_argument(table.by_name("CT-CT"), None).name == "CT-CT"
    with pytest.raises(InvalidInputError, match="no preset named 'T1-PET'; choose from T1-T1, T1-T2"):
        register(*small_pair, preset="T1-PET")
    with pytest.raises(InvalidInputError, match="preset must be a preset name or a Preset, not a int"):
        register(*small_pair, preset=3)


# ---------------------------------------------------------------- cancelling through the API (item 4)


@pytest.mark.parametrize("step", ["preparing working copies", "recognising", "preparing the quality score", "scoring the initial",
                                  "rigid:", "affine:", "deformable:", "resampling"])
def test_cancel_raises_registration_cancelled_at_every_step(small_pair, step):
    """RegistrationCancelled from the progress callback comes out as itself, whatever step is running."""
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith(step):
            raise RegistrationCancelled(f"stop at {message}")

    with pytest.raises(RegistrationCancelled, match=f"stop at {step}"):
        register(*small_pair, fixed_modality="T1", moving_modality="T2", progress=progress)
    assert seen[-1].startswith(step)


def test_integer_images_are_resampled_by_rounding_not_truncating():
    """Half a voxel between 10 and 11 is 10.5 -> 11 (ITK's own cast gives 10), -5.5 -> -6; a spline's overshoot clamps."""
    for dtype, values, expected in [(np.uint8, [0, 10, 11, 11], [5, 11, 11]), (np.int16, [0, -11, 0, 0], [-6, -6, 0]),
                                    (np.float32, [0, 10, 11, 11], [5, 10.5, 11])]:
        row = np.zeros((2, 2, 4), dtype)
        row[...] = values
        image = sitk.GetImageFromArray(row)
        shifted = imageio.resample_onto(image, image, sitk.TranslationTransform(3, (0.5, 0.0, 0.0)))
        assert shifted.GetPixelID() == image.GetPixelID()
        assert sitk.GetArrayFromImage(shifted)[0, 0, :3].tolist() == expected
    spike = sitk.GetImageFromArray(np.tile(np.array([0, 255, 0, 0], np.uint8), (4, 4, 1)))
    cubic = imageio.resample_onto(spike, spike, sitk.TranslationTransform(3, (0.5, 0.0, 0.0)), sitk.sitkBSpline)
    assert sitk.GetArrayFromImage(cubic)[0, 0, :3].tolist() == [121, 159, 0]  # 121.1, 159.4, -25.5 clamped, not 230
    assert "rounded to the nearest integer and clamped to 0..255" in imageio.resampled_values_note(spike)


# ---------------------------------------------------------------- DICOM folders with several series (item 2)


def write_dicom_series(image, folder, uid, description, prefix):
    """Write `image` as an int16 MR DICOM series (one file per slice) with the given SeriesInstanceUID."""
    image = sitk.Cast(image, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        tags = {"0020|000e": uid, "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0008|0060": "MR",
                "0008|103e": description, "0020|0013": str(k + 1), "0008|0018": f"{uid}.{k + 1}",
                "0020|0032": "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))),
                "0020|0037": "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7])))}
        for tag, value in tags.items():
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(piece)


MPRAGE_UID, LOCALIZER_UID = "1.2.826.0.1.3680043.2.1125.10", "1.2.826.0.1.3680043.2.1125.11"


@pytest.fixture
def two_series_folder(tmp_path, small_pair):
    """A DICOM folder holding a 70-slice 'T1 MPRAGE' and a 20-slice 'localizer'."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_dicom_series(small_pair[0], folder, MPRAGE_UID, "T1 MPRAGE", "a")
    write_dicom_series(small_pair[0][:, :, 10:30], folder, LOCALIZER_UID, "localizer", "b")
    return folder


def test_dicom_folder_with_several_series_says_which_and_why(two_series_folder):
    loaded = imageio.read_image(two_series_folder)
    assert loaded.image.GetSize() == (62, 80, 70) and loaded.hints["SeriesDescription"] == "T1 MPRAGE"
    assert loaded.series.message(two_series_folder) == (
        f'{two_series_folder}: using DICOM series {MPRAGE_UID} ("T1 MPRAGE", 70 files), the one with the most slices; '
        f'the folder also holds {LOCALIZER_UID} ("localizer", 20 files)')
    assert len(loaded.files) == 70
    asked = imageio.read_image(two_series_folder, LOCALIZER_UID)
    assert asked.image.GetSize() == (62, 80, 20) and asked.series.reason == "the series asked for"
    with pytest.raises(InvalidInputError, match=f"holds no DICOM series 1.2.3; its series are {MPRAGE_UID}"):
        imageio.read_image(two_series_folder, "1.2.3")
