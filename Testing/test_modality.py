"""Modality recognition: every real volume with its name hidden, in any intensity scale;
names and DICOM tags; volumes that must come out "unknown", and what the pipeline then does."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from conftest import SAMPLE_DATA, shared_file
from OneClickRegistrationLib import register
from OneClickRegistrationLib.errors import InvalidInputError
from OneClickRegistrationLib.modality import (MODALITIES, UNKNOWN, UNKNOWN_BELOW, ModalityGuess,
                                              identify_modality, parse_modality)
from OneClickRegistrationLib.presets import load_preset_table

# Every volume of ../shared/data (see its README): file, what it is, the answer
# expected from its content alone, and the scanner it came from.  PD is
# registered with the T2 presets, so the answer for PD is T2 (the reason says
# PD-like).  The MNI templates are population averages (smooth, 2 mm) but keep
# each contrast's tissue order, so they are expected to be recognised like
# single scans.  The porcine MR is a meat phantom in a box: no skull, brain or
# CSF, the anatomy the recognition reads, so the honest answer is "unknown"
# (its registration to the porcine CT then uses the agnostic preset, whose
# linear stages are those of the T2-CT row, deformable stage off as there).
CASES = [
    ("philips_elition_adni_mprage/ADNI_Sag3D_MPRAGE_1mm.nii.gz", "T1", "T1", "Philips", "3D MPRAGE, whole head"),
    ("siemens_prisma_decubitus_t1/HFS_t1_fl2d_sag.nii.gz", "T1", "T1", "Siemens", "2D FLASH 4.8 mm slices, supine"),
    ("siemens_prisma_decubitus_t1/HFP_t1_fl2d_sag.nii.gz", "T1", "T1", "Siemens", "2D FLASH 4.8 mm slices, prone"),
    ("siemens_xa30_t1w_2mm/anat-T1w_acq-tfl_6.nii.gz", "T1", "T1", "Siemens", "MPRAGE 2 mm, head and neck"),
    ("uih_umr770_t1_two_sessions/ses1_t1_gre_fsp_3d_sag_binshrink4x4x2.nii.gz", "T1", "T1", "UIH",
     "IR spoiled GRE, noise floor"),
    ("uih_umr770_t1_two_sessions/ses2_t1_gre_fsp_3d_sag_binshrink4x4x2.nii.gz", "T1", "T1", "UIH",
     "IR spoiled GRE, second session"),
    ("ge_hispeed_ct_gantrytilt/ge_hispeed_head_ct_tiltcorr_4mm.nii.gz", "CT", "CT", "GE",
     "HiSpeed head CT, gantry tilt, -1500 padding"),
    ("mridir_porcine_ct_t2/mridir_porcine_CT_binshrink2x2x1.nii.gz", "CT", "CT", "GE",
     "Discovery CT750 HD, porcine phantom, -2048 padding"),
    ("mridir_porcine_ct_t2/mridir_porcine_MR_T2.nii.gz", "T2", UNKNOWN, "GE",
     "Discovery MR750 T2 of the porcine phantom (not a head)"),
    ("mne_sample_ecog_freesurfer_t1/sample_ecog_T1.nii.gz", "T1", "T1", "FreeSurfer-processed",
     "intensity-normalised T1, whole head"),
    ("chris_t1_pd/chris_t1.nii.gz", "T1", "T1", "McCausland Center", "MPRAGE-like, 8-bit"),
    ("chris_t1_pd/chris_PD.nii.gz", "PD", "T2", "McCausland Center", "2D PD, oblique slab"),
    ("cstar_stroke_t1_t2_flair/T1.nii.gz", "T1", "T1", "C-STAR 3T", "skull-stripped, stroke"),
    ("cstar_stroke_t1_t2_flair/T2.nii.gz", "T2", "T2", "C-STAR 3T", "skull-stripped, stroke"),
    ("cstar_stroke_t1_t2_flair/FLAIR.nii.gz", "FLAIR", "FLAIR", "C-STAR 3T", "skull-stripped, stroke"),
    ("invesalius_ct0051/ct0051_head_CT.nii.gz", "CT", "CT", "ProMED (InVesalius sample)", "head CT in HU"),
    ("mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz", "T1", "T1", "MNI template", "average of 152"),
    ("mni_templates_ct_t1_t2_pd/spm_avg152T2.nii.gz", "T2", "T2", "MNI template", "average of 152"),
    ("mni_templates_ct_t1_t2_pd/spm_avg152PD.nii.gz", "PD", "T2", "MNI template", "average of 152"),
    ("mni_templates_ct_t1_t2_pd/clinical_scct.nii.gz", "CT", "CT", "CT template", "smoothed, older adults"),
]
EXPECTED = {case[0]: case[2] for case in CASES}
CASE_IDS = [f"{case[3]}:{case[0].split('/')[-1]}" for case in CASES]

_cache: dict = {}


def _read(relative: str) -> sitk.Image:
    """A shared volume, read once per test session (skips when the data is missing)."""
    if relative not in _cache:
        _cache[relative] = sitk.ReadImage(str(shared_file(relative)))
    return _cache[relative]


def test_cases_cover_every_vendor():
    vendors = {case[3] for case in CASES}
    assert {"GE", "Philips", "Siemens", "UIH"} <= vendors
    assert {case[1] for case in CASES} == {"T1", "T2", "PD", "FLAIR", "CT"}


@pytest.mark.parametrize("relative, truth, expected, vendor, what", CASES, ids=CASE_IDS)
def test_every_shared_volume_by_content_alone(relative, truth, expected, vendor, what):
    guess = identify_modality(_read(relative))
    assert guess.modality == expected, (truth, what, str(guess))
    assert guess.source == "content" and guess.reason
    if expected == UNKNOWN:
        assert guess.confidence < UNKNOWN_BELOW
    else:
        assert UNKNOWN_BELOW <= guess.confidence <= 1.0


def _rescaled_0_1(image: sitk.Image) -> sitk.Image:
    """Intensities mapped linearly onto 0..1, as some exporters and toolboxes store them."""
    stats = sitk.StatisticsImageFilter()
    stats.Execute(image)
    low, high = stats.GetMinimum(), stats.GetMaximum()
    return (sitk.Cast(image, sitk.sitkFloat32) - low) / (high - low)


def _offset(image: sitk.Image, expected: str) -> sitk.Image:
    """A constant offset: +1000 for MR; a CT shifted to start at 0 (HU + 1024 storage)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    if expected != "CT":
        return image + 1000.0
    stats = sitk.StatisticsImageFilter()
    stats.Execute(image)
    return image - stats.GetMinimum()


