"""Stand-in for Slicer's compiled segmentation core (vtkSegmentationCore: `slicer.vtkSegmentation`, ...).

Modelled from Libs/vtkSegmentationCore of Slicer 5.6.2 and 5.10.0 (same behaviour in both):

* vtkOrientedImageData is a vtkImageData with axis directions; voxel i of its
  extent sits at Directions * Spacing * i + Origin (GetImageToWorldMatrix);
* a segment holds representations by name; a binary labelmap may be shared by
  several segments, and DeepCopy keeps that sharing;
* a segmentation has one source representation ("Binary labelmap" by default);
  applying a transform changes only the source representation (each shared data
  object once) and drops the others (InvalidateNonSourceRepresentations);
* vtkOrientedImageDataResample::TransformOrientedImage: a linear transform changes
  only the geometry; a non-linear one keeps the geometry, grows the extent to the
  box that the transformed side planes cover, and resamples with nearest neighbour.

Strict where a guess would be needed: conversions between representations and the
conversion parameters (reference geometry string) are not modelled, so a segment
without the source representation is refused.  Resampling uses SimpleITK where
Slicer uses vtkImageReslice (the same half-voxel border); a non-linear transform is
the stand-in general transform of standin_mrml (TransformPoints forward, its
inverse as one ITK transform).
"""

from __future__ import annotations

import math

import vtk

BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"


class vtkSegmentationConverter(vtk.vtkObject):
    """Only the representation names (static methods in Slicer)."""

    @staticmethod
    def GetBinaryLabelmapRepresentationName() -> str:
        return BINARY_LABELMAP

    @staticmethod
    def GetClosedSurfaceRepresentationName() -> str:
        return CLOSED_SURFACE


class vtkOrientedImageData(vtk.vtkImageData):
    """vtkImageData plus a direction matrix; origin and spacing are vtkImageData's own."""

    def __init__(self) -> None:
        super().__init__()
        self._directions = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]

    def GetImageToWorldMatrix(self, matrix) -> None:
        spacing, origin = self.GetSpacing(), self.GetOrigin()
        matrix.Identity()
        for row in range(3):
            for col in range(3):
                matrix.SetElement(row, col, self._directions[row][col] * spacing[col])
            matrix.SetElement(row, 3, origin[row])

    def SetImageToWorldMatrix(self, matrix) -> None:
        """Directions, spacing (column lengths) and origin from a 4x4 image-to-world matrix."""
        spacing = [math.sqrt(sum(matrix.GetElement(row, col) ** 2 for row in range(3))) for col in range(3)]
        self._directions = [[matrix.GetElement(row, col) / spacing[col] for col in range(3)] for row in range(3)]
        self.SetSpacing(spacing)
        self.SetOrigin([matrix.GetElement(row, 3) for row in range(3)])

    def SetGeometryFromImageToWorldMatrix(self, matrix) -> None:
        self.SetImageToWorldMatrix(matrix)

    def CopyDirections(self, source) -> None:
        self._directions = [list(row) for row in source._directions]

    def DeepCopy(self, source) -> None:
        super().DeepCopy(source)
        if isinstance(source, vtkOrientedImageData):
            self.CopyDirections(source)


class vtkSegment(vtk.vtkObject):
    """Name and representations by name (label values of shared labelmaps are not modelled)."""

    def __init__(self) -> None:
        super().__init__()
        self._name = ""
        self._representations: dict = {}

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name
        self.Modified()

    def AddRepresentation(self, name: str, representation) -> bool:
        if self._representations.get(name) is representation:
            return False
        self._representations[name] = representation
        self.Modified()
        return True

    def GetRepresentation(self, name: str):
        return self._representations.get(name)

    def RemoveRepresentation(self, name: str) -> None:
        if self._representations.pop(name, None) is not None:
            self.Modified()


