import importlib.util
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode

# Heavy packages (numpy, SimpleITK, numba) and the registration library are
# imported inside the functions that need them, after the dependency check.

AUTO = "Auto"
MODALITY_CHOICES = (AUTO, "T1", "T2", "FLAIR", "CT")
STAGE_NAMES = ("rigid", "affine", "deformable")
# DICOM tags that help recognise a modality, by the hint name the library expects.
DICOM_HINT_TAGS = {
    "Modality": "0008,0060",
    "SeriesDescription": "0008,103e",
    "ProtocolName": "0018,1030",
    "SequenceName": "0018,0024",
}


#
# OneClickRegistration
#


class OneClickRegistration(ScriptedLoadableModule):  # noqa: F405
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)  # noqa: F405
        self.parent.title = _("One-Click Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Registration")]
        self.parent.dependencies = []
        self.parent.contributors = ["OneClickRegistration developers"]
        self.parent.helpText = _("""
Aligns one head scan to another with a single click: T1, T2, FLAIR or CT, in any combination.
<p>Pick the <b>fixed</b> volume (the one that stays put) and the <b>moving</b> volume (the one that is
moved onto it), then press <b>Register</b>. The module recognises what kind of scan each one is, picks
suitable settings, aligns the moving scan (first rigidly, then with scaling and shearing, then with a
gentle local warp when it helps) and places the moving volume under the resulting transform, so it
appears aligned at once, blended over the fixed one.</p>
<p>Each step gets a <b>score</b> from -1 to 1 that measures how well the two scans match where they
overlap (1 is a perfect match). A step is kept only if it does not lower the score. The verdict reads
<i>good</i>, <i>check visually</i> or <i>failed</i>; always check the result by scrolling through the
blended views. <b>Undo</b> in the Advanced section removes the result and restores the scene.</p>
""")
        self.parent.acknowledgementText = _("""
OneClickRegistration uses SimpleITK, numpy, scipy and numba.
""")


#
# OneClickRegistrationParameterNode
#


