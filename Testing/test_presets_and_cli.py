"""The bundled preset table, its validation, and the command line end to end."""

from __future__ import annotations

import itertools
import json

import jsonschema
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_DATA, shared_file
from OneClickRegistrationLib import InvalidInputError, cli, evaluation, imageio, presets
from OneClickRegistrationLib.modality import MODALITIES

# On every Slicer release's Python stack too (`make test`, pytest -m stack).
pytestmark = pytest.mark.stack


def _table_document():
    return json.loads(presets.BUNDLED_TABLE.read_text())


def test_bundled_table_has_one_row_per_unordered_pair():
    table = presets.load_preset_table()
    assert len(table.rows) == 11  # ten pairs of real modalities and the agnostic row
    for a, b in itertools.combinations_with_replacement(MODALITIES, 2):
        assert table.lookup(a, b) is table.lookup(b, a)


def test_bundled_table_matches_its_json_schema():
    schema = json.loads((presets.BUNDLED_TABLE.parent / "presets.schema.json").read_text())
    jsonschema.validate(_table_document(), schema)


@pytest.mark.parametrize("mutate,expected", [
    (lambda doc: doc["presets"].pop(0), "lacks rows for T1-T1"),
    (lambda doc: doc["presets"][3]["linear"].pop("histogram_bins"), r"row 4 \(T1-CT\).*histogram_bins"),
    (lambda doc: doc["presets"][0]["linear"].update(metric="ssd"), r"row 1 \(T1-T1\).*metric 'ssd'"),
    (lambda doc: doc["presets"][1].update(modalities=["T1", "PET"]), r"row 2 \(T1-T2\).*modalities"),
    (lambda doc: doc["presets"][2]["linear"].update(shrink_factors=[4, 2]), r"row 3.*one entry per level"),
    (lambda doc: doc["presets"].append(dict(doc["presets"][0])), r"row 12 \(T1-T1\) repeats"),
])
def test_bad_user_table_names_the_row(tmp_path, mutate, expected):
    document = _table_document()
    mutate(document)
    path = tmp_path / "table.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InvalidInputError, match=expected):
        presets.load_preset_table(path)


def test_user_table_without_the_agnostic_row_uses_the_bundled_one(tmp_path):
    """A table written before the modality-agnostic row existed still loads; unknown pairs get the bundled row."""
    document = _table_document()
    document["presets"] = [row for row in document["presets"] if row["modalities"] != ["unknown", "unknown"]]
    path = tmp_path / "older table.json"
    path.write_text(json.dumps(document))
    table = presets.load_preset_table(path)
    assert table.lookup("unknown", "T1") == presets.load_preset_table().lookup("unknown", "unknown")
    assert table.lookup("T1", "CT").name == "T1-CT"


def test_table_that_is_not_json(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("{ not json")
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        presets.load_preset_table(path)


def test_identify_prints_one_line_per_image(capsys):
    paths = [shared_file("invesalius_ct0051/ct0051_head_CT.nii.gz"), SAMPLE_DATA / "FLAIR.nii.gz"]
    assert cli.main(["--identify", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["CT", "FLAIR"]
    assert all(len(line.split("\t")) == 4 for line in lines)


def test_command_line_registers_and_writes_transform_volume_report(tmp_path, capsys):
    """A CT template tilted 20 deg and shifted 15 mm in its header, registered to the T1 template."""
    fixed_path = shared_file("mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz")
    fixed = sitk.ReadImage(str(fixed_path))
    head = imageio.head_mask(imageio.as_float32(fixed))
    truth = evaluation.rigid_transform((20, 0, -10), (15, -5, 8), imageio.mask_center(head))
    moving_path = tmp_path / "moved_ct.nrrd"
    sitk.WriteImage(evaluation.move_header(
        sitk.ReadImage(str(shared_file("mni_templates_ct_t1_t2_pd/clinical_scct.nii.gz"))), truth), str(moving_path))
    out = tmp_path / "out"
    status = cli.main([str(fixed_path), str(moving_path), "-o", str(out), "--stages", "rigid,affine",
                       "--output-transform", str(out / "t.tfm"), "--report", str(out / "r.json")])
    printed = capsys.readouterr().out
    assert status == 0
    report = json.loads((out / "r.json").read_text())
    assert report["fixed"]["modality"] == "T1" and report["moving"]["modality"] == "CT"
    assert {"confidence", "reason"} <= report["fixed"].keys()
    assert report["preset"] == "T1-CT"
    assert [s["name"] for s in report["stages"]] == ["rigid", "affine"]
    assert all({"score", "accepted", "seconds"} <= s.keys() for s in report["stages"])
    assert report["output_transform"] == str(out / "t.tfm") and report["seconds"] > 0
    assert "preset: T1-CT" in printed and "rigid" in printed
    errors = evaluation.target_registration_error(
        sitk.ReadTransform(str(out / "t.tfm")), truth, evaluation.mask_points(head))
    assert errors.mean() < 3.5  # the CT template's own offset to the T1 template is ~1.5 mm
    resampled = sitk.ReadImage(str(out / "moved_ct_registered.nii.gz"))
    assert resampled.GetSize() == fixed.GetSize() and resampled.GetOrigin() == fixed.GetOrigin()


def test_demo_recovers_the_known_motion_of_the_bundled_pair(tmp_path, capsys):
    """`make demo`'s code path on the bundled sample pair (rigid only, to stay quick)."""
    from OneClickRegistrationLib import demo

    assert demo.main(["--output", str(tmp_path), "--stages", "rigid"]) == 0
    printed = capsys.readouterr().out
    median = float(printed.split("median ")[-1].split(" mm")[0])
    assert median < 1.0
    assert (tmp_path / "T2_to_T1.h5").exists() and (tmp_path / "T2_misaligned_report.json").exists()
