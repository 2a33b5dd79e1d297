"""slicer.util stand-in: the helpers of Base/Python/slicer/util.py the module uses.

Numpy and SimpleITK are imported inside functions, as Slicer does.
Dialogs are recorded (errorDisplay) or answered from `confirmAnswer`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import types
import xml.etree.ElementTree as ElementTree

import vtk

import ctk
import qt
import slicer

displayedErrors: list = []
confirmations: list = []
confirmAnswer = False
pipInstalls: list = []
sliceViewerLayers: dict = {}


def getNode(pattern: str):
    node = slicer.mrmlScene.GetNodeByID(pattern) or slicer.mrmlScene.GetFirstNodeByName(pattern)
    if node is None:
        raise slicer.util.MRMLNodeNotFoundException(f"could not find node {pattern!r}")
    return node


def getNodesByClass(className: str) -> list:
    return slicer.mrmlScene.GetNodesByClass(className)


class MRMLNodeNotFoundException(Exception):
    pass


def errorDisplay(text: str, windowTitle: str = "", **kwargs) -> None:
    logging.error(text)
    displayedErrors.append(text)


def confirmOkCancelDisplay(text: str, windowTitle: str = "", **kwargs) -> bool:
    confirmations.append(text)
    return confirmAnswer


def pip_install(requirements: str) -> None:
    pipInstalls.append(requirements)


@contextlib.contextmanager
def tryWithErrorDisplay(message: str = "", show: bool = True, waitCursor: bool = False):
    """Show (record) an error instead of letting it escape, as in Slicer."""
    try:
        yield
    except Exception as error:  # noqa: BLE001  (this is the point of the helper)
        logging.exception(message)
        if show:
            errorDisplay(f"{message}\n{error}")


def setSliceViewerLayers(background=None, foreground=None, label=None, foregroundOpacity=None,
                         labelOpacity=None, fit=False, **kwargs) -> None:
    """Record the layers shown in the slice views."""
    for key, value in (("background", background), ("foreground", foreground),
                       ("label", label), ("foregroundOpacity", foregroundOpacity)):
        if value is not None:
            sliceViewerLayers[key] = value.GetID() if hasattr(value, "GetID") else value


# --- arrays -----------------------------------------------------------------------------------


def arrayFromVolume(volumeNode):
    """A numpy view of the voxels, indexed [k, j, i] (and component last)."""
    import vtk.util.numpy_support as vtknp

    imageData = volumeNode.GetImageData()
    shape = tuple(reversed(imageData.GetDimensions()))
    components = imageData.GetNumberOfScalarComponents()
    array = vtknp.vtk_to_numpy(imageData.GetPointData().GetScalars())
    return array.reshape(shape + ((components,) if components > 1 else ()))


def updateVolumeFromArray(volumeNode, narray) -> None:
    """Replace the voxels by an array indexed [k, j, i] (component last for vectors)."""
    import vtk.util.numpy_support as vtknp

    dims = narray.shape[:3]
    components = narray.shape[3] if narray.ndim == 4 else 1
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(dims[2], dims[1], dims[0])
    scalars = vtknp.numpy_to_vtk(narray.reshape(-1, components) if components > 1 else narray.ravel(), deep=True)
    scalars.SetNumberOfComponents(components)
    imageData.GetPointData().SetScalars(scalars)
    volumeNode.SetAndObserveImageData(imageData)


def addVolumeFromArray(narray, ijkToRAS=None, name=None, nodeClassName=None):
    """A new volume node holding `narray` ([k, j, i]); ijkToRAS as a 4x4 numpy array."""
    node = slicer.mrmlScene.AddNewNodeByClass(nodeClassName or "vtkMRMLScalarVolumeNode", name or "")
    updateVolumeFromArray(node, narray)
    if ijkToRAS is not None:
        node.SetIJKToRASMatrix(vtkMatrixFromArray(ijkToRAS))
    return node


def vtkMatrixFromArray(narray):
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(narray[row][col]))
    return matrix


def arrayFromVTKMatrix(vmatrix):
    import numpy as np

    return np.array([[vmatrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def arrayFromTransformMatrix(transformNode, toWorld: bool = False):
    """The node's "to parent" matrix (RAS) as a 4x4 numpy array."""
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToParent(matrix)
    return arrayFromVTKMatrix(matrix)


def updateTransformMatrixFromArray(transformNode, narray, toWorld: bool = False) -> None:
    """Set the node's "to parent" matrix (RAS) from a 4x4 numpy array."""
    transformNode.SetMatrixTransformToParent(vtkMatrixFromArray(narray))


# --- files --------------------------------------------------------------------------------------


def loadVolume(filename: str, properties=None, returnNode: bool = False):
    """Read an image file as Slicer does (ITK reader, LPS file -> RAS node)."""
    import SimpleITK as sitk
    import sitkUtils

    name = (properties or {}).get("name") or os.path.basename(filename).split(".")[0]
    return sitkUtils.PushVolumeToSlicer(sitk.ReadImage(str(filename)), name=name)


