"""The Slicer module run against Slicer's own Python layer.

`slicer`, `slicer.util`, `ScriptedLoadableModule`, `parameterNodeWrapper`,
`i18n` and `sitkUtils` are the unmodified files of a Slicer release in
../shared/slicer-python/v<release> (ONECLICK_SLICER_RELEASE, default: the
release whose Python matches this one).  Only what is compiled in Slicer is
stood in for (Testing/slicer_standin: MRML nodes and scene, slicer.app, Qt,
CTK, qMRML widgets), following the facts in ../shared/slicer-python/README.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, SAMPLE_DATA

STANDIN = Path(__file__).resolve().parent / "slicer_standin"
sys.path.insert(0, str(STANDIN))
import standin_app  # noqa: E402

RELEASE = standin_app.default_release()
if not (standin_app.layer_dir(RELEASE) / "slicer" / "__init__.py").is_file():
    pytest.skip(f"needs Slicer's Python layer {standin_app.layer_dir(RELEASE)} (../shared/slicer-python)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def env():
    """slicer (the real package), the module file, qt and ctk; the module's widget is created by selectModule."""
    slicer = standin_app.install(RELEASE)
    moduleFile = standin_app.loadModule(slicer)
    import ctk
    import qt

    yield slicer, moduleFile, qt, ctk
    standin_app.uninstall()


@pytest.fixture
def scene(env):
    """A cleared scene, testing mode on, no scripted dialogs, no slot errors."""
    slicer, _moduleFile, qt, ctk = env
    slicer.mrmlScene.Clear()
    slicer.app.testing = True
    slicer.app.processEventsHooks.clear()
    ctk.ctkMessageBox.scriptedAnswers = []
    ctk.ctkMessageBox.shown = []
    qt.slotErrors.clear()
    yield slicer
    widget = getattr(slicer.modules, "OneClickRegistrationWidget", None)
    if widget is not None:
        widget.cancelRegistration()
    slicer.app.testing = True
    slicer.mrmlScene.Clear()


@pytest.fixture
def widget(scene):
    scene.util.selectModule("OneClickRegistration")
    return scene.modules.OneClickRegistrationWidget


@pytest.fixture(scope="module")
def t1_path():
    return SAMPLE_DATA / "T1.nii.gz"


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
    """Every node ID with its name and parent transform ID."""
    scene = slicer.mrmlScene
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return {node.GetID(): (node.GetName(), getattr(node, "GetTransformNodeID", lambda: None)()) for node in nodes}


