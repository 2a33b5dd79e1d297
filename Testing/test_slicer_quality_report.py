"""The quality report (index.html and its PNG pictures) saved from Slicer: the logic, the panel's button,
and matplotlib asked for like numba.

The module runs against Slicer's own Python layer with the stand-ins for the compiled parts (see
test_slicer_module.py, whose fixtures these tests use).  The registrations are real (the worker
process, rigid only) on the bundled T1 at 2 mm, for speed; the tests of what happens before or
instead of drawing use two tiny volumes and no registration.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, SAMPLE_DATA
from test_slicer_module import (  # noqa: F401  (env, scene, widget and fake_python_slicer are fixtures)
    env, fake_python_slicer, pair_in_scene, run_event_loop, scene, widget)

REPORT_FILES = ["after.png", "before.png", "checkerboard.png", "index.html"]  # of a linear result
FOLDER_DIALOG_CAPTION = "Folder for the quality report"


@pytest.fixture(scope="module")
def small_t1_path(tmp_path_factory):
    """The bundled 1 mm T1 averaged to 2 mm voxels: an eighth of the voxels, the same head."""
    path = tmp_path_factory.mktemp("data") / "T1_2mm.nii.gz"
    sitk.WriteImage(sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz")), [2, 2, 2]), str(path))
    return path


@pytest.fixture(autouse=True)
def folder_dialog(env):
    """qt.QFileDialog with no scripted answer (an unexpected dialog raises) and no dialog shown yet."""
    qt = env[2]
    qt.QFileDialog.scriptedAnswers = []
    qt.QFileDialog.shown = []
    return qt.QFileDialog


@pytest.fixture
def matplotlib_missing(monkeypatch):
    """matplotlib cannot be imported (as in a stock Slicer)."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


@pytest.fixture
def logic(env):
    return env[1].OneClickRegistrationLogic()


@pytest.fixture
def undrawn_outcome(scene, env):
    """An outcome of two tiny volumes and no result, for the tests that stop before or replace the drawing."""
    fixed = scene.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name="fixed")
    moving = scene.util.addVolumeFromArray(np.zeros((4, 4, 4), np.float32), name="moving")
    return env[1].OneClickRegistrationOutcome(result=None, fixedVolumeNode=fixed, movingVolumeNode=moving,
                                              transformNode=None)


