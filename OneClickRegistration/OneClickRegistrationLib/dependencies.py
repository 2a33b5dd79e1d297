"""Making sure the Python packages the library needs are installed.

3D Slicer ships numpy, scipy and SimpleITK but not numba.  Inside Slicer the
user is asked once, in one dialog, before anything is installed
(`slicer.packaging.pip_ensure` where Slicer has it, a confirmation and
`slicer.util.pip_install` otherwise); nothing is ever installed at import
time.  Outside Slicer nothing is installed: a missing package is reported
with the pip command that installs it.

This module imports only the standard library, so it can run before the
packages it checks are there.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from pathlib import Path
from typing import List

logger = logging.getLogger(__name__)

REQUIREMENTS_FILE = Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


class MissingDependencyError(RuntimeError):
    """A package the registration needs is not installed (and was not installed)."""


def read_requirements(path: Path = REQUIREMENTS_FILE) -> List[str]:
    """The requirement lines of a requirements.txt, without comments and pip options."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def requirement_name(requirement: str) -> str:
    """The distribution name of a requirement line ('numba>=0.58' -> 'numba')."""
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def missing_requirements(requirements: List[str]) -> List[str]:
    """The requirements whose distribution is not installed."""
    missing = []
    for requirement in requirements:
        try:
            importlib.metadata.distribution(requirement_name(requirement))
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


class NonSlicerPythonDependencies:
    """Plain Python: report what is missing, install nothing."""

    def ensure(self, requirements_path: Path = REQUIREMENTS_FILE, requester: str = "OneClickRegistration") -> None:
        missing = missing_requirements(read_requirements(requirements_path))
        if missing:
            command = "python -m pip install " + " ".join(f'"{r}"' for r in missing)
            raise MissingDependencyError(f"{requester} needs {', '.join(missing)}; install with: {command}")


class SlicerPythonDependencies:
    """Inside 3D Slicer: ask the user once, then install what is missing."""

    def ensure(self, requirements_path: Path = REQUIREMENTS_FILE, requester: str = "OneClickRegistration") -> None:
        import slicer

        requirements = read_requirements(requirements_path)
        if not missing_requirements(requirements):
            return
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            packaging.pip_ensure(packaging.load_requirements(str(requirements_path)), requester=requester)
        else:
            self._confirm_and_install(missing_requirements(requirements), requester)
        still_missing = missing_requirements(requirements)
        if still_missing:
            raise MissingDependencyError(
                f"{requester} cannot run without {', '.join(still_missing)}; "
                "install it from the Python console with slicer.util.pip_install(...)")

    @staticmethod
    def _confirm_and_install(missing: List[str], requester: str) -> None:
        import slicer

        testing = slicer.app.commandOptions().testingEnabled
        question = (f"{requester} needs these Python packages, which are not installed yet:\n"
                    f"{', '.join(missing)}\n\nDownload and install them now (one time, about a minute)?")
        if not testing and not slicer.util.confirmOkCancelDisplay(question, windowTitle=requester):
            raise MissingDependencyError(
                f"{requester} cannot run without {', '.join(missing)}: installation was declined")
        for requirement in missing:
            logger.info("installing %s", requirement)
            slicer.util.pip_install(requirement)


def dependency_handler():
    """The handler for where we run: inside 3D Slicer or plain Python."""
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:
            return SlicerPythonDependencies()
    except ImportError:
        pass
    return NonSlicerPythonDependencies()