@pytest.mark.parametrize("variant", ["0-1", "offset"])
@pytest.mark.parametrize("relative, truth, expected, vendor, what", CASES, ids=CASE_IDS)
def test_the_same_volumes_in_another_intensity_scale(relative, truth, expected, vendor, what, variant):
    image = _read(relative)
    changed = _rescaled_0_1(image) if variant == "0-1" else _offset(image, expected)
    assert identify_modality(changed).modality == expected


@pytest.mark.parametrize("relative", ["chris_t1_pd/chris_PD.nii.gz", "mni_templates_ct_t1_t2_pd/spm_avg152PD.nii.gz"])
def test_pd_is_reported_as_t2_pd_like(relative):
    guess = identify_modality(_read(relative))
    assert guess.modality == "T2" and "PD" in guess.reason


def test_reasons_say_which_physics_decided():
    t1 = identify_modality(_read("philips_elition_adni_mprage/ADNI_Sag3D_MPRAGE_1mm.nii.gz"))
    assert "dark CSF" in t1.reason and "white matter" in t1.reason and "dark skull" in t1.reason
    flair = identify_modality(_read("cstar_stroke_t1_t2_flair/FLAIR.nii.gz"))
    assert "grey matter brighter than white matter" in flair.reason
    t2 = identify_modality(_read("cstar_stroke_t1_t2_flair/T2.nii.gz"))
    assert "bright CSF" in t2.reason
    ct = identify_modality(_read("invesalius_ct0051/ct0051_head_CT.nii.gz"))
    assert "soft-tissue peak" in ct.reason and "bright band" in ct.reason


# --------------------------------------------------------------------------
# Names and DICOM tags
# --------------------------------------------------------------------------

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
    assert "content inconclusive" in guess.reason  # a 12-voxel cube shows no anatomy


@pytest.mark.parametrize("name", ["Vector field", "Project image", "brain_act1", "spect", "scan 3", "T1_T2_mix"])
def test_words_that_name_nothing_fall_back_to_content(name, small_mr):
    guess = identify_modality(small_mr, {"name": name})
    assert guess.source == "content" and guess.modality == UNKNOWN and "too little" in guess.reason


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
    ({"Modality": "MR", "EchoTime": "15", "RepetitionTime": "3000"}, "T2"),  # proton density
    ({"Modality": "PT", "SeriesDescription": "Brain FDG T1 AC"}, UNKNOWN),
    ({"Modality": "NM"}, UNKNOWN),
]


@pytest.mark.parametrize("tags, expected", TAG_SETS)
def test_dicom_tags(tags, expected, small_mr):
    guess = identify_modality(small_mr, tags)
    assert guess.modality == expected and guess.source == "tags", guess


