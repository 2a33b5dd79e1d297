"""Segmentations and label maps carried along with the moving volume, Harden and Undo, in Slicer.

The module runs against Slicer's own Python layer with the stand-ins for the compiled parts
(see test_slicer_module.py, whose fixtures these tests use).  Three tests run the real worker
(two registrations, a cancel and a failure); the others replace it by one that "registers" at
once with a known transform, so that where every node lands can be checked exactly, also for
a non-linear result.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import SimpleITK as sitk

from test_slicer_module import (  # noqa: F401  (env, scene, widget and t1_path are fixtures)
    RELEASE, STANDIN, env, ijk_to_ras, moved_copy, pair_in_scene, rigid_motion, run_event_loop, scene,
    scene_state, slice_layers, t1_path, widget)

TUMOUR_CENTRE_IJK = (62, 73, 72)  # inside the head of the bundled T1 (1 mm voxels)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --- what the tests put in the scene -----------------------------------------------------------------


def tumour_mask(volume_shape, radius_voxels: float = 8.0) -> np.ndarray:
    """A ball of ones (k, j, i order, as slicer.util arrays) around TUMOUR_CENTRE_IJK."""
    k, j, i = np.indices(volume_shape)
    ci, cj, ck = TUMOUR_CENTRE_IJK
    return (((i - ci) ** 2 + (j - cj) ** 2 + (k - ck) ** 2) <= radius_voxels ** 2).astype(np.uint8)


def label_map_on(slicer, volume, mask, name: str):
    """A label map volume on `volume`'s voxel grid (as Slicer exports a segmentation with that reference)."""
    return slicer.util.addVolumeFromArray(mask, ijkToRAS=ijk_to_ras(slicer, volume), name=name,
                                          nodeClassName="vtkMRMLLabelMapVolumeNode")


def segmentation_on(slicer, volume, mask, name: str, referenceVolume="same"):
    """A segmentation with one binary-labelmap segment on `volume`'s grid; its reference geometry
    (what the Segment Editor records) is `volume`, or none for referenceVolume=None (a loaded file)."""
    import vtk

    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if referenceVolume is not None:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(*reversed(mask.shape))
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    labelmap.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(slicer, volume)))
    segmentId = segmentation.AddSegmentFromBinaryLabelmapRepresentation(labelmap, "tumour")
    slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation, segmentId)[:] = mask
    return segmentation


def surface_segmentation(slicer, centre_ras, name: str):
    """A segmentation whose source representation is a closed surface (a small ball, as an imported model)."""
    import vtk

    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.GetSegmentation().SetSourceRepresentationName(
        slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName())
    ball = vtk.vtkSphereSource()
    ball.SetCenter(*centre_ras)
    ball.SetRadius(5.0)
    ball.Update()
    segmentation.AddSegmentFromClosedSurfaceRepresentation(ball.GetOutput(), "marker")
    return segmentation


# --- where things are ----------------------------------------------------------------------------


def homogeneous(points) -> np.ndarray:
    return np.c_[points, np.ones(len(points))]


def label_points_local(slicer, volume) -> np.ndarray:
    """RAS points, in the node's own coordinates, of the labelled voxels of a label map volume."""
    k, j, i = np.nonzero(slicer.util.arrayFromVolume(volume))
    return (ijk_to_ras(slicer, volume) @ homogeneous(np.c_[i, j, k]).T).T[:, :3]


def first_segment_id(segmentation) -> str:
    return segmentation.GetSegmentation().GetNthSegmentID(0)


def segment_labelmap(segmentation):
    return segmentation.GetBinaryLabelmapInternalRepresentation(first_segment_id(segmentation))


def image_to_world(slicer, labelmap) -> np.ndarray:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def segment_points_local(slicer, segmentation) -> np.ndarray:
    """RAS points, in the segmentation's own coordinates, of the voxels of its first segment."""
    labelmap = segment_labelmap(segmentation)
    voxels = slicer.util.arrayFromSegmentInternalBinaryLabelmap(segmentation, first_segment_id(segmentation))
    k, j, i = np.nonzero(voxels)
    extent = labelmap.GetExtent()
    ijk = np.c_[i + extent[0], j + extent[2], k + extent[4]]
    return (image_to_world(slicer, labelmap) @ homogeneous(ijk).T).T[:, :3]


def surface_points(segmentation) -> np.ndarray:
    import vtk.util.numpy_support as vtknp

    segment = segmentation.GetSegmentation().GetSegment(first_segment_id(segmentation))
    return vtknp.vtk_to_numpy(segment.GetRepresentation("Closed surface").GetPoints().GetData()).astype(float)


