import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Optional, Union

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *  # noqa: F403
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper

from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

# Heavy packages (numpy, SimpleITK, numba) and the registration itself are used only
# after the dependency check; the registration runs in a worker process so that
# Slicer stays responsive (OneClickRegistrationLib.background).  matplotlib, which
# draws the quality report, is asked for and imported only when a report is saved.

AUTO = "Auto"
MODALITY_CHOICES = (AUTO, "T1", "T2", "FLAIR", "CT")
STAGE_NAMES = ("rigid", "affine", "deformable")
# The nodes that can be carried along with the moving volume (placed under the result's transform).
CARRIED_NODE_CLASSES = ("vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode")
DOCUMENTATION_URL = "https://github.com/OneClickRegistration/SlicerOneClickRegistration#readme"
# How often the panel asks the worker for news while a registration runs.
POLL_INTERVAL_MS = 200


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
        self.parent.contributors = ["OneClickRegistration developers (OneClickRegistration project)"]
        self.parent.helpText = _("""
Aligns one head scan to another with a single click: T1, T2, FLAIR or CT, in any combination.
<p>Pick the <b>fixed</b> volume (the one that stays put) and the <b>moving</b> volume (the one that is
moved onto it), then press <b>Register</b>. The module recognises what kind of scan each one is, picks
suitable settings, aligns the moving scan (first rigidly, then with scaling and shearing, then with a
gentle local warp when it helps) and places the moving volume under the resulting transform, so it
appears aligned at once, blended over the fixed one. The work runs in a separate process: Slicer stays
usable, and <b>Cancel</b> stops it and leaves the scene as it was.</p>
<p>Each step gets a <b>score</b> from -1 to 1 that measures how well the two scans match where they
overlap (1 is a perfect match). A step is kept only if it does not lower the score. The verdict reads
<i>good</i>, <i>check visually</i> or <i>failed</i>; always check the result by scrolling through the
blended views.</p>
<p>The segmentations and label maps of the moving volume move with it: those under its transform or, when
the fixed volume is under the same one, those drawn on the moving volume. <i>Also carry</i> in the
Advanced section adds others. <b>Harden</b> makes the result permanent for everything that was moved.
<b>Undo</b> in the Advanced section reverses the last step: the harden, or else the registration.</p>
<p><b>Save quality report...</b> writes, into a folder you choose, an index.html with pictures of the
alignment before and after, a checkerboard and the table of stages, to check and to file. It is drawn
with matplotlib, which the module offers to install the first time.</p>
<p>See the {link_start}module documentation{link_end}.</p>
""").format(link_start=f'<a href="{DOCUMENTATION_URL}">', link_end="</a>")
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
    presetName - "Auto" for the row matching the modalities, or a preset name of the table in use.
    presetTablePath - a user preset table; empty for the bundled one.
    createResampledVolume - also create the moving volume resampled on the fixed grid.
    carryMovingVolumeNodes - move the segmentations and label maps of the moving volume with it.
    alsoCarry - more segmentations and label maps to move with it (in the moving volume's coordinates).

    presetName and presetTablePath are kept in step with their widgets by the widget
    class: the list of preset names depends on the table, which a Choice cannot express.
    alsoCarry too: the wrapper has no connector for a checkable node combo box.
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedModality: Annotated[str, Choice(list(MODALITY_CHOICES))] = AUTO
    movingModality: Annotated[str, Choice(list(MODALITY_CHOICES))] = AUTO
    runRigid: bool = True
    runAffine: bool = True
    runDeformable: bool = True
    presetName: str = AUTO
    presetTablePath: str = ""
    createResampledVolume: bool = False
    carryMovingVolumeNodes: bool = True
    alsoCarry: list[Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]]


#
# OneClickRegistrationWidget
#


class OneClickRegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):  # noqa: F405
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)  # noqa: F405
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._shownPresetTablePath = None
        self._qualityReportFolder = ""
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
        self.ui.hardenButton.connect("clicked(bool)", self.onHardenButton)
        self.ui.saveQualityReportButton.connect("clicked(bool)", self.onSaveQualityReportButton)
        self.ui.alsoCarryComboBox.connect("checkedNodesChanged()", self.onAlsoCarryChanged)
        self.ui.presetComboBox.connect("currentTextChanged(QString)", self.onPresetNameChanged)
        self.ui.presetTablePathLineEdit.connect("currentPathChanged(QString)", self.onPresetTablePathChanged)
        self.ui.bundledPresetTableButton.connect("clicked(bool)", self.onUseBundledPresetTable)
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self._pollRegistration)
        self.ui.progressBar.visible = False
        self._updateResultButtons()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.cancelRegistration()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module: a running registration is cancelled."""
        self.cancelRegistration()
        self._disconnectParameterNode()

    def _disconnectParameterNode(self) -> None:
        """Unbind the GUI from the parameter node and stop observing it (once, however often called)."""
        if self._parameterNode and self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self._parameterNode and self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                                    self._onParameterNodeModified):
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: a running registration is cancelled."""
        self.cancelRegistration()
        self.setParameterNode(None)
        self.lastOutcome = None
        self._updateResultButtons()

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
        """Bind the GUI to a parameter node and observe it to keep the hand-synced widgets up to date."""
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Show the preset table, preset and nodes to carry of the parameter node; update the Register button."""
        self._showPresetTable()
        self._showAlsoCarry()
        self._checkCanApply()

    def _showAlsoCarry(self) -> None:
        """Check exactly the parameter node's alsoCarry nodes in the combo box, without echoing signals back."""
        chosen = [node for node in self._parameterNode.alsoCarry if node is not None]
        chosenIDs = {node.GetID() for node in chosen}
        combo = self.ui.alsoCarryComboBox
        wasBlocked = combo.blockSignals(True)
        for node in combo.checkedNodes():
            if node.GetID() not in chosenIDs:
                combo.setCheckState(node, qt.Qt.Unchecked)
        for node in chosen:
            combo.setCheckState(node, qt.Qt.Checked)
        combo.blockSignals(wasBlocked)

    def _showPresetTable(self) -> None:
        """Show the parameter node's preset table (path field, list read once per table) and preset,
        without echoing signals back."""
        parameters = self._parameterNode
        path = parameters.presetTablePath
        combo = self.ui.presetComboBox
        wasBlocked = combo.blockSignals(True)
        if path != self._shownPresetTablePath:
            self._shownPresetTablePath = path
            lineEditWasBlocked = self.ui.presetTablePathLineEdit.blockSignals(True)
            self.ui.presetTablePathLineEdit.currentPath = path
            self.ui.presetTablePathLineEdit.blockSignals(lineEditWasBlocked)
            combo.clear()
            combo.addItems([AUTO] + self._presetNamesOrBundled(path))
        combo.setCurrentText(parameters.presetName if combo.findText(parameters.presetName) >= 0 else AUTO)
        combo.blockSignals(wasBlocked)

    def _presetNamesOrBundled(self, path: str) -> list:
        """The preset names of the table at `path` (bundled when empty); the bundled ones if it cannot be read."""
        try:
            return self.logic.presetNames(path or None)
        except (OSError, ValueError) as error:
            logging.warning(f"Preset table {path} cannot be read ({error}); showing the bundled presets")
            return self.logic.presetNames()

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable Register only when both volumes are set and differ; say why in the tooltip otherwise."""
        if self.isRunning():
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

    def isRunning(self) -> bool:
        return self._job is not None

    def onRegisterButton(self) -> None:
        """Start a registration in the background, or cancel the one that runs."""
        if self.isRunning():
            self.cancelRegistration()
            return
        with slicer.util.tryWithErrorDisplay(_("Registration failed to start.")):
            self._startRegistration()

    def _startRegistration(self) -> None:
        parameters = self._parameterNode
        self.ui.statusLabel.text = _("Checking the Python packages the registration needs...")
        self.logic.ensureDependencies()
        self._job = self.logic.startRegistration(
            parameters.fixedVolume, parameters.movingVolume,
            fixedModality=parameters.fixedModality, movingModality=parameters.movingModality,
            stages=self._selectedStages(), presetName=parameters.presetName,
            presetTablePath=parameters.presetTablePath or None,
            createResampledVolume=parameters.createResampledVolume,
            carryMovingVolumeNodes=parameters.carryMovingVolumeNodes,
            alsoCarry=[node for node in parameters.alsoCarry if node is not None])
        self._setRunning(True)
        self.pollTimer.start()

    def cancelRegistration(self) -> None:
        """Stop a running registration (within about two seconds); the scene is left unchanged."""
        if not self.isRunning():
            return
        self.ui.statusLabel.text = _("Cancelling...")
        self._job.cancel()
        self._finishRegistration()

    def _pollRegistration(self) -> None:
        """Timer slot: show the worker's latest progress; finish when it has ended."""
        if not self.isRunning():
            return
        update = self._job.latestProgress()
        if update is not None:
            fraction, message = update
            self.ui.progressBar.value = int(round(100 * fraction))
            self.ui.statusLabel.text = message
        if self._job.done:
            self._finishRegistration()

    def _finishRegistration(self) -> None:
        """Put the result in the scene, or report why there is none; the panel becomes idle again."""
        from OneClickRegistrationLib.errors import RegistrationCancelled

        job, self._job = self._job, None
        self.pollTimer.stop()
        self._setRunning(False)
        try:
            outcome = self.logic.finishRegistration(job)
        except RegistrationCancelled:
            self.ui.statusLabel.text = _("Cancelled: the scene is unchanged.")
            return
        except Exception as error:  # noqa: BLE001  (shown to the user, the panel stays usable)
            logging.exception("Registration failed")
            self.ui.statusLabel.text = _("Failed: the scene is unchanged.")
            slicer.util.errorDisplay(_("Registration failed.") + f"\n\n{error}")
            return
        self.lastOutcome = outcome
        self._updateResultButtons()
        self.ui.resultTextEdit.plainText = self.logic.summary(outcome)
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s.").format(seconds=outcome.result.seconds)

    def _setRunning(self, running: bool) -> None:
        """Register becomes Cancel; inputs, settings and the result's actions are locked while a registration runs."""
        for widget in (self.ui.inputsCollapsibleButton, self.ui.advancedCollapsibleButton,
                       self.ui.undoButton, self.ui.hardenButton, self.ui.saveQualityReportButton):
            widget.enabled = not running
        if not running:
            self._updateResultButtons()
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        if running:
            self.ui.registerButton.text = _("Cancel")
            self.ui.registerButton.toolTip = _("Stop the registration; the scene is left unchanged.")
            self.ui.registerButton.enabled = True
            self.ui.resultTextEdit.plainText = ""
            self.ui.statusLabel.text = _("Starting the registration...")
        else:
            self._checkCanApply()

    def _updateResultButtons(self) -> None:
        """Harden while the last result is not hardened yet; a report while there is a result; Undo says
        which step it reverses."""
        outcome = self.lastOutcome
        hardened = outcome is not None and outcome.hardened
        self.ui.hardenButton.enabled = outcome is not None and not hardened
        self.ui.saveQualityReportButton.enabled = outcome is not None
        self.ui.undoButton.enabled = outcome is not None
        if hardened:
            self.ui.undoButton.text = _("Undo harden")
            self.ui.undoButton.toolTip = _("Give the moved volume, segmentations and label maps back the "
                                           "geometry they had before Harden, under the result's transform.")
        else:
            self.ui.undoButton.text = _("Undo registration")
            self.ui.undoButton.toolTip = _("Remove the last result and give the moving volume and everything "
                                           "moved with it back their previous transform.")

    def onHardenButton(self) -> None:
        """Make the last result permanent for the moving volume and everything moved with it."""
        if self.lastOutcome is None or self.isRunning():
            return
        with slicer.util.tryWithErrorDisplay(_("Harden failed."), waitCursor=True):
            nodes = self.logic.harden(self.lastOutcome)
            self.ui.statusLabel.text = _("Hardened: {names}.").format(names=", ".join(node.GetName() for node in nodes))
            self._updateResultButtons()

    def onSaveQualityReportButton(self) -> None:
        """Ask for a folder and save the last result's quality report in it; say where, or why not."""
        if self.lastOutcome is None or self.isRunning():
            return
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Folder for the quality report"), self._qualityReportFolder)
        if not folder:
            return  # the user cancelled
        self._qualityReportFolder = folder
        with slicer.util.tryWithErrorDisplay(_("The quality report was not saved."), waitCursor=True):
            index = self.logic.saveQualityReport(self.lastOutcome, folder)
            self.ui.statusLabel.text = _("Quality report saved: {path}").format(path=index)

    def onUndoButton(self) -> None:
        """Undo the last step: the harden, or else the registration."""
        if self.lastOutcome is None or self.isRunning():
            return
        with slicer.util.tryWithErrorDisplay(_("Undo failed.")):
            undoingHarden = self.lastOutcome.hardened
            self.logic.undo(self.lastOutcome)
            if undoingHarden:
                self.ui.statusLabel.text = _("Harden undone: the moved nodes are under the result's transform again.")
            else:
                self.lastOutcome = None
                self.ui.resultTextEdit.plainText = ""
                self.ui.statusLabel.text = _("Registration undone.")
            self._updateResultButtons()

    def onAlsoCarryChanged(self) -> None:
        """The user checked or unchecked a node to carry along: store the checked ones."""
        if self._parameterNode is not None:
            self._parameterNode.alsoCarry = list(self.ui.alsoCarryComboBox.checkedNodes())

    def onPresetNameChanged(self, name: str) -> None:
        """The user picked a preset: store it (the combo is not bound by the wrapper, see the parameter node)."""
        if self._parameterNode is not None and name:
            self._parameterNode.presetName = name

    def onPresetTablePathChanged(self, path: str) -> None:
        """Use a user preset table once the field names an existing .json file (CTK emits on every keystroke)."""
        if self._parameterNode is None or not path.lower().endswith(".json") or not os.path.isfile(path):
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot read the preset table.")):
            self.logic.presetNames(path)
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.presetTablePath = path
                self._parameterNode.presetName = AUTO

    def onUseBundledPresetTable(self) -> None:
        """Go back to the preset table that comes with the module."""
        if self._parameterNode is not None:
            with slicer.util.NodeModify(self._parameterNode):
                self._parameterNode.presetTablePath = ""
                self._parameterNode.presetName = AUTO


