"""Modality recognition: real volumes with names hidden, names and DICOM tags, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from OneClickRegistrationLib.errors import InvalidInputError
from OneClickRegistrationLib.modality import MODALITIES, identify_modality, parse_modality

TRUTH = {
    "chris_t1_pd/chris_t1.nii.gz": "T1",
    "chris_t1_pd/chris_PD.nii.gz": "T2",
    "cstar_stroke_t1_t2_flair/T1.nii.gz": "T1",
    "cstar_stroke_t1_t2_flair/T2.nii.gz": "T2",
    "cstar_stroke_t1_t2_flair/FLAIR.nii.gz": "FLAIR",
    "invesalius_ct0051/ct0051_head_CT.nii.gz": "CT",
    "mridir_porcine_ct_t2/mridir_porcine_CT_binshrink2x2x1.nii.gz": "CT",
    "mridir_porcine_ct_t2/mridir_porcine_MR_T2.nii.gz": "T2",
    "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz": "T1",
    "mni_templates_ct_t1_t2_pd/spm_avg152T2.nii.gz": "T2",
    "mni_templates_ct_t1_t2_pd/spm_avg152PD.nii.gz": "T2",
    "mni_templates_ct_t1_t2_pd/clinical_scct.nii.gz": "CT",
}

_cache: dict = {}


def _read(relative: str) -> sitk.Image:
    if relative not in _cache:
        _cache[relative] = sitk.ReadImage(str(shared_file(relative)))
    return _cache[relative]


@pytest.mark.parametrize("relative, expected", sorted(TRUTH.items()))
def test_every_shared_volume_by_content_alone(relative, expected):
    guess = identify_modality(_read(relative))
    assert guess.modality == expected, guess
    assert guess.source == "content"
    assert 0.5 <= guess.confidence <= 1.0 and guess.reason


def test_pd_is_reported_as_t2_pd_like():
    guess = identify_modality(_read("chris_t1_pd/chris_PD.nii.gz"))
    assert guess.modality == "T2" and "PD" in guess.reason


NAMES = [
    ("T1", "T1"), ("sub-01_T1w.nii.gz", "T1"), ("sag 3D MPRAGE", "T1"), ("AX FSPGR BRAVO", "T1"),
    ("T1 TFE 3D", "T1"), ("t1_mprage_sag_p2_iso", "T1"), ("spm_avg152T1", "T1"), ("T1C+ post gad", "T1"),
    ("Ax T1 FLAIR", "T1"), ("T2", "T2"), ("sub-01_T2w", "T2"), ("AX T2 TSE", "T2"), ("t2_tse_tra", "T2"),
    ("Ax FSE", "T2"), ("PD", "T2"), ("chris_PD", "T2"), ("FLAIR", "FLAIR"), ("AX T2 FLAIR", "FLAIR"),
    ("t2_tirm_tra_dark-fluid", "FLAIR"), ("DARK-FLUID", "FLAIR"), ("sub-01_FLAIR", "FLAIR"),
    ("CT", "CT"), ("ct0051_head_CT", "CT"), ("Head CT 5mm", "CT"), ("CBCT", "CT"),
]


@pytest.mark.parametrize("name, expected", NAMES)
def test_names(name, expected, small_mr):
    guess = identify_modality(small_mr, {"name": name})
    assert guess.modality == expected, (name, guess)


@pytest.mark.parametrize("name", ["Vector field", "Project image", "brain_act1", "spect", "scan 3", "T1_T2_mix"])
def test_words_that_name_nothing_fall_back_to_content(name, small_mr):
    assert identify_modality(small_mr, {"name": name}).source == "content"


TAG_SETS = [
    ({"Modality": "CT", "SeriesDescription": "T1 MPRAGE"}, "CT"),
    ({"Modality": "CT"}, "CT"),
    ({"Modality": "MR", "SeriesDescription": "Ax T2 FLAIR"}, "FLAIR"),
    ({"Modality": "MR", "ProtocolName": "t1_mprage_sag"}, "T1"),
    ({"Modality": "MR", "SequenceName": "*tfl3d1_16ns"}, "T1"),
    ({"Modality": "MR", "SeriesDescription": "AX T2 FSE"}, "T2"),
    ({"Modality": "MR", "EchoTime": "120", "RepetitionTime": "9000", "InversionTime": "2500"}, "FLAIR"),
    ({"Modality": "MR", "EchoTime": "2.3", "RepetitionTime": "2300", "InversionTime": "900"}, "T1"),
    ({"Modality": "MR", "EchoTime": "98", "RepetitionTime": "6285"}, "T2"),
    ({"Modality": "MR", "EchoTime": "12", "RepetitionTime": "500"}, "T1"),
]


@pytest.mark.parametrize("tags, expected", TAG_SETS)
def test_dicom_tags(tags, expected, small_mr):
    guess = identify_modality(small_mr, tags)
    assert guess.modality == expected and guess.source == "tags", guess


def test_dicom_ct_wins_over_a_name_and_the_content():
    image = _read("cstar_stroke_t1_t2_flair/T1.nii.gz")
    guess = identify_modality(image, {"Modality": "CT", "name": "T1"})
    assert guess.modality == "CT" and guess.confidence >= 0.95


def test_dicom_mr_rules_out_ct_from_content():
    image = _read("mridir_porcine_ct_t2/mridir_porcine_CT_binshrink2x2x1.nii.gz")
    guess = identify_modality(image, {"Modality": "MR"})
    assert guess.modality != "CT" and "MR" in guess.reason


def test_content_overrules_a_wrong_name_and_says_so():
    guess = identify_modality(_read("invesalius_ct0051/ct0051_head_CT.nii.gz"), {"name": "T1_brain"})
    assert guess.modality == "CT" and "contradicts" in guess.reason


def _scaled(image, factor, offset=0.0):
    return sitk.Cast(image, sitk.sitkFloat32) * factor + offset


def _resampled(image, spacing):
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, image.GetPixelID())


def _flipped_direction(image):
    flipped = sitk.Flip(image, [True, False, True])
    direction = np.array(image.GetDirection()).reshape(3, 3) @ np.diag([-1, 1, -1])
    flipped.SetDirection(direction.ravel().tolist())
    return flipped


def _cropped(image):
    size = image.GetSize()
    start = [n // 8 for n in size]
    return sitk.RegionOfInterest(image, [n - 2 * s for n, s in zip(size, start)], start)


def _as_uint8(image):
    return sitk.Cast(sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0, 255), sitk.sitkUInt8)


def _as_int16(image):
    """Integer storage; 0..1 templates are first stretched to 0..1000 as a scanner would store them."""
    stats = sitk.StatisticsImageFilter()
    stats.Execute(image)
    if stats.GetMaximum() - stats.GetMinimum() < 100:
        image = sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0, 1000)
    return sitk.Cast(image, sitk.sitkInt16)


PERTURBATIONS = {
    "uint8": _as_uint8,
    "int16": _as_int16,
    "float": lambda im: sitk.Cast(im, sitk.sitkFloat32),
    "x0.5": lambda im: _scaled(im, 0.5),
    "x10": lambda im: _scaled(im, 10.0),
    "2mm": lambda im: _resampled(im, [2.0, 2.0, 2.0]),
    "1x1x3mm": lambda im: _resampled(im, [1.0, 1.0, 3.0]),
    "flipped": _flipped_direction,
    "cropped": _cropped,
}
ROBUSTNESS_CASES = [
    "chris_t1_pd/chris_t1.nii.gz",
    "cstar_stroke_t1_t2_flair/T2.nii.gz",
    "cstar_stroke_t1_t2_flair/FLAIR.nii.gz",
    "invesalius_ct0051/ct0051_head_CT.nii.gz",
    "mni_templates_ct_t1_t2_pd/spm_avg152PD.nii.gz",
]


@pytest.mark.parametrize("relative", ROBUSTNESS_CASES)
@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
def test_modality_survives_changes_that_keep_it(relative, perturbation):
    image = PERTURBATIONS[perturbation](_read(relative))
    guess = identify_modality(image)
    assert guess.modality == TRUTH[relative], (perturbation, guess)


@pytest.mark.parametrize("relative", [r for r in ROBUSTNESS_CASES if TRUTH[r] != "CT"])
def test_mr_survives_an_intensity_offset(relative):
    image = _scaled(_read(relative), 1.0, 100.0)
    assert identify_modality(image).modality == TRUTH[relative]


@pytest.mark.parametrize("text, expected", [("t1", "T1"), (" Flair ", "FLAIR"), ("ct", "CT"), ("T2", "T2")])
def test_parse_modality(text, expected):
    assert parse_modality(text) == expected in MODALITIES


@pytest.mark.parametrize("text", ["PD", "", "MR", "T3"])
def test_parse_modality_rejects_unknown_names(text):
    with pytest.raises(InvalidInputError, match="unknown modality"):
        parse_modality(text)


@pytest.fixture
def small_mr():
    """A tiny synthetic image: content says little, so names and tags must decide."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32))
    return image