def slice_layers(slicer) -> list:
    return [node.layers for node in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode")]


def run_event_loop(slicer, until, timeout: float = 300.0, step: float = 0.05) -> list:
    """Turn the stand-in event loop until `until()`; returns how long each turn took (the GUI's latency)."""
    turns = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        start = time.monotonic()
        slicer.app.processEvents()
        turns.append(time.monotonic() - start)
        time.sleep(step)
    return turns


def pair_in_scene(slicer, t1_path, degrees=10.0, translation=(5.0, 4.0, -3.0)):
    fixed = slicer.util.loadVolume(str(t1_path), {"name": "T1"})
    motion = rigid_motion(degrees, translation)
    return fixed, moved_copy(slicer, fixed, motion, "T1 moved"), motion


# --- import and module metadata -------------------------------------------------------------------


def test_module_file_and_panel_import_no_heavy_package_and_install_nothing():
    """Loading the module and building its panel imports no numba and never the registration."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(STANDIN)!r})
        import standin_app
        slicer = standin_app.install({RELEASE!r})
        heavy = ("SimpleITK", "scipy", "numba", "OneClickRegistrationLib.pipeline")
        before = {{name for name in heavy if name in sys.modules}}
        standin_app.loadModule(slicer)
        loaded = sorted(name for name in heavy if name in sys.modules and name not in before)
        assert not loaded, loaded
        slicer.util.selectModule("OneClickRegistration")
        assert "numba" not in sys.modules and "OneClickRegistrationLib.pipeline" not in sys.modules
        print("ok")
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith("ok")


def test_module_metadata_follows_slicer_conventions(env):
    slicer, _moduleFile, _qt, _ctk = env
    module = slicer.modules.oneclickregistration
    assert module.title == "One-Click Registration" and module.categories == ["Registration"]
    assert all(" (" in name and name.endswith(")") for name in module.contributors)
    assert '<a href="https://github.com/OneClickRegistration/SlicerOneClickRegistration' in module.helpText
    assert slicer.selfTests["OneClickRegistration"] == slicer.modules.OneClickRegistrationInstance.runTest


def test_standin_reproduces_slicer_volume_geometry(scene, t1_path):
    """A NIfTI read (LPS) becomes a node whose IJK-to-RAS is diag(-1,-1,1) x IJK-to-LPS; real sitkUtils pulls it back."""
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
    assert scene.util.getNodesByClass("vtkMRMLVolumeArchetypeStorageNode")[0].GetFileName() == str(t1_path)


# --- the panel and the real parameterNodeWrapper --------------------------------------------------


def test_panel_binds_every_parameter_with_the_real_wrapper(widget, scene):
    """Real parameterNodeWrapper: modality combos filled from Choice, changes go both ways."""
    ui = widget.ui
    assert [ui.fixedModalityComboBox.itemText(i) for i in range(ui.fixedModalityComboBox.count)] == \
        ["Auto", "T1", "T2", "FLAIR", "CT"]
    ui.fixedModalityComboBox.currentIndex = 4
    parameters = widget.logic.getParameterNode()  # a second wrapper of the same node, as the self-test uses
    assert parameters.fixedModality == "CT"
    parameters.movingModality = "FLAIR"
    assert ui.movingModalityComboBox.currentText == "FLAIR"
    parameters.runDeformable = False
    assert not ui.deformableCheckBox.checked
    ui.createResampledVolumeCheckBox.checked = True
    assert parameters.createResampledVolume
    assert ui.presetComboBox.currentText == "Auto" and ui.presetComboBox.count > 10


def test_register_button_enabled_only_for_two_different_volumes(widget, scene):
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
        checkBox.checked = False
    assert not button.enabled and "stage" in button.toolTip
    widget.ui.affineCheckBox.checked = True
    assert button.enabled
    assert widget.ui.advancedCollapsibleButton.collapsed


def test_widget_fills_volumes_mr_over_ct(scene, env):
    rng = np.random.default_rng(0)
    ct = scene.util.addVolumeFromArray(rng.uniform(-1024, 1500, (8, 8, 8)), name="head scan 1")
    mr = scene.util.addVolumeFromArray(rng.uniform(0, 800, (8, 8, 8)), name="head scan 2")
    scene.util.selectModule("OneClickRegistration")
    widget = scene.modules.OneClickRegistrationWidget
    widget.enter()
    assert widget.ui.fixedVolumeSelector.currentNode() is mr
    assert widget.ui.movingVolumeSelector.currentNode() is ct
    assert widget.ui.registerButton.enabled


def test_label_maps_and_vector_volumes_are_never_guessed_or_registered(scene, env, t1_path):
    """Label map, vector and DWI volumes derive from vtkMRMLScalarVolumeNode; none is taken for a scan."""
    _slicer, moduleFile, _qt, _ctk = env
    t1 = scene.util.loadVolume(str(t1_path), {"name": "T1"})
    label = scene.util.addVolumeFromArray((scene.util.arrayFromVolume(t1) > 200).astype(np.uint8),
                                          ijkToRAS=ijk_to_ras(scene, t1), name="brain mask",
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")
    scene.util.addVolumeFromArray(np.ones((8, 8, 8, 3), np.float32), name="colour", nodeClassName="vtkMRMLVectorVolumeNode")
    logic = moduleFile.OneClickRegistrationLogic()
    assert logic.guessFixedAndMoving() is None  # only one true scalar volume
    scene.util.selectModule("OneClickRegistration")
    widget = scene.modules.OneClickRegistrationWidget
    widget.ui.movingVolumeSelector.setCurrentNode(label)
    assert widget.ui.movingVolumeSelector.currentNode() is None
    before = scene_state(scene)
    with pytest.raises(ValueError, match="label map"):
        logic.register(t1, label, stages=("rigid",))
    assert scene_state(scene) == before


def test_a_single_slice_is_refused_with_the_way_to_register_it(scene, env, t1_path):
    """A 2D image in Slicer is a one-slice volume: the module says where 2D registration lives instead."""
    _slicer, moduleFile, _qt, _ctk = env
    t1 = scene.util.loadVolume(str(t1_path), {"name": "T1"})
    photo = scene.util.addVolumeFromArray(np.random.default_rng(0).uniform(0, 255, (1, 64, 64)), name="photo")
    logic = moduleFile.OneClickRegistrationLogic()
    before = scene_state(scene)
    with pytest.raises(ValueError, match="single slice .* oneclick-register command"):
        logic.register(t1, photo, stages=("rigid",))
    assert scene_state(scene) == before


def test_preset_table_field_waits_for_a_json_file_and_goes_back_to_the_bundled_table(widget, scene, env, tmp_path):
    """CTK emits currentPathChanged per keystroke: no dialog while typing; a valid table is used once complete."""
    scene.app.testing = False  # real dialogs: any unexpected one raises in the stand-in
    bundled = json.loads((ROOT / "OneClickRegistration/Resources/OneClickRegistration/Presets/presets.json").read_text())
    bundled["presets"][0]["name"] = "My T1-T1"
    table = tmp_path / "my presets.json"
    table.write_text(json.dumps(bundled))
    lineEdit, parameters = widget.ui.presetTablePathLineEdit, widget.logic.getParameterNode()

    lineEdit.simulateTyping(str(table))
    assert env[3].ctkMessageBox.shown == []
    assert parameters.presetTablePath == str(table)
    assert widget.ui.presetComboBox.findText("My T1-T1") > 0

    widget.ui.presetComboBox.setCurrentText("My T1-T1")
    assert parameters.presetName == "My T1-T1"
    widget.ui.bundledPresetTableButton.click()
    assert parameters.presetTablePath == "" and parameters.presetName == "Auto"
    assert widget.ui.presetComboBox.findText("My T1-T1") < 0 and lineEdit.currentPath == ""


def test_preset_table_field_shows_one_error_for_a_bad_complete_table(widget, scene, env, tmp_path):
    _slicer, _moduleFile, _qt, ctk = env
    scene.app.testing = False
    bad = tmp_path / "broken.json"
    bad.write_text('{"presets": [}')
    ctk.ctkMessageBox.scriptedAnswers = [0x400]  # OK on the error box
    widget.ui.presetTablePathLineEdit.simulateTyping(str(bad))
    assert len(ctk.ctkMessageBox.shown) == 1 and "not valid JSON" in ctk.ctkMessageBox.shown[0]
    assert widget.logic.getParameterNode().presetTablePath == ""


def test_preset_table_of_the_parameter_node_is_shown_again_after_reentering(widget, scene, tmp_path):
    bundled = json.loads((ROOT / "OneClickRegistration/Resources/OneClickRegistration/Presets/presets.json").read_text())
    bundled["presets"][1]["name"] = "Site T1-T2"
    table = tmp_path / "site.json"
    table.write_text(json.dumps(bundled))
    parameters = widget.logic.getParameterNode()
    parameters.presetTablePath = str(table)
    widget.exit()
    widget.enter()
    assert widget.ui.presetTablePathLineEdit.currentPath == str(table)
    assert widget.ui.presetComboBox.findText("Site T1-T2") > 0


# --- dependencies: the consent step comes first, from the panel and from the console ---------------


@pytest.fixture
def numba_missing(monkeypatch):
    """numba cannot be imported (as in a stock Slicer)."""
    monkeypatch.setitem(sys.modules, "numba", None)


@pytest.fixture
def fake_python_slicer(tmp_path, monkeypatch):
    """A PythonSlicer on PATH that records the pip command and the constraints file it was given."""
    record = tmp_path / "pip-calls.txt"
    script = tmp_path / "bin" / "PythonSlicer"
    script.parent.mkdir()
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        arguments = sys.argv[1:]
        with open({str(record)!r}, "a") as out:
            out.write(" ".join(arguments) + "\\n")
            if "--constraint" in arguments:
                out.write(open(arguments[arguments.index("--constraint") + 1]).read())
        print("Successfully installed nothing (stand-in)")
    """))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.fixture
