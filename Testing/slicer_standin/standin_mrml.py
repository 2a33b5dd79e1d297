"""Stand-in for Slicer's compiled MRML library (the "kit" that `import slicer` loads).

Only compiled classes live here; Slicer's own Python layer (slicer.util,
ScriptedLoadableModule, parameterNodeWrapper, sitkUtils) is imported unmodified
from ../shared/slicer-python.  The facts modelled, all checked against the
real sources (see ../shared/slicer-python/README.md and notes/slicer-fidelity.md):

* class hierarchy: label map, vector, streaming, DWI and tensor volumes all
  derive from vtkMRMLScalarVolumeNode; GetNodesByClass uses IsA;
* volume nodes keep Slicer's layout (image data with origin 0 / spacing 1,
  geometry on the node, IJK-to-RAS);
* ITK transform files are read as the transform *from* parent, in RAS, and the
  loaded node references a vtkMRMLTransformStorageNode pointing at the file;
* Clear() keeps singleton nodes (parameter nodes, slice composite nodes) and
  resets them;
* StartModify/EndModify compress Modified events; node references follow the
  scene (a removed node is no longer referenced).

Where a behaviour is only guessed the comment says so, and the guess is strict.
"""

from __future__ import annotations

import math

import vtk

ImageDataModifiedEvent = 18001  # vtkMRMLVolumeNode::ImageDataModifiedEvent (value arbitrary, name real)


class vtkMRMLNode(vtk.vtkObject):
    """ID, name, attributes, node references, singleton tag, compressed Modified events."""

    def __init__(self) -> None:
        super().__init__()
        self._id = ""
        self._name = ""
        self._scene = None
        self._attributes: dict = {}
        self._references: dict = {}
        self._singletonTag = None
        self._disableModified = 0
        self._modifiedPending = False

    def GetClassName(self) -> str:
        return type(self).__name__

    def IsA(self, className: str) -> bool:
        return any(cls.__name__ == className for cls in type(self).__mro__)

    def Modified(self) -> None:
        if self._disableModified:
            self._modifiedPending = True
        else:
            super().Modified()

    def StartModify(self) -> int:
        previous = self._disableModified
        self._disableModified = 1
        return previous

    def EndModify(self, previous: int) -> int:
        self._disableModified = previous
        if not previous and self._modifiedPending:
            self._modifiedPending = False
            self.Modified()
        return previous

    def GetID(self) -> str:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        if name != self._name:
            self._name = name
            self.Modified()

    def GetScene(self):
        return self._scene

    def SetAttribute(self, name: str, value: str) -> None:
        if self._attributes.get(name) != value:
            self._attributes[name] = value
            self.Modified()

    def GetAttribute(self, name: str):
        return self._attributes.get(name)

    def RemoveAttribute(self, name: str) -> None:
        if self._attributes.pop(name, None) is not None:
            self.Modified()

    def GetAttributeNames(self) -> tuple:
        return tuple(self._attributes)

    def SetSingletonTag(self, tag: str) -> None:
        self._singletonTag = tag

    def GetSingletonTag(self):
        return self._singletonTag

    def SetNodeReferenceID(self, role: str, nodeID) -> None:
        ids = [nodeID] if nodeID else []
        if self._references.get(role, []) != ids:
            self._references[role] = ids
            self.Modified()

    def AddNodeReferenceID(self, role: str, nodeID: str) -> None:
        self._references.setdefault(role, []).append(nodeID)
        self.Modified()

    def GetNodeReferenceID(self, role: str):
        ids = self._references.get(role, [])
        return ids[0] if ids else None

    def GetNodeReference(self, role: str):
        nodeID = self.GetNodeReferenceID(role)
        return self._scene.GetNodeByID(nodeID) if nodeID and self._scene is not None else None

    def RemoveNodeReferenceIDs(self, role: str) -> None:
        if self._references.pop(role, None):
            self.Modified()

    def _dropReferencesTo(self, nodeID: str) -> None:
        for role, ids in list(self._references.items()):
            if nodeID in ids:
                self._references[role] = [i for i in ids if i != nodeID]
                self.Modified()

    def CopyContent(self, other, deepCopy: bool = True) -> None:
        """Content only: not the ID, name, scene or references (vtkMRMLNode::CopyContent)."""

    def Reset(self, defaultNode=None) -> None:
        """What Clear() does to a singleton: attributes and references go, content returns to default."""
        self._attributes.clear()
        self._references.clear()
        self.Modified()

    def CreateDefaultDisplayNodes(self) -> None:
        """Display nodes are not modelled."""


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """String parameters (GetParameter returns "" for a missing one, as the C++ std::string does)."""

    def __init__(self) -> None:
        super().__init__()
        self._parameters: dict = {}

    def SetParameter(self, name: str, value: str) -> None:
        if self._parameters.get(name) != str(value):
            self._parameters[name] = str(value)
            self.Modified()

    def GetParameter(self, name: str) -> str:
        return self._parameters.get(name, "")

    def HasParameter(self, name: str) -> bool:
        return name in self._parameters

    def UnsetParameter(self, name: str) -> None:
        if self._parameters.pop(name, None) is not None:
            self.Modified()

    def GetParameterNames(self) -> tuple:
        return tuple(self._parameters)

    def Reset(self, defaultNode=None) -> None:
        self._parameters.clear()
        super().Reset(defaultNode)


class vtkMRMLStorageNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self._fileName = ""
        self._compression = True

    def SetFileName(self, fileName: str) -> None:
        self._fileName = str(fileName)

    def GetFileName(self) -> str:
        return self._fileName

    def UseCompressionOff(self) -> None:
        self._compression = False


class vtkMRMLVolumeArchetypeStorageNode(vtkMRMLStorageNode):
    """Reads and writes a volume node's voxels and geometry (ITK file, LPS) like the real one."""

    def WriteData(self, volumeNode) -> int:
        import SimpleITK as sitk

        sitk.WriteImage(imageFromVolumeNode(volumeNode), self._fileName, self._compression)
        return 1

    def ReadData(self, volumeNode, temporaryFile: bool = False) -> int:
        import SimpleITK as sitk

        imageIntoVolumeNode(sitk.ReadImage(self._fileName), volumeNode)
        return 1


class vtkMRMLTransformStorageNode(vtkMRMLStorageNode):
    pass


class vtkMRMLStorableNode(vtkMRMLNode):
    """A node that can be saved: references its storage node; StorableModified marks it modified."""

    def __init__(self) -> None:
        super().__init__()
        self._modifiedSinceRead = True

    def GetStorageNode(self):
        return self.GetNodeReference("storage")

    def SetAndObserveStorageNodeID(self, nodeID) -> None:
        self.SetNodeReferenceID("storage", nodeID)

    def StorableModified(self) -> None:
        self._modifiedSinceRead = True

    def GetModifiedSinceRead(self) -> bool:
        return self._modifiedSinceRead


class vtkMRMLTransformableNode(vtkMRMLStorableNode):
    """A node that can be placed under a transform node."""

    def SetAndObserveTransformNodeID(self, nodeID) -> None:
        self.SetNodeReferenceID("transform", nodeID)

    def GetTransformNodeID(self):
        return self.GetNodeReferenceID("transform")

    def GetParentTransformNode(self):
        return self.GetNodeReference("transform")


class vtkMRMLVolumeNode(vtkMRMLTransformableNode):
    """Image data plus spacing, origin and IJK-to-RAS directions, as in Slicer."""

    ImageDataModifiedEvent = ImageDataModifiedEvent

    def __init__(self) -> None:
        super().__init__()
        self._imageData = None
        self._spacing = [1.0, 1.0, 1.0]
        self._origin = [0.0, 0.0, 0.0]
        self._directions = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    def GetImageData(self):
        return self._imageData

    def SetAndObserveImageData(self, imageData) -> None:
        self._imageData = imageData
        self.StorableModified()
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

    def GetIJKToRASMatrix(self, matrix) -> None:
        matrix.Identity()
        for row in range(3):
            for col in range(3):
                matrix.SetElement(row, col, self._directions[row][col] * self._spacing[col])
            matrix.SetElement(row, 3, self._origin[row])

    def SetIJKToRASMatrix(self, matrix) -> None:
        spacing = [math.sqrt(sum(matrix.GetElement(row, col) ** 2 for row in range(3))) for col in range(3)]
        self._spacing = spacing
        self._directions = [[matrix.GetElement(row, col) / spacing[col] for col in range(3)] for row in range(3)]
        self._origin = [matrix.GetElement(row, 3) for row in range(3)]
        self.Modified()

    def CreateDefaultStorageNode(self):
        """A new storage node with one extra reference, as the C++ factory returns it (callers UnRegister)."""
        node = vtkMRMLVolumeArchetypeStorageNode()
        node.Register(None)
        return node


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    pass


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLVectorVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLStreamingVolumeNode(vtkMRMLVectorVolumeNode):
    pass


class vtkMRMLDiffusionWeightedVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLDiffusionImageVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLDiffusionTensorVolumeNode(vtkMRMLDiffusionImageVolumeNode):
    pass


class vtkMRMLTransformNode(vtkMRMLTransformableNode):
    """A general transform node: a "from parent" point mapping in RAS.

    Real Slicer gives a vtkGeneralTransform here; the stand-in gives an object
    with the same TransformPoint (a guess at the interface, not the class).
    """

    def __init__(self) -> None:
        super().__init__()
        self._fromParent = None
        self._center = [0.0, 0.0, 0.0]

    def IsLinear(self) -> bool:
        return False

    def SetAndObserveTransformFromParent(self, transform) -> None:
        self._fromParent = transform
        self.StorableModified()
        self.Modified()

    def GetTransformFromParent(self):
        return self._fromParent

    def GetMatrixTransformToParent(self, matrix) -> int:
        """0 (failure) for a non-linear transform, as vtkMRMLTransformNode does."""
        return 0

    def CopyContent(self, other, deepCopy: bool = True) -> None:
        self._fromParent = other.GetTransformFromParent()
        self._center = list(other.GetCenterOfTransformation())
        self.StorableModified()
        self.Modified()

    def SetCenterOfTransformation(self, *center) -> None:
        self._center = [float(v) for v in _flatten(center)]

    def GetCenterOfTransformation(self) -> tuple:
        return tuple(self._center)


class vtkMRMLGridTransformNode(vtkMRMLTransformNode):
    pass


class vtkMRMLBSplineTransformNode(vtkMRMLTransformNode):
    pass


class vtkMRMLLinearTransformNode(vtkMRMLTransformNode):
    """A 4x4 "to parent" matrix in RAS."""

    def __init__(self) -> None:
        super().__init__()
        self._toParent = vtk.vtkMatrix4x4()

    def IsLinear(self) -> bool:
        return True

    def GetMatrixTransformToParent(self, matrix) -> int:
        matrix.DeepCopy(self._toParent)
        return 1

    def SetMatrixTransformToParent(self, matrix) -> None:
        self._toParent.DeepCopy(matrix)
        self.StorableModified()
        self.Modified()

    def GetMatrixTransformFromParent(self, matrix) -> int:
        vtk.vtkMatrix4x4.Invert(self._toParent, matrix)
        return 1

    def SetMatrixTransformFromParent(self, matrix) -> None:
        vtk.vtkMatrix4x4.Invert(matrix, self._toParent)
        self.StorableModified()
        self.Modified()

    def GetTransformFromParent(self):
        transform = vtk.vtkTransform()
        transform.SetMatrix(self._toParent)
        transform.Inverse()
        return transform

    def CopyContent(self, other, deepCopy: bool = True) -> None:
        matrix = vtk.vtkMatrix4x4()
        other.GetMatrixTransformToParent(matrix)
        self.SetMatrixTransformToParent(matrix)