def pick(points, count: int = 200) -> np.ndarray:
    """Up to `count` of the points, evenly spread over the list (the same ones for lists of the same length)."""
    return points[np.linspace(0, len(points) - 1, min(count, len(points))).astype(int)]


def to_world(node, points) -> np.ndarray:
    """Points taken from the node's coordinates to world through every parent transform, as Slicer does."""
    world = []
    for point in points:
        out = [0.0, 0.0, 0.0]
        node.TransformPointToWorld(point, out)
        world.append(out)
    return np.array(world)


def geometry(slicer, node) -> tuple:
    """What Harden changes and Undo must bring back: the parent transform, then the voxels and grid of a
    volume, the segment's voxels, extent and image-to-world, or the surface's points."""
    if node.IsA("vtkMRMLSegmentationNode"):
        if node.GetSegmentation().GetSourceRepresentationName() == "Closed surface":
            return node.GetTransformNodeID(), surface_points(node)
        labelmap = segment_labelmap(node)
        voxels = slicer.util.arrayFromSegmentInternalBinaryLabelmap(node, first_segment_id(node)).copy()
        return node.GetTransformNodeID(), voxels, labelmap.GetExtent(), image_to_world(slicer, labelmap)
    return node.GetTransformNodeID(), slicer.util.arrayFromVolume(node).copy(), ijk_to_ras(slicer, node)


def assert_same_geometry(expected: tuple, actual: tuple) -> None:
    assert expected[0] == actual[0], (expected[0], actual[0])
    for expected_part, actual_part in zip(expected[1:], actual[1:]):
        np.testing.assert_array_equal(np.asarray(actual_part), np.asarray(expected_part))


# --- a worker that "registers" with a known transform -------------------------------------------------


def itk_affine(motion_ras: np.ndarray):
    """The ITK fixed-to-moving transform (LPS) of a moving volume moved by `motion_ras` (RAS, world)."""
    lps = LPS_FROM_RAS @ motion_ras @ LPS_FROM_RAS
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(lps[:3, :3].ravel()))
    affine.SetTranslation(tuple(lps[:3, 3]))
    return affine


def itk_warp(motion_ras: np.ndarray, displacement_lps):
    """A non-linear fixed-to-moving transform: a displacement field (constant, so that its inverse is
    known), then the affine motion.  In RAS, "from parent" is x -> M (x + d)."""
    voxels = np.broadcast_to(np.asarray(displacement_lps, float), (9, 9, 9, 3))
    field = sitk.GetImageFromArray(np.ascontiguousarray(voxels), isVector=True)
    field.SetOrigin((-300.0, -300.0, -300.0))
    field.SetSpacing((75.0, 75.0, 75.0))
    return sitk.CompositeTransform([itk_affine(motion_ras), sitk.DisplacementFieldTransform(field)])


@pytest.fixture
def known_result(monkeypatch):
    """Replace the registration worker: after `known_result(transform)` every run ends at once with
    that transform; everything on the Slicer side runs as usual."""
    from OneClickRegistrationLib import background

    def use(transform) -> None:
        class KnownTransformWorker:
            done = True

            def __init__(self, fixed, moving, **options) -> None:
                pass

            def start(self) -> None:
                pass

            def poll(self) -> list:
                return []

            def cancel(self) -> None:
                pass

            def result(self):
                return types.SimpleNamespace(transform=transform, resampled_moving=None, seconds=0.0)

        monkeypatch.setattr(background, "BackgroundRegistration", KnownTransformWorker)

    return use


@pytest.fixture
def logic(env):
    return env[1].OneClickRegistrationLogic()


# --- carried, hardened, undone ---------------------------------------------------------------------