class vtkSegmentation(vtk.vtkObject):
    """Segments in order by ID, one source representation, transforms applied to the source representation."""

    def __init__(self) -> None:
        super().__init__()
        self._sourceRepresentationName = BINARY_LABELMAP
        self._segments: dict = {}
        self._segmentIdIndex = 0

    def GetSourceRepresentationName(self) -> str:
        return self._sourceRepresentationName

    def SetSourceRepresentationName(self, name: str) -> None:
        self._sourceRepresentationName = name
        self.Modified()

    def AddSegment(self, segment, segmentId: str = "", insertBeforeSegmentId: str = "") -> bool:
        """Add a segment that holds the source representation (conversions are not modelled)."""
        if insertBeforeSegmentId:
            raise NotImplementedError("stand-in: inserting before a segment is not modelled")
        if segment.GetRepresentation(self._sourceRepresentationName) is None:
            raise NotImplementedError(
                f"stand-in: the segment has no {self._sourceRepresentationName!r} representation and "
                "conversions between representations are not modelled")
        if not segmentId:
            self._segmentIdIndex += 1
            segmentId = f"Segment_{self._segmentIdIndex}"
        self._segments[segmentId] = segment
        self.Modified()
        return True

    def GetSegment(self, segmentId: str):
        return self._segments.get(segmentId)

    def GetSegmentIdBySegment(self, segment) -> str:
        return next((segmentId for segmentId, held in self._segments.items() if held is segment), "")

    def GetSegmentIDs(self) -> tuple:
        return tuple(self._segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self._segments)[index]

    def RemoveAllSegments(self) -> None:
        self._segments.clear()
        self.Modified()

    def DeepCopy(self, source) -> None:
        """Segments with their IDs, names, label values and representations; shared data stays shared."""
        self.RemoveAllSegments()
        self._sourceRepresentationName = source.GetSourceRepresentationName()
        copies: dict = {}
        for segmentId in source.GetSegmentIDs():
            original = source.GetSegment(segmentId)
            segment = vtkSegment()
            segment.SetName(original.GetName())
            for name, data in original._representations.items():
                if id(data) not in copies:
                    copies[id(data)] = data.NewInstance() if not isinstance(data, vtkOrientedImageData) \
                        else vtkOrientedImageData()
                    copies[id(data)].DeepCopy(data)
                segment.AddRepresentation(name, copies[id(data)])
            self._segments[segmentId] = segment
        self._segmentIdIndex = source._segmentIdIndex
        self.Modified()

    def _sourceRepresentations(self) -> list:
        """Each distinct source-representation data object once (shared labelmaps are transformed once)."""
        seen, objects = set(), []
        for segment in self._segments.values():
            data = segment.GetRepresentation(self._sourceRepresentationName)
            if id(data) not in seen:
                seen.add(id(data))
                objects.append(data)
        return objects

    def ApplyLinearTransform(self, transform) -> None:
        linear = vtk.vtkTransform()
        if not vtkOrientedImageDataResample.IsTransformLinear(transform, linear):
            raise ValueError("ApplyLinearTransform: Given transform is not a linear transform!")
        for data in self._sourceRepresentations():
            _transformRepresentation(data, linear)
        self.Modified()

    def ApplyNonLinearTransform(self, transform) -> None:
        for data in self._sourceRepresentations():
            _transformRepresentation(data, transform)
        self.Modified()

    def InvalidateNonSourceRepresentations(self) -> None:
        for segment in self._segments.values():
            for name in list(segment._representations):
                if name != self._sourceRepresentationName:
                    segment.RemoveRepresentation(name)


def _transformRepresentation(data, transform) -> None:
    """Harden a transform on one representation object, in place, as vtkSegmentation does."""
    if isinstance(data, vtkOrientedImageData):
        vtkOrientedImageDataResample.TransformOrientedImage(data, transform)
    elif isinstance(data, vtk.vtkPolyData):
        _transformPolyData(data, transform)
    else:
        raise TypeError(f"ApplyTransform: Representation data type '{data.GetClassName()}' not supported!")


def _transformPolyData(polyData, transform) -> None:
    """vtkTransformPolyDataFilter for a VTK transform; the stand-in general transform moves the points itself."""
    if isinstance(transform, vtk.vtkAbstractTransform):
        transformFilter = vtk.vtkTransformPolyDataFilter()
        transformFilter.SetInputData(polyData)
        transformFilter.SetTransform(transform)
        transformFilter.Update()
        polyData.DeepCopy(transformFilter.GetOutput())
        return
    import vtk.util.numpy_support as vtknp

    points = vtknp.vtk_to_numpy(polyData.GetPoints().GetData()).astype(float)
    moved = vtk.vtkPoints()
    moved.SetData(vtknp.numpy_to_vtk(transform.TransformPoints(points), deep=True))
    polyData.SetPoints(moved)


