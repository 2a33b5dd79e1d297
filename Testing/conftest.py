"""Shared pytest fixtures: where the real data lives, and small synthetic images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "OneClickRegistration"))
sys.path.insert(0, str(ROOT))

SHARED_DATA = Path(os.environ.get("ONECLICK_SHARED_DATA", ROOT.parent / "shared" / "data"))
SAMPLE_DATA = ROOT / "OneClickRegistration" / "Resources" / "OneClickRegistration" / "SampleData"


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared/data, or skip the test saying it is missing."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs {relative} from the shared data folder {SHARED_DATA} (not found on this machine)")
    return path


@pytest.fixture
def shared_data():
    """The ../shared/data folder; tests that need it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data folder {SHARED_DATA} (not found on this machine)")
    return SHARED_DATA