#
# OneClickRegistrationLogic
#


@dataclass
class OneClickRegistrationNodeState:
    """A node's content and parent transform at one moment, to put them back (undoing a Harden).

    content - a node of the same class, never added to the scene, holding a deep copy
    (vtkMRMLNode::CopyContent: a volume's voxels and geometry, a segmentation's segments).
    """

    node: object
    content: object
    parentTransformID: Optional[str]

    @classmethod
    def of(cls, node) -> "OneClickRegistrationNodeState":
        content = slicer.mrmlScene.CreateNodeByClass(node.GetClassName())
        content.UnRegister(None)  # owned by the Python variable now, as in Slicer's own scripts
        content.CopyContent(node)
        return cls(node=node, content=content, parentTransformID=node.GetTransformNodeID())

    def restore(self) -> None:
        with slicer.util.NodeModify(self.node):
            self.node.CopyContent(self.content)
            self.node.SetAndObserveTransformNodeID(self.parentTransformID)


@dataclass
class OneClickRegistrationOutcome:
    """What one registration put in the scene, and the library's full result.

    result - the library's RegistrationResult (modalities, preset, stage scores, transforms).
    transformNode - places the moving volume onto the fixed volume.
    resampledVolumeNode - the moving volume resampled on the fixed grid, or None.
    carriedNodes - the segmentations and label maps placed under transformNode with the moving volume.
    previousParentTransformIDs - node ID -> parent transform ID before, for every moved node, for undo.
    hardenedStates - the moved nodes as they were before Harden (empty while not hardened), for undo.
    """

    result: object
    fixedVolumeNode: object
    movingVolumeNode: object
    transformNode: object
    resampledVolumeNode: object = None
    carriedNodes: list = field(default_factory=list)
    previousParentTransformIDs: dict = field(default_factory=dict)
    hardenedStates: list = field(default_factory=list)

    @property
    def movedNodes(self) -> list:
        """The moving volume and the nodes carried along with it."""
        return [self.movingVolumeNode, *self.carriedNodes]

    @property
    def hardened(self) -> bool:
        return bool(self.hardenedStates)


class OneClickRegistrationJob:
    """A registration running in a worker process, with the nodes it was started for and those to carry."""

    def __init__(self, background, fixedVolumeNode, movingVolumeNode, createResampledVolume: bool,
                 carriedNodes=()) -> None:
        self.background = background
        self.fixedVolumeNode = fixedVolumeNode
        self.movingVolumeNode = movingVolumeNode
        self.createResampledVolume = createResampledVolume
        self.carriedNodes = list(carriedNodes)
        self.startTime = time.time()

    @property
    def done(self) -> bool:
        return self.background.done

    def latestProgress(self):
        """(fraction, message) of the newest progress report since the last call, or None."""
        events = self.background.poll()
        return (events[-1].fraction, events[-1].message) if events else None

    def cancel(self) -> None:
        self.background.cancel()


