"""Base classes of scripted modules (Base/Python/slicer/ScriptedLoadableModule.py)."""

from __future__ import annotations

import logging
import os
import sys
import types
import unittest

import slicer
from qt import QWidget

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
           "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""

    def getDefaultModuleDocumentationLink(self, docPage: str = "") -> str:
        return ""


class _Layout:
    def __init__(self) -> None:
        self.widgets: list = []

    def addWidget(self, widget) -> None:
        self.widgets.append(widget)

    def addStretch(self, stretch: int = 0) -> None:
        """Spacing is not modelled."""


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent or QWidget()
        self.parent.isEntered = True
        self.moduleName = type(self).__name__[:-len("Widget")]
        self.layout = _Layout()

    def resourcePath(self, filename: str) -> str:
        moduleFile = sys.modules[type(self).__module__].__file__
        return os.path.join(os.path.dirname(moduleFile), "Resources", filename)

    def setup(self) -> None:
        """The real base class adds the Reload & Test section here."""

    def cleanup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = type(self).__name__[:-len("Logic")]

    def getParameterNode(self):
        """The module's singleton parameter node in the scene, created on first use."""
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
            node.SetAttribute("SingletonTag", self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 100) -> None:
        logging.info(message)


def moduleParent() -> types.SimpleNamespace:
    """The `parent` object Slicer passes to a module's constructor."""
    return types.SimpleNamespace()
