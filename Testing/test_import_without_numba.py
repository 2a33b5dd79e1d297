"""The library imports where numba is not installed, as in a stock 3D Slicer.

Slicer bundles numpy, scipy and SimpleITK but not numba: the module imports
the library's errors and dependency check, asks the user, installs numba,
and only then registers.  Each check runs in a fresh interpreter in which
`sys.modules["numba"] = None` makes every `import numba` fail, exactly as
when it is not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT, SAMPLE_DATA

# On every Slicer release's Python stack too (`make test`, pytest -m stack).
pytestmark = pytest.mark.stack

LIBRARY_PARENT = ROOT / "OneClickRegistration"
HEAVY_MODULES = ("numpy", "scipy", "SimpleITK", "numba")


def _run_without_numba(code: str) -> str:
    """Run `code` in a new interpreter where numba cannot be imported; its stdout (fails on an error)."""
    prelude = ("import sys\n"
               "sys.modules['numba'] = None  # every 'import numba' now fails, as where it is not installed\n"
               f"sys.path.insert(0, {str(LIBRARY_PARENT)!r})\n")
    completed = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=ROOT,
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


@pytest.mark.parametrize("module", ["OneClickRegistrationLib.errors", "OneClickRegistrationLib.dependencies",
                                    "OneClickRegistrationLib.background", "OneClickRegistrationLib"])
def test_light_modules_import_nothing_heavy(module):
    output = _run_without_numba(f"""
        import {module}
        print([name for name in {HEAVY_MODULES!r} if sys.modules.get(name) is not None])
    """)
    assert output.strip() == "[]", f"importing {module} loaded {output.strip()}"


def test_public_names_import_without_numba():
    output = _run_without_numba("""
        import OneClickRegistrationLib
        from OneClickRegistrationLib.errors import RegistrationCancelled
        from OneClickRegistrationLib import (InvalidInputError, RegistrationResult, StageResult, register,
                                             RegistrationCancelled as Cancelled)
        assert Cancelled is RegistrationCancelled and issubclass(InvalidInputError, ValueError)
        assert RegistrationResult.__module__ == "OneClickRegistrationLib.pipeline"
        assert sorted(OneClickRegistrationLib.__all__) == sorted(
            ["InvalidInputError", "RegistrationCancelled", "RegistrationResult", "StageResult", "register"])
        try:
            OneClickRegistrationLib.no_such_name
        except AttributeError as error:
            print("AttributeError:", error)
    """)
    assert "AttributeError: module 'OneClickRegistrationLib' has no attribute 'no_such_name'" in output


def test_register_without_numba_names_numba():
    """Everything up to the first numba kernel runs; then the one error says numba is missing."""
    output = _run_without_numba(f"""
        import SimpleITK as sitk
        from OneClickRegistrationLib import register
        fixed = sitk.BinShrink(sitk.ReadImage({str(SAMPLE_DATA / "T1.nii.gz")!r}), [2, 2, 2])
        moving = sitk.BinShrink(sitk.ReadImage({str(SAMPLE_DATA / "T2.nii.gz")!r}), [2, 2, 2])
        try:
            register(fixed, moving, stages=("rigid",))
        except ImportError as error:
            print(type(error).__name__, error)
    """)
    assert output.startswith("ModuleNotFoundError") and "numba" in output, output


def test_command_line_module_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "OneClickRegistrationLib.cli", "--identify", str(SAMPLE_DATA / "T1.nii.gz")],
        cwd=LIBRARY_PARENT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "\tT1\t" in completed.stdout