def test_proton_density_timing_says_so(small_mr):
    guess = identify_modality(small_mr, {"Modality": "MR", "EchoTime": "15", "RepetitionTime": "3000"})
    assert "proton density" in guess.reason


def test_a_contrast_agent_is_named_in_the_reason(small_mr):
    guess = identify_modality(small_mr, {"Modality": "MR", "SeriesDescription": "Ax 3D T1 post",
                                         "ContrastBolusAgent": "Gadovist"})
    assert guess.modality == "T1" and "contrast agent Gadovist" in guess.reason


def test_dicom_ct_wins_over_a_name_and_the_content():
    guess = identify_modality(_read("cstar_stroke_t1_t2_flair/T1.nii.gz"), {"Modality": "CT", "name": "T1"})
    assert guess.modality == "CT" and guess.confidence >= 0.95


def test_dicom_mr_rules_out_ct_from_content():
    guess = identify_modality(_read("mridir_porcine_ct_t2/mridir_porcine_CT_binshrink2x2x1.nii.gz"),
                              {"Modality": "MR"})
    assert guess.modality != "CT" and "MR" in guess.reason


def test_content_overrules_a_wrong_name_and_says_so():
    guess = identify_modality(_read("invesalius_ct0051/ct0051_head_CT.nii.gz"), {"name": "T1_brain"})
    assert guess.modality == "CT" and "contradicts" in guess.reason


def test_a_name_decides_when_the_content_cannot():
    guess = identify_modality(_read("mridir_porcine_ct_t2/mridir_porcine_MR_T2.nii.gz"), {"name": "T2 porcine"})
    assert guess.modality == "T2" and guess.source == "name" and "content inconclusive" in guess.reason


# --------------------------------------------------------------------------
# Changes that keep the modality: storage, resolution, orientation, field of view
# --------------------------------------------------------------------------

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