def panel_with_pair(widget, scene, t1_path):
    """The panel with a T1 and a moved copy selected."""
    fixed, moving, _motion = pair_in_scene(scene, t1_path)
    widget.ui.fixedVolumeSelector.setCurrentNode(fixed)
    widget.ui.movingVolumeSelector.setCurrentNode(moving)
    return widget


def test_register_without_numba_reaches_the_consent_prompt_and_declining_says_so(
        panel_with_pair, scene, env, numba_missing, fake_python_slicer):
    _slicer, _moduleFile, qt, ctk = env
    widget = panel_with_pair
    before = scene_state(scene)
    scene.app.testing = False
    ctk.ctkMessageBox.scriptedAnswers = [qt.QMessageBox.Cancel, qt.QMessageBox.Ok]

    widget.ui.registerButton.click()

    consent, error = ctk.ctkMessageBox.shown
    assert "numba" in consent and "install" in consent.lower()
    assert "declined" in error
    assert [type(e).__name__ for e in qt.slotErrors] == ["MissingDependencyError"]
    assert not fake_python_slicer.exists()  # nothing installed
    assert not widget.isRunning() and scene_state(scene) == before


def test_accepting_installs_numba_with_slicers_numpy_pinned(
        panel_with_pair, scene, env, numba_missing, fake_python_slicer):
    _slicer, _moduleFile, qt, ctk = env
    widget = panel_with_pair
    scene.app.testing = False
    ctk.ctkMessageBox.scriptedAnswers = [qt.QMessageBox.Ok, qt.QMessageBox.Ok]

    widget.ui.registerButton.click()  # real slicer.util.pip_install runs the fake PythonSlicer

    calls = fake_python_slicer.read_text()
    assert calls.startswith("-m pip install numba>=0.60 --constraint ")
    assert f"numpy=={np.__version__}" in calls and f"SimpleITK=={sitk.Version.VersionString()}" in calls \
        or f"SimpleITK=={sitk.__version__}" in calls
    assert "cannot run without numba" in ctk.ctkMessageBox.shown[1]  # the stand-in installed nothing


