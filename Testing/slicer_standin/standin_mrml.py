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
* HardenTransform (vtkMRMLTransformableNode): a linear chain to world is applied
  as a matrix (ApplyTransformMatrix), a non-linear one as a general transform
  (ApplyTransform), then the parent transform is removed.  A volume takes a matrix
  into its IJK-to-RAS; a non-linear transform resamples it on its own axes and
  spacing over the box the transformed volume covers (vtkMRMLVolumeNode::
  ApplyNonLinearTransform: linear interpolation, nearest neighbour for label maps,
  outside = the median of the 8 corner voxels).  A segmentation hands the
  transform to its vtkSegmentation (standin_segmentations);
* CopyContent copies what a node holds (a volume's voxels and geometry, a
  segmentation's segments) and never its parent transform or other references;
* StartModify/EndModify compress Modified events; node references follow the
  scene (a removed node is no longer referenced).

Where a behaviour is only guessed the comment says so, and the guess is strict.
A non-linear transform is kept as ITK transforms (LPS, "from parent", as the files
hold them); the chain to world is inverted point by point by Newton's method, as
VTK inverts a warp transform, and images are resampled with SimpleITK where Slicer
uses vtkImageReslice.
"""

from __future__ import annotations

import math

import vtk

from standin_segmentations import (BINARY_LABELMAP, CLOSED_SURFACE, vtkOrientedImageDataResample, vtkSegment,
                                   vtkSegmentation)

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
    """A node that can be placed under a transform node, and have that transform hardened."""

    def SetAndObserveTransformNodeID(self, nodeID) -> None:
        self.SetNodeReferenceID("transform", nodeID)

    def GetTransformNodeID(self):
        return self.GetNodeReferenceID("transform")

    def GetParentTransformNode(self):
        return self.GetNodeReference("transform")

    def HardenTransform(self) -> bool:
        """vtkMRMLTransformableNode::HardenTransform: apply the chain to world, then drop the parent."""
        transformNode = self.GetParentTransformNode()
        if transformNode is None:
            return True
        if transformNode.IsTransformToWorldLinear():
            matrix = vtk.vtkMatrix4x4()
            transformNode.GetMatrixTransformToWorld(matrix)
            self.ApplyTransformMatrix(matrix)
        else:
            self.ApplyTransform(GeneralTransformToWorld(transformNode))
        self.SetAndObserveTransformNodeID(None)
        return True

    def ApplyTransformMatrix(self, matrix) -> None:
        transform = vtk.vtkTransform()
        transform.SetMatrix(matrix)
        self.ApplyTransform(transform)

    def ApplyTransform(self, transform) -> None:
        """Slicer logs "ApplyTransform is not implemented for node type ..."; the stand-in raises."""
        raise NotImplementedError(f"ApplyTransform is not implemented for node type {self.GetClassName()}")

    def TransformPointToWorld(self, inLocal, outWorld) -> None:
        """The point in world coordinates (through every parent transform), written into outWorld."""
        world = _pointsToWorld(self.GetParentTransformNode(), [list(inLocal)])[0]
        for axis in range(3):
            outWorld[axis] = float(world[axis])


def _pointsToWorld(transformNode, points):
    """Points (N x 3, RAS) moved from under transformNode (None: world) to world."""
    import numpy as np

    points = np.asarray(points, dtype=float)
    if transformNode is None:
        return points.copy()
    if transformNode.IsTransformToWorldLinear():
        matrix = vtk.vtkMatrix4x4()
        transformNode.GetMatrixTransformToWorld(matrix)
        return (_arrayFromMatrix(matrix) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    return GeneralTransformToWorld(transformNode).TransformPoints(points)


class GeneralTransformToWorld:
    """What HardenTransform gets from GetTransformToWorld for a non-linear chain (a vtkGeneralTransform in Slicer).

    Held as its inverse, one ITK transform in LPS from world to the node's coordinates (the ITK
    files' "from parent" direction, composed up the chain), which is what resampling needs;
    TransformPoints goes the other way by Newton's method, as VTK inverts a warp transform.
    """

    TOLERANCE_MM = 1e-6
    MAX_ITERATIONS = 50

    def __init__(self, transformNode) -> None:
        self._fromWorld = transformNode._fromWorldITK()

    def fromWorldITK(self):
        """The inverse, world to node, as a SimpleITK transform in LPS (stand-in only)."""
        return self._fromWorld

    def TransformPoints(self, points):
        """Points (N x 3, RAS) from the node's coordinates to world."""
        import numpy as np

        return np.array([self._invert(np.asarray(point, dtype=float)) for point in points]).reshape(-1, 3)

    def _fromWorldRAS(self, point):
        import numpy as np

        moved = self._fromWorld.TransformPoint((-float(point[0]), -float(point[1]), float(point[2])))
        return np.array([-moved[0], -moved[1], moved[2]])

    def _invert(self, target):
        """x with fromWorld(x) = target: Newton's method with a central-difference Jacobian."""
        import numpy as np

        x = target.copy()
        step = 1e-3
        for _iteration in range(self.MAX_ITERATIONS):
            residual = self._fromWorldRAS(x) - target
            if np.linalg.norm(residual) < self.TOLERANCE_MM:
                return x
            jacobian = np.column_stack([
                (self._fromWorldRAS(x + step * unit) - self._fromWorldRAS(x - step * unit)) / (2 * step)
                for unit in np.eye(3)])
            x = x - np.linalg.solve(jacobian, residual)
        raise RuntimeError(f"stand-in: the inverse of the non-linear transform did not converge at {target}")


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

    def CopyContent(self, other, deepCopy: bool = True) -> None:
        """Voxels (a deep copy unless deepCopy is False) and geometry; the parent transform stays."""
        imageData = other.GetImageData()
        if deepCopy and imageData is not None:
            copy = vtk.vtkImageData()
            copy.DeepCopy(imageData)
            imageData = copy
        self._spacing = list(other._spacing)
        self._origin = list(other._origin)
        self._directions = [list(row) for row in other._directions]
        self.SetAndObserveImageData(imageData)

    def ApplyTransformMatrix(self, matrix) -> None:
        """The matrix times IJK-to-RAS becomes the new IJK-to-RAS; the voxels stay."""
        ijkToRas = vtk.vtkMatrix4x4()
        self.GetIJKToRASMatrix(ijkToRas)
        moved = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Multiply4x4(matrix, ijkToRas, moved)
        self.SetIJKToRASMatrix(moved)

    def ApplyTransform(self, transform) -> None:
        if isinstance(transform, vtk.vtkHomogeneousTransform):
            self.ApplyTransformMatrix(transform.GetMatrix())
        else:
            self.ApplyNonLinearTransform(transform)

    # SimpleITK interpolator standing for GetResamplingInterpolationMode (VTK_LINEAR_INTERPOLATION)
    _resamplingInterpolator = "sitkLinear"

    def ApplyNonLinearTransform(self, transform) -> None:
        """Resample on the same axes and spacing over the box the transformed volume covers.

        The box: 8 x 8 x 8 samples of the volume (voxel corners) taken to world through the node's
        parent transforms (GetBoundsInternal), in the volume's IJK; its lower corner plus half a voxel
        is the new first voxel.  Voxels are pulled back through the transform's inverse; integer
        voxels are rounded, as vtkImageReslice does; outside is the median of the 8 corner voxels.
        """
        import numpy as np
        import SimpleITK as sitk

        if self._imageData is None:
            return
        if self._imageData.GetNumberOfScalarComponents() != 1:
            raise NotImplementedError("stand-in: non-linear hardening of multi-component volumes is not modelled")
        ijkToRas = self._ijkToRasArray()
        samples = self._boundsSamplesIJK()
        world = _pointsToWorld(self.GetParentTransformNode(),
                               (ijkToRas @ np.c_[samples, np.ones(len(samples))].T).T[:, :3])
        inIJK = (np.linalg.inv(ijkToRas) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
        low, high = inIJK.min(axis=0), inIJK.max(axis=0)
        size = [int(v) for v in np.ceil((high - low) - 1e-3)]
        firstVoxelRas = ijkToRas @ np.append(low + 0.5, 1.0)
        source = imageFromVolumeNode(self)
        grid = sitk.Image(size, sitk.sitkUInt8)
        grid.SetSpacing(source.GetSpacing())
        grid.SetDirection(source.GetDirection())
        grid.SetOrigin((-float(firstVoxelRas[0]), -float(firstVoxelRas[1]), float(firstVoxelRas[2])))
        resampled = sitk.Resample(source, grid, transform.fromWorldITK(), getattr(sitk, self._resamplingInterpolator),
                                  self._backgroundValue(), sitk.sitkFloat64)
        imageIntoVolumeNode(_castLike(resampled, source), self)

    def _ijkToRasArray(self):
        matrix = vtk.vtkMatrix4x4()
        self.GetIJKToRASMatrix(matrix)
        return _arrayFromMatrix(matrix)

    def _boundsSamplesIJK(self, subdivisions: int = 8):
        """GetBoundsInternal's samples for a non-linear transform: voxel corners, 8 per axis."""
        import numpy as np

        dims = self._imageData.GetDimensions()
        axes = [np.arange(subdivisions) * dims[axis] / (subdivisions - 1.0) - 0.5 for axis in range(3)]
        return np.array(np.meshgrid(*axes, indexing="ij")).reshape(3, -1).T

    def _backgroundValue(self) -> float:
        """GetImageBackgroundScalarComponentAsDouble: the 4th smallest of the 8 corner voxels."""
        x, y, z = (n - 1 for n in self._imageData.GetDimensions())
        corners = sorted(self._imageData.GetScalarComponentAsDouble(i, j, k, 0)
                         for i in (0, x) for j in (0, y) for k in (0, z))
        return corners[3]


def _castLike(image, like):
    """`image` (float) in the pixel type of `like`: integers rounded to nearest and clamped, as vtkImageReslice."""
    import numpy as np
    import SimpleITK as sitk

    dtype = sitk.GetArrayViewFromImage(like).dtype
    voxels = sitk.GetArrayFromImage(image)
    if np.issubdtype(dtype, np.integer):
        limits = np.iinfo(dtype)
        voxels = np.clip(np.floor(voxels + 0.5), limits.min, limits.max)
    cast = sitk.GetImageFromArray(voxels.astype(dtype))
    cast.CopyInformation(image)
    return cast


class vtkMRMLScalarVolumeNode(vtkMRMLVolumeNode):
    pass


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    """Resampled with nearest neighbour, so that no new label appears at a boundary."""

    _resamplingInterpolator = "sitkNearestNeighbor"


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


class RasFromParent:
    """An ITK (LPS, fixed-to-moving) transform seen as Slicer's RAS "from parent" transform.

    Real Slicer gives a vtkGeneralTransform here; the stand-in gives an object with the
    same TransformPoint (a guess at the interface, not the class) that keeps the ITK transform.
    """

    def __init__(self, itkTransform) -> None:
        self.itkTransform = itkTransform

    def TransformPoint(self, point):
        x, y, z = point
        moved = self.itkTransform.TransformPoint((-float(x), -float(y), float(z)))
        return (-moved[0], -moved[1], moved[2])


class vtkMRMLTransformNode(vtkMRMLTransformableNode):
    """A general transform node: a "from parent" point mapping in RAS (see RasFromParent)."""

    def __init__(self) -> None:
        super().__init__()
        self._fromParent = None
        self._center = [0.0, 0.0, 0.0]

    def IsLinear(self) -> bool:
        return False

    def IsTransformToWorldLinear(self) -> int:
        parent = self.GetParentTransformNode()
        return int(self.IsLinear() and (parent is None or bool(parent.IsTransformToWorldLinear())))

    def GetMatrixTransformToWorld(self, matrix) -> int:
        """1, and the to-world matrix of a linear chain (Slicer logs an error for a non-linear one; here it raises)."""
        if not self.IsTransformToWorldLinear():
            raise RuntimeError(f"stand-in: the transform to world of {self.GetName()} is not linear")
        toParent = vtk.vtkMatrix4x4()
        self.GetMatrixTransformToParent(toParent)
        parent = self.GetParentTransformNode()
        if parent is None:
            matrix.DeepCopy(toParent)
            return 1
        parentToWorld = vtk.vtkMatrix4x4()
        parent.GetMatrixTransformToWorld(parentToWorld)
        vtk.vtkMatrix4x4.Multiply4x4(parentToWorld, toParent, matrix)
        return 1

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

    def _fromParentITK(self):
        """This node's own "from parent" transform as a SimpleITK transform in LPS (identity when empty)."""
        import SimpleITK as sitk

        if self._fromParent is None:
            return sitk.Transform(3, sitk.sitkIdentity)
        return self._fromParent.itkTransform

    def _fromWorldITK(self):
        """World to this node's children, through every parent: one SimpleITK transform in LPS."""
        import SimpleITK as sitk

        parent = self.GetParentTransformNode()
        if parent is None:
            return self._fromParentITK()
        return sitk.CompositeTransform([self._fromParentITK(), parent._fromWorldITK()])  # parent's applied first


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

    def _fromParentITK(self):
        """The inverse of the "to parent" matrix, converted to LPS, as an ITK affine transform."""
        import numpy as np
        import SimpleITK as sitk

        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        fromParent = flip @ np.linalg.inv(_arrayFromMatrix(self._toParent)) @ flip
        affine = sitk.AffineTransform(3)
        affine.SetMatrix(tuple(float(v) for v in fromParent[:3, :3].ravel()))
        affine.SetTranslation(tuple(float(v) for v in fromParent[:3, 3]))
        return affine


class vtkMRMLSegmentationNode(vtkMRMLTransformableNode):
    """Holds a vtkSegmentation; the reference-geometry node reference says which volume it was drawn on.

    SetReferenceImageGeometryParameterFromVolumeNode sets only that reference here: the
    conversion parameter (a serialized geometry) is not modelled.
    """

    def __init__(self) -> None:
        super().__init__()
        self._segmentation = vtkSegmentation()

    @staticmethod
    def GetReferenceImageGeometryReferenceRole() -> str:
        return "referenceImageGeometryRef"

    def GetSegmentation(self):
        return self._segmentation

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volumeNode) -> None:
        if volumeNode is None or volumeNode.GetImageData() is None:
            return
        self.SetNodeReferenceID(self.GetReferenceImageGeometryReferenceRole(), volumeNode.GetID())

    def AddSegmentFromBinaryLabelmapRepresentation(self, imageData, segmentName: str = "") -> str:
        return self._addSegment(BINARY_LABELMAP, imageData, segmentName)

    def AddSegmentFromClosedSurfaceRepresentation(self, polyData, segmentName: str = "") -> str:
        return self._addSegment(CLOSED_SURFACE, polyData, segmentName)

    def _addSegment(self, representationName: str, data, segmentName: str) -> str:
        segment = vtkSegment()
        if segmentName:
            segment.SetName(segmentName)
        segment.AddRepresentation(representationName, data)
        self._segmentation.AddSegment(segment)
        self.Modified()
        return self._segmentation.GetSegmentIdBySegment(segment)

    def GetBinaryLabelmapInternalRepresentation(self, segmentId: str):
        segment = self._segmentation.GetSegment(segmentId)
        return segment.GetRepresentation(BINARY_LABELMAP) if segment is not None else None

    def ApplyTransform(self, transform) -> None:
        """The segmentation's source representation takes the transform; the others are dropped."""
        if vtkOrientedImageDataResample.IsTransformLinear(transform, vtk.vtkTransform()):
            self._segmentation.ApplyLinearTransform(transform)
        else:
            self._segmentation.ApplyNonLinearTransform(transform)
        self._segmentation.InvalidateNonSourceRepresentations()
        self.Modified()

    def CopyContent(self, other, deepCopy: bool = True) -> None:
        """The segments (deep-copied unless deepCopy is False); the parent transform stays."""
        if deepCopy:
            self._segmentation.DeepCopy(other.GetSegmentation())
        else:
            self._segmentation = other.GetSegmentation()
        self.Modified()


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
    vtkMRMLSegmentationNode, vtkMRMLVolumeArchetypeStorageNode, vtkMRMLTransformStorageNode, vtkMRMLSliceCompositeNode,
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


def _arrayFromMatrix(matrix):
    import numpy as np

    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def _flatten(values) -> list:
    if len(values) == 1 and hasattr(values[0], "__len__"):
        return list(values[0])
    return list(values)


__all__ = [name for name in dir() if name.startswith("vtkMRML")]