@parameterNodeWrapper
class OneClickRegistrationParameterNode:
    """The parameters of one registration.

    fixedVolume - the volume that stays in place.
    movingVolume - the volume aligned onto the fixed one.
    fixedModality, movingModality - "Auto" to recognise, or T1, T2, FLAIR, CT.
    runRigid, runAffine, runDeformable - which stages may run.
    presetName - "Auto" for the row matching the modalities, or a preset name.
    presetTablePath - a user preset table; empty for the bundled one.
    createResampledVolume - also create the moving volume resampled on the fixed grid.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedModality: str = AUTO
    movingModality: str = AUTO
    runRigid: bool = True
    runAffine: bool = True
    runDeformable: bool = True
    presetName: str = AUTO
    presetTablePath: str = ""
    createResampledVolume: bool = False


#
# OneClickRegistrationWidget
#


class OneClickRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._cancelRequested = False
        self.lastOutcome = None

    def setup(self) -> None:
        """Build the GUI from the .ui file and connect it."""
        ScriptedLoadableModuleWidget.setup(self)  # noqa: F405
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/OneClickRegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = OneClickRegistrationLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.undoButton.connect("clicked(bool)", self.onUndoButton)
        self.ui.presetTablePathLineEdit.connect("currentPathChanged(QString)", self.onPresetTablePathChanged)
        self.ui.progressBar.visible = False
        self.ui.undoButton.enabled = False
        self._fillPresetNames(self.logic.presetNames())
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)
        self.lastOutcome = None
        self.ui.undoButton.enabled = False

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure the parameter node exists and guess the volumes when the scene has exactly two."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume and not self._parameterNode.movingVolume:
            guess = self.logic.guessFixedAndMoving()
            if guess:
                self._parameterNode.fixedVolume, self._parameterNode.movingVolume = guess

    def setParameterNode(self, inputParameterNode: Optional[OneClickRegistrationParameterNode]) -> None:
        """Bind the GUI to a parameter node and observe it to keep the Register button up to date."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable Register only when both volumes are set and differ; say why in the tooltip otherwise."""
        if self._running:
            return
        reason = self._whyCannotRegister()
        self.ui.registerButton.text = _("Register")
        self.ui.registerButton.enabled = reason is None
        self.ui.registerButton.toolTip = reason or _("Align the moving volume to the fixed volume.")

    def _whyCannotRegister(self) -> Optional[str]:
        parameters = self._parameterNode
        if not parameters or not parameters.fixedVolume:
            return _("Select the fixed volume (the one that stays in place).")
        if not parameters.movingVolume:
            return _("Select the moving volume (the one to align).")
        if parameters.fixedVolume == parameters.movingVolume:
            return _("Fixed and moving volumes are the same volume; select two different volumes.")
        if not self._selectedStages():
            return _("Select at least one stage in the Advanced section.")
        return None

    def _selectedStages(self) -> tuple:
        parameters = self._parameterNode
        chosen = (parameters.runRigid, parameters.runAffine, parameters.runDeformable)
        return tuple(name for name, run in zip(STAGE_NAMES, chosen) if run)

    def onRegisterButton(self) -> None:
        """Register, or request cancellation while a registration runs."""
        if self._running:
            self._cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling...")
            return
        with slicer.util.tryWithErrorDisplay(_("Registration failed."), waitCursor=True):
            self._runRegistration()

    def _runRegistration(self) -> None:
        from OneClickRegistrationLib.errors import RegistrationCancelled

        parameters = self._parameterNode
        self._setRunning(True)
        try:
            outcome = self.logic.register(
                parameters.fixedVolume, parameters.movingVolume,
                fixedModality=parameters.fixedModality, movingModality=parameters.movingModality,
                stages=self._selectedStages(), presetName=parameters.presetName,
                presetTablePath=parameters.presetTablePath or None,
                createResampledVolume=parameters.createResampledVolume,
                progress=self._onProgress,
            )
        except RegistrationCancelled:
            self.ui.statusLabel.text = _("Cancelled: the scene is unchanged.")
            return
        except Exception:
            self.ui.statusLabel.text = _("Failed: the scene is unchanged.")
            raise
        finally:
            self._setRunning(False)
        self.lastOutcome = outcome
        self.ui.undoButton.enabled = True
        self.ui.resultTextEdit.plainText = self.logic.summary(outcome)
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s.").format(seconds=outcome.result.seconds)

    def _setRunning(self, running: bool) -> None:
        """Turn the Register button into Cancel (and back), show or hide the progress bar."""
        self._running = running
        self._cancelRequested = False
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        if running:
            self.ui.registerButton.text = _("Cancel")
            self.ui.registerButton.toolTip = _("Stop the registration; the scene is left unchanged.")
            self.ui.resultTextEdit.plainText = ""
        else:
            self._checkCanApply()

    def _onProgress(self, fraction: float, message: str) -> None:
        """Show progress, let Qt process the Cancel click, and stop when it was pressed."""
        from OneClickRegistrationLib.errors import RegistrationCancelled

        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        slicer.app.processEvents()
        if self._cancelRequested:
            raise RegistrationCancelled("cancelled by the user")

    def onUndoButton(self) -> None:
        """Remove the last result and restore the moving volume's previous transform."""
        if self.lastOutcome is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Undo failed."), waitCursor=True):
            self.logic.undo(self.lastOutcome)
            self.lastOutcome = None
            self.ui.undoButton.enabled = False
            self.ui.resultTextEdit.plainText = ""
            self.ui.statusLabel.text = _("Registration undone.")

    def onPresetTablePathChanged(self, path: str) -> None:
        """Use a user preset table: list its presets."""
        with slicer.util.tryWithErrorDisplay(_("Cannot read the preset table."), waitCursor=True):
            names = self.logic.presetNames(path or None)
            self._parameterNode.presetTablePath = path
            self._fillPresetNames(names)

    def _fillPresetNames(self, names: list) -> None:
        combo = self.ui.presetComboBox
        combo.clear()
        combo.addItems([AUTO] + list(names))


#
# OneClickRegistrationLogic
#


