"""Puts Slicer's real Python layer on sys.path with stand-ins for the compiled application.

`install(release)` makes `import slicer` run Slicer's own slicer/__init__.py
from ../shared/slicer-python/v<release> (its kits are the stand-in modules
standin_segmentations, standin_mrml and standin_qmrml, loaded the way Slicer
loads its compiled kits),
then attaches what the Slicer application sets at start-up: slicer.app,
slicer.mrmlScene, slicer.modules.  Everything else (slicer.util,
ScriptedLoadableModule, parameterNodeWrapper, i18n, sitkUtils) is the real code.

The application stand-in models the event loop only as far as tests need it:
processEvents() fires due QTimers and the tests' hooks; testing mode is on
(as under `Slicer --testing`) unless a test turns it off.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import types
import weakref
from pathlib import Path

STANDIN_DIR = Path(__file__).resolve().parent
ROOT = STANDIN_DIR.parents[1]
SHARED_SLICER_PYTHON = Path(os.environ.get("ONECLICK_SHARED_SLICER_PYTHON",
                                           ROOT.parent / "shared" / "slicer-python"))
MODULE_DIR = ROOT / "OneClickRegistration"
MODULE_NAME = "OneClickRegistration"


def default_release() -> str:
    """ONECLICK_SLICER_RELEASE, else the release whose Python matches this one (5.10 needs 3.10+)."""
    return os.environ.get("ONECLICK_SLICER_RELEASE") or ("5.10.0" if sys.version_info >= (3, 10) else "5.6.2")


def layer_dir(release: str) -> Path:
    return SHARED_SLICER_PYTHON / f"v{release}"


class CoreIOManager:
    """qSlicerCoreIOManager: reads volumes and ITK transforms like Slicer's readers."""

    VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
    TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")

    def fileType(self, filename) -> str:
        name = str(filename).lower()
        if name.endswith(self.TRANSFORM_SUFFIXES):
            return "TransformFile"
        if name.endswith(self.VOLUME_SUFFIXES):
            return "VolumeFile"
        return "NoFile"

    def loadNodes(self, fileType, properties, loadedNodes, userMessages) -> bool:
        import slicer

        fileName = properties["fileName"]
        try:
            if fileType == "VolumeFile":
                node = self._loadVolume(slicer, fileName, properties)
            elif fileType == "TransformFile":
                node = self._loadTransform(slicer, fileName)
            else:
                raise RuntimeError(f"no reader for file type {fileType}")
        except Exception as error:  # noqa: BLE001  (a reader reports, it does not raise)
            userMessages.AddMessage(0, str(error))
            return False
        loadedNodes.AddItem(node)
        return True

    @staticmethod
    def _baseName(fileName: str) -> str:
        name = os.path.basename(fileName)
        for suffix in (".nii.gz", ".seg.nrrd"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return os.path.splitext(name)[0]

    def _loadVolume(self, slicer, fileName: str, properties):
        import SimpleITK as sitk
        from standin_mrml import imageIntoVolumeNode

        image = sitk.ReadImage(fileName)
        className = "vtkMRMLLabelMapVolumeNode" if properties.get("labelmap") else (
            "vtkMRMLVectorVolumeNode" if image.GetNumberOfComponentsPerPixel() > 1 else "vtkMRMLScalarVolumeNode")
        scene = slicer.mrmlScene
        node = scene.AddNewNodeByClass(className, scene.GenerateUniqueName(properties.get("name") or self._baseName(fileName)))
        imageIntoVolumeNode(image, node)
        self._attachStorage(scene, node, "vtkMRMLVolumeArchetypeStorageNode", fileName)
        return node

    def _loadTransform(self, slicer, fileName: str):
        """vtkSlicerTransformLogic::AddTransform: the ITK transform becomes the node's transform from parent."""
        import numpy as np
        import SimpleITK as sitk
        import vtk

        itkTransform = sitk.ReadTransform(fileName)
        scene = slicer.mrmlScene
        name = scene.GenerateUniqueName(self._baseName(fileName))
        if itkTransform.IsLinear():
            node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
            lps = np.eye(4)
            origin = np.array(itkTransform.TransformPoint((0.0, 0.0, 0.0)))
            for axis, unit in enumerate(np.eye(3)):
                lps[:3, axis] = np.array(itkTransform.TransformPoint(tuple(unit))) - origin
            lps[:3, 3] = origin
            flip = np.diag([-1.0, -1.0, 1.0, 1.0])
            matrix = vtk.vtkMatrix4x4()
            for row, values in enumerate(flip @ lps @ flip):
                for col, value in enumerate(values):
                    matrix.SetElement(row, col, float(value))
            node.SetMatrixTransformFromParent(matrix)
        else:
            from standin_mrml import RasFromParent

            node = scene.AddNewNodeByClass(_transformNodeClass(itkTransform), name)
            node.SetAndObserveTransformFromParent(RasFromParent(itkTransform))
        self._attachStorage(scene, node, "vtkMRMLTransformStorageNode", fileName)
        return node

    @staticmethod
    def _attachStorage(scene, node, className: str, fileName: str) -> None:
        """The reader's storage node points at the file; the node is not modified since read."""
        storage = scene.AddNewNodeByClass(className)
        storage.SetFileName(fileName)
        node.SetAndObserveStorageNodeID(storage.GetID())
        node._modifiedSinceRead = False


def _transformNodeClass(itkTransform) -> str:
    import SimpleITK as sitk

    transform = itkTransform
    if transform.GetTransformEnum() == sitk.sitkComposite:
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() != 1:
            return "vtkMRMLTransformNode"
        transform = composite.GetNthTransform(0)
    if transform.GetTransformEnum() == sitk.sitkDisplacementField:
        return "vtkMRMLGridTransformNode"
    if transform.GetTransformEnum() == sitk.sitkBSplineTransform:
        return "vtkMRMLBSplineTransformNode"
    return "vtkMRMLTransformNode"


class ModuleManager:
    """qSlicerModuleManager for one scripted module, plus the module selector's enter/exit."""

    def __init__(self) -> None:
        self._modules: dict = {}
        self.current = None

    def connect(self, signature: str, slot) -> bool:
        return True  # moduleAboutToBeUnloaded never fires in the stand-in

    def disconnect(self, signature: str, slot) -> bool:
        return True

    def module(self, name: str):
        return self._modules.get(name)

    def register(self, module) -> None:
        self._modules[module.name] = module

    def selectModule(self, name: str) -> None:
        """Leave the current module (exit) and show `name` (create its widget once, then enter)."""
        import slicer

        module = self._modules[name]
        if self.current is not None and self.current is not module:
            representation = self.current.widgetRepresentation()
            representation.isEntered = False
            representation.self().exit()
        if module.widgetRepresentation() is None:
            createWidget(slicer, module)
        representation = module.widgetRepresentation()
        self.current = module
        representation.isEntered = True
        representation.self().enter()


class MainWindow:
    objectName = "qSlicerMainWindow"

    def __init__(self, moduleManager: ModuleManager) -> None:
        self._moduleManager = moduleManager

    def moduleSelector(self):
        return self._moduleManager


class Application:
    """slicer.app: the parts the Python layer and the module use."""

    applicationName = "Slicer"
    documentationBaseUrl = "https://slicer.readthedocs.io/en/latest/"

    def __init__(self, scene) -> None:
        self._scene = scene
        self.testing = True
        self.processEventsHooks: list = []
        self.overrideCursorDepth = 0
        self.temporaryPath = tempfile.mkdtemp(prefix="SlicerStandin-")
        # Slicer empties its temporary folder on exit; a stand-in per test must not leave hundreds behind.
        weakref.finalize(self, shutil.rmtree, self.temporaryPath, True)
        self._ioManager = CoreIOManager()
        self._moduleManager = ModuleManager()
        self._mainWindow = MainWindow(self._moduleManager)

    def mrmlScene(self):
        return self._scene

    def translate(self, context: str, text: str) -> str:
        """No translations loaded: the source text, as in an English Slicer."""
        return text

    def testingEnabled(self) -> bool:
        return self.testing

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=self.testing)

    def processEvents(self) -> None:
        """One turn of the event loop: due timers, then the tests' hooks."""
        import qt

        qt.QTimer.fireDueTimers()
        for hook in list(self.processEventsHooks):
            hook()

    def setOverrideCursor(self, cursor) -> None:
        self.overrideCursorDepth += 1

    def restoreOverrideCursor(self) -> None:
        self.overrideCursorDepth -= 1

    def coreIOManager(self) -> CoreIOManager:
        return self._ioManager

    def moduleManager(self) -> ModuleManager:
        return self._moduleManager

    def topLevelWidgets(self) -> list:
        return [self._mainWindow]

    def layoutManager(self):
        return None  # no views: setSliceViewerLayers(fit=True) skips fitting, as without a main window

    def moduleDocumentationUrl(self, moduleName: str) -> str:
        return f"{self.documentationBaseUrl}user_guide/modules/{moduleName.lower()}.html"

    def connect(self, signature: str, slot) -> bool:
        return True

    def userSettings(self):
        import qt

        return qt.QSettings()

    settings = userSettings


