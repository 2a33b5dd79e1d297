"""MRML nodes and scene of the stand-in, on real VTK objects.

Volume nodes keep Slicer's layout: the vtkImageData has origin 0 and spacing 1,
and the voxel-to-world geometry lives on the node as spacing, origin and
IJK-to-RAS directions (vtkMRMLVolumeNode).  Transform nodes keep a "to parent"
(linear) or "from parent" (non-linear) transform in RAS (vtkMRMLTransformNode).
"""

from __future__ import annotations

import math

import vtk


class vtkMRMLNode(vtk.vtkObject):
    """Base node: ID, name, attributes, scene."""

    def __init__(self) -> None:
        super().__init__()
        self._id = ""
        self._name = ""
        self._scene = None
        self._attributes: dict = {}

    def GetClassName(self) -> str:
        return type(self).__name__

    def IsA(self, className: str) -> bool:
        return any(cls.__name__ == className for cls in type(self).__mro__)

    def GetID(self) -> str:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name
        self.Modified()

    def GetScene(self):
        return self._scene

    def SetAttribute(self, name: str, value: str) -> None:
        self._attributes[name] = value

    def GetAttribute(self, name: str):
        return self._attributes.get(name)

    def CreateDefaultDisplayNodes(self) -> None:
        """Display nodes are not modelled."""


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """Parameter node: string parameters and node references."""

    def __init__(self) -> None:
        super().__init__()
        self.parameters: dict = {}
        self.references: dict = {}


class vtkMRMLTransformableNode(vtkMRMLNode):
    """A node that can be placed under a transform node."""

    def __init__(self) -> None:
        super().__init__()
        self._transformNodeID = None

    def SetAndObserveTransformNodeID(self, nodeID) -> None:
        self._transformNodeID = nodeID or None
        self.Modified()

    def GetTransformNodeID(self):
        return self._transformNodeID

    def GetParentTransformNode(self):
        if self._transformNodeID is None or self._scene is None:
            return None
        return self._scene.GetNodeByID(self._transformNodeID)


class vtkMRMLVolumeNode(vtkMRMLTransformableNode):
    """Image data plus spacing, origin and IJK-to-RAS directions, as in Slicer."""

    def __init__(self) -> None:
        super().__init__()
        self._imageData = None
        self._spacing = [1.0, 1.0, 1.0]
        self._origin = [0.0, 0.0, 0.0]
        self._directions = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]  # rows of the RAS direction matrix

    def GetImageData(self):
        return self._imageData

    def SetAndObserveImageData(self, imageData) -> None:
        self._imageData = imageData
        self.Modified()

    def GetSpacing(self) -> tuple:
        return tuple(self._spacing)

    def SetSpacing(self, *spacing) -> None:
        self._spacing = [float(v) for v in _flatten(spacing)]

    def GetOrigin(self) -> tuple:
        return tuple(self._origin)

    def SetOrigin(self, *origin) -> None:
        self._origin = [float(v) for v in _flatten(origin)]

    def GetIJKToRASDirectionMatrix(self, matrix) -> None:
        matrix.Identity()
        for row in range(3):
            for col in range(3):
                matrix.SetElement(row, col, self._directions[row][col])

    def SetIJKToRASDirectionMatrix(self, matrix) -> None:
        self._directions = [[matrix.GetElement(row, col) for col in range(3)] for row in range(3)]

    def GetIJKToRASMatrix(self, matrix) -> None:
        """Compose directions, spacing and origin, as vtkMRMLVolumeNode does."""
        matrix.Identity()
        for row in range(3):
            for col in range(3):
                matrix.SetElement(row, col, self._directions[row][col] * self._spacing[col])
            matrix.SetElement(row, 3, self._origin[row])

    def SetIJKToRASMatrix(self, matrix) -> None:
        """Split into spacing (column norms), unit directions and origin."""
        spacing = []
        for col in range(3):
            norm = math.sqrt(sum(matrix.GetElement(row, col) ** 2 for row in range(3)))
            spacing.append(norm)
        self._spacing = spacing
        self._directions = [[matrix.GetElement(row, col) / spacing[col] for col in range(3)] for row in range(3)]
        self._origin = [matrix.GetElement(row, 3) for row in range(3)]
        self.Modified()


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    """A scalar volume."""


class vtkMRMLLabelMapVolumeNode(vtkMRMLVolumeNode):
    """A label map volume."""