def test_console_register_without_numba_in_testing_mode_installs_nothing(scene, env, t1_path, numba_missing):
    _slicer, moduleFile, _qt, _ctk = env
    from OneClickRegistrationLib.dependencies import MissingDependencyError

    fixed, moving, _motion = pair_in_scene(scene, t1_path)
    with pytest.raises(MissingDependencyError, match="testing mode"):
        moduleFile.OneClickRegistrationLogic().register(fixed, moving, stages=("rigid",))


def test_self_test_skips_with_a_reason_without_numba(scene, env, numba_missing):
    import unittest

    _slicer, moduleFile, _qt, _ctk = env
    with pytest.raises(unittest.SkipTest, match="numba"):
        moduleFile.OneClickRegistrationTest().runTest()


def test_dependencies_outside_slicer_report_pip_command(monkeypatch):
    from OneClickRegistrationLib import dependencies

    monkeypatch.setattr(dependencies, "missing_requirements", lambda requirements: ["numba>=0.60"])
    with pytest.raises(dependencies.MissingDependencyError, match='pip install "numba>=0.60"'):
        dependencies.NonSlicerPythonDependencies().ensure()
    assert dependencies.read_requirements() == ["numba>=0.60"]


# --- logic: console API ---------------------------------------------------------------------------


def test_logic_recovers_known_rigid_motion_in_mm(scene, env, t1_path):
    _slicer, moduleFile, _qt, _ctk = env
    fixed = scene.util.loadVolume(str(t1_path), {"name": "T1"})
    motion = rigid_motion(20.0, (10.0, -8.0, 8.0))
    moving = moved_copy(scene, fixed, motion, "T1 moved")
    messages = []
    outcome = moduleFile.OneClickRegistrationLogic().register(
        fixed, moving, stages=("rigid",), fixedModality="T1", movingModality="T1",
        progress=lambda fraction, message: messages.append((fraction, message)))

    node = outcome.transformNode
    assert node.IsA("vtkMRMLLinearTransformNode") and moving.GetTransformNodeID() == node.GetID()
    to_parent = scene.util.arrayFromTransformMatrix(node)
    points = head_points_ras(scene, fixed)
    errors = np.linalg.norm((to_parent @ motion @ points.T).T[:, :3] - points[:, :3], axis=1)
    assert np.median(errors) < 0.5 and errors.max() < 1.0, (np.median(errors), errors.max())
    assert outcome.result.stage("rigid").accepted
    assert moduleFile.OneClickRegistrationLogic().verdict(outcome.result.stage("rigid")) == "good"
    assert all(layer["background"] == fixed.GetID() and layer["foreground"] == moving.GetID()
               and layer["foregroundOpacity"] == 0.5 for layer in slice_layers(scene))
    assert messages and "rigid" in " ".join(message for _f, message in messages).lower()