def files_under(folder) -> list:
    """Every file and folder under `folder`, relative to it, sorted."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def check_pictures(folder) -> None:
    """Each PNG is an image SimpleITK reads, over 100 pixels each way; before and after differ."""
    pictures = {path.name: sitk.ReadImage(str(path)) for path in folder.glob("*.png")}
    for name, picture in pictures.items():
        assert min(picture.GetSize()[:2]) > 100, (name, picture.GetSize())
    before, after = (sitk.GetArrayFromImage(pictures[name]) for name in ("before.png", "after.png"))
    assert before.shape == after.shape and not np.array_equal(before, after)


def registered_panel(widget, scene, t1_path):
    """The panel after a rigid registration of a T1 and a moved copy, run from its Register button."""
    ui = widget.ui
    fixed, moving, _motion = pair_in_scene(scene, t1_path)
    ui.fixedVolumeSelector.setCurrentNode(fixed)
    ui.movingVolumeSelector.setCurrentNode(moving)
    ui.affineCheckBox.checked = ui.deformableCheckBox.checked = False
    assert not ui.saveQualityReportButton.enabled
    ui.registerButton.click()
    assert not ui.saveQualityReportButton.enabled  # locked while the registration runs
    run_event_loop(scene, lambda: not widget.isRunning(), timeout=120)
    assert widget.lastOutcome is not None, ui.statusLabel.text
    return ui


# --- the logic, from the Python console ------------------------------------------------------------


def test_logic_saves_the_report_of_a_real_registration_atomically(scene, logic, small_t1_path, tmp_path):
    fixed, moving, _motion = pair_in_scene(scene, small_t1_path)
    outcome = logic.register(fixed, moving, stages=("rigid",), fixedModality="T1", movingModality="T1")
    target = tmp_path / "reports" / "case 1"  # neither folder exists yet

    index = logic.saveQualityReport(outcome, target)

    assert index == target / "index.html"
    assert files_under(tmp_path) == ["reports", "reports/case 1"] + [f"reports/case 1/{name}" for name in REPORT_FILES]
    check_pictures(target)
    page = index.read_text(encoding="utf-8")
    assert "Registration quality report: T1 moved onto T1" in page
    assert page.count('src="data:image/png;base64,') == 3
    (tmp_path / "made by mkdir").mkdir()  # the renamed folder has the usual permissions, not a temporary folder's
    assert target.stat().st_mode & 0o777 == (tmp_path / "made by mkdir").stat().st_mode & 0o777

    (target / "before.png").write_bytes(b"an earlier report")
    (target / "my notes.txt").write_text("kept")
    assert logic.saveQualityReport(outcome, str(target)) == index  # into the folder that exists now
    assert sorted(path.name for path in target.iterdir()) == sorted(REPORT_FILES + ["my notes.txt"])
    assert (target / "before.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == ["case 1"]  # no folder left beside

    with pytest.raises(ValueError, match="is a file; choose a folder") as raised:
        logic.saveQualityReport(outcome, index)
    assert "\n" not in str(raised.value)


def test_a_failure_while_drawing_leaves_nothing(scene, logic, undrawn_outcome, tmp_path, monkeypatch):
    from OneClickRegistrationLib import quality_report

    def draw_one_picture_then_fail(result, directory, title=None):
        (directory / "before.png").write_bytes(b"half a report")
        raise OSError("No space left on device")

    monkeypatch.setattr(quality_report, "write_quality_report", draw_one_picture_then_fail)
    with pytest.raises(OSError, match="No space left"):
        logic.saveQualityReport(undrawn_outcome, tmp_path / "new" / "qc")
    assert files_under(tmp_path) == []  # not even the folder above it

    (tmp_path / "qc").mkdir()
    (tmp_path / "qc" / "my notes.txt").write_text("kept")
    with pytest.raises(OSError, match="No space left"):
        logic.saveQualityReport(undrawn_outcome, tmp_path / "qc")
    assert files_under(tmp_path) == ["qc", "qc/my notes.txt"]


# --- the panel --------------------------------------------------------------------------------------


def test_panel_button_needs_a_result_and_saves_the_report_in_the_chosen_folder(
        widget, scene, env, small_t1_path, tmp_path, folder_dialog):
    qt = env[2]
    ui = registered_panel(widget, scene, small_t1_path)
    button = ui.saveQualityReportButton
    assert button.enabled and button.text == "Save quality report..."
    done = ui.statusLabel.text

    folder_dialog.scriptedAnswers = [""]  # Cancel
    button.click()
    assert ui.statusLabel.text == done and files_under(tmp_path) == []

    folder = tmp_path / "QC of case 1"
    folder.mkdir()  # the dialog returns a folder that exists
    folder_dialog.scriptedAnswers = [str(folder)]
    button.click()

    assert folder_dialog.shown == [FOLDER_DIALOG_CAPTION] * 2
    assert ui.statusLabel.text == f"Quality report saved: {folder.resolve() / 'index.html'}"
    assert files_under(tmp_path) == ["QC of case 1"] + [f"QC of case 1/{name}" for name in REPORT_FILES]
    check_pictures(folder)
    assert qt.slotErrors == []

    ui.hardenButton.click()
    assert button.enabled  # the same result, hardened
    ui.undoButton.click()  # the harden
    ui.undoButton.click()  # the registration
    assert widget.lastOutcome is None and not button.enabled


# --- matplotlib asked for as numba is --------------------------------------------------------------


def test_panel_without_matplotlib_asks_first_and_declining_leaves_nothing_and_says_so(
        widget, scene, env, small_t1_path, tmp_path, folder_dialog, matplotlib_missing, fake_python_slicer):
    qt, ctk = env[2], env[3]
    ui = registered_panel(widget, scene, small_t1_path)  # registering does not need matplotlib
    folder = tmp_path / "reports" / "qc"
    folder.mkdir(parents=True)
    scene.app.testing = False
    ctk.ctkMessageBox.scriptedAnswers = [qt.QMessageBox.Cancel, qt.QMessageBox.Ok]
    folder_dialog.scriptedAnswers = [str(folder)]

    ui.saveQualityReportButton.click()

    consent, error = ctk.ctkMessageBox.shown
    assert "matplotlib" in consent and "install" in consent.lower() and "numpy" in consent
    assert error.startswith("The quality report was not saved.") and "declined" in error
    assert [type(e).__name__ for e in qt.slotErrors] == ["MissingDependencyError"]
    assert not fake_python_slicer.exists()  # nothing installed
    assert files_under(tmp_path / "reports") == ["qc"]  # nothing written
    assert ui.saveQualityReportButton.enabled and widget.lastOutcome is not None  # the user can try again


def test_accepting_installs_matplotlib_with_slicers_numpy_pinned(
        scene, logic, undrawn_outcome, env, tmp_path, matplotlib_missing, fake_python_slicer):
    from OneClickRegistrationLib.dependencies import MissingDependencyError

    qt, ctk = env[2], env[3]
    scene.app.testing = False
    ctk.ctkMessageBox.scriptedAnswers = [qt.QMessageBox.Ok]

    with pytest.raises(MissingDependencyError, match="cannot run without matplotlib"):  # the stand-in installs nothing
        logic.saveQualityReport(undrawn_outcome, tmp_path / "qc")

    assert len(ctk.ctkMessageBox.shown) == 1 and "matplotlib" in ctk.ctkMessageBox.shown[0]
    calls = fake_python_slicer.read_text()
    assert calls.startswith("-m pip install matplotlib>=3.5 --constraint ")
    assert f"numpy=={np.__version__}" in calls
    assert "qc" not in {path.name for path in tmp_path.iterdir()}


def test_console_without_matplotlib_in_testing_mode_installs_nothing(
        scene, logic, undrawn_outcome, env, tmp_path, matplotlib_missing):
    from OneClickRegistrationLib.dependencies import MissingDependencyError

    ctk = env[3]
    with pytest.raises(MissingDependencyError, match=re.escape("slicer.util.pip_install('matplotlib>=3.5')")) as raised:
        logic.saveQualityReport(undrawn_outcome, tmp_path / "qc")
    assert "testing mode" in str(raised.value)
    assert ctk.ctkMessageBox.shown == [] and files_under(tmp_path) == []


def test_outside_slicer_a_missing_matplotlib_is_one_line_naming_the_pip_command(matplotlib_missing):
    from OneClickRegistrationLib import dependencies

    with pytest.raises(dependencies.MissingDependencyError) as raised:
        dependencies.NonSlicerPythonDependencies().ensure_requirements(
            dependencies.QUALITY_REPORT_REQUIREMENTS, requester="OneClickRegistration quality report")
    assert str(raised.value) == ('OneClickRegistration quality report needs matplotlib>=3.5; '
                                 'install with: python -m pip install "matplotlib>=3.5"')
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'qc = ["{dependencies.QUALITY_REPORT_REQUIREMENTS[0]}"]' in pyproject  # the library's qc extra


def test_slicers_packaging_api_gets_the_requirement_and_the_pins(scene, monkeypatch, matplotlib_missing):
    """Where Slicer has slicer.pydeps (5.11 on), its pip_ensure asks and installs; declining names what is missing."""
    from OneClickRegistrationLib import dependencies

    calls = []

    class PackagingApi:
        @staticmethod
        def load_requirements(path):
            return Path(path).read_text().split()

        @staticmethod
        def pip_ensure(requirements, constraints, requester):
            calls.append((requirements, Path(constraints).read_text(), requester))
            raise RuntimeError("the user declined")

    monkeypatch.setattr(dependencies, "_packaging_api", lambda: PackagingApi)
    scene.app.testing = False
    with pytest.raises(dependencies.MissingDependencyError,
                       match="quality report cannot run without matplotlib>=3.5: the user declined"):
        dependencies.SlicerPythonDependencies().ensure_requirements(
            dependencies.QUALITY_REPORT_REQUIREMENTS, requester="OneClickRegistration quality report")
    [(requirements, constraints, requester)] = calls
    assert requirements == ["matplotlib>=3.5"] and requester == "OneClickRegistration quality report"
    assert f"numpy=={np.__version__}" in constraints.splitlines()
