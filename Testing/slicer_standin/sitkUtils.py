"""SimpleITK <-> MRML volume transfer, with Slicer's exact geometry conversion.

SimpleITK geometry is LPS; a Slicer volume node's IJK-to-RAS matrix is RAS:
IJK-to-LPS = diag(-1, -1, 1) * IJK-to-RAS, direction = IJK-to-LPS columns / spacing.
Voxel order is the same on both sides (i fastest).
"""

from __future__ import annotations

import SimpleITK as sitk
import vtk

import slicer


def _lpsToRas():
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 0, -1)
    matrix.SetElement(1, 1, -1)
    return matrix


def PullVolumeFromSlicer(nodeObjectOrName):
    """The volume node's voxels and geometry as a SimpleITK image (LPS)."""
    import vtk.util.numpy_support as vtknp

    node = nodeObjectOrName if isinstance(nodeObjectOrName, slicer.vtkMRMLNode) else slicer.util.getNode(nodeObjectOrName)
    ijkToRas = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijkToRas)
    ijkToLps = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(_lpsToRas(), ijkToRas, ijkToLps)
    spacing = node.GetSpacing()
    imageData = node.GetImageData()
    components = imageData.GetNumberOfScalarComponents()
    voxels = vtknp.vtk_to_numpy(imageData.GetPointData().GetScalars())
    shape = tuple(reversed(imageData.GetDimensions())) + ((components,) if components > 1 else ())
    image = sitk.GetImageFromArray(voxels.reshape(shape), isVector=components > 1)
    image.SetSpacing(spacing)
    image.SetOrigin([ijkToLps.GetElement(row, 3) for row in range(3)])
    image.SetDirection([ijkToLps.GetElement(row, col) / spacing[col] for row in range(3) for col in range(3)])
    return image


def PushVolumeToSlicer(sitkimage, targetNode=None, name=None, className="vtkMRMLScalarVolumeNode"):
    """Store a SimpleITK image in a (new) volume node, converting LPS to RAS."""
    import vtk.util.numpy_support as vtknp

    if not targetNode:
        targetNode = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GetUniqueNameByString(name or "Volume"))
        targetNode.CreateDefaultDisplayNodes()
    voxels = sitk.GetArrayFromImage(sitkimage)
    imageData = vtk.vtkImageData()
    imageData.SetDimensions(list(sitkimage.GetSize()))
    scalars = vtknp.numpy_to_vtk(voxels.ravel(), deep=True)
    scalars.SetNumberOfComponents(sitkimage.GetNumberOfComponentsPerPixel())
    imageData.GetPointData().SetScalars(scalars)
    targetNode.SetAndObserveImageData(imageData)
    spacing, direction, origin = sitkimage.GetSpacing(), sitkimage.GetDirection(), sitkimage.GetOrigin()
    ijkToLps = vtk.vtkMatrix4x4()
    for row in range(3):
        for col in range(3):
            ijkToLps.SetElement(row, col, direction[row * 3 + col] * spacing[col])
        ijkToLps.SetElement(row, 3, origin[row])
    ijkToRas = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(_lpsToRas(), ijkToLps, ijkToRas)
    targetNode.SetIJKToRASMatrix(ijkToRas)
    return targetNode
