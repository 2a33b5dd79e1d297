"""A small stand-in of the 3D Slicer Python API, for tests without Slicer.

It imitates the parts OneClickRegistration uses (scene, volume and transform
nodes on real VTK objects, slicer.util, sitkUtils, ScriptedLoadableModule,
parameterNodeWrapper, Qt/CTK widget stubs) and reproduces Slicer's RAS/LPS
and IJK-to-RAS conventions exactly.  It imports no numpy or SimpleITK at
import time, like Slicer's own startup.
"""

from __future__ import annotations

import tempfile
import types

from .mrml import (  # noqa: F401  (the names Slicer exposes at package level)
    vtkMRMLBSplineTransformNode,
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLLinearTransformNode,
    vtkMRMLNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLScene,
    vtkMRMLScriptedModuleNode,
    vtkMRMLTransformableNode,
    vtkMRMLTransformNode,
    vtkMRMLVolumeNode,
)
from .widgets import qMRMLNodeComboBox, qMRMLWidget  # noqa: F401


class _CommandOptions:
    testingEnabled = True


class _Application:
    """slicer.app: event processing hooks (tests use them to press Cancel mid-run)."""

    def __init__(self) -> None:
        self.processEventsHooks: list = []
        self.temporaryPath = tempfile.gettempdir()

    def processEvents(self) -> None:
        for hook in list(self.processEventsHooks):
            hook()

    def testingEnabled(self) -> bool:
        return True

    def commandOptions(self) -> _CommandOptions:
        return _CommandOptions()

    def connect(self, signal: str, slot) -> None:
        """Application signals (startupCompleted) never fire in the stand-in."""


app = _Application()
mrmlScene = vtkMRMLScene()
modules = types.SimpleNamespace()
dicomDatabase = None
selfTests: dict = {}

from . import util  # noqa: E402  (util needs mrmlScene)
