"""The preset table: one row of registration settings per modality pair.

The bundled table lives in the module's Resources/OneClickRegistration/Presets/presets.json (its
JSON schema beside it documents every key).  A user may pass a table of
their own; it is validated on load and every error names the bad row.
Besides one row per pair of real modalities, a table has one modality-agnostic
row, modalities [unknown, unknown], used for every pair in which a scan's
modality was not recognised, and one "inter_subject" object: how the
deformable stage reaches far when the scans show two different people (or a
patient and a template), whatever the pair's row says.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, FrozenSet, Optional, Tuple

from . import deformable, deformable_large
from .errors import InvalidInputError
from .linear import LinearSettings
from .modality import MODALITIES, UNKNOWN

logger = logging.getLogger(__name__)

BUNDLED_TABLE = Path(__file__).resolve().parent.parent / "Resources" / "OneClickRegistration" / "Presets" / "presets.json"
ROW_KEYS = {"name", "modalities", "description", "linear", "deformable"}
# The key of the modality-agnostic row: the only row that may name UNKNOWN.
AGNOSTIC = frozenset((UNKNOWN,))


@dataclass(frozen=True)
class Preset:
    """Settings for one unordered modality pair."""

    name: str
    modalities: Tuple[str, str]
    description: str
    linear: LinearSettings
    deformable: "deformable.DeformableSettings"

    @property
    def deformable_by_default(self) -> bool:
        return bool(self.deformable.run_by_default)


@dataclass(frozen=True)
class PresetTable:
    """All rows of a table, looked up by modality pair in either order."""

    path: Path
    rows: Dict[FrozenSet[str], Preset]
    inter_subject: deformable_large.InterSubjectSettings = deformable_large.InterSubjectSettings()

    def lookup(self, first: str, second: str) -> Preset:
        """The row for the pair in either order; any pair with UNKNOWN gets the agnostic row."""
        key = AGNOSTIC if UNKNOWN in (first, second) else frozenset((first, second))
        if key not in self.rows:
            raise InvalidInputError(
                f"preset table {self.path} has no row for {first}-{second}; add one or use the bundled table")
        return self.rows[key]

    def by_name(self, name: str) -> Preset:
        """The row called `name` (e.g. 'T1-CT'), for users who pick a preset themselves."""
        for preset in self.rows.values():
            if preset.name == name:
                return preset
        raise InvalidInputError(
            f"preset table {self.path} has no preset named {name!r}; choose from "
            f"{', '.join(p.name for p in self.rows.values())}")


def load_preset_table(path: Optional[Path] = None) -> PresetTable:
    """Read and validate a preset table (default: the bundled one)."""
    path = Path(path) if path is not None else BUNDLED_TABLE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"preset table {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidInputError(f"preset table {path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("presets"), list):
        raise InvalidInputError(f"preset table {path} must be an object with a 'presets' list")
    rows: Dict[FrozenSet[str], Preset] = {}
    for number, row in enumerate(document["presets"], start=1):
        preset = _parse_row(row, f"preset table {path}, row {number}")
        key = frozenset(preset.modalities)
        if key in rows:
            raise InvalidInputError(
                f"preset table {path}, row {number} ({preset.name}) repeats the pair of row {rows[key].name}")
        rows[key] = preset
    missing = [f"{a}-{b}" for a, b in itertools.combinations_with_replacement(MODALITIES, 2)
               if frozenset((a, b)) not in rows]
    if AGNOSTIC not in rows:
        if path.resolve() == BUNDLED_TABLE.resolve():
            missing.append(f"{UNKNOWN}-{UNKNOWN} (the agnostic row, used when a modality is not recognised)")
        else:  # a table written before the agnostic row existed keeps working
            rows[AGNOSTIC] = load_preset_table().rows[AGNOSTIC]
            logger.info("preset table %s has no modality-agnostic row; the bundled one is used for scans "
                        "whose modality is not recognised", path)
    if missing:
        raise InvalidInputError(f"preset table {path} lacks rows for {', '.join(missing)}")
    return PresetTable(path=path, rows=rows, inter_subject=_inter_subject(document, path))


def _inter_subject(document: dict, path: Path) -> deformable_large.InterSubjectSettings:
    """The table's "inter_subject" object; a user table without one uses the bundled table's."""
    if "inter_subject" in document:
        try:
            return deformable_large.InterSubjectSettings.from_dict(document["inter_subject"])
        except InvalidInputError as error:
            raise InvalidInputError(f"preset table {path}: {error}") from None
    if path.resolve() == BUNDLED_TABLE.resolve():
        raise InvalidInputError(f"preset table {path} lacks its 'inter_subject' object")
    return load_preset_table().inter_subject


def _parse_row(row, where: str) -> Preset:
    """One validated row; every error message starts with `where` and the row's name."""
    if not isinstance(row, dict):
        raise InvalidInputError(f"{where}: must be an object")
    name = row.get("name", "?")
    where = f"{where} ({name})"
    missing = ROW_KEYS - row.keys()
    unknown = row.keys() - ROW_KEYS
    if missing or unknown:
        raise InvalidInputError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    modalities = row["modalities"]
    agnostic = modalities == [UNKNOWN, UNKNOWN]
    if not agnostic and (not isinstance(modalities, list) or len(modalities) != 2
                         or any(m not in MODALITIES for m in modalities)):
        raise InvalidInputError(f"{where}: 'modalities' must be two of {', '.join(MODALITIES)}, "
                                f"or [{UNKNOWN!r}, {UNKNOWN!r}] for the modality-agnostic row")
    try:
        linear_settings = LinearSettings.from_dict(row["linear"])
        deformable_settings = deformable.DeformableSettings.from_dict(row["deformable"])
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: {error}") from None
    return Preset(name=str(name), modalities=tuple(modalities), description=str(row["description"]),
                  linear=linear_settings, deformable=deformable_settings)
