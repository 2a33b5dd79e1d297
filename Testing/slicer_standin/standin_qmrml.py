"""Stand-in for Slicer's compiled Qt-MRML widgets and module classes (qMRML*, qSlicer*).

qMRMLNodeComboBox is strict where the real one filters: only a node of the
combo's scene whose class is one of `nodeTypes` (exactly, unless
showChildNodeTypes) can become current; anything else leaves it empty.  A node
removed from the scene stops being current.
"""

from __future__ import annotations

import qt
from qt import QWidget, Signal


class qMRMLWidget(QWidget):
    """The top widget of a module's .ui: setMRMLScene emits mrmlSceneChanged to the children."""

    mrmlSceneChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QWidget):
    currentNodeChanged = Signal()
    currentNodeIDChanged = Signal()
    nodeAdded = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None
        self._observerTag = None
        self._current = None
        self.nodeTypes = ()
        self.showChildNodeTypes = True
        self.noneEnabled = False
        self.addEnabled = True
        self.removeEnabled = True
        self.renameEnabled = False
        self.editEnabled = False
        self.showHidden = False

    def setMRMLScene(self, scene) -> None:
        if self._scene is not None and self._observerTag is not None:
            self._scene.RemoveObserver(self._observerTag)
        self._scene = scene
        self._observerTag = scene.AddObserver(scene.NodeRemovedEvent, self._onNodeRemoved) if scene else None
        if self._current is not None and not self._acceptable(self._current):
            self._setCurrent(None)

    def mrmlScene(self):
        return self._scene

    def _acceptable(self, node) -> bool:
        if node is None or self._scene is None or node.GetScene() is not self._scene:
            return False
        if self.showChildNodeTypes:
            return any(node.IsA(nodeType) for nodeType in self.nodeTypes)
        return node.GetClassName() in self.nodeTypes

    def _nodes(self) -> list:
        """The listed nodes (qMRMLNodeComboBox::nodes() is not Q_INVOKABLE: Python cannot call it)."""
        if self._scene is None:
            return []
        return [self._scene.GetNthNode(i) for i in range(self._scene.GetNumberOfNodes())
                if self._acceptable(self._scene.GetNthNode(i))]

    def currentNode(self):
        return self._current

    @property
    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        self._setCurrent(node if self._acceptable(node) else None)

    def setCurrentNodeID(self, nodeID: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if self._scene and nodeID else None)

    def _setCurrent(self, node) -> None:
        if node is not self._current:
            self._current = node
            self.currentNodeChanged.emit(node)
            self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def _onNodeRemoved(self, caller, event) -> None:
        if self._current is not None and self._current.GetScene() is None:
            self._setCurrent(None)


class qMRMLCheckableNodeComboBox(qMRMLNodeComboBox):
    """qMRMLNodeComboBox whose nodes can each be checked (all unchecked at first); checkedNodesChanged
    fires on every change of a check state, also a programmatic one.  A node that leaves the scene
    is no longer listed, so no longer among checkedNodes() (whether Slicer signals that is not modelled)."""

    checkedNodesChanged = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._checkedIDs: list = []

    def setCheckState(self, node, state) -> None:
        if not self._acceptable(node) or (node.GetID() in self._checkedIDs) == (state == qt.Qt.Checked):
            return
        if state == qt.Qt.Checked:
            self._checkedIDs.append(node.GetID())
        else:
            self._checkedIDs.remove(node.GetID())
        self.checkedNodesChanged.emit()

    def checkedNodes(self) -> list:
        return [node for node in self._nodes() if node.GetID() in self._checkedIDs]


class qMRMLSliderWidget(QWidget):
    valueChanged = Signal()


class qMRMLSpinBox(QWidget):
    valueChanged = Signal()


class qMRMLRangeWidget(QWidget):
    valuesChanged = Signal()


class qSlicerScriptedLoadableModule(qt.QObject):
    """What Slicer passes as `parent` to a scripted module's constructor."""

    def __init__(self, name: str, path: str) -> None:
        super().__init__(None)
        self.name = name
        self.path = path
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.icon = None
        self.hidden = False
        self.widgetRepresentationObject = None

    def widgetRepresentation(self):
        return self.widgetRepresentationObject


class qSlicerScriptedLoadableModuleWidget(QWidget):
    """What Slicer passes as `parent` to a scripted module widget; `self()` is the Python widget."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setLayout(qt.QVBoxLayout())
        self.isEntered = False
        self.pythonWidget = None

    def self(self):
        return self.pythonWidget


__all__ = [name for name in dir() if name.startswith(("qMRML", "qSlicer"))]
