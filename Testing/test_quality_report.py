"""The quality-control report (issue 15): index.html and PNG pictures for a linear and a deformable result.

The PNGs are opened with SimpleITK: their size is the layout's, the 'before' and 'after' pictures differ
(the moving image's edges move onto the fixed image's), the deformation pictures exist only for a deformable
result.  The command line writes the report atomically with its other outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, SAMPLE_DATA
from test_apply import _bump_field
from OneClickRegistrationLib import cli, evaluation, imageio, quality_report, register
from OneClickRegistrationLib.demo import DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM
from OneClickRegistrationLib.modality import ModalityGuess
from OneClickRegistrationLib.pipeline import RegistrationResult, StageResult
from OneClickRegistrationLib.presets import load_preset_table

PLANES_WIDTH = 3 * quality_report.PANEL + 4 * quality_report.GAP
HEIGHT = quality_report.PANEL + quality_report.CAPTION_ROW + quality_report.GAP
LINEAR_PICTURES = {"before.png": PLANES_WIDTH, "after.png": PLANES_WIDTH, "checkerboard.png": PLANES_WIDTH}
DEFORMATION_PICTURES = {"deformation.png": PLANES_WIDTH + quality_report.COLOUR_BAR,
                        "jacobian.png": PLANES_WIDTH + quality_report.COLOUR_BAR}


def _demo_case(folder, bend: bool):
    """The 2 mm sample pair as files: the T1, and the T2 (bent by a 5 mm bump when `bend`) moved by the demo's
    known motion in its header.  Returns (fixed path, moving path)."""
    fixed, t2 = (sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")), [2, 2, 2]) for name in ("T1", "T2"))
    centre = imageio.mask_center(imageio.head_mask(imageio.as_float32(fixed)))
    if bend:
        t2 = sitk.Resample(t2, t2, _bump_field(t2, centre + (15, 10, 20), (4.0, -3.0, 2.0), 18.0), sitk.sitkLinear, 0.0)
    moving = evaluation.move_header(t2, evaluation.rigid_transform(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, centre))
    paths = folder / "T1.nii.gz", folder / ("T2_bent.nii.gz" if bend else "T2.nii.gz")
    for image, path in zip((fixed, moving), paths):
        sitk.WriteImage(image, str(path))
    return paths


def _picture(path) -> np.ndarray:
    """An RGB(A) PNG as an (H, W, channels) uint8 array."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _red(picture: np.ndarray) -> np.ndarray:
    return (picture[..., 0] > 200) & (picture[..., 1] < 90) & (picture[..., 2] < 90)


def _check_pictures(folder, expected: dict) -> None:
    """Exactly the expected PNGs and index.html, each PNG of its layout's size; before and after differ."""
    assert sorted(path.name for path in folder.iterdir()) == sorted([*expected, "index.html"])
    for name, width in expected.items():
        picture = _picture(folder / name)
        assert picture.shape[:2] == (HEIGHT, width), name
        assert picture[..., :3].std() > 20, f"{name} is blank"
    before, after = _picture(folder / "before.png"), _picture(folder / "after.png")
    assert _red(before).sum() > 1000 and _red(after).sum() > 1000  # the moving image's edges in both
    assert np.mean(np.any(before != after, axis=-1)) > 0.02
    assert np.mean(_red(before) & _red(after)) < 0.5 * np.mean(_red(after))  # the edges moved


@pytest.fixture(scope="module")
def deformable_run(tmp_path_factory):
    """The command line with --qc on the bent pair: all stages, the deformable one kept."""
    folder = tmp_path_factory.mktemp("deformable")
    fixed, moving = _demo_case(folder, bend=True)
    out = folder / "out"
    assert cli.main([str(fixed), str(moving), "-o", str(out), "--qc", str(out / "qc"), "-q"]) == 0
    return out


def test_qc_of_a_deformable_result_has_the_deformation_pictures(deformable_run):
    qc = deformable_run / "qc"
    report = json.loads((deformable_run / "T2_bent_report.json").read_text())
    assert report["stages"][-1]["name"] == "deformable" and report["stages"][-1]["accepted"]
    assert report["quality_report"] == str(qc / "index.html")
    _check_pictures(qc, {**LINEAR_PICTURES, **DEFORMATION_PICTURES})
    jacobian = _picture(qc / "jacobian.png")[..., :3].astype(int)
    stretched = (jacobian[..., 0] - jacobian[..., 2] > 30).sum()
    compressed = (jacobian[..., 2] - jacobian[..., 0] > 30).sum()
    assert stretched > 500 and compressed > 500  # a bump pushes tissue together on one side, apart on the other
    deformation = _picture(qc / "deformation.png")[..., :3]
    assert (deformation.min(axis=-1) > 200).sum() > 2000  # the white grid lines