def test_nonlinear_result_node_owns_its_transform(scene, env):
    """The reader's storage node (pointing at a deleted temporary file) is gone; the mapping is exact."""
    _slicer, moduleFile, _qt, _ctk = env
    rigid = sitk.Euler3DTransform((0, 0, 0), 0.1, -0.05, 0.2, (3.0, -2.0, 5.0))
    field = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3)
    field.SetOrigin((-40.0, -40.0, -40.0))
    field.SetSpacing((10.0, 10.0, 10.0))
    field += 1.5
    composite = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])
    node = moduleFile.OneClickRegistrationLogic().transformNodeFromITK(composite, "warp")
    assert not node.IsLinear() and node.GetScene() is scene.mrmlScene and node.GetName() == "warp"
    assert node.GetStorageNode() is None
    assert scene.util.getNodesByClass("vtkMRMLTransformStorageNode") == []
    assert [n.GetName() for n in scene.util.getNodesByClass("vtkMRMLTransformNode")] == ["warp"]
    ras = (5.0, -7.0, 11.0)
    lps_moved = composite.TransformPoint((-ras[0], -ras[1], ras[2]))
    np.testing.assert_allclose(node.GetTransformFromParent().TransformPoint(ras),
                               (-lps_moved[0], -lps_moved[1], lps_moved[2]), atol=1e-6)
    with pytest.raises(RuntimeError, match="Failed to get transformation matrix"):
        scene.util.arrayFromTransformMatrix(node)  # real slicer.util refuses a non-linear node


def test_linear_result_node_has_the_itk_centre_of_rotation(scene, env):
    _slicer, moduleFile, _qt, _ctk = env
    rigid = sitk.Euler3DTransform((10.0, 20.0, 30.0), 0.1, 0.0, 0.0, (1.0, 2.0, 3.0))
    node = moduleFile.OneClickRegistrationLogic().transformNodeFromITK(rigid, "rigid")
    assert node.GetCenterOfTransformation() == (-10.0, -20.0, 30.0)