def install(release: str | None = None):
    """Import Slicer's real Python layer of `release` with the stand-ins; returns the slicer package."""
    release = release or default_release()
    layer = layer_dir(release)
    if not (layer / "slicer" / "__init__.py").is_file():
        raise FileNotFoundError(f"Slicer's Python layer for {release} is not at {layer}")
    for path in (str(MODULE_DIR), str(layer), str(STANDIN_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
            _ADDED_PATHS.append(path)
    kits = types.ModuleType("slicer.kits")
    kits.available_kits = ["standin_segmentations", "standin_mrml", "standin_qmrml"]
    sys.modules["slicer.kits"] = kits
    import slicer
    import standin_mrml

    assert Path(slicer.__file__).resolve().parent == (layer / "slicer").resolve(), slicer.__file__
    slicer.mrmlScene = standin_mrml.vtkMRMLScene()
    slicer.app = Application(slicer.mrmlScene)
    slicer.modules.volumes = types.SimpleNamespace(logic=lambda: types.SimpleNamespace(
        AddArchetypeVolume=lambda *args: None))
    slicer.dicomDatabase = None
    slicer.standinRelease = release
    if release.startswith("5.6"):
        _standInForMRMLIDImageIO()
    return slicer


_ADDED_PATHS: list = []
_RESTORE: list = []


def uninstall() -> None:
    """Undo install(): forget the imported Slicer, stand-in and module packages, restore SimpleITK."""
    for restore in _RESTORE:
        restore()
    _RESTORE.clear()
    for name in list(sys.modules):
        if name.split(".")[0] in ("slicer", "sitkUtils", "qt", "ctk", "standin_segmentations", "standin_mrml",
                                  "standin_qmrml", MODULE_NAME):
            del sys.modules[name]
    for path in _ADDED_PATHS:
        if path in sys.path:
            sys.path.remove(path)
    _ADDED_PATHS.clear()


def _standInForMRMLIDImageIO() -> None:
    """Slicer 5.6's sitkUtils always reads and writes "slicer:<scene>#<node ID>" through the compiled
    MRMLIDImageIO plugin of Slicer's own SimpleITK; pip's SimpleITK has none, so those addresses are
    served here, by the same voxel and geometry conversion as a storage node."""
    import SimpleITK as sitk

    import slicer
    from standin_mrml import imageFromVolumeNode, imageIntoVolumeNode

    readImage, writeImage = sitk.ReadImage, sitk.WriteImage

    def nodeOf(address: str):
        return slicer.mrmlScene.GetNodeByID(address.split("#", 1)[1])

    def ReadImage(fileName, *args, **kwargs):
        if isinstance(fileName, str) and fileName.startswith("slicer:"):
            return imageFromVolumeNode(nodeOf(fileName))
        return readImage(fileName, *args, **kwargs)

    def WriteImage(image, fileName, *args, **kwargs):
        if isinstance(fileName, str) and fileName.startswith("slicer:"):
            return imageIntoVolumeNode(image, nodeOf(fileName))
        return writeImage(image, fileName, *args, **kwargs)

    sitk.ReadImage, sitk.WriteImage = ReadImage, WriteImage
    _RESTORE.append(lambda: (setattr(sitk, "ReadImage", readImage), setattr(sitk, "WriteImage", writeImage)))


def loadModule(slicer):
    """Instantiate the scripted module as Slicer's module factory does; returns the Python module file."""
    from standin_qmrml import qSlicerScriptedLoadableModule

    moduleFile = importlib.import_module(MODULE_NAME)
    parent = qSlicerScriptedLoadableModule(MODULE_NAME, str(MODULE_DIR / f"{MODULE_NAME}.py"))
    instance = getattr(moduleFile, MODULE_NAME)(parent)
    setattr(slicer.modules, MODULE_NAME.lower(), parent)
    setattr(slicer.modules, f"{MODULE_NAME}Instance", instance)
    slicer.app.moduleManager().register(parent)
    return moduleFile


def createWidget(slicer, module) -> None:
    """What Slicer does the first time a module is shown: build the widget with a parent, then setup()."""
    from standin_qmrml import qSlicerScriptedLoadableModuleWidget

    moduleFile = sys.modules[MODULE_NAME]
    representation = qSlicerScriptedLoadableModuleWidget()
    widget = getattr(moduleFile, f"{MODULE_NAME}Widget")(representation)
    representation.pythonWidget = widget
    widget.setup()
    module.widgetRepresentationObject = representation
    setattr(slicer.modules, f"{MODULE_NAME}Widget", widget)