@dataclass
class OneClickRegistrationOutcome:
    """What one registration put in the scene, and the library's full result.

    result - the library's RegistrationResult (modalities, preset, stage scores, transforms).
    transformNode - places the moving volume onto the fixed volume.
    resampledVolumeNode - the moving volume resampled on the fixed grid, or None.
    previousParentTransformID - the moving volume's parent transform before, for undo.
    """

    result: object
    fixedVolumeNode: object
    movingVolumeNode: object
    transformNode: object
    resampledVolumeNode: object = None
    previousParentTransformID: Optional[str] = None


class OneClickRegistrationLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """All the work of the module; usable without the GUI, e.g. from the Python console:

        logic = slicer.util.getModuleLogic("OneClickRegistration")
        outcome = logic.register(getNode("MRBrainT1"), getNode("CTBrain"))
        print(logic.summary(outcome))
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return OneClickRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def resourcePath(filename: str) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", filename)

    def register(
        self,
        fixedVolumeNode: vtkMRMLScalarVolumeNode,
        movingVolumeNode: vtkMRMLScalarVolumeNode,
        *,
        fixedModality: Optional[str] = None,
        movingModality: Optional[str] = None,
        stages=STAGE_NAMES,
        presetName: Optional[str] = None,
        presetTablePath: Optional[str] = None,
        createResampledVolume: bool = False,
        showResult: bool = True,
        progress: Optional[Callable[[float, str], None]] = None,
    ) -> OneClickRegistrationOutcome:
        """Align the moving volume to the fixed volume and place it under the resulting transform.

        :param fixedModality, movingModality: None or "Auto" to recognise, or "T1", "T2", "FLAIR", "CT".
        :param stages: which of "rigid", "affine", "deformable" may run, in that order.
        :param presetName: None or "Auto" for the preset matching the modalities, or a preset's name.
        :param presetTablePath: a preset table JSON file; None for the bundled table.
        :param createResampledVolume: also add the moving volume resampled on the fixed grid.
        :param showResult: show fixed and moving blended in the slice views.
        :param progress: called as progress(fraction, message); raise RegistrationCancelled from it to stop.
        :return: the created nodes and the library's result (scores, modalities, preset, time).

        Nothing in the scene changes unless the registration succeeds.
        """
        self._validateVolumeNode(fixedVolumeNode, _("fixed volume"))
        self._validateVolumeNode(movingVolumeNode, _("moving volume"))
        self._dependencies().dependency_handler().ensure(requester="OneClickRegistration")
        import sitkUtils
        from OneClickRegistrationLib import register

        startTime = time.time()
        logging.info(f"Registering {movingVolumeNode.GetName()} to {fixedVolumeNode.GetName()}")
        table = self._presetTable(presetTablePath)
        result = register(
            sitkUtils.PullVolumeFromSlicer(fixedVolumeNode),
            sitkUtils.PullVolumeFromSlicer(movingVolumeNode),
            fixed_modality=self._modalityOrNone(fixedModality),
            moving_modality=self._modalityOrNone(movingModality),
            preset=self._presetByName(table, presetName),
            preset_table=table,
            stages=tuple(stages),
            progress=progress,
            fixed_hints=self.volumeHints(fixedVolumeNode),
            moving_hints=self.volumeHints(movingVolumeNode),
        )
        outcome = self._addResultToScene(result, fixedVolumeNode, movingVolumeNode, createResampledVolume)
        if showResult:
            slicer.util.setSliceViewerLayers(background=fixedVolumeNode, foreground=movingVolumeNode,
                                             foregroundOpacity=0.5, fit=True)
        logging.info(f"Registration completed in {time.time() - startTime:.2f} seconds")
        return outcome

    def undo(self, outcome: OneClickRegistrationOutcome) -> None:
        """Remove what `register` added and give the moving volume back its previous transform."""
        outcome.movingVolumeNode.SetAndObserveTransformNodeID(outcome.previousParentTransformID)
        for node in (outcome.resampledVolumeNode, outcome.transformNode):
            if node is not None and node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)

    @staticmethod
    def _dependencies():
        """The library's dependencies module, loaded from its file without importing the package.

        The package imports numpy, SimpleITK and numba on import, so it must not be
        imported before the dependency check has run.
        """
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "OneClickRegistrationLib", "dependencies.py")
        spec = importlib.util.spec_from_file_location("OneClickRegistrationDependencies", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    @staticmethod
    def _validateVolumeNode(volumeNode, role: str) -> None:
        if volumeNode is None:
            raise ValueError(_("No {role} selected.").format(role=role))
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise ValueError(_("The {role} {name} is not a scalar volume.").format(role=role, name=volumeNode.GetName()))
        imageData = volumeNode.GetImageData()
        if imageData is None or min(imageData.GetDimensions()) < 1:
            raise ValueError(_("The {role} {name} holds no image data.").format(role=role, name=volumeNode.GetName()))
        if imageData.GetNumberOfScalarComponents() != 1:
            raise ValueError(_("The {role} {name} has {count} values per voxel (colour, vector or time series); "
                               "select a single 3D scalar volume.").format(
                role=role, name=volumeNode.GetName(), count=imageData.GetNumberOfScalarComponents()))

    @staticmethod
    def _modalityOrNone(modality: Optional[str]) -> Optional[str]:
        return None if not modality or modality == AUTO else modality

    @staticmethod
    def _presetTable(presetTablePath: Optional[str]):
        from OneClickRegistrationLib.presets import load_preset_table

        return load_preset_table(presetTablePath) if presetTablePath else None

    @staticmethod
    def _presetByName(table, presetName: Optional[str]):
        """The table row called presetName, or None to let the library pick by modality."""
        if not presetName or presetName == AUTO:
            return None
        from OneClickRegistrationLib.presets import load_preset_table

        return (table or load_preset_table()).by_name(presetName)

    def presetNames(self, presetTablePath: Optional[str] = None) -> list:
        """Names of the presets of a table (default: the bundled one), read without the library."""
        path = presetTablePath or self.resourcePath("Presets/presets.json")
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
        return [row["name"] for row in document.get("presets", [])]

    @staticmethod
    def volumeHints(volumeNode) -> dict:
        """Node name and DICOM tags (when the volume was loaded from DICOM) for modality recognition."""
        hints = {"name": volumeNode.GetName()}
        instanceUIDs = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if instanceUIDs and database is not None:
            for hint, tag in DICOM_HINT_TAGS.items():
                value = database.instanceValue(instanceUIDs[0], tag)
                if value:
                    hints[hint] = value.strip()
        return hints

    def guessFixedAndMoving(self):
        """(fixed, moving) when the scene has exactly two volumes: the MR is fixed over a CT,
        else the first loaded is fixed.  None otherwise."""
        volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
        if len(volumes) != 2:
            return None
        first, second = volumes
        if self.looksLikeCT(first) and not self.looksLikeCT(second):
            return second, first
        return first, second

    def looksLikeCT(self, volumeNode) -> bool:
        """A cheap CT test: DICOM Modality, a 'CT' in the name, or Hounsfield-like air below -500."""
        hints = self.volumeHints(volumeNode)
        if hints.get("Modality", "").upper() == "CT":
            return True
        if re.search(r"(^|[^A-Za-z])(CT|ct|Ct)([^a-z]|$)", hints["name"]):
            return True
        imageData = volumeNode.GetImageData()
        return imageData is not None and imageData.GetScalarRange()[0] < -500

    def _addResultToScene(self, result, fixedVolumeNode, movingVolumeNode, createResampledVolume: bool):
        """Create the transform (and resampled volume) nodes; on any error remove what was added."""
        added = []
        try:
            transformNode = self.transformNodeFromITK(
                result.transform, f"{movingVolumeNode.GetName()} to {fixedVolumeNode.GetName()}")
            added.append(transformNode)
            transformNode.SetAndObserveTransformNodeID(fixedVolumeNode.GetTransformNodeID())
            resampledVolumeNode = None
            if createResampledVolume:
                import sitkUtils

                resampledVolumeNode = sitkUtils.PushVolumeToSlicer(
                    result.resampled_moving, name=f"{movingVolumeNode.GetName()} resampled")
                added.append(resampledVolumeNode)
                resampledVolumeNode.SetAndObserveTransformNodeID(fixedVolumeNode.GetTransformNodeID())
        except Exception:
            for node in added:
                slicer.mrmlScene.RemoveNode(node)
            raise
        outcome = OneClickRegistrationOutcome(
            result=result, fixedVolumeNode=fixedVolumeNode, movingVolumeNode=movingVolumeNode,
            transformNode=transformNode, resampledVolumeNode=resampledVolumeNode,
            previousParentTransformID=movingVolumeNode.GetTransformNodeID())
        movingVolumeNode.SetAndObserveTransformNodeID(transformNode.GetID())
        return outcome

    def transformNodeFromITK(self, itkTransform, name: str):
        """A transform node for an ITK fixed-to-moving transform (LPS), placing moving onto fixed.

        Linear: a vtkMRMLLinearTransformNode whose "to parent" matrix is the inverse of the
        fixed-to-moving matrix converted to RAS.  Otherwise the transform is written to an ITK
        file and read back by Slicer, which does the same conversion (as "from parent").
        """
        if itkTransform.IsLinear():
            transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
            slicer.util.updateTransformMatrixFromArray(transformNode, self.rasToParentMatrix(itkTransform))
            return transformNode
        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "OneClickRegistrationTransform.h5")
            sitk.WriteTransform(itkTransform, path)
            transformNode = slicer.util.loadTransform(path)
        transformNode.SetName(slicer.mrmlScene.GetUniqueNameByString(name))
        return transformNode

    @staticmethod
    def rasToParentMatrix(itkTransform):
        """4x4 RAS "to parent" matrix (moving -> fixed) of a linear ITK fixed-to-moving transform (LPS).

        M_ras = C * T_lps * C with C = diag(-1, -1, 1, 1) converts fixed-to-moving to RAS;
        the node needs its inverse.  This is the only LPS/RAS conversion of the linear path.
        """
        import numpy as np

        origin = np.array(itkTransform.TransformPoint((0.0, 0.0, 0.0)))
        fixedToMovingLPS = np.eye(4)
        for axis, unit in enumerate(np.eye(3)):
            fixedToMovingLPS[:3, axis] = np.array(itkTransform.TransformPoint(tuple(unit))) - origin
        fixedToMovingLPS[:3, 3] = origin
        lpsToRas = np.diag([-1.0, -1.0, 1.0, 1.0])
        return np.linalg.inv(lpsToRas @ fixedToMovingLPS @ lpsToRas)

    @staticmethod
    def verdict(stage) -> str:
        """good / check visually / failed, from a stage's score and whether it was kept."""
        from OneClickRegistrationLib.score import verdict

        return _(verdict(stage.score, stage.accepted))

    def summary(self, outcome: OneClickRegistrationOutcome) -> str:
        """The result in plain words: modalities, preset, each stage's score and verdict, time."""
        result = outcome.result
        lines = [
            _("Fixed: {guess}").format(guess=result.fixed_modality),
            _("Moving: {guess}").format(guess=result.moving_modality),
            _("Preset: {name}").format(name=result.preset.name),
            _("Score before: {score:.3f}").format(score=result.initial_score),
        ]
        for stage in result.stages:
            kept = _("kept") if stage.accepted else _("not kept")
            lines.append(_("{name}: score {score:.3f}, {verdict} ({kept}, {seconds:.1f} s)").format(
                name=stage.name, score=stage.score, verdict=self.verdict(stage), kept=kept, seconds=stage.seconds))
            if stage.message:
                lines.append(f"    {stage.message}")
        lines.append(_("Total time: {seconds:.1f} s").format(seconds=result.seconds))
        lines.append(_("Score: {description}").format(description=result.score_description))
        return "\n".join(lines)