class OneClickRegistrationLogic(ScriptedLoadableModuleLogic):  # noqa: F405
    """All the work of the module; usable without the GUI, e.g. from the Python console:

        logic = slicer.util.getModuleLogic("OneClickRegistration")
        outcome = logic.register(getNode("MRBrainT1"), getNode("CTBrain"))
        print(logic.summary(outcome))
        logic.saveQualityReport(outcome, "~/qc")   # index.html and its PNG pictures
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)  # noqa: F405

    def getParameterNode(self):
        return OneClickRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def resourcePath(filename: str) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "Resources", filename)

    @staticmethod
    def ensureDependencies() -> None:
        """Install numba with the user's consent if it is missing (the library's import does not need it).

        Raises MissingDependencyError when it is missing and not installed (declined, or in testing mode).
        """
        from OneClickRegistrationLib.dependencies import dependency_handler

        dependency_handler().ensure(requester="OneClickRegistration")

    @staticmethod
    def ensureQualityReportDependencies() -> None:
        """Install matplotlib, which draws the quality report, with the user's consent if it is missing.

        As ensureDependencies: asked in one dialog, Slicer's numpy, scipy and SimpleITK pinned, nothing
        installed in testing mode; outside Slicer the error names the pip command.  Raises
        MissingDependencyError when it is missing and not installed.
        """
        from OneClickRegistrationLib.dependencies import QUALITY_REPORT_REQUIREMENTS, dependency_handler

        dependency_handler().ensure_requirements(QUALITY_REPORT_REQUIREMENTS,
                                                 requester="OneClickRegistration quality report")

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
        carryMovingVolumeNodes: bool = True,
        alsoCarry=(),
        showResult: bool = True,
        progress: Optional[Callable[[float, str], None]] = None,
    ) -> OneClickRegistrationOutcome:
        """Align the moving volume to the fixed volume; place it, and what belongs to it, under the resulting transform.

        Synchronous (for scripts and tests); the work runs in a worker process all the same.

        :param fixedModality, movingModality: None or "Auto" to recognise, or "T1", "T2", "FLAIR", "CT".
        :param stages: which of "rigid", "affine", "deformable" may run, in that order.
        :param presetName: None or "Auto" for the preset matching the modalities, or a preset's name.
        :param presetTablePath: a preset table JSON file; None for the bundled table.
        :param createResampledVolume: also add the moving volume resampled on the fixed grid.
        :param carryMovingVolumeNodes: also move the segmentations and label maps of the moving volume
            (see nodesOfMovingVolume).
        :param alsoCarry: more segmentations and label maps to move with it; they must be in the moving
            volume's coordinates (under the same parent transform).
        :param showResult: show the fixed volume as background and the moved one over it in the slice views.
        :param progress: called as progress(fraction, message) at least once a second;
            raise RegistrationCancelled from it to stop (the worker ends within 2 s).
        :return: the created nodes, the carried ones and the library's result (scores, modalities, preset, time).

        Nothing in the scene changes unless the registration succeeds; `harden` then makes it
        permanent, `undo` reverses the last of the two.
        """
        job = self.startRegistration(
            fixedVolumeNode, movingVolumeNode, fixedModality=fixedModality, movingModality=movingModality,
            stages=stages, presetName=presetName, presetTablePath=presetTablePath,
            createResampledVolume=createResampledVolume, carryMovingVolumeNodes=carryMovingVolumeNodes,
            alsoCarry=alsoCarry)
        try:
            while not job.done:
                update = job.latestProgress()
                if update is not None and progress is not None:
                    progress(*update)
                time.sleep(POLL_INTERVAL_MS / 1000.0)
        except BaseException:
            job.cancel()
            raise
        update = job.latestProgress()
        if update is not None and progress is not None:
            progress(*update)
        return self.finishRegistration(job, showResult=showResult)

    def startRegistration(self, fixedVolumeNode, movingVolumeNode, *, fixedModality=None, movingModality=None,
                          stages=STAGE_NAMES, presetName=None, presetTablePath=None,
                          createResampledVolume: bool = False, carryMovingVolumeNodes: bool = True,
                          alsoCarry=()) -> OneClickRegistrationJob:
        """Check the inputs and start the registration in a worker process; returns at once.

        The images are copied out of the scene now, so later changes to the nodes do not
        change this run; the nodes to carry along are chosen now too.  Raises ValueError
        (one line, naming the fix) for unusable inputs.
        """
        self._validateVolumeNode(fixedVolumeNode, _("fixed volume"))
        self._validateVolumeNode(movingVolumeNode, _("moving volume"))
        carriedNodes = self.nodesToCarry(fixedVolumeNode, movingVolumeNode, carryMovingVolumeNodes, alsoCarry)
        self.ensureDependencies()
        import sitkUtils
        from OneClickRegistrationLib.background import BackgroundRegistration

        table = self._presetTable(presetTablePath)
        preset = self._presetByName(table, presetName)
        logging.info(f"Registering {movingVolumeNode.GetName()} to {fixedVolumeNode.GetName()}")
        background = BackgroundRegistration(
            sitkUtils.PullVolumeFromSlicer(fixedVolumeNode),
            sitkUtils.PullVolumeFromSlicer(movingVolumeNode),
            fixed_modality=self._modalityOrNone(fixedModality),
            moving_modality=self._modalityOrNone(movingModality),
            preset=preset,
            preset_table=table,
            stages=tuple(stages),
            fixed_hints=self.volumeHints(fixedVolumeNode),
            moving_hints=self.volumeHints(movingVolumeNode),
            resampled_moving=createResampledVolume,
        )
        background.start()
        return OneClickRegistrationJob(background, fixedVolumeNode, movingVolumeNode, createResampledVolume,
                                       carriedNodes)

    def finishRegistration(self, job: OneClickRegistrationJob, showResult: bool = True) -> OneClickRegistrationOutcome:
        """Wait for the worker's result and put it in the scene, with the carried nodes that are still there.

        Raises RegistrationCancelled if the run was cancelled, the library's error if it failed,
        and RuntimeError if an input volume left the scene meanwhile; the scene is then unchanged.
        """
        result = job.background.result()
        for node in (job.fixedVolumeNode, job.movingVolumeNode):
            if node.GetScene() is not slicer.mrmlScene:
                raise RuntimeError(_("The volume {name} was removed during the registration; "
                                     "the result was discarded.").format(name=node.GetName()))
        carriedNodes = [node for node in job.carriedNodes if node.GetScene() is slicer.mrmlScene]
        outcome = self._addResultToScene(result, job.fixedVolumeNode, job.movingVolumeNode, job.createResampledVolume,
                                         carriedNodes)
        if showResult:
            slicer.util.setSliceViewerLayers(background=job.fixedVolumeNode, foreground=job.movingVolumeNode,
                                             foregroundOpacity=0.5, fit=True)
        logging.info(f"Registration completed in {time.time() - job.startTime:.2f} seconds")
        return outcome

    def harden(self, outcome: OneClickRegistrationOutcome) -> list:
        """Make the result permanent for the moving volume and every node carried with it.

        Slicer's Harden transform on each node still under the result's transform: a linear
        result goes into a volume's IJK-to-RAS (the voxels stay), a non-linear one resamples the
        voxels and segments; the nodes then have no parent transform and the transform node stays.
        What each node was is kept, so that `undo(outcome)` reverses it.  Returns the hardened nodes.
        """
        if outcome.hardened:
            raise ValueError(_("This result is already hardened."))
        nodes = [node for node in outcome.movedNodes
                 if node.GetScene() is slicer.mrmlScene and node.GetTransformNodeID() == outcome.transformNode.GetID()]
        if not nodes:
            raise ValueError(_("Nothing is under the transform {name} any more; there is nothing to harden.").format(
                name=outcome.transformNode.GetName()))
        states = [OneClickRegistrationNodeState.of(node) for node in nodes]
        try:
            for node in nodes:
                node.HardenTransform()
        except Exception:
            for state in states:
                state.restore()
            raise
        outcome.hardenedStates = states
        logging.info(f"Hardened {outcome.transformNode.GetName()} on {', '.join(node.GetName() for node in nodes)}")
        return nodes

    def saveQualityReport(self, outcome: OneClickRegistrationOutcome, directory) -> Path:
        """Write the quality report of a result into `directory` (created if needed); returns its index.html.

        The same report as `oneclick-register --qc DIR`: index.html (verdict, modalities, the table of
        stages, the pictures embedded) and its PNG pictures, titled "<moving> onto <fixed>".  matplotlib
        is made sure of first (ensureQualityReportDependencies).  The report is drawn into a new folder
        beside `directory` and only then renamed into place (its files moved in, if `directory` exists,
        replacing an earlier report's), so a failure leaves nothing behind.  Raises ValueError (one
        line) when `directory` is a file.
        """
        directory = Path(directory).expanduser().resolve()
        if directory.exists() and not directory.is_dir():
            raise ValueError(_("{path} is a file; choose a folder for the quality report.").format(path=directory))
        self.ensureQualityReportDependencies()
        from OneClickRegistrationLib.quality_report import INDEX, write_quality_report

        title = f"{outcome.movingVolumeNode.GetName()} onto {outcome.fixedVolumeNode.GetName()}"
        staging = directory.parent / f".{directory.name}.{uuid.uuid4().hex[:12]}.partial"
        created = []
        try:
            self._makeFolders(staging, created)
            write_quality_report(outcome.result, staging, title)
            self._moveIntoPlace(staging, directory)
        except BaseException:
            for folder in reversed(created):
                shutil.rmtree(folder, ignore_errors=True)
            raise
        logging.info(f"Quality report of {title} saved in {directory}")
        return directory / INDEX

    @staticmethod
    def _makeFolders(folder: Path, created: list) -> None:
        """mkdir -p `folder`, appending each folder it creates (outermost first) to `created`, to remove them."""
        missing = [path for path in (folder, *folder.parents) if not path.exists()]
        for path in reversed(missing):
            path.mkdir()
            created.append(path)

    @staticmethod
    def _moveIntoPlace(staging: Path, directory: Path) -> None:
        """Rename the finished folder to `directory`; if that exists, move the files into it instead."""
        if not directory.exists():
            staging.rename(directory)
            return
        for path in staging.iterdir():
            os.replace(path, directory / path.name)
        staging.rmdir()

    def undo(self, outcome: OneClickRegistrationOutcome) -> None:
        """Reverse the last step: a Harden (the nodes get back their content and parent transform), or
        else the registration (what it added is removed, every moved node gets its parent transform back)."""
        if outcome.hardened:
            self._undoHarden(outcome)
        else:
            self._undoRegistration(outcome)

    @staticmethod
    def _undoHarden(outcome: OneClickRegistrationOutcome) -> None:
        for state in outcome.hardenedStates:
            if state.node.GetScene() is slicer.mrmlScene:
                state.restore()
        outcome.hardenedStates = []

    @staticmethod
    def _undoRegistration(outcome: OneClickRegistrationOutcome) -> None:
        for node in outcome.movedNodes:
            if node.GetScene() is slicer.mrmlScene:
                node.SetAndObserveTransformNodeID(outcome.previousParentTransformIDs.get(node.GetID()))
        for node in (outcome.resampledVolumeNode, outcome.transformNode):
            if node is not None and node.GetScene() is not None:
                slicer.mrmlScene.RemoveNode(node)

    def nodesToCarry(self, fixedVolumeNode, movingVolumeNode, carryMovingVolumeNodes: bool = True,
                     alsoCarry=()) -> list:
        """The segmentations and label maps to place under the result's transform with the moving volume:
        those of the moving volume (see nodesOfMovingVolume) if asked, and those in alsoCarry, each once.

        Raises ValueError for a node of alsoCarry that is not a segmentation or label map in the
        scene, or not in the moving volume's coordinates (under another parent transform): carried
        along, it would land in the wrong place.
        """
        chosen = [node for node in alsoCarry if node is not None]
        for node in chosen:
            self._validateCarriedNode(node, movingVolumeNode)
        own = self.nodesOfMovingVolume(fixedVolumeNode, movingVolumeNode) if carryMovingVolumeNodes else []
        unique = {}
        for node in own + chosen:
            unique.setdefault(node.GetID(), node)
        return list(unique.values())

    def nodesOfMovingVolume(self, fixedVolumeNode, movingVolumeNode) -> list:
        """The segmentations and label maps that belong to the moving volume: under its parent transform.

        When the fixed volume is under that same transform (typically: neither is transformed), the
        transform cannot tell whose they are, so a node must also have been drawn on the moving
        volume and not on the fixed one: a segmentation whose reference geometry is the moving
        volume (what the Segment Editor records), a label map on the moving volume's voxel grid.
        """
        parentID = movingVolumeNode.GetTransformNodeID()
        candidates = [node for className in CARRIED_NODE_CLASSES for node in slicer.util.getNodesByClass(className)
                      if node.GetTransformNodeID() == parentID]
        if fixedVolumeNode is None or fixedVolumeNode.GetTransformNodeID() != parentID:
            return candidates
        return [node for node in candidates
                if self._drawnOn(node, movingVolumeNode) and not self._drawnOn(node, fixedVolumeNode)]

    def _drawnOn(self, node, volumeNode) -> bool:
        """A segmentation referencing volumeNode's geometry, or a label map on volumeNode's voxel grid."""
        if node.IsA("vtkMRMLSegmentationNode"):
            return node.GetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole()) == volumeNode.GetID()
        return self._sameVoxelGrid(node, volumeNode)

    @staticmethod
    def _sameVoxelGrid(volumeNode, otherVolumeNode, toleranceMm: float = 1e-3) -> bool:
        """Same dimensions and the same IJK-to-RAS matrix (within toleranceMm)."""
        imageData, otherImageData = volumeNode.GetImageData(), otherVolumeNode.GetImageData()
        if imageData is None or otherImageData is None or imageData.GetDimensions() != otherImageData.GetDimensions():
            return False
        matrix, otherMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        otherVolumeNode.GetIJKToRASMatrix(otherMatrix)
        return all(abs(matrix.GetElement(row, col) - otherMatrix.GetElement(row, col)) <= toleranceMm
                   for row in range(3) for col in range(4))

    @staticmethod
    def _validateCarriedNode(node, movingVolumeNode) -> None:
        name = node.GetName()
        if not any(node.IsA(className) for className in CARRIED_NODE_CLASSES):
            raise ValueError(_("{name} is neither a segmentation nor a label map; only those are carried along "
                               "with the moving volume.").format(name=name))
        if node.GetScene() is not slicer.mrmlScene:
            raise ValueError(_("{name} is not in the scene any more.").format(name=name))
        if node.GetTransformNodeID() != movingVolumeNode.GetTransformNodeID():
            raise ValueError(_("{name} is under another transform than the moving volume; place it under the "
                               "moving volume's transform (or harden both) to carry it along.").format(name=name))

    @staticmethod
    def isRegistrableVolume(volumeNode) -> bool:
        """A plain scalar volume: not a label map, vector, DWI or tensor volume (all scalar-volume subclasses)."""
        if volumeNode is None or volumeNode.GetClassName() != "vtkMRMLScalarVolumeNode":
            return False
        imageData = volumeNode.GetImageData()
        return imageData is not None and imageData.GetNumberOfScalarComponents() == 1

    @staticmethod
    def _validateVolumeNode(volumeNode, role: str) -> None:
        if volumeNode is None:
            raise ValueError(_("No {role} selected.").format(role=role))
        name = volumeNode.GetName()
        if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(_("The {role} {name} is a label map (a segmentation), not a scan; select the scan "
                               "it was drawn on, and move the label map with the result's transform.").format(
                role=role, name=name))
        if volumeNode.GetClassName() != "vtkMRMLScalarVolumeNode":
            raise ValueError(_("The {role} {name} is a {kind}, not a scalar volume; select a single 3D "
                               "scalar volume.").format(role=role, name=name, kind=volumeNode.GetClassName()))
        imageData = volumeNode.GetImageData()
        if imageData is None or min(imageData.GetDimensions()) < 1:
            raise ValueError(_("The {role} {name} holds no image data.").format(role=role, name=name))
        if imageData.GetNumberOfScalarComponents() != 1:
            raise ValueError(_("The {role} {name} has {count} values per voxel (colour, vector or time series); "
                               "select a single 3D scalar volume.").format(
                role=role, name=name, count=imageData.GetNumberOfScalarComponents()))
        if 1 in imageData.GetDimensions():
            raise ValueError(_("The {role} {name} is a single slice (a 2D image); the module registers 3D volumes. "
                               "Register 2D images with the oneclick-register command or with "
                               "OneClickRegistrationLib.register from the Python console.").format(
                role=role, name=name))

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
        """Names of the presets of a table (default: the bundled one), validated as the library does."""
        from OneClickRegistrationLib.presets import load_preset_table

        table = load_preset_table(presetTablePath) if presetTablePath else load_preset_table()
        return [preset.name for preset in table.rows.values()]

    @staticmethod
    def volumeHints(volumeNode) -> dict:
        """Node name and DICOM tags (when the volume was loaded from DICOM) for modality recognition."""
        hints = {"name": volumeNode.GetName()}
        instanceUIDs = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if instanceUIDs and database is not None:
            from OneClickRegistrationLib.imageio import DICOM_HINT_TAGS  # the same tags the command line reads

            for tag, hint in DICOM_HINT_TAGS.items():
                value = database.instanceValue(instanceUIDs[0], tag.replace("|", ","))
                if value:
                    hints[hint] = value.strip()
        return hints

    def guessFixedAndMoving(self):
        """(fixed, moving) when the scene has exactly two plain scalar volumes: the MR is fixed over
        a CT, else the first loaded is fixed.  None otherwise.  Label maps, vector and diffusion
        volumes (scalar-volume subclasses) are never guessed."""
        volumes = [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                   if self.isRegistrableVolume(node)]
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

    def _addResultToScene(self, result, fixedVolumeNode, movingVolumeNode, createResampledVolume: bool,
                          carriedNodes=()):
        """Create the transform (and resampled volume) nodes and place the moving volume and the carried
        nodes under the transform; on an error while creating, remove what was added."""
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
            transformNode=transformNode, resampledVolumeNode=resampledVolumeNode, carriedNodes=list(carriedNodes))
        outcome.previousParentTransformIDs = {node.GetID(): node.GetTransformNodeID() for node in outcome.movedNodes}
        for node in outcome.movedNodes:
            node.SetAndObserveTransformNodeID(transformNode.GetID())
        return outcome

    def transformNodeFromITK(self, itkTransform, name: str):
        """A transform node for an ITK fixed-to-moving transform (LPS), placing moving onto fixed.

        Linear: a vtkMRMLLinearTransformNode whose "to parent" matrix is the inverse of the
        fixed-to-moving matrix converted to RAS.  Otherwise Slicer's own reader converts the
        transform (as "from parent"); its content is copied into a node that owns it, and the
        loaded node and its storage node (which point at a temporary file) are removed, so that
        saving the scene writes the transform (as SlicerElastix does).
        """
        if itkTransform.IsLinear():
            transformNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
            slicer.util.updateTransformMatrixFromArray(transformNode, self.rasToParentMatrix(itkTransform))
            transformNode.SetCenterOfTransformation(self.rasCenter(itkTransform))
            return transformNode
        import SimpleITK as sitk

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "OneClickRegistrationTransform.h5")
            sitk.WriteTransform(itkTransform, path)
            loadedNode = slicer.util.loadTransform(path)
        try:
            transformNode = slicer.mrmlScene.AddNewNodeByClass(
                loadedNode.GetClassName(), slicer.mrmlScene.GetUniqueNameByString(name))
            transformNode.CopyContent(loadedNode)
        finally:
            slicer.mrmlScene.RemoveNode(loadedNode.GetStorageNode())
            slicer.mrmlScene.RemoveNode(loadedNode)
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
    def rasCenter(itkTransform) -> tuple:
        """The ITK transform's centre of rotation in RAS (what Slicer's reader sets), or the origin."""
        center = itkTransform.GetCenter() if hasattr(itkTransform, "GetCenter") else (0.0, 0.0, 0.0)
        return (-center[0], -center[1], center[2])

    @staticmethod
    def verdictText(verdict: str) -> str:
        """The verdict in the user's language (literal strings so that lupdate finds them)."""
        texts = {"good": _("good"), "check visually": _("check visually"), "failed": _("failed")}
        return texts.get(verdict, verdict)

    def verdict(self, stage) -> str:
        """good / check visually / failed for a stage, as the pipeline judged it (score, kept, linear bound)."""
        return self.verdictText(stage.verdict)

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
        if outcome.carriedNodes:
            names = ", ".join(node.GetName() for node in outcome.carriedNodes)
            lines.append(_("Moved with it: {names}").format(names=names))
        lines.append(_("Verdict: {verdict}").format(verdict=self.verdictText(result.verdict)))
        lines.append(_("Total time: {seconds:.1f} s").format(seconds=result.seconds))
        lines.append(_("Score: {description}").format(description=result.score_description))
        return "\n".join(lines)