class vtkMRMLSliceCompositeNode(vtkMRMLNode):
    """Layers of one slice view."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = {"background": None, "foreground": None, "label": None, "foregroundOpacity": 0.0}

    def SetBackgroundVolumeID(self, nodeID) -> None:
        self.layers["background"] = nodeID

    def GetBackgroundVolumeID(self):
        return self.layers["background"]

    def SetForegroundVolumeID(self, nodeID) -> None:
        self.layers["foreground"] = nodeID

    def GetForegroundVolumeID(self):
        return self.layers["foreground"]

    def SetForegroundOpacity(self, opacity: float) -> None:
        self.layers["foregroundOpacity"] = opacity

    def GetForegroundOpacity(self) -> float:
        return self.layers["foregroundOpacity"]

    def SetLabelVolumeID(self, nodeID) -> None:
        self.layers["label"] = nodeID

    def SetLabelOpacity(self, opacity: float) -> None:
        self.layers["labelOpacity"] = opacity

    def Reset(self, defaultNode=None) -> None:
        self.layers = {"background": None, "foreground": None, "label": None, "foregroundOpacity": 0.0}
        super().Reset(defaultNode)


class vtkMRMLMessageCollection(vtk.vtkObject):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list = []

    def AddMessage(self, eventId: int, text: str) -> None:
        self.messages.append(text)

    def GetNumberOfMessages(self) -> int:
        return len(self.messages)

    def GetAllMessagesAsString(self) -> str:
        return "\n".join(self.messages)


_NODE_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLVectorVolumeNode,
    vtkMRMLStreamingVolumeNode, vtkMRMLDiffusionWeightedVolumeNode, vtkMRMLDiffusionTensorVolumeNode,
    vtkMRMLTransformNode, vtkMRMLLinearTransformNode, vtkMRMLGridTransformNode, vtkMRMLBSplineTransformNode,
    vtkMRMLVolumeArchetypeStorageNode, vtkMRMLTransformStorageNode, vtkMRMLSliceCompositeNode,
)}


class vtkMRMLScene(vtk.vtkObject):
    """Nodes by ID in insertion order, singletons, Slicer's scene events and Clear()."""

    NodeAboutToBeAddedEvent = 0x2000
    NodeAddedEvent = 0x2001
    NodeAboutToBeRemovedEvent = 0x2002
    NodeRemovedEvent = 0x2003
    NewSceneEvent = 0x2004
    StartCloseEvent = 0x2008
    EndCloseEvent = 0x2009

    def __init__(self) -> None:
        super().__init__()
        self._nodes: dict = {}
        self._counters: dict = {}
        self._closing = False
        for view in ("Red", "Yellow", "Green"):
            node = vtkMRMLSliceCompositeNode()
            node.SetSingletonTag(view)
            self.AddNode(node)

    def CreateNodeByClass(self, className: str):
        """A new node with one extra reference, as the C++ factory returns it (callers UnRegister)."""
        if className not in _NODE_CLASSES:
            return None
        node = _NODE_CLASSES[className]()
        node.Register(None)
        return node

    def AddNode(self, node):
        """Add a node; a singleton whose tag is taken replaces the content of the existing one."""
        tag = node.GetSingletonTag()
        if tag is not None:
            existing = self.GetSingletonNode(tag, node.GetClassName())
            if existing is not None:
                return existing
        className = node.GetClassName()
        self._counters[className] = self._counters.get(className, 0) + 1
        node._id = f"{className}{self._counters[className]}" if tag is None else f"{className}{tag}"
        if not node.GetName():
            node._name = self.GenerateUniqueName(className.replace("vtkMRML", "").replace("Node", ""))
        node._scene = self
        self.InvokeEvent(self.NodeAboutToBeAddedEvent)
        self._nodes[node._id] = node
        self.InvokeEvent(self.NodeAddedEvent, node)
        return node

    def AddNewNodeByClass(self, className: str, name: str = ""):
        node = _NODE_CLASSES[className]()
        if name:
            node._name = name
        return self.AddNode(node)

    def RemoveNode(self, node) -> None:
        if node is None or self._nodes.get(node.GetID()) is not node:
            return
        self.InvokeEvent(self.NodeAboutToBeRemovedEvent, node)
        del self._nodes[node.GetID()]
        for other in self._nodes.values():
            other._dropReferencesTo(node.GetID())
        node._scene = None
        self.InvokeEvent(self.NodeRemovedEvent, node)

    def IsNodePresent(self, node) -> int:
        return int(self._nodes.get(node.GetID()) is node)

    def GetNodeByID(self, nodeID):
        return self._nodes.get(nodeID)

    def GetNumberOfNodes(self) -> int:
        return len(self._nodes)

    def GetNthNode(self, index: int):
        return list(self._nodes.values())[index]

    def _byClass(self, className: str) -> list:
        return [node for node in self._nodes.values() if node.IsA(className)]

    def GetNodesByClass(self, className: str):
        """A vtkCollection with one extra reference (slicer.util.getNodesByClass UnRegisters it)."""
        collection = vtk.vtkCollection()
        for node in self._byClass(className):
            collection.AddItem(node)
        collection.Register(None)
        return collection

    def GetNumberOfNodesByClass(self, className: str) -> int:
        return len(self._byClass(className))

    def GetNthNodeByClass(self, index: int, className: str):
        nodes = self._byClass(className)
        return nodes[index] if 0 <= index < len(nodes) else None

    def GetFirstNodeByClass(self, className: str):
        return self.GetNthNodeByClass(0, className)

    def GetFirstNodeByName(self, name: str):
        return next((node for node in self._nodes.values() if node.GetName() == name), None)

    def GetFirstNode(self, name=None, className=None, nameIsPattern=False, caseSensitive=True):
        import fnmatch

        for node in self._nodes.values():
            if className and not node.IsA(className):
                continue
            if name is None:
                return node
            candidate, wanted = (node.GetName(), name) if caseSensitive else (node.GetName().lower(), name.lower())
            if (fnmatch.fnmatchcase(candidate, wanted) if nameIsPattern else candidate.startswith(wanted)):
                return node
        return None

    def GenerateUniqueName(self, base: str) -> str:
        names = {node.GetName() for node in self._nodes.values()}
        if base not in names:
            return base
        index = 1
        while f"{base}_{index}" in names:
            index += 1
        return f"{base}_{index}"

    def GetUniqueNameByString(self, base: str) -> str:
        return self.GenerateUniqueName(base)

    def GetSingletonNode(self, tag: str, className: str):
        return next((node for node in self._byClass(className) if node.GetSingletonTag() == tag), None)

    def IsClosing(self) -> bool:
        return self._closing

    def Clear(self, removeSingletons: int = 0) -> None:
        """Remove every node but the singletons, which are reset (vtkMRMLScene::Clear / ResetNodes)."""
        self._closing = True
        self.InvokeEvent(self.StartCloseEvent)
        for node in list(self._nodes.values()):
            if removeSingletons or node.GetSingletonTag() is None:
                self.RemoveNode(node)
        for node in self._nodes.values():
            node.Reset()
        self._closing = False
        self.InvokeEvent(self.EndCloseEvent)


