"""The Slicer module (OneClickRegistration.py) run through a stand-in of the Slicer API.

The stand-in (Testing/slicer_standin) imitates the scene, volume and transform
nodes, slicer.util, sitkUtils and the Qt widgets with Slicer's exact RAS/LPS
and IJK-to-RAS conventions, so the module's logic and widget code paths run
here without Slicer.  It is put on sys.path only for this test module.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, shared_file

STANDIN = Path(__file__).resolve().parent / "slicer_standin"
STANDIN_MODULES = ("slicer", "qt", "ctk", "sitkUtils", "OneClickRegistration")
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def standin():
    """The stand-in `slicer` package and the module file imported through it; removed afterwards."""
    sys.path.insert(0, str(STANDIN))
    try:
        slicer = importlib.import_module("slicer")
        module = importlib.import_module("OneClickRegistration")
        yield slicer, module
    finally:
        sys.path.remove(str(STANDIN))
        for name in list(sys.modules):
            if name.split(".")[0] in STANDIN_MODULES:
                del sys.modules[name]


@pytest.fixture
def scene(standin):
    """A cleared scene and cleared dialog records."""
    slicer, _module = standin
    slicer.mrmlScene.Clear()
    slicer.app.processEventsHooks.clear()
    slicer.util.displayedErrors.clear()
    slicer.util.sliceViewerLayers.clear()
    yield slicer
    slicer.mrmlScene.Clear()
    slicer.app.processEventsHooks.clear()


@pytest.fixture(scope="module")
def t1_path():
    return shared_file("cstar_stroke_t1_t2_flair/T1.nii.gz")


def ijk_to_ras(slicer, node) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def rigid_motion(degrees: float, translation) -> np.ndarray:
    """A rotation about an oblique axis through the origin, then a translation (RAS, mm)."""
    axis = np.array([0.3, 0.4, 0.87])
    axis /= np.linalg.norm(axis)
    rotation = sitk.VersorTransform(tuple(axis), np.radians(degrees)).GetMatrix()
    motion = np.eye(4)
    motion[:3, :3] = np.array(rotation).reshape(3, 3)
    motion[:3, 3] = translation
    return motion


def moved_copy(slicer, node, motion: np.ndarray, name: str):
    """A copy of `node` whose world position is moved by `motion` (RAS)."""
    return slicer.util.addVolumeFromArray(
        slicer.util.arrayFromVolume(node).copy(), ijkToRAS=motion @ ijk_to_ras(slicer, node), name=name)


def head_points_ras(slicer, node, count: int = 400) -> np.ndarray:
    """RAS points (homogeneous rows) of voxels inside the head."""
    voxels = slicer.util.arrayFromVolume(node)
    k, j, i = np.nonzero(voxels > np.percentile(voxels, 60))
    pick = np.linspace(0, len(i) - 1, count).astype(int)
    ijk = np.stack([i[pick], j[pick], k[pick], np.ones(count)])
    return (ijk_to_ras(slicer, node) @ ijk).T


def scene_state(slicer) -> dict:
    """Every node ID with its parent transform ID."""
    return {node.GetID(): getattr(node, "GetTransformNodeID", lambda: None)() for node in slicer.mrmlScene.GetNodes()}


def make_widget(module):
    widget = module.OneClickRegistrationWidget()
    widget.setup()
    return widget


# --- import and conventions -----------------------------------------------------------------------


def test_module_file_imports_no_heavy_package_and_installs_nothing():
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(STANDIN)!r}, {str(ROOT / 'OneClickRegistration')!r}]
        import ctk, qt, slicer, vtk  # what Slicer has loaded before any module (vtk brings numpy)
        heavy = ("numpy", "SimpleITK", "scipy", "numba", "OneClickRegistrationLib")
        before = set(name for name in heavy if name in sys.modules)
        import OneClickRegistration
        added = sorted(name for name in heavy if name in sys.modules and name not in before)
        assert not added, added
        assert "SimpleITK" not in before and "OneClickRegistrationLib" not in before
        assert not slicer.util.pipInstalls and not slicer.util.confirmations
        print("ok")
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_standin_reproduces_slicer_volume_geometry(scene, t1_path):
    """A NIfTI read by ITK (LPS) becomes a node whose IJK-to-RAS is diag(-1,-1,1) x IJK-to-LPS, and back."""
    import sitkUtils

    image = sitk.ReadImage(str(t1_path))
    node = scene.util.loadVolume(str(t1_path))
    index = (10, 20, 30)
    lps = np.array(image.TransformIndexToPhysicalPoint(index))
    ras = ijk_to_ras(scene, node) @ np.array([*index, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)
    assert scene.util.arrayFromVolume(node)[30, 20, 10] == image[index]
    pulled = sitkUtils.PullVolumeFromSlicer(node)
    np.testing.assert_allclose(pulled.GetOrigin(), image.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(pulled.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(pulled.GetSpacing(), image.GetSpacing(), atol=1e-9)
    assert np.array_equal(sitk.GetArrayViewFromImage(pulled), sitk.GetArrayViewFromImage(image))


# --- logic ----------------------------------------------------------------------------------------


def test_logic_recovers_known_rigid_motion_in_mm(scene, standin, t1_path):
    _slicer, module = standin
    fixed = scene.util.loadVolume(str(t1_path))
    motion = rigid_motion(20.0, (10.0, -8.0, 8.0))  # 20 degrees, about 15 mm
    moving = moved_copy(scene, fixed, motion, "T1 moved")
    logic = module.OneClickRegistrationLogic()
    outcome = logic.register(fixed, moving, stages=("rigid",), fixedModality="T1", movingModality="T1")

    node = outcome.transformNode
    assert node.IsA("vtkMRMLLinearTransformNode")
    assert moving.GetTransformNodeID() == node.GetID()
    to_parent = scene.util.arrayFromTransformMatrix(node)
    np.testing.assert_allclose(to_parent @ motion, np.eye(4), atol=0.02)  # the node undoes the motion
    points = head_points_ras(scene, fixed)
    errors = np.linalg.norm((to_parent @ motion @ points.T).T[:, :3] - points[:, :3], axis=1)
    assert np.median(errors) < 1.0, np.median(errors)
    assert errors.max() < 2.0, errors.max()
    assert outcome.result.stage("rigid").accepted
    assert logic.verdict(outcome.result.stage("rigid")) == "good"
    assert scene.util.sliceViewerLayers == {"background": fixed.GetID(), "foreground": moving.GetID(),
                                            "foregroundOpacity": 0.5}


def test_same_volume_twice_gives_identity(scene, standin, t1_path):
    _slicer, module = standin
    volume = scene.util.loadVolume(str(t1_path))
    outcome = module.OneClickRegistrationLogic().register(volume, volume, stages=("rigid",),
                                                         fixedModality="T1", movingModality="T1")
    np.testing.assert_allclose(scene.util.arrayFromTransformMatrix(outcome.transformNode), np.eye(4), atol=1e-9)


def _bad_volume(scene, kind: str):
    ijk = np.diag([1.5, 1.5, 1.5, 1.0])
    if kind == "empty":
        return scene.util.addVolumeFromArray(np.zeros((20, 20, 20), np.int16), ijkToRAS=ijk, name="empty")
    if kind == "constant":
        return scene.util.addVolumeFromArray(np.full((20, 20, 20), 7.0, np.float32), ijkToRAS=ijk, name="constant")
    if kind == "4D":
        return scene.util.addVolumeFromArray(np.ones((20, 20, 20, 3), np.float32), ijkToRAS=ijk, name="vector")
    return scene.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image data")


@pytest.mark.parametrize("kind", ["empty", "constant", "4D", "no image data"])
def test_bad_input_raises_and_leaves_scene_unchanged(scene, standin, t1_path, kind):
    _slicer, module = standin
    fixed = scene.util.loadVolume(str(t1_path))
    bad = _bad_volume(scene, kind)
    before = scene_state(scene)
    with pytest.raises(ValueError):
        module.OneClickRegistrationLogic().register(fixed, bad, stages=("rigid",), fixedModality="T1")
    assert scene_state(scene) == before
    assert scene.util.sliceViewerLayers == {}


def test_unknown_preset_name_raises_and_leaves_scene_unchanged(scene, standin, t1_path):
    _slicer, module = standin
    fixed = scene.util.loadVolume(str(t1_path))
    moving = moved_copy(scene, fixed, rigid_motion(5.0, (1.0, 0.0, 0.0)), "moved")
    before = scene_state(scene)
    with pytest.raises(ValueError, match="no preset named"):
        module.OneClickRegistrationLogic().register(fixed, moving, presetName="No-Such-Preset")
    assert scene_state(scene) == before


def test_nonlinear_transform_becomes_from_parent_transform_in_ras(scene, standin):
    """A composite (rigid + displacement field) ITK transform maps fixed RAS points to moving ones."""
    _slicer, module = standin
    rigid = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.2, (3.0, -2.0, 5.0))
    field = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3)
    field.SetOrigin((-40.0, -40.0, -40.0))
    field.SetSpacing((10.0, 10.0, 10.0))
    field += 1.5
    composite = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])
    node = module.OneClickRegistrationLogic().transformNodeFromITK(composite, "warp")
    assert not node.IsLinear()
    ras = (5.0, -7.0, 11.0)
    lps_moved = composite.TransformPoint((-ras[0], -ras[1], ras[2]))
    np.testing.assert_allclose(node.GetTransformFromParent().TransformPoint(ras),
                               (-lps_moved[0], -lps_moved[1], lps_moved[2]), atol=1e-6)


def test_dicom_tags_and_names_become_hints(scene, standin):
    _slicer, module = standin

    class FakeDatabase:
        def instanceValue(self, uid: str, tag: str) -> str:
            return {"0008,0060": "MR", "0008,103e": "t2_tse_tra "}.get(tag, "") if uid == "1.2.3" else ""

    node = scene.util.addVolumeFromArray(np.ones((4, 4, 4)), name="patient series 3")
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    scene.dicomDatabase = FakeDatabase()
    try:
        hints = module.OneClickRegistrationLogic.volumeHints(node)
    finally:
        scene.dicomDatabase = None
    assert hints == {"name": "patient series 3", "Modality": "MR", "SeriesDescription": "t2_tse_tra"}


# --- dependencies ---------------------------------------------------------------------------------


def test_dependencies_ask_once_and_install_only_after_yes(scene, monkeypatch):
    from OneClickRegistrationLib import dependencies

    missing = [["numba>=0.58"]]
    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: missing[0])
    monkeypatch.setattr(scene.app.commandOptions().__class__, "testingEnabled", False)
    monkeypatch.setattr(scene.util, "confirmations", [])
    monkeypatch.setattr(scene.util, "pipInstalls", [])
    handler = dependencies.dependency_handler()
    assert isinstance(handler, dependencies.SlicerPythonDependencies)

    monkeypatch.setattr(scene.util, "confirmAnswer", False)
    with pytest.raises(dependencies.MissingDependencyError, match="declined"):
        handler.ensure()
    assert len(scene.util.confirmations) == 1 and scene.util.pipInstalls == []

    monkeypatch.setattr(scene.util, "confirmAnswer", True)
    install = scene.util.pip_install
    monkeypatch.setattr(scene.util, "pip_install", lambda r: (install(r), missing.__setitem__(0, [])))
    handler.ensure()
    assert len(scene.util.confirmations) == 2 and scene.util.pipInstalls == ["numba>=0.58"]


def test_dependencies_outside_slicer_report_pip_command(monkeypatch):
    from OneClickRegistrationLib import dependencies

    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: ["numba>=0.58"])
    with pytest.raises(dependencies.MissingDependencyError, match='pip install "numba>=0.58"'):
        dependencies.NonSlicerPythonDependencies().ensure()
    assert dependencies.read_requirements() == ["numba>=0.58"]


# --- widget ---------------------------------------------------------------------------------------


def test_register_button_enabled_only_for_two_different_volumes(scene, standin):
    _slicer, module = standin
    widget = make_widget(module)
    button = widget.ui.registerButton
    assert not button.enabled and "fixed volume" in button.toolTip
    a = scene.util.addVolumeFromArray(np.random.default_rng(0).random((8, 8, 8)), name="a")
    b = scene.util.addVolumeFromArray(np.random.default_rng(1).random((8, 8, 8)), name="b")
    widget.ui.fixedVolumeSelector.setCurrentNode(a)
    assert not button.enabled and "moving volume" in button.toolTip
    widget.ui.movingVolumeSelector.setCurrentNode(a)
    assert not button.enabled and "same volume" in button.toolTip
    widget.ui.movingVolumeSelector.setCurrentNode(b)
    assert button.enabled and button.text == "Register"
    for checkBox in (widget.ui.rigidCheckBox, widget.ui.affineCheckBox, widget.ui.deformableCheckBox):
        checkBox.setChecked(False)
    assert not button.enabled and "stage" in button.toolTip
    widget.ui.affineCheckBox.setChecked(True)
    assert button.enabled
    assert widget.ui.advancedCollapsibleButton.collapsed


def test_widget_fills_volumes_mr_over_ct(scene, standin):
    _slicer, module = standin
    rng = np.random.default_rng(0)
    ct = scene.util.addVolumeFromArray(rng.uniform(-1024, 1500, (8, 8, 8)), name="head scan 1")
    mr = scene.util.addVolumeFromArray(rng.uniform(0, 800, (8, 8, 8)), name="head scan 2")
    widget = make_widget(module)
    assert widget.ui.fixedVolumeSelector.currentNode() is mr
    assert widget.ui.movingVolumeSelector.currentNode() is ct
    assert widget.ui.registerButton.enabled


def test_widget_fills_first_loaded_as_fixed(scene, standin):
    _slicer, module = standin
    first = scene.util.addVolumeFromArray(np.ones((8, 8, 8)), name="T2")
    second = scene.util.addVolumeFromArray(np.ones((8, 8, 8)), name="T1")
    widget = make_widget(module)
    assert widget.ui.fixedVolumeSelector.currentNode() is first
    assert widget.ui.movingVolumeSelector.currentNode() is second


def _widget_with_moved_pair(scene, module, t1_path):
    fixed = scene.util.loadVolume(str(t1_path))
    motion = rigid_motion(10.0, (5.0, 4.0, -3.0))
    moving = moved_copy(scene, fixed, motion, "T1 moved")
    widget = make_widget(module)
    widget.ui.affineCheckBox.setChecked(False)
    widget.ui.deformableCheckBox.setChecked(False)
    return widget, fixed, moving, motion


def test_widget_register_path_shows_result_and_undo_restores_scene(scene, standin, t1_path):
    _slicer, module = standin
    widget, fixed, moving, motion = _widget_with_moved_pair(scene, module, t1_path)
    assert widget.ui.fixedVolumeSelector.currentNode() is fixed
    before = scene_state(scene)
    progress = []
    scene.app.processEventsHooks.append(lambda: progress.append(widget.ui.progressBar.value))

    widget.ui.registerButton.click()

    assert scene.util.displayedErrors == []
    outcome = widget.lastOutcome
    assert moving.GetTransformNodeID() == outcome.transformNode.GetID()
    np.testing.assert_allclose(scene.util.arrayFromTransformMatrix(outcome.transformNode) @ motion,
                               np.eye(4), atol=0.02)
    text = widget.ui.resultTextEdit.plainText
    assert "Fixed: T1" in text and "Moving: T1" in text and "Preset: T1-T1" in text and "rigid: score" in text and "good" in text and "Total time" in text
    assert widget.ui.statusLabel.text.startswith("Done")
    assert progress and max(progress) <= 100
    assert widget.ui.registerButton.text == "Register" and widget.ui.registerButton.enabled
    assert not widget.ui.progressBar.visible and widget.ui.undoButton.enabled

    widget.ui.undoButton.click()
    assert scene_state(scene) == before
    assert not widget.ui.undoButton.enabled


def test_widget_cancel_leaves_scene_unchanged(scene, standin, t1_path):
    _slicer, module = standin
    widget, _fixed, _moving, _motion = _widget_with_moved_pair(scene, module, t1_path)
    before = scene_state(scene)
    seen = []

    def press_cancel() -> None:
        seen.append(widget.ui.registerButton.text)
        if len(seen) == 2:
            widget.ui.registerButton.click()

    scene.app.processEventsHooks.append(press_cancel)
    widget.ui.registerButton.click()

    assert seen[0] == "Cancel"
    assert widget.ui.statusLabel.text.startswith("Cancelled")
    assert scene.util.displayedErrors == []
    assert widget.lastOutcome is None
    assert scene_state(scene) == before
    assert widget.ui.registerButton.text == "Register" and widget.ui.registerButton.enabled


def test_widget_shows_error_and_leaves_scene_unchanged_on_bad_input(scene, standin, t1_path):
    _slicer, module = standin
    fixed = scene.util.loadVolume(str(t1_path))
    _bad_volume(scene, "constant")
    widget = make_widget(module)
    widget.ui.fixedModalityComboBox.setCurrentText("T1")
    before = scene_state(scene)
    assert widget.ui.fixedVolumeSelector.currentNode() is fixed
    widget.ui.registerButton.click()
    assert len(scene.util.displayedErrors) == 1 and "constant" in scene.util.displayedErrors[0]
    assert widget.ui.statusLabel.text.startswith("Failed")
    assert scene_state(scene) == before


# --- packaging and the Slicer self-test -----------------------------------------------------------


def test_cmake_lists_every_library_file_and_resource():
    module_dir = ROOT / "OneClickRegistration"
    cmake = (module_dir / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "OneClickRegistration")
    listed = {line.strip() for line in cmake.splitlines() if line.strip().endswith((".py", ".png", ".ui", ".json", ".txt"))
              and not line.strip().startswith("#")}
    library = {f"OneClickRegistrationLib/{path.name}" for path in (module_dir / "OneClickRegistrationLib").glob("*.py")}
    assert library <= listed, f"add to OneClickRegistration/CMakeLists.txt: {sorted(library - listed)}"
    missing = sorted(name for name in listed if not (module_dir / name).is_file())
    assert not missing, f"listed in OneClickRegistration/CMakeLists.txt but absent: {missing}"
    for resource in ("Resources/Presets/presets.json", "Resources/Presets/presets.schema.json",
                     "Resources/UI/OneClickRegistration.ui", "Resources/Icons/OneClickRegistration.png",
                     "Resources/requirements.txt"):
        assert resource in listed


def test_self_test_error_measure(scene, standin, t1_path):
    """The self-test's moved copy and mm error: zero for the exact inverse, the motion itself for identity."""
    _slicer, module = standin
    test = module.OneClickRegistrationTest
    fixed = scene.util.loadVolume(str(t1_path))
    moved, motion = test.movedCopy(fixed, 20.0, (10.0, -8.0, 8.0), "moved")
    np.testing.assert_allclose(ijk_to_ras(scene, moved), motion @ ijk_to_ras(scene, fixed), atol=1e-9)
    node = scene.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "truth")
    scene.util.updateTransformMatrixFromArray(node, np.linalg.inv(motion))
    assert test.errorsMm(node, motion, fixed).max() < 1e-6
    scene.util.updateTransformMatrixFromArray(node, np.eye(4))
    assert test.errorsMm(node, motion, fixed).min() > 5.0
