"""Making sure the Python packages the library needs are installed.

3D Slicer ships numpy, scipy and SimpleITK but not numba (requirements.txt,
needed to register) nor matplotlib (QUALITY_REPORT_REQUIREMENTS, needed only to
draw the quality report).  `ensure` checks requirements.txt; `ensure_requirements`
checks any list of requirement lines, in the same way: inside Slicer the user is
asked once, in one dialog, before anything is installed; nothing is ever
installed at import time, and nothing at all in testing mode (Slicer's own
`pip_ensure` skips installs under --testing too: a self-test then skips).
The install is constrained to the numpy, scipy and SimpleITK that Slicer
bundles, so nothing installed can replace them.  Where Slicer has a packaging
API with `pip_ensure` (`slicer.pydeps` in 5.11, `slicer.packaging` in later
notes) it is used; otherwise a confirmation dialog and `slicer.util.pip_install`.
Outside Slicer nothing is installed: a missing package is reported with the pip
command that installs it.

This module imports only the standard library, so it can run before the
packages it checks are there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
import shlex
import tempfile
from pathlib import Path
from typing import List, Sequence

logger = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "OneClickRegistration" / "requirements.txt"
# Packages Slicer bundles that an install must keep at their installed version.
BUNDLED_PACKAGES = ("numpy", "scipy", "SimpleITK")
# What the quality report draws with (the library's `qc` extra in pyproject.toml), asked for when a report is saved.
QUALITY_REPORT_REQUIREMENTS = ("matplotlib>=3.5",)


class MissingDependencyError(RuntimeError):
    """A package the registration needs is not installed (and was not installed)."""


def read_requirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
    """The requirement lines of a requirements.txt, without comments and pip options."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement line ('numba>=0.58' -> 'numba')."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def _importable(name: str) -> bool:
    """True when the top-level module can be found (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        return False


def missing_requirements(requirements: List[str]) -> List[str]:
    """The requirements whose distribution is not installed or whose module cannot be imported."""
    missing = []
    for requirement in requirements:
        name = requirement_name(requirement)
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if not _importable(name):
            missing.append(requirement)
    return missing


def bundled_constraints() -> List[str]:
    """'name==version' of each bundled package that is installed, to pin it during an install."""
    pins = []
    for name in BUNDLED_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pins


def write_constraints_file(folder: str) -> Path:
    """A pip constraints file that keeps the bundled packages as they are."""
    path = Path(folder) / "oneclickregistration-constraints.txt"
    path.write_text("\n".join(bundled_constraints()) + "\n", encoding="utf-8")
    return path


def write_requirements_file(folder: str, requirements: List[str]) -> Path:
    """A requirements.txt of `requirements`, for Slicer's `load_requirements` (which reads only files)."""
    path = Path(folder) / "oneclickregistration-requirements.txt"
    path.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    return path


class NonSlicerPythonDependencies:
    """Plain Python: report what is missing, install nothing."""

    def ensure(self, requirements_path: Path = REQUIREMENTS_FILE, requester: str = "OneClickRegistration") -> None:
        """Check the requirements of `requirements_path` (numba by default); see ensure_requirements."""
        self.ensure_requirements(read_requirements(requirements_path), requester)

    def ensure_requirements(self, requirements: Sequence[str], requester: str = "OneClickRegistration") -> None:
        """Raise MissingDependencyError, one line naming the pip command, if any requirement is not installed."""
        missing = missing_requirements(list(requirements))
        if missing:
            command = "python -m pip install " + " ".join(f'"{r}"' for r in missing)
            raise MissingDependencyError(f"{requester} needs {', '.join(missing)}; install with: {command}")


class SlicerPythonDependencies:
    """Inside 3D Slicer: ask the user once, then install what is missing, bundled packages pinned."""

    def ensure(self, requirements_path: Path = REQUIREMENTS_FILE, requester: str = "OneClickRegistration") -> None:
        """Install the requirements of `requirements_path` (numba by default); see ensure_requirements."""
        self.ensure_requirements(read_requirements(requirements_path), requester)

    def ensure_requirements(self, requirements: Sequence[str], requester: str = "OneClickRegistration") -> None:
        """Install the requirements that are missing, with the user's consent and the bundled packages pinned.

        Raises MissingDependencyError when one is still missing afterwards: declined, failed, or
        testing mode (where nothing is installed).  `requester` names who asks, in the dialog.
        """
        import slicer

        requirements = list(requirements)
        missing = missing_requirements(requirements)
        if not missing:
            return
        if slicer.app.testingEnabled():
            raise MissingDependencyError(
                f"{', '.join(missing)} is not installed, and nothing is installed in testing mode; "
                f"install it first with slicer.util.pip_install({' '.join(missing)!r})")
        with tempfile.TemporaryDirectory() as folder:
            constraints = write_constraints_file(folder)
            api = _packaging_api()
            if api is not None:
                self._pip_ensure(api, write_requirements_file(folder, requirements), constraints, missing, requester)
            else:
                self._confirm_and_install(missing, constraints, requester)
        importlib.invalidate_caches()
        still_missing = missing_requirements(requirements)
        if still_missing:
            raise MissingDependencyError(
                f"{requester} cannot run without {', '.join(still_missing)}; "
                "install it from the Python console with slicer.util.pip_install(...)")

    @staticmethod
    def _pip_ensure(api, requirements_path: Path, constraints: Path, missing: List[str], requester: str) -> None:
        """Slicer's own consent-and-install (newer Slicer releases)."""
        try:
            api.pip_ensure(api.load_requirements(str(requirements_path)), constraints=str(constraints),
                           requester=requester)
        except RuntimeError as error:  # the user declined
            raise MissingDependencyError(f"{requester} cannot run without {', '.join(missing)}: {error}") from None

    @staticmethod
    def _confirm_and_install(missing: List[str], constraints: Path, requester: str) -> None:
        """Slicer 5.6 to 5.10: one confirmation dialog, then pip with the bundled packages pinned."""
        import slicer

        question = (f"{requester} needs these Python packages, which are not installed yet:\n"
                    f"{', '.join(missing)}\n\nDownload and install them now (one time, about a minute)? "
                    "Slicer's own numpy, scipy and SimpleITK are kept as they are.")
        if not slicer.util.confirmOkCancelDisplay(question, windowTitle=requester):
            raise MissingDependencyError(
                f"{requester} cannot run without {', '.join(missing)}: installation was declined")
        arguments = " ".join(shlex.quote(requirement) for requirement in missing)
        logger.info("installing %s", ", ".join(missing))
        try:
            slicer.util.pip_install(f"{arguments} --constraint {shlex.quote(str(constraints))}")
        except Exception as error:  # noqa: BLE001  (CalledProcessError, or no PythonSlicer)
            raise MissingDependencyError(
                f"{requester} could not install {', '.join(missing)} ({error}); "
                "check the network connection and try again") from None


def _packaging_api():
    """Slicer's packaging module with pip_ensure, if this Slicer has one (it is not imported by `import slicer`)."""
    for name in ("slicer.pydeps", "slicer.packaging"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "pip_ensure") and hasattr(module, "load_requirements"):
            return module
    return None


def dependency_handler():
    """The handler for where we run: inside 3D Slicer or plain Python."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            return SlicerPythonDependencies()
    except ImportError:
        pass
    return NonSlicerPythonDependencies()
