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