def _bad_volume(scene, kind: str):
    ijk = np.diag([1.5, 1.5, 1.5, 1.0])
    if kind == "constant":
        return scene.util.addVolumeFromArray(np.full((20, 20, 20), 7.0, np.float32), ijkToRAS=ijk, name="constant")
    if kind == "vector":
        return scene.util.addVolumeFromArray(np.ones((20, 20, 20, 3), np.float32), ijkToRAS=ijk, name="vector",
                                             nodeClassName="vtkMRMLVectorVolumeNode")
    return scene.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image data")


@pytest.mark.parametrize("kind, message", [("constant", "constant"), ("vector", "scalar volume"),
                                           ("no image data", "no image data")])
def test_bad_input_raises_one_line_and_leaves_scene_unchanged(scene, env, t1_path, kind, message):
    _slicer, moduleFile, _qt, _ctk = env
    fixed = scene.util.loadVolume(str(t1_path))
    bad = _bad_volume(scene, kind)
    before = scene_state(scene)
    with pytest.raises(ValueError, match=message) as raised:
        moduleFile.OneClickRegistrationLogic().register(fixed, bad, stages=("rigid",), fixedModality="T1")
    assert "\n" not in str(raised.value)
    assert scene_state(scene) == before
    assert all(layer["background"] is None for layer in slice_layers(scene))


def test_unknown_preset_name_raises_and_leaves_scene_unchanged(scene, env, t1_path):
    _slicer, moduleFile, _qt, _ctk = env
    fixed, moving, _motion = pair_in_scene(scene, t1_path, 5.0, (1.0, 0.0, 0.0))
    before = scene_state(scene)
    with pytest.raises(ValueError, match="no preset named"):
        moduleFile.OneClickRegistrationLogic().register(fixed, moving, presetName="No-Such-Preset")
    assert scene_state(scene) == before


def test_dicom_tags_and_names_become_hints(scene, env):
    _slicer, moduleFile, _qt, _ctk = env

    class FakeDatabase:
        def instanceValue(self, uid: str, tag: str) -> str:
            return {"0008,0060": "MR", "0008,103e": "t2_tse_tra "}.get(tag, "") if uid == "1.2.3" else ""

    node = scene.util.addVolumeFromArray(np.ones((4, 4, 4)), name="patient series 3")
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3 1.2.4")
    scene.dicomDatabase = FakeDatabase()
    try:
        hints = moduleFile.OneClickRegistrationLogic.volumeHints(node)
    finally:
        scene.dicomDatabase = None
    assert hints == {"name": "patient series 3", "Modality": "MR", "SeriesDescription": "t2_tse_tra"}


# --- the panel: a registration in the background, progress, cancel --------------------------------


def _panel_with_pair(widget, scene, t1_path, stages=("rigid",)):
    fixed, moving, motion = pair_in_scene(scene, t1_path)
    widget.ui.fixedVolumeSelector.setCurrentNode(fixed)
    widget.ui.movingVolumeSelector.setCurrentNode(moving)
    for name, checkBox in (("rigid", widget.ui.rigidCheckBox), ("affine", widget.ui.affineCheckBox),
                           ("deformable", widget.ui.deformableCheckBox)):
        checkBox.checked = name in stages
    return fixed, moving, motion


def _record_status(widget, scene) -> list:
    """(time, status text) each time the panel's status line changes."""
    seen = []

    def record() -> None:
        text = widget.ui.statusLabel.text
        if not seen or seen[-1][1] != text:
            seen.append((time.monotonic(), text))

    scene.app.processEventsHooks.append(record)
    return seen


@pytest.fixture(scope="module")
def warm_numba_cache():
    """Run every numba kernel once in this process, so numba's disk cache (NUMBA_CACHE_DIR) holds them and
    the worker loads instead of compiling them: first-use compilation (about 6 s, once per machine) is
    not what the progress test measures."""
    from OneClickRegistrationLib import register

    fixed, moving = (sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / name)), [2] * 3)
                     for name in ("T1.nii.gz", "T2.nii.gz"))
    register(fixed, moving)