def test_qc_page_is_self_contained_with_the_stages_verdicts_and_modalities(deformable_run):
    page = (deformable_run / "qc" / "index.html").read_text(encoding="utf-8")
    report = json.loads((deformable_run / "T2_bent_report.json").read_text())
    assert page.count('src="data:image/png;base64,') == len(LINEAR_PICTURES) + len(DEFORMATION_PICTURES)
    assert "http" not in page and "<script" not in page and "<link" not in page
    assert "T2_bent onto T1" in page and f"Verdict: <strong class=\"{report['verdict'].replace(' ', '-')}\">" in page
    for stage in report["stages"]:
        assert f"<td>{stage['name']}</td><td>{stage['score']:.4f}</td>" in page
        assert stage["verdict"] in page
    assert f"<td>{report['fixed']['modality']} (" in page and f"<td>{report['moving']['modality']} (" in page


def test_qc_of_a_linear_result_from_the_python_api(tmp_path):
    """result.quality_report(folder): no deformation pictures for a rigid result."""
    fixed, moving = _demo_case(tmp_path, bend=False)
    result = register(sitk.ReadImage(str(fixed)), sitk.ReadImage(str(moving)), stages=("rigid",))
    index = result.quality_report(tmp_path / "qc")
    assert index == tmp_path / "qc" / "index.html"
    _check_pictures(tmp_path / "qc", LINEAR_PICTURES)
    assert "<td>rigid</td>" in index.read_text(encoding="utf-8")


def test_qc_of_a_1mm_head_takes_under_two_seconds():
    """The bundled 1 mm head (T2 onto T1 through the demo's motion and a 5 mm bump of deformation): the whole
    report, five pictures and the page, in under 2 s (the best of two; matplotlib already imported)."""
    fixed = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))
    centre = imageio.mask_center(imageio.head_mask(imageio.as_float32(fixed)))
    motion = evaluation.rigid_transform(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, centre)
    moving = evaluation.move_header(sitk.ReadImage(str(SAMPLE_DATA / "T2.nii.gz")), motion)
    bent = sitk.CompositeTransform([motion, _bump_field(sitk.BinShrink(fixed, [2, 2, 2]), centre, (3.0, 0, 0), 15.0)])
    guess = ModalityGuess("T1", 1.0, "given", "caller")
    stages = [StageResult("rigid", motion, 0.8, True, 1.0, verdict="good"),
              StageResult("deformable", bent, 0.82, True, 1.0, verdict="good")]
    result = RegistrationResult(
        transform=bent, inverse_transform=motion.GetInverse(), resampled_moving=fixed, fixed_modality=guess,
        moving_modality=ModalityGuess("T2", 1.0, "given", "caller"), preset=load_preset_table().lookup("T1", "T2"),
        initial_score=0.2, stages=stages, fixed_image=fixed, moving_image=moving)
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        files = quality_report.quality_report_files(result)
        seconds.append(time.perf_counter() - start)
    print(f"quality report of a 1 mm head: {min(seconds):.2f} s")
    assert set(files) == {*LINEAR_PICTURES, *DEFORMATION_PICTURES, "index.html"}
    assert min(seconds) < 2.0


# ------------------------------------------------------------------ the command line: refused, or nothing left


def test_bad_qc_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    fixed, moving = _demo_case(tmp_path, bend=False)
    (tmp_path / "a_file").write_text("not a folder")
    before = sorted(tmp_path.iterdir())
    assert cli.main([str(fixed), str(moving), "-o", str(tmp_path / "out"), "--qc", str(tmp_path / "a_file")]) == 2
    error = capsys.readouterr().err.strip()
    assert "--qc" in error and "is a file" in error and "\n" not in error
    real_find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *args: None if name == "matplotlib" else real_find_spec(name, *args))
    assert cli.main([str(fixed), str(moving), "-o", str(tmp_path / "out"), "--qc", str(tmp_path / "qc")]) == 2
    error = capsys.readouterr().err.strip()
    assert 'pip install "oneclickregistration[qc]"' in error and "\n" not in error
    assert sorted(tmp_path.iterdir()) == before


def test_a_report_that_fails_to_draw_leaves_no_output(tmp_path, monkeypatch):
    """The report is staged with the transform, the volumes and the JSON report: if drawing fails, none of
    them, and no folder the run created, is left."""
    fixed, moving = _demo_case(tmp_path, bend=False)

    def broken(result, title=None):
        raise RuntimeError("the drawing failed")

    monkeypatch.setattr(quality_report, "quality_report_files", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the drawing failed"):
        cli.main([str(fixed), str(moving), "-o", str(out), "--stages", "rigid", "-q", "--qc", str(out / "qc")])
    assert not out.exists()


def test_the_library_imports_and_carries_images_without_matplotlib():
    """matplotlib is optional: register(), apply and the command line's modules load without it."""
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "import SimpleITK as sitk\n"
            "from OneClickRegistrationLib import applying, cli, pipeline\n"
            "image = sitk.GaussianSource(sitk.sitkUInt8, [20, 20, 20], [4, 4, 4], [10, 10, 10], 200)\n"
            "applying.apply_transform(sitk.Euler3DTransform(), image, image)\n"
            "print(sorted(name for name in sys.modules if name.startswith('matplotlib') and sys.modules[name]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "OneClickRegistration")))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