def test_real_registration_carries_what_is_under_the_moving_volumes_transform_hardens_and_undoes(
        scene, logic, t1_path):
    """The moving volume sits under a manual pre-alignment; its segmentation and label map are under it too."""
    fixed, moving, _motion = pair_in_scene(scene, t1_path)
    prealignment = scene.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "manual pre-alignment")
    scene.util.updateTransformMatrixFromArray(prealignment, rigid_motion(3.0, (30.0, 0.0, 0.0)))
    mask = tumour_mask(scene.util.arrayFromVolume(moving).shape)
    segmentation = segmentation_on(scene, moving, mask, "tumour on moving")
    label_map = label_map_on(scene, moving, mask, "tumour label")
    drawn_on_fixed = segmentation_on(scene, fixed, mask, "tumour on fixed")
    moved = (moving, segmentation, label_map)
    for node in moved:
        node.SetAndObserveTransformNodeID(prealignment.GetID())
    before = scene_state(scene)
    registered = {node.GetID(): geometry(scene, node) for node in moved}

    outcome = logic.register(fixed, moving, stages=("rigid",), fixedModality="T1", movingModality="T1")

    assert outcome.carriedNodes == [segmentation, label_map]
    result_id = outcome.transformNode.GetID()
    assert [node.GetTransformNodeID() for node in moved] == [result_id] * 3
    assert drawn_on_fixed.GetTransformNodeID() is None
    # voxel v of the moving grid shows what voxel v of the fixed grid shows: the tumour in the fixed T1
    truth = pick((ijk_to_ras(scene, fixed) @ homogeneous(np.column_stack(np.nonzero(mask)[::-1])).T).T[:, :3])
    for node, local in ((segmentation, segment_points_local(scene, segmentation)),
                        (label_map, label_points_local(scene, label_map))):
        errors = np.linalg.norm(to_world(node, pick(local)) - truth, axis=1)
        print(f"\n{node.GetName()} carried: error median {np.median(errors):.2f} mm, max {errors.max():.2f} mm")
        assert np.median(errors) < 0.5 and errors.max() < 1.0
    assert all(layer["background"] == fixed.GetID() and layer["foreground"] == moving.GetID()
               and layer["foregroundOpacity"] == 0.5 for layer in slice_layers(scene))

    world_before_harden = to_world(segmentation, pick(segment_points_local(scene, segmentation)))
    to_parent = scene.util.arrayFromTransformMatrix(outcome.transformNode)
    assert logic.harden(outcome) == [moving, segmentation, label_map] and outcome.hardened
    assert [node.GetTransformNodeID() for node in moved] == [None] * 3
    np.testing.assert_allclose(pick(segment_points_local(scene, segmentation)), world_before_harden, atol=1e-6)
    for node in (moving, label_map):  # a linear result moves the grid, the voxels stay
        np.testing.assert_allclose(ijk_to_ras(scene, node), to_parent @ registered[node.GetID()][2], atol=1e-9)
        assert np.array_equal(scene.util.arrayFromVolume(node), registered[node.GetID()][1])

    logic.undo(outcome)  # the harden
    assert not outcome.hardened
    assert [node.GetTransformNodeID() for node in moved] == [result_id] * 3
    np.testing.assert_allclose(to_world(segmentation, pick(segment_points_local(scene, segmentation))),
                               world_before_harden, atol=1e-9)

    logic.undo(outcome)  # the registration
    assert scene_state(scene) == before
    for node in moved:
        assert_same_geometry(registered[node.GetID()], geometry(scene, node))


def test_non_linear_result_is_hardened_by_resampling_and_undone_exactly(scene, logic, t1_path, known_result):
    fixed = scene.util.loadVolume(str(t1_path), {"name": "T1"})
    motion = rigid_motion(8.0, (4.0, -3.0, 2.0))
    moving = moved_copy(scene, fixed, motion, "T1 moved")
    displacement_lps = np.array([1.5, -2.0, 1.0])
    known_result(itk_warp(motion, displacement_lps))
    mask = tumour_mask(scene.util.arrayFromVolume(moving).shape)
    segmentation = segmentation_on(scene, moving, mask, "tumour on moving")
    label_map = label_map_on(scene, moving, mask, "tumour label")
    marker_centre = (ijk_to_ras(scene, moving) @ np.array([*TUMOUR_CENTRE_IJK, 1.0]))[:3]
    marker = surface_segmentation(scene, marker_centre, "imported marker")
    moved = (moving, segmentation, label_map, marker)
    before = scene_state(scene)
    registered = {node.GetID(): geometry(scene, node) for node in moved}
    displacement_ras = LPS_FROM_RAS[:3, :3] @ displacement_lps

    def to_parent(points):  # the inverse of "from parent" x -> M (x + d)
        return (np.linalg.inv(motion) @ homogeneous(points).T).T[:, :3] - displacement_ras

    outcome = logic.register(fixed, moving, alsoCarry=[marker])

    assert not outcome.transformNode.IsLinear()
    assert outcome.carriedNodes == [segmentation, label_map, marker]
    np.testing.assert_allclose(to_world(marker, pick(surface_points(marker))), to_parent(pick(surface_points(marker))),
                               atol=1e-4)
    labelled = {segmentation.GetID(): segment_points_local(scene, segmentation),
                label_map.GetID(): label_points_local(scene, label_map)}

    assert logic.harden(outcome) == [moving, segmentation, label_map, marker]
    assert all(node.GetTransformNodeID() is None for node in moved)
    np.testing.assert_allclose(surface_points(marker), to_parent(registered[marker.GetID()][1]), atol=1e-4)
    for node, points in ((segmentation, segment_points_local(scene, segmentation)),
                         (label_map, label_points_local(scene, label_map))):
        expected = to_parent(labelled[node.GetID()])
        shift = np.linalg.norm(points.mean(axis=0) - expected.mean(axis=0))
        print(f"\n{node.GetName()} hardened: centre {shift:.2f} mm from the truth, {len(points)} voxels "
              f"for {len(expected)}")
        assert shift < 0.5 and abs(len(points) - len(expected)) < 0.05 * len(expected)
    assert set(np.unique(scene.util.arrayFromVolume(label_map))) == {0, 1}  # nearest neighbour: no new label
    assert segment_labelmap(segmentation).GetExtent() != registered[segmentation.GetID()][2]  # resampled,
    np.testing.assert_array_equal(image_to_world(scene, segment_labelmap(segmentation)),  # on the same grid
                                  registered[segmentation.GetID()][3])
    np.testing.assert_allclose(ijk_to_ras(scene, moving)[:3, :3], registered[moving.GetID()][2][:3, :3])
    assert scene.util.arrayFromVolume(moving).dtype == np.uint8

    logic.undo(outcome)  # the harden
    for node in moved:
        assert_same_geometry((outcome.transformNode.GetID(), *registered[node.GetID()][1:]), geometry(scene, node))
    logic.undo(outcome)  # the registration
    assert scene_state(scene) == before