def test_panel_registers_in_the_background_with_progress_every_second(widget, scene, t1_path, warm_numba_cache):
    fixed, moving, motion = _panel_with_pair(widget, scene, t1_path, stages=("rigid", "affine", "deformable"))
    before = scene_state(scene)
    seen = _record_status(widget, scene)

    widget.ui.registerButton.click()
    assert widget.isRunning() and widget.ui.registerButton.text == "Cancel" and widget.ui.registerButton.enabled
    assert not widget.ui.inputsCollapsibleButton.enabled and not widget.ui.advancedCollapsibleButton.enabled
    assert not widget.ui.undoButton.enabled and scene.app.overrideCursorDepth == 0
    turns = run_event_loop(scene, lambda: not widget.isRunning())

    assert max(turns) < 0.5, f"the GUI was blocked for {max(turns):.2f} s"
    assert scene.util.getNodesByClass("vtkMRMLScalarVolumeNode") == [fixed, moving]
    outcome = widget.lastOutcome
    assert outcome is not None, widget.ui.statusLabel.text
    progress = [(t, text) for t, text in seen if text[:1].isalpha() and not text.startswith(("Starting", "Done"))]
    gaps = np.diff([t for t, _text in progress])
    print(f"\npanel: {len(progress)} progress messages, longest wait {gaps.max():.2f} s, "
          f"longest event-loop turn {max(turns) * 1000:.0f} ms")
    assert len(progress) > 5 and gaps.max() <= 1.0 + 0.25, \
        f"longest wait between progress messages {gaps.max():.2f} s: {progress}"
    assert moving.GetTransformNodeID() == outcome.transformNode.GetID()
    assert "Fixed: T1" in widget.ui.resultTextEdit.plainText and "rigid: score" in widget.ui.resultTextEdit.plainText
    assert widget.ui.inputsCollapsibleButton.enabled and widget.ui.undoButton.enabled
    widget.ui.undoButton.click()
    assert scene_state(scene) == before


def test_cancel_stops_the_worker_within_two_seconds_and_leaves_the_scene_unchanged(widget, scene, t1_path):
    _panel_with_pair(widget, scene, t1_path, stages=("rigid", "affine", "deformable"))
    before = scene_state(scene)
    widget.ui.registerButton.click()
    job = widget._job
    run_event_loop(scene, lambda: "rigid" in widget.ui.statusLabel.text.lower(), timeout=120)

    start = time.monotonic()
    widget.ui.registerButton.click()  # Cancel
    run_event_loop(scene, lambda: not widget.isRunning(), timeout=10)
    elapsed = time.monotonic() - start

    print(f"\npanel: Cancel to idle in {elapsed:.2f} s")
    assert elapsed <= 2.0, f"cancel took {elapsed:.2f} s"
    assert widget.ui.statusLabel.text.startswith("Cancelled")
    assert job.background.done and widget.lastOutcome is None
    assert scene_state(scene) == before
    assert widget.ui.registerButton.text == "Register" and widget.ui.registerButton.enabled


def test_closing_the_scene_or_leaving_the_module_cancels_the_run(widget, scene, t1_path):
    _panel_with_pair(widget, scene, t1_path)
    widget.ui.registerButton.click()
    job = widget._job
    scene.mrmlScene.Clear()
    assert not widget.isRunning() and job.background.done
    assert scene.util.getNodesByClass("vtkMRMLTransformNode") == []

    _panel_with_pair(widget, scene, t1_path)
    widget.ui.registerButton.click()
    job = widget._job
    widget.exit()
    assert not widget.isRunning() and job.background.done
    assert scene.util.getNodesByClass("vtkMRMLTransformNode") == []
    widget.enter()