#
# OneClickRegistrationTest
#


class OneClickRegistrationTest(ScriptedLoadableModuleTest):  # noqa: F405
    """Self-test on Slicer's CTMRBrain sample data, or on the module's bundled T1/T2 when offline.

    Under --testing nothing is installed: without numba the registration tests are skipped.
    """

    def setUp(self):
        """Clear the scene."""
        slicer.mrmlScene.Clear()

    def runTest(self):
        """Run all tests (skipped, with the reason, when numba is missing in testing mode)."""
        self.skipUnlessDependenciesInstalled()
        self.setUp()
        self.test_RecoversKnownRigidMotion()
        self.setUp()
        self.test_CrossModalityRunsAndScores()
        self.setUp()
        self.test_WidgetRegisterButton()

    def skipUnlessDependenciesInstalled(self):
        from OneClickRegistrationLib.dependencies import MissingDependencyError

        try:
            OneClickRegistrationLogic.ensureDependencies()
        except MissingDependencyError as error:
            self.skipTest(f"OneClickRegistration self-test skipped: {error}")

    def loadSample(self):
        """(MR T1, another scan of the same head): CTMRBrain's T1 and CT, or the bundled T1 and T2 offline."""
        try:
            import SampleData

            self.delayDisplay("Loading CTMRBrain sample data")
            ct, t1, _t2 = SampleData.SampleDataLogic().downloadSamples("CTMRBrain")
            return t1, ct
        except Exception as error:  # noqa: BLE001  (no network, or no SampleData module)
            logging.info(f"SampleData unavailable ({error}); using the bundled sample")
            folder = OneClickRegistrationLogic.resourcePath("OneClickRegistration/SampleData")
            t1 = slicer.util.loadVolume(os.path.join(folder, "T1.nii.gz"), {"name": "T1", "show": False})
            t2 = slicer.util.loadVolume(os.path.join(folder, "T2.nii.gz"), {"name": "T2", "show": False})
            return t1, t2

    @staticmethod
    def movedCopy(volumeNode, rotationDegrees: float, translationMm, name: str):
        """A copy of volumeNode moved by a known rigid motion (RAS) about the volume's centre.

        Returns (node, motion matrix); rotating about the centre keeps the head where the
        search expects it wherever the scanner put the origin.
        """
        import numpy as np

        ijkToRas = slicer.util.arrayFromVTKMatrix(OneClickRegistrationTest._ijkToRas(volumeNode))
        dims = np.array(volumeNode.GetImageData().GetDimensions())
        center = (ijkToRas @ np.append((dims - 1) / 2.0, 1.0))[:3]
        angle = np.radians(rotationDegrees)
        rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        motion = np.eye(4)
        motion[:3, :3] = rotation
        motion[:3, 3] = center - rotation @ center + np.asarray(translationMm, dtype=float)
        moved = slicer.util.addVolumeFromArray(
            slicer.util.arrayFromVolume(volumeNode).copy(), ijkToRAS=motion @ ijkToRas, name=name)
        return moved, motion

    @staticmethod
    def _ijkToRas(volumeNode):
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return matrix

    @staticmethod
    def errorsMm(transformNode, motion, fixedVolumeNode):
        """Distances between truth and result over a grid of points in the middle of the fixed volume."""
        import numpy as np

        dims = fixedVolumeNode.GetImageData().GetDimensions()
        fractions = np.linspace(0.25, 0.75, 5)
        ijk = np.array([[i * dims[0], j * dims[1], k * dims[2], 1.0]
                        for i in fractions for j in fractions for k in fractions])
        points = (slicer.util.arrayFromVTKMatrix(OneClickRegistrationTest._ijkToRas(fixedVolumeNode)) @ ijk.T).T
        toParent = slicer.util.arrayFromTransformMatrix(transformNode)
        recovered = (toParent @ motion @ points.T).T
        return np.linalg.norm(recovered[:, :3] - points[:, :3], axis=1)

    def test_RecoversKnownRigidMotion(self):
        """T1 against a copy moved by 20 degrees and 15 mm: the transform must undo the motion; a label map
        drawn on the copy moves with it, Harden makes that permanent and Undo reverses both steps."""
        t1, _other = self.loadSample()
        moved, motion = self.movedCopy(t1, 20.0, (10.0, -8.0, 8.0), "T1 moved")
        labelMap = self.labelMapOn(moved, "T1 moved head mask")
        logic = OneClickRegistrationLogic()
        outcome = logic.register(t1, moved, stages=("rigid",))
        errors = self.errorsMm(outcome.transformNode, motion, t1)
        logging.info(f"error median {float(sorted(errors)[len(errors) // 2]):.2f} mm, max {errors.max():.2f} mm")
        self.assertLess(float(errors.max()), 2.0)
        self.assertEqual(moved.GetTransformNodeID(), outcome.transformNode.GetID())
        self.assertEqual(outcome.carriedNodes, [labelMap])
        self.assertEqual(labelMap.GetTransformNodeID(), outcome.transformNode.GetID())
        self.delayDisplay("Known rigid motion recovered, label map carried along")
        self.checkHardenAndUndo(logic, outcome, labelMap, t1)

    @staticmethod
    def labelMapOn(volumeNode, name: str):
        """A label map of the brighter voxels of volumeNode, on its voxel grid (as drawn on it)."""
        voxels = slicer.util.arrayFromVolume(volumeNode)
        return slicer.util.addVolumeFromArray((voxels > voxels.mean()).astype("uint8"),
                                              ijkToRAS=OneClickRegistrationTest._ijkToRas(volumeNode), name=name,
                                              nodeClassName="vtkMRMLLabelMapVolumeNode")

    def checkHardenAndUndo(self, logic, outcome, labelMap, fixedVolumeNode):
        """Harden puts the label map on (about) the fixed grid with no parent; Undo goes back step by step."""
        import numpy as np

        registered = slicer.util.arrayFromVTKMatrix(self._ijkToRas(labelMap))
        logic.harden(outcome)
        self.assertIsNone(labelMap.GetTransformNodeID())
        hardened = slicer.util.arrayFromVTKMatrix(self._ijkToRas(labelMap))
        fixedGrid = slicer.util.arrayFromVTKMatrix(self._ijkToRas(fixedVolumeNode))
        self.assertLess(float(np.abs(hardened[:3, 3] - fixedGrid[:3, 3]).max()), 3.0)  # the first voxel, in mm
        logic.undo(outcome)
        self.assertEqual(labelMap.GetTransformNodeID(), outcome.transformNode.GetID())
        self.assertTrue(np.array_equal(slicer.util.arrayFromVTKMatrix(self._ijkToRas(labelMap)), registered))
        logic.undo(outcome)
        self.assertIsNone(labelMap.GetTransformNodeID())
        self.delayDisplay("Harden and Undo work")

    def test_CrossModalityRunsAndScores(self):
        """T1 and another scan of the head: rigid stage scored and kept, undo restores the scene."""
        t1, other = self.loadSample()
        logic = OneClickRegistrationLogic()
        outcome = logic.register(t1, other, stages=("rigid", "affine"))
        self.assertTrue(outcome.result.stage("rigid").accepted)
        self.assertEqual(other.GetTransformNodeID(), outcome.transformNode.GetID())
        logic.undo(outcome)
        self.assertIsNone(other.GetTransformNodeID())
        self.delayDisplay("Cross-modality registration ran")

    def test_WidgetRegisterButton(self):
        """The module GUI: both volumes filled in, Register enabled, the run in the background, a result shown."""
        t1, other = self.loadSample()
        slicer.util.selectModule("OneClickRegistration")
        widget = slicer.modules.OneClickRegistrationWidget
        parameters = widget.logic.getParameterNode()
        parameters.fixedVolume, parameters.movingVolume = t1, other
        parameters.runAffine = parameters.runDeformable = False
        self.assertTrue(widget.ui.registerButton.enabled)
        widget.ui.registerButton.click()
        self.assertTrue(widget.isRunning())
        deadline = time.time() + 300
        while widget.isRunning() and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertIsNotNone(widget.lastOutcome, widget.ui.statusLabel.text)
        self.assertEqual(other.GetTransformNodeID(), widget.lastOutcome.transformNode.GetID())
        self.delayDisplay("Widget Register path works")
