"""MRML widget stand-ins: qMRMLWidget, qMRMLNodeComboBox."""

from __future__ import annotations

from qt import QWidget


class qMRMLNodeComboBox(QWidget):
    """Node selector: `currentNode()`, `setCurrentNode()`, signal currentNodeChanged."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.mrmlScene = None
        self.nodeTypes = ("vtkMRMLScalarVolumeNode",)
        self.noneEnabled = False
        self._current = None

    def currentNode(self):
        return self._current

    def setCurrentNode(self, node) -> None:
        if node is not self._current:
            self._current = node
            self.emit("currentNodeChanged", node)

    def setMRMLScene(self, scene) -> None:
        self.mrmlScene = scene


class qMRMLWidget(QWidget):
    """The top widget of a module's .ui; setMRMLScene reaches every MRML child widget."""

    def setMRMLScene(self, scene) -> None:
        for child in self.descendants():
            if isinstance(child, qMRMLNodeComboBox):
                child.setMRMLScene(scene)