#
# OneClickRegistrationTest
#


class OneClickRegistrationTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Self-test on Slicer's CTMRBrain sample data (CT, T1 and T2 of one head)."""

    def setUp(self):
        """Clear the scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run all tests."""
        self.setUp()
        self.test_RecoversKnownRigidMotion()
        self.setUp()
        self.test_CTToMRRunsAndScores()
        self.setUp()
        self.test_WidgetRegisterButton()

    def _loadSample(self):
        import SampleData

        self.delayDisplay("Loading CTMRBrain sample data")
        return SampleData.SampleDataLogic().downloadSamples("CTMRBrain")

    @staticmethod
    def movedCopy(volumeNode, rotationDegrees: float, translationMm, name: str):
        """A copy of volumeNode moved by a known rigid motion (RAS); returns (node, motion matrix)."""
        import numpy as np

        angle = np.radians(rotationDegrees)
        motion = np.eye(4)
        motion[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        motion[:3, 3] = translationMm
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        moved = slicer.util.addVolumeFromArray(
            slicer.util.arrayFromVolume(volumeNode).copy(),
            ijkToRAS=motion @ slicer.util.arrayFromVTKMatrix(ijkToRas), name=name)
        return moved, motion

    @staticmethod
    def errorsMm(transformNode, motion, fixedVolumeNode):
        """Distances between truth and result over a grid of points in the fixed volume's box."""
        import numpy as np

        ijkToRas = vtk.vtkMatrix4x4()
        fixedVolumeNode.GetIJKToRASMatrix(ijkToRas)
        dims = fixedVolumeNode.GetImageData().GetDimensions()
        fractions = np.linspace(0.25, 0.75, 5)
        ijk = np.array([[i * dims[0], j * dims[1], k * dims[2], 1.0]
                        for i in fractions for j in fractions for k in fractions])
        points = (slicer.util.arrayFromVTKMatrix(ijkToRas) @ ijk.T).T
        toParent = slicer.util.arrayFromTransformMatrix(transformNode)
        recovered = (toParent @ motion @ points.T).T
        return np.linalg.norm(recovered[:, :3] - points[:, :3], axis=1)

    def test_RecoversKnownRigidMotion(self):
        """T1 against a copy moved by 20 degrees and 15 mm: the transform must undo the motion."""
        _ct, t1, _t2 = self._loadSample()
        moved, motion = self.movedCopy(t1, 20.0, (10.0, -8.0, 8.0), "MRBrainT1 moved")
        logic = OneClickRegistrationLogic()
        outcome = logic.register(t1, moved, stages=("rigid",))
        errors = self.errorsMm(outcome.transformNode, motion, t1)
        logging.info(f"error median {float(sorted(errors)[len(errors) // 2]):.2f} mm, max {errors.max():.2f} mm")
        self.assertLess(float(errors.max()), 2.0)
        self.assertEqual(moved.GetTransformNodeID(), outcome.transformNode.GetID())
        self.delayDisplay("Known rigid motion recovered")

    def test_CTToMRRunsAndScores(self):
        """CT to T1: modalities recognised, rigid stage scored and kept, scene has the transform."""
        ct, t1, _t2 = self._loadSample()
        logic = OneClickRegistrationLogic()
        outcome = logic.register(t1, ct, stages=("rigid", "affine"))
        self.assertEqual(outcome.result.moving_modality.modality, "CT")
        self.assertTrue(outcome.result.stage("rigid").accepted)
        self.assertEqual(ct.GetTransformNodeID(), outcome.transformNode.GetID())
        logic.undo(outcome)
        self.assertIsNone(ct.GetTransformNodeID())
        self.delayDisplay("CT to MR registration ran")

    def test_WidgetRegisterButton(self):
        """The module GUI: both volumes filled in, Register enabled, a result shown."""
        _ct, t1, t2 = self._loadSample()
        slicer.util.selectModule("OneClickRegistration")
        widget = slicer.modules.OneClickRegistrationWidget
        parameters = widget.logic.getParameterNode()
        parameters.fixedVolume, parameters.movingVolume = t1, t2
        parameters.runAffine = parameters.runDeformable = False
        self.assertTrue(widget.ui.registerButton.enabled)
        widget.ui.registerButton.click()
        self.assertIsNotNone(widget.lastOutcome)
        self.assertEqual(t2.GetTransformNodeID(), widget.lastOutcome.transformNode.GetID())
        self.delayDisplay("Widget Register path works")