class _RasFromParent:
    """An ITK (LPS, fixed-to-moving) transform seen as Slicer's RAS "from parent" transform."""

    def __init__(self, itkTransform) -> None:
        self.itkTransform = itkTransform

    def TransformPoint(self, point):
        x, y, z = point
        moved = self.itkTransform.TransformPoint((-float(x), -float(y), float(z)))
        return (-moved[0], -moved[1], moved[2])


def loadTransform(filename: str):
    """Read an ITK transform file as Slicer does: it becomes the transform from parent, in RAS."""
    import numpy as np
    import SimpleITK as sitk

    itkTransform = sitk.ReadTransform(str(filename))
    name = slicer.mrmlScene.GetUniqueNameByString(os.path.basename(filename).split(".")[0])
    if itkTransform.IsLinear():
        origin = np.array(itkTransform.TransformPoint((0.0, 0.0, 0.0)))
        lps = np.eye(4)
        for axis in range(3):
            unit = [0.0, 0.0, 0.0]
            unit[axis] = 1.0
            lps[:3, axis] = np.array(itkTransform.TransformPoint(unit)) - origin
        lps[:3, 3] = origin
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        node.SetMatrixTransformFromParent(vtkMatrixFromArray(flip @ lps @ flip))
        return node
    className = "vtkMRMLTransformNode"
    if _isSingleDisplacementField(itkTransform):
        className = "vtkMRMLGridTransformNode"
    node = slicer.mrmlScene.AddNewNodeByClass(className, name)
    node.SetAndObserveTransformFromParent(_RasFromParent(itkTransform))
    return node


def _isSingleDisplacementField(itkTransform) -> bool:
    import SimpleITK as sitk

    if itkTransform.GetTransformEnum() == sitk.sitkComposite:
        composite = sitk.CompositeTransform(itkTransform)
        if composite.GetNumberOfTransforms() != 1:
            return False
        itkTransform = composite.GetNthTransform(0)
    return itkTransform.GetTransformEnum() == sitk.sitkDisplacementField


# --- user interface -----------------------------------------------------------------------------

_WIDGET_CLASSES = {name: getattr(module, name) for module in (qt, ctk, slicer)
                   for name in dir(module) if name.startswith(("Q", "ctk", "qMRML"))}


def loadUI(path: str):
    """Build widget stubs from a Qt Designer file: classes, names, properties, combo items."""
    root = ElementTree.parse(path).getroot()
    top = root.find("widget")
    return _buildWidget(top, None)


def _buildWidget(element, parent):
    className = element.get("class")
    if className not in _WIDGET_CLASSES:
        raise ValueError(f"the stand-in has no widget class {className}")
    widget = _WIDGET_CLASSES[className](parent)
    widget.objectName = element.get("name", "")
    for prop in element.findall("property"):
        _applyProperty(widget, prop)
    items = [item.find("property/string").text or "" for item in element.findall("item")]
    if items:
        widget.addItems(items)
    for child in element.iter():
        if child is not element and child.tag == "widget" and _directChildWidget(element, child):
            _buildWidget(child, widget)
    return widget


def _directChildWidget(ancestor, candidate) -> bool:
    """True when no other <widget> lies between ancestor and candidate."""
    def walk(node):
        for child in node:
            if child is candidate:
                return True
            if child.tag != "widget" and walk(child):
                return True
        return False
    return walk(ancestor)


def _applyProperty(widget, prop) -> None:
    name = prop.get("name")
    value = _propertyValue(prop)
    if prop.get("stdset") == "0":
        widget.setProperty(name, value)
    elif name in ("text", "toolTip", "enabled", "visible", "checked", "collapsed", "value",
                  "minimum", "maximum", "noneEnabled", "addEnabled", "removeEnabled", "nodeTypes"):
        setattr(widget, name, value)


def _propertyValue(prop):
    child = prop[0]
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return tuple(s.text or "" for s in child.findall("string"))
    return child.text or ""


def childWidgetVariables(widget) -> types.SimpleNamespace:
    """Every named descendant as an attribute, by its objectName."""
    return types.SimpleNamespace(**{w.objectName: w for w in widget.descendants() if w.objectName})


class VTKObservationMixin:
    """Observer bookkeeping on real VTK objects."""

    def __init__(self) -> None:
        self.Observations: list = []

    def addObserver(self, obj, event, method, priority: float = 0.0) -> None:
        tag = obj.AddObserver(event, method, priority)
        self.Observations.append((obj, event, method, tag))

    def removeObserver(self, obj, event, method) -> None:
        for observation in list(self.Observations):
            if observation[:3] == (obj, event, method):
                obj.RemoveObserver(observation[3])
                self.Observations.remove(observation)

    def removeObservers(self, method=None) -> None:
        for obj, event, observed, tag in list(self.Observations):
            if method is None or observed == method:
                obj.RemoveObserver(tag)
                self.Observations.remove((obj, event, observed, tag))