class vtkOrientedImageDataResample(vtk.vtkObject):
    """The two static methods applying a transform to segmentation data."""

    @staticmethod
    def IsTransformLinear(inputTransform, outputLinearTransform) -> bool:
        """True (and the matrix in outputLinearTransform) for a VTK linear transform; the stand-in
        general transform (a non-linear chain) is never linear."""
        outputLinearTransform.Identity()
        if isinstance(inputTransform, vtk.vtkLinearTransform):
            outputLinearTransform.Concatenate(inputTransform)
            return True
        return False

    @staticmethod
    def TransformOrientedImage(image, transform) -> None:
        """Linear: new geometry, same voxels.  Non-linear: same geometry, the extent grown to the
        transformed box, voxels pulled back through the inverse with nearest neighbour (outside: 0)."""
        linear = vtk.vtkTransform()
        if vtkOrientedImageDataResample.IsTransformLinear(transform, linear):
            imageToWorld = vtk.vtkMatrix4x4()
            image.GetImageToWorldMatrix(imageToWorld)
            moved = vtk.vtkMatrix4x4()
            vtk.vtkMatrix4x4.Multiply4x4(linear.GetMatrix(), imageToWorld, moved)
            image.SetGeometryFromImageToWorldMatrix(moved)
            return
        extent = _transformedExtent(image, transform)
        _resampleOrientedImage(image, transform, extent)


def _imageToWorld(image):
    import numpy as np

    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def _transformedExtent(image, transform) -> list:
    """TransformOrientedImageDataBounds (6 side planes of the voxel-corner box, 6x6 points each, pushed
    through the transform), then the two corners of that world box in image coordinates, floor/ceil."""
    import numpy as np

    extent = image.GetExtent()
    low = np.array([extent[0], extent[2], extent[4]], float) - 0.5
    high = np.array([extent[1], extent[3], extent[5]], float) + 0.5
    steps = np.linspace(0.0, 1.0, 6)
    points = []
    for normalAxis in range(3):
        axis1, axis2 = (normalAxis + 1) % 3, (normalAxis + 2) % 3
        for side in (low[normalAxis], high[normalAxis]):
            for s in steps:
                for t in steps:
                    point = np.empty(3)
                    point[normalAxis] = side
                    point[axis1] = low[axis1] + s * (high[axis1] - low[axis1])
                    point[axis2] = low[axis2] + t * (high[axis2] - low[axis2])
                    points.append(point)
    imageToWorld = _imageToWorld(image)
    world = (imageToWorld @ np.c_[np.array(points), np.ones(len(points))].T).T[:, :3]
    moved = transform.TransformPoints(world)
    corners = np.array([moved.min(axis=0), moved.max(axis=0)])
    inImage = (np.linalg.inv(imageToWorld) @ np.c_[corners, np.ones(2)].T).T[:, :3]
    first, last = np.floor(inImage.min(axis=0)).astype(int), np.ceil(inImage.max(axis=0)).astype(int)
    return [int(first[0]), int(last[0]), int(first[1]), int(last[1]), int(first[2]), int(last[2])]


def _resampleOrientedImage(image, transform, outputExtent) -> None:
    """Nearest-neighbour resampling of `image` on its own geometry over outputExtent, in place."""
    import numpy as np
    import SimpleITK as sitk
    import vtk.util.numpy_support as vtknp

    source = _orientedImageToITK(image)
    reference = _orientedImageToITK(image, outputExtent)
    resampled = sitk.Resample(source, reference, transform.fromWorldITK(), sitk.sitkNearestNeighbor, 0.0,
                              source.GetPixelID())
    voxels = sitk.GetArrayFromImage(resampled)
    scalarType = image.GetScalarType()
    image.SetExtent(outputExtent)
    image.AllocateScalars(scalarType, 1)
    image.GetPointData().SetScalars(vtknp.numpy_to_vtk(np.ascontiguousarray(voxels).ravel(), deep=True,
                                                       array_type=scalarType))


def _orientedImageToITK(image, extent=None):
    """The oriented image (or an empty grid of its geometry over `extent`) as a SimpleITK image in LPS."""
    import numpy as np
    import SimpleITK as sitk
    import vtk.util.numpy_support as vtknp

    extent = list(extent or image.GetExtent())
    size = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if extent == list(image.GetExtent()):
        voxels = vtknp.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(tuple(reversed(size)))
        itkImage = sitk.GetImageFromArray(voxels)
    else:
        itkImage = sitk.Image(size, sitk.sitkUInt8)
    imageToWorld = _imageToWorld(image)
    lpsFromRas = np.diag([-1.0, -1.0, 1.0])
    first = imageToWorld @ np.array([extent[0], extent[2], extent[4], 1.0])
    itkImage.SetOrigin(tuple(float(v) for v in lpsFromRas @ first[:3]))
    itkImage.SetSpacing(tuple(float(v) for v in image.GetSpacing()))
    directions = lpsFromRas @ np.array(image._directions)
    itkImage.SetDirection(tuple(float(v) for v in directions.ravel()))
    return itkImage


__all__ = ["vtkSegmentationConverter", "vtkOrientedImageData", "vtkSegment", "vtkSegmentation",
           "vtkOrientedImageDataResample"]