# --- which nodes are carried ------------------------------------------------------------------------


@pytest.fixture
def drawn_nodes(scene, t1_path):
    """Fixed and moving volumes at world, a segmentation and a label map drawn on each, and a segmentation
    loaded from a file (it references no volume)."""
    fixed, moving, motion = pair_in_scene(scene, t1_path)
    mask = tumour_mask(scene.util.arrayFromVolume(moving).shape)
    return types.SimpleNamespace(
        fixed=fixed, moving=moving, motion=motion,
        on_moving=segmentation_on(scene, moving, mask, "drawn on moving"),
        on_fixed=segmentation_on(scene, fixed, mask, "drawn on fixed"),
        loaded=segmentation_on(scene, moving, mask, "loaded from file", referenceVolume=None),
        label_on_moving=label_map_on(scene, moving, mask, "label on moving"),
        label_on_fixed=label_map_on(scene, fixed, mask, "label on fixed"))


def test_volumes_sharing_a_transform_carry_only_what_was_drawn_on_the_moving_one(
        scene, logic, drawn_nodes, known_result):
    nodes = drawn_nodes
    known_result(itk_affine(nodes.motion))
    outcome = logic.register(nodes.fixed, nodes.moving)
    assert outcome.carriedNodes == [nodes.on_moving, nodes.label_on_moving]
    assert nodes.on_moving.GetTransformNodeID() == outcome.transformNode.GetID()
    assert [node.GetTransformNodeID() for node in (nodes.on_fixed, nodes.loaded, nodes.label_on_fixed)] == [None] * 3
    np.testing.assert_allclose(  # the known transform: exactly onto the same tumour in the fixed T1
        to_world(nodes.on_moving, pick(segment_points_local(scene, nodes.on_moving))),
        to_world(nodes.on_fixed, pick(segment_points_local(scene, nodes.on_fixed))), atol=1e-6)


def test_nodes_chosen_in_advanced_are_carried_and_checked_before_the_run(scene, logic, drawn_nodes, known_result):
    nodes = drawn_nodes
    known_result(itk_affine(nodes.motion))
    outcome = logic.register(nodes.fixed, nodes.moving, carryMovingVolumeNodes=False, alsoCarry=[nodes.loaded])
    assert outcome.carriedNodes == [nodes.loaded]
    assert nodes.loaded.GetTransformNodeID() == outcome.transformNode.GetID()
    assert nodes.on_moving.GetTransformNodeID() is None
    logic.undo(outcome)

    elsewhere = scene.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "elsewhere")
    nodes.loaded.SetAndObserveTransformNodeID(elsewhere.GetID())
    before = scene_state(scene)
    with pytest.raises(ValueError, match="under another transform than the moving volume"):
        logic.register(nodes.fixed, nodes.moving, alsoCarry=[nodes.loaded])
    with pytest.raises(ValueError, match="neither a segmentation nor a label map"):
        logic.register(nodes.fixed, nodes.moving, alsoCarry=[nodes.fixed])
    assert scene_state(scene) == before