# --- voxels and geometry between a volume node and an ITK image (LPS) ----------------------------


def imageFromVolumeNode(volumeNode):
    """The node's voxels and geometry as a SimpleITK image in LPS (what a storage node writes)."""
    import numpy as np
    import SimpleITK as sitk
    import vtk.util.numpy_support as vtknp

    imageData = volumeNode.GetImageData()
    components = imageData.GetNumberOfScalarComponents()
    shape = tuple(reversed(imageData.GetDimensions())) + ((components,) if components > 1 else ())
    voxels = vtknp.vtk_to_numpy(imageData.GetPointData().GetScalars()).reshape(shape)
    image = sitk.GetImageFromArray(voxels, isVector=components > 1)
    ijkToRas = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(ijkToRas)
    matrix = np.array([[ijkToRas.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijkToLps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ matrix
    spacing = np.linalg.norm(ijkToLps[:3, :3], axis=0)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in ijkToLps[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (ijkToLps[:3, :3] / spacing).ravel()))
    return image


def imageIntoVolumeNode(image, volumeNode) -> None:
    """Store a SimpleITK image (LPS) in a volume node (RAS), as a storage node reads a file."""
    import numpy as np
    import SimpleITK as sitk
    import vtk.util.numpy_support as vtknp

    voxels = sitk.GetArrayFromImage(image)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(list(image.GetSize()) + [1] * (3 - image.GetDimension()))
    scalars = vtknp.numpy_to_vtk(voxels.reshape(-1, image.GetNumberOfComponentsPerPixel()), deep=True)
    imageData.GetPointData().SetScalars(scalars)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    ijkToLps = np.eye(4)
    ijkToLps[:3, :3] = direction * np.array(image.GetSpacing())
    ijkToLps[:3, 3] = image.GetOrigin()
    ijkToRas = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijkToLps
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(ijkToRas[row, col]))
    volumeNode.SetIJKToRASMatrix(matrix)
    volumeNode.SetAndObserveImageData(imageData)


def _flatten(values) -> list:
    if len(values) == 1 and hasattr(values[0], "__len__"):
        return list(values[0])
    return list(values)


__all__ = [name for name in dir() if name.startswith("vtkMRML")]