class vtkMRMLTransformNode(vtkMRMLTransformableNode):
    """A general transform node holding a "from parent" point mapping in RAS.

    Slicer reads an ITK transform file as the transform *from* parent, because
    ITK transforms map the fixed (parent) space to the moving space.
    """

    def __init__(self) -> None:
        super().__init__()
        self._fromParent = None

    def IsLinear(self) -> bool:
        return False

    def SetAndObserveTransformFromParent(self, transform) -> None:
        self._fromParent = transform
        self.Modified()

    def GetTransformFromParent(self):
        return self._fromParent


class vtkMRMLGridTransformNode(vtkMRMLTransformNode):
    """A displacement-field transform node."""


class vtkMRMLBSplineTransformNode(vtkMRMLTransformNode):
    """A B-spline transform node."""


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    """A linear transform node: a 4x4 "to parent" matrix in RAS."""

    def __init__(self) -> None:
        super().__init__()
        self._toParent = vtk.vtkMatrix4x4()

    def IsLinear(self) -> bool:
        return True

    def GetMatrixTransformToParent(self, matrix) -> None:
        matrix.DeepCopy(self._toParent)

    def SetMatrixTransformToParent(self, matrix) -> None:
        self._toParent.DeepCopy(matrix)
        self.Modified()

    def GetMatrixTransformFromParent(self, matrix) -> None:
        vtk.vtkMatrix4x4.Invert(self._toParent, matrix)

    def SetMatrixTransformFromParent(self, matrix) -> None:
        vtk.vtkMatrix4x4.Invert(matrix, self._toParent)
        self.Modified()

    def GetTransformToParent(self):
        transform = vtk.vtkTransform()
        transform.SetMatrix(self._toParent)
        return transform

    def GetTransformFromParent(self):
        transform = vtk.vtkTransform()
        transform.SetMatrix(self._toParent)
        transform.Inverse()
        return transform


NODE_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode,
    vtkMRMLTransformNode, vtkMRMLGridTransformNode, vtkMRMLBSplineTransformNode,
    vtkMRMLLinearTransformNode,
)}


class vtkMRMLScene(vtk.vtkObject):
    """Nodes by ID, in insertion order, with Slicer's naming and close events."""

    StartCloseEvent = 66003
    EndCloseEvent = 66004
    NodeAddedEvent = 66000
    NodeRemovedEvent = 66001

    def __init__(self) -> None:
        super().__init__()
        self._nodes: dict = {}
        self._counters: dict = {}

    def CreateNodeByClass(self, className: str):
        return NODE_CLASSES[className]()

    def AddNode(self, node):
        className = node.GetClassName()
        self._counters[className] = self._counters.get(className, 0) + 1
        node._id = f"{className}{self._counters[className]}"
        node._scene = self
        self._nodes[node._id] = node
        self.InvokeEvent(self.NodeAddedEvent)
        return node

    def AddNewNodeByClass(self, className: str, name: str = ""):
        node = self.CreateNodeByClass(className)
        node._name = name or self.GetUniqueNameByString(className.replace("vtkMRML", "").replace("Node", ""))
        return self.AddNode(node)

    def RemoveNode(self, node) -> None:
        if node is not None and self._nodes.pop(node.GetID(), None) is not None:
            node._scene = None
            self.InvokeEvent(self.NodeRemovedEvent)

    def GetNodeByID(self, nodeID):
        return self._nodes.get(nodeID)

    def GetNodes(self) -> list:
        return list(self._nodes.values())

    def GetNodesByClass(self, className: str) -> list:
        return [node for node in self._nodes.values() if node.IsA(className)]

    def GetFirstNodeByClass(self, className: str):
        nodes = self.GetNodesByClass(className)
        return nodes[0] if nodes else None

    def GetNumberOfNodesByClass(self, className: str) -> int:
        return len(self.GetNodesByClass(className))

    def GetFirstNodeByName(self, name: str):
        return next((node for node in self._nodes.values() if node.GetName() == name), None)

    def GetUniqueNameByString(self, base: str) -> str:
        names = {node.GetName() for node in self._nodes.values()}
        if base not in names:
            return base
        index = 1
        while f"{base}_{index}" in names:
            index += 1
        return f"{base}_{index}"

    def GetSingletonNode(self, tag: str, className: str):
        return next((node for node in self.GetNodesByClass(className)
                     if node.GetAttribute("SingletonTag") == tag), None)

    def Clear(self, removeSingletons: bool = False) -> None:
        self.InvokeEvent(self.StartCloseEvent)
        self._nodes.clear()
        self.InvokeEvent(self.EndCloseEvent)


def _flatten(values) -> list:
    if len(values) == 1 and hasattr(values[0], "__len__"):
        return list(values[0])
    return list(values)