def test_panel_shows_a_worker_error_and_leaves_the_scene_unchanged(widget, scene, env, t1_path):
    _slicer, _moduleFile, _qt, ctk = env
    fixed = scene.util.loadVolume(str(t1_path), {"name": "T1"})
    constant = _bad_volume(scene, "constant")
    widget.ui.fixedVolumeSelector.setCurrentNode(fixed)
    widget.ui.movingVolumeSelector.setCurrentNode(constant)
    before = scene_state(scene)
    scene.app.testing = False
    ctk.ctkMessageBox.scriptedAnswers = [0x400]
    widget.ui.registerButton.click()
    run_event_loop(scene, lambda: not widget.isRunning(), timeout=120)
    assert widget.ui.statusLabel.text.startswith("Failed")
    assert len(ctk.ctkMessageBox.shown) == 1 and "constant" in ctk.ctkMessageBox.shown[0]
    assert scene_state(scene) == before


# --- packaging and the Slicer self-test -----------------------------------------------------------


def test_cmake_lists_every_library_file_and_resource():
    module_dir = ROOT / "OneClickRegistration"
    cmake = (module_dir / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "OneClickRegistration")
    listed = {line.strip() for line in cmake.splitlines()
              if line.strip().endswith((".py", ".png", ".ui", ".json", ".txt", ".gz", ".md"))
              and not line.strip().startswith("#")}
    library = {f"OneClickRegistrationLib/{path.name}" for path in (module_dir / "OneClickRegistrationLib").glob("*.py")}
    assert library <= listed, f"add to OneClickRegistration/CMakeLists.txt: {sorted(library - listed)}"
    missing = sorted(name for name in listed if not (module_dir / name).is_file())
    assert not missing, f"listed in OneClickRegistration/CMakeLists.txt but absent: {missing}"
    for resource in ("Resources/OneClickRegistration/Presets/presets.json",
                     "Resources/OneClickRegistration/Presets/presets.schema.json",
                     "Resources/UI/OneClickRegistration.ui", "Resources/Icons/OneClickRegistration.png",
                     "Resources/OneClickRegistration/requirements.txt",
                     "Resources/OneClickRegistration/SampleData/T1.nii.gz",
                     "Resources/OneClickRegistration/SampleData/T2.nii.gz"):
        assert resource in listed


def test_self_test_moves_about_the_volume_centre_and_measures_mm(scene, env, t1_path):
    """The self-test's moved copy keeps the volume centre's motion to the translation; identity errs by the motion."""
    _slicer, moduleFile, _qt, _ctk = env
    test = moduleFile.OneClickRegistrationTest
    fixed = scene.util.loadVolume(str(t1_path))
    moved, motion = test.movedCopy(fixed, 20.0, (10.0, -8.0, 8.0), "moved")
    dims = np.array(fixed.GetImageData().GetDimensions())
    center = ijk_to_ras(scene, fixed) @ np.append((dims - 1) / 2.0, 1.0)
    np.testing.assert_allclose((motion @ center)[:3] - center[:3], (10.0, -8.0, 8.0), atol=1e-9)
    np.testing.assert_allclose(ijk_to_ras(scene, moved), motion @ ijk_to_ras(scene, fixed), atol=1e-9)
    node = scene.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "truth")
    scene.util.updateTransformMatrixFromArray(node, np.linalg.inv(motion))
    assert test.errorsMm(node, motion, fixed).max() < 1e-6
    scene.util.updateTransformMatrixFromArray(node, np.eye(4))
    assert test.errorsMm(node, motion, fixed).min() > 5.0


def test_self_test_runs_offline_on_the_bundled_sample(scene, env):
    """No SampleData module and no network here: the self-test falls back to the bundled T1/T2 and passes."""
    _slicer, moduleFile, _qt, _ctk = env
    assert "SampleData" not in sys.modules
    moduleFile.OneClickRegistrationTest().runTest()