def _tilted(image, degrees=25.0):
    """The head tilted in the header (about its centre), as a patient lies in the scanner."""
    tilted = sitk.Image(image)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(np.radians(degrees), 0.0, np.radians(degrees / 2))
    matrix = np.array(rotation.GetMatrix()).reshape(3, 3)
    tilted.SetDirection((matrix @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    tilted.SetOrigin((centre + matrix @ (np.array(image.GetOrigin()) - centre)).tolist())
    return tilted


def _cropped(image):
    size = image.GetSize()
    start = [n // 8 for n in size]
    return sitk.RegionOfInterest(image, [n - 2 * s for n, s in zip(size, start)], start)


def _as_uint8(image):
    return sitk.Cast(sitk.RescaleIntensity(sitk.Cast(image, sitk.sitkFloat32), 0, 255), sitk.sitkUInt8)


PERTURBATIONS = {
    "uint8 0-255": _as_uint8,
    "x10": lambda im: _scaled(im, 10.0),
    "2mm": lambda im: _resampled(im, [2.0, 2.0, 2.0]),
    "1x1x5mm slices": lambda im: _resampled(im, [1.0, 1.0, 5.0]),
    "5x1x1mm slices": lambda im: _resampled(im, [5.0, 1.0, 1.0]),
    "flipped axes": _flipped_direction,
    "tilted 25 deg": _tilted,
}
ROBUSTNESS_CASES = [
    "siemens_xa30_t1w_2mm/anat-T1w_acq-tfl_6.nii.gz",
    "chris_t1_pd/chris_PD.nii.gz",
    "cstar_stroke_t1_t2_flair/T2.nii.gz",
    "cstar_stroke_t1_t2_flair/FLAIR.nii.gz",
    "invesalius_ct0051/ct0051_head_CT.nii.gz",
]


@pytest.mark.parametrize("relative", ROBUSTNESS_CASES)
@pytest.mark.parametrize("perturbation", sorted(PERTURBATIONS))
def test_modality_survives_changes_that_keep_it(relative, perturbation):
    guess = identify_modality(PERTURBATIONS[perturbation](_read(relative)))
    assert guess.modality == EXPECTED[relative], (perturbation, str(guess))


@pytest.mark.parametrize("relative", ["siemens_xa30_t1w_2mm/anat-T1w_acq-tfl_6.nii.gz",
                                      "mni_templates_ct_t1_t2_pd/spm_avg152T2.nii.gz",
                                      "invesalius_ct0051/ct0051_head_CT.nii.gz"])
def test_a_smaller_field_of_view_keeps_whole_head_modalities(relative):
    """The field of view cut by an eighth on every side: vertex, face and neck partly lost."""
    assert identify_modality(_cropped(_read(relative))).modality == EXPECTED[relative]


# --------------------------------------------------------------------------
# What must come out unknown, and what the pipeline then does
# --------------------------------------------------------------------------

def _smooth_blob() -> sitk.Image:
    """A head-sized ellipsoid whose intensity falls off smoothly, with mild noise: no tissues."""
    grid = np.indices((120, 150, 130), dtype=np.float32)
    centre = np.array([60, 75, 65], dtype=np.float32)[:, None, None, None]
    axes = np.array([55, 70, 60], dtype=np.float32)[:, None, None, None]
    blob = np.exp(-1.5 * (((grid - centre) / axes) ** 2).sum(axis=0))
    blob += 0.02 * np.random.default_rng(1).standard_normal(blob.shape).astype(np.float32)
    return sitk.GetImageFromArray(blob.astype(np.float32))


def _noise_cube() -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(2).random((96, 96, 96)).astype(np.float32))


def _pet_like(t1: sitk.Image) -> sitk.Image:
    """A PET-like copy of a scan: uniform activity in its brain, blurred to PET resolution
    (about 9 mm FWHM), with counting noise; the same grid and physical space as the scan."""
    brain = (sitk.GetArrayFromImage(t1) > 0).astype(np.float32)
    activity = ndi.gaussian_filter(brain, 4.0)
    counts = np.random.default_rng(3).poisson(activity * 20.0).astype(np.float32) / 20.0
    pet = sitk.GetImageFromArray(counts)
    pet.CopyInformation(t1)
    return pet


def _bundled(name: str) -> sitk.Image:
    return sitk.ReadImage(str(SAMPLE_DATA / name))


@pytest.mark.parametrize("make, why", [
    (_smooth_blob, "no fine anatomical structure"),
    (_noise_cube, "no spatially coherent tissue"),
    (lambda: _pet_like(_bundled("T1.nii.gz")), "no fine anatomical structure"),
], ids=["smooth blob", "uniform-noise cube", "PET-like"])
def test_volumes_without_head_anatomy_are_unknown_with_the_reason(make, why):
    guess = identify_modality(make())
    assert guess.modality == UNKNOWN and not guess.known and guess.source == "content"
    assert why in guess.reason and guess.confidence < UNKNOWN_BELOW


def test_every_pair_with_an_unknown_side_gets_the_agnostic_row():
    table = load_preset_table()
    agnostic = table.lookup(UNKNOWN, UNKNOWN)
    assert agnostic.name == "agnostic" and agnostic.linear.metric == "mattes_mi"
    assert not agnostic.deformable_by_default
    for modality in MODALITIES:
        assert table.lookup(modality, UNKNOWN) is agnostic is table.lookup(UNKNOWN, modality)
        assert table.lookup(modality, modality) is not agnostic


def test_register_with_an_unknown_side_uses_the_agnostic_preset_and_reports_why():
    """The bundled T1 against a PET-like copy of it, moved by 6 mm: rigid and affine with
    Mattes MI, the deformable stage skipped by the preset, the report saying why."""
    t1 = _bundled("T1.nii.gz")
    pet = _pet_like(t1)
    pet.SetOrigin([o + d for o, d in zip(pet.GetOrigin(), (4.0, -3.0, 3.0))])
    result = register(t1, pet)
    assert result.preset.name == "agnostic"
    assert result.fixed_modality.modality == "T1" and result.moving_modality.modality == UNKNOWN
    assert [stage.name for stage in result.stages] == ["rigid", "affine"]
    assert result.score > result.initial_score
    moving = result.report()["moving"]
    assert moving["modality"] == UNKNOWN and "fine anatomical structure" in moving["reason"]
    assert {"confidence", "source"} <= moving.keys()
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    shift = np.array(result.transform.TransformPoint(centre.tolist())) - centre
    assert np.abs(shift - (4.0, -3.0, 3.0)).max() < 2.0  # the PET-like copy found where it was moved


def test_guess_as_dict_and_str_carry_modality_confidence_and_reason():
    guess = ModalityGuess(UNKNOWN, 0.42, "evidence too weak", "content")
    assert guess.as_dict() == {"modality": UNKNOWN, "confidence": 0.42, "reason": "evidence too weak",
                               "source": "content"}
    assert str(guess) == "unknown (42%: evidence too weak)"


@pytest.mark.parametrize("text, expected", [("t1", "T1"), (" Flair ", "FLAIR"), ("ct", "CT"), ("T2", "T2")])
def test_parse_modality(text, expected):
    assert parse_modality(text) == expected in MODALITIES


@pytest.mark.parametrize("text", ["PD", "", "MR", "T3", "unknown"])
def test_parse_modality_rejects_unknown_names(text):
    with pytest.raises(InvalidInputError, match="unknown modality"):
        parse_modality(text)


@pytest.fixture
def small_mr():
    """A tiny synthetic image: content says little, so names and tags must decide."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32))
    return image