def test_nothing_is_carried_when_the_run_is_cancelled_or_fails(scene, logic, drawn_nodes):
    """The real worker, cancelled from the progress callback, and failing on a constant image."""
    from OneClickRegistrationLib.errors import RegistrationCancelled

    nodes = drawn_nodes
    before, layers = scene_state(scene), slice_layers(scene)

    def cancel(fraction, message):
        raise RegistrationCancelled("stopped by the test")

    with pytest.raises(RegistrationCancelled):
        logic.register(nodes.fixed, nodes.moving, alsoCarry=[nodes.loaded], progress=cancel)
    assert scene_state(scene) == before and slice_layers(scene) == layers

    constant = scene.util.addVolumeFromArray(np.full((20, 20, 20), 7.0, np.float32), name="constant")
    label_map_on(scene, constant, np.ones((20, 20, 20), np.uint8), "label on constant")
    before = scene_state(scene)
    with pytest.raises(ValueError, match="constant"):
        logic.register(nodes.fixed, constant, alsoCarry=[nodes.loaded], fixedModality="T1")
    assert scene_state(scene) == before and slice_layers(scene) == layers


# --- the panel -----------------------------------------------------------------------------------------


def test_panel_carries_the_checked_nodes_shows_the_result_hardens_and_undoes_step_by_step(
        widget, scene, env, t1_path):
    qt, ui = env[2], widget.ui
    fixed, moving, _motion = pair_in_scene(scene, t1_path)
    mask = tumour_mask(scene.util.arrayFromVolume(moving).shape)
    drawn = segmentation_on(scene, moving, mask, "drawn on moving")
    loaded = segmentation_on(scene, moving, mask, "loaded from file", referenceVolume=None)
    moved = (moving, drawn, loaded)
    ui.fixedVolumeSelector.setCurrentNode(fixed)
    ui.movingVolumeSelector.setCurrentNode(moving)
    ui.affineCheckBox.checked = ui.deformableCheckBox.checked = False
    parameters = widget.logic.getParameterNode()
    assert ui.carryMovingVolumeNodesCheckBox.checked and parameters.carryMovingVolumeNodes
    ui.alsoCarryComboBox.setCheckState(loaded, qt.Qt.Checked)
    assert list(parameters.alsoCarry) == [loaded]  # the check is stored in the parameter node
    parameters.alsoCarry = []
    assert ui.alsoCarryComboBox.checkedNodes() == []  # and shown from it
    parameters.alsoCarry = [loaded]
    assert ui.alsoCarryComboBox.checkedNodes() == [loaded]
    assert not ui.hardenButton.enabled and not ui.undoButton.enabled
    before = scene_state(scene)
    registered = {node.GetID(): geometry(scene, node) for node in moved}

    ui.registerButton.click()
    assert not ui.hardenButton.enabled
    run_event_loop(scene, lambda: not widget.isRunning(), timeout=120)
    outcome = widget.lastOutcome
    assert outcome is not None, ui.statusLabel.text
    result_id = outcome.transformNode.GetID()
    assert [node.GetTransformNodeID() for node in moved] == [result_id] * 3
    assert "Moved with it: drawn on moving, loaded from file" in ui.resultTextEdit.plainText
    assert all(layer["background"] == fixed.GetID() and layer["foreground"] == moving.GetID()
               and layer["foregroundOpacity"] == 0.5 for layer in slice_layers(scene))
    assert ui.hardenButton.enabled and ui.undoButton.text == "Undo registration"

    ui.hardenButton.click()
    assert [node.GetTransformNodeID() for node in moved] == [None] * 3
    assert not ui.hardenButton.enabled and ui.undoButton.text == "Undo harden"
    assert ui.statusLabel.text == "Hardened: T1 moved, drawn on moving, loaded from file."

    ui.undoButton.click()
    assert [node.GetTransformNodeID() for node in moved] == [result_id] * 3
    assert ui.hardenButton.enabled and ui.undoButton.text == "Undo registration"

    ui.undoButton.click()
    assert scene_state(scene) == before and widget.lastOutcome is None
    for node in moved:
        assert_same_geometry(registered[node.GetID()], geometry(scene, node))
    assert not ui.hardenButton.enabled and not ui.undoButton.enabled


def test_module_and_panel_import_no_matplotlib_dask_or_numba():
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(STANDIN)!r})
        import standin_app
        slicer = standin_app.install({RELEASE!r})
        standin_app.loadModule(slicer)
        slicer.util.selectModule("OneClickRegistration")
        loaded = sorted(name for name in ("matplotlib", "dask", "numba") if name in sys.modules)
        assert not loaded, loaded
        print("ok")
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().endswith("ok")
