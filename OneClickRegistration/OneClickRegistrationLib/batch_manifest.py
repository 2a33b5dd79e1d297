"""The manifest of a batch: a CSV or TSV file of cases in, validated `Case`s out.

Its first line names its columns: `fixed` and `moving` (the two images of a case) and optionally `id`
(the case's folder name), `fixed_modality`, `moving_modality` (T1, T2, FLAIR, CT: skip recognition),
`stages` (e.g. `rigid;affine`) and `also` (more images in the moving image's space, `;`-separated).
Paths are relative to the manifest's folder.  A bad manifest is refused before any work with one line
naming the line, the column and the fix.  No dask here: reading a manifest needs none.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import InvalidInputError
from .imageio import image_name
from .modality import MODALITIES
from .pipeline import STAGE_NAMES

MANIFEST_COLUMNS = ("id", "fixed", "moving", "fixed_modality", "moving_modality", "stages", "also")
REQUIRED_COLUMNS = ("fixed", "moving")
# The results table beside the case folders: no case may take its name.
RESULTS_NAME = "results.csv"
# A case id names its folder: letters, digits, '.', '_', '-', not starting with '.'.
CASE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
STAGE_SEPARATORS = re.compile(r"[\s,;+]+")


@dataclass(frozen=True)
class Case:
    """One registration of a batch: its id (its output folder's name), its inputs and its settings."""

    id: str
    fixed: Path
    moving: Path
    fixed_modality: Optional[str] = None
    moving_modality: Optional[str] = None
    stages: Tuple[str, ...] = STAGE_NAMES
    also: Tuple[Path, ...] = ()

    def settings(self, qc: bool) -> dict:
        """What the case's report records besides its inputs' checksums (JSON types, compared as read back)."""
        return {"fixed_modality": self.fixed_modality, "moving_modality": self.moving_modality,
                "stages": list(self.stages), "also": [str(path) for path in self.also], "qc": qc}


def read_manifest(path) -> List[Case]:
    """The cases of a CSV or TSV manifest, its paths taken relative to its folder.

    A bad manifest is one InvalidInputError naming the file, the line and the column, and the fix.
    """
    path = Path(path)
    text = _manifest_text(path)
    first_line = text.splitlines()[0] if text.strip() else ""
    tab_separated = path.suffix.lower() in (".tsv", ".tab") or ("\t" in first_line and "," not in first_line)
    reader = csv.reader(io.StringIO(text), delimiter="\t" if tab_separated else ",")
    columns = _manifest_columns(path, next(reader, []))
    rows, places = [], []
    for cells in reader:
        if not any(cell.strip() for cell in cells):
            continue
        place = f"{path}, line {reader.line_num}"
        if len(cells) > len(columns):
            raise InvalidInputError(f"{place}: {len(cells)} cells for the {len(columns)} columns of the first line; "
                                    "quote a cell that holds the separator, or remove the extra cells")
        rows.append(dict(zip(columns, cells)))
        places.append(place)
    if not rows:
        raise InvalidInputError(f"{path}: no case under its first line; add a line per case (fixed,moving)")
    return cases_from_rows(rows, path.parent, places)


def cases_from_rows(rows: Sequence[Mapping[str, object]], base: Path, places: Sequence[str]) -> List[Case]:
    """Cases from rows of manifest cells (column -> text), paths relative to `base`; `places` name them in errors."""
    cases = [_case_from_row(row, Path(base), place) for row, place in zip(rows, places)]
    return _with_unique_ids(cases, [str(row.get("id") or "").strip() for row in rows], places)


def _manifest_text(path: Path) -> str:
    if not path.is_file():
        raise InvalidInputError(f"manifest {path}: no such file; give the CSV or TSV file listing the cases")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"manifest {path} is not UTF-8 text; save it as CSV (UTF-8) or TSV") from None
    except OSError as error:
        raise InvalidInputError(f"manifest {path} cannot be read ({error.strerror}); check its permissions") from None


def _manifest_columns(path: Path, header: List[str]) -> List[str]:
    """The first line's column names, lower case; known, unrepeated, and with fixed and moving among them."""
    columns = [name.strip().lower() for name in header]
    expected = f"the first line names the columns: fixed,moving and optionally {', '.join(MANIFEST_COLUMNS[3:])}, id"
    for name in columns:
        if name not in MANIFEST_COLUMNS:
            shown = f"column {name!r}" if name else "an empty column name"
            raise InvalidInputError(f"{path}, line 1: {shown} is not one a manifest has; rename or remove it "
                                    f"({expected})")
        if columns.count(name) > 1:
            raise InvalidInputError(f"{path}, line 1: column {name!r} appears twice; keep one")
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise InvalidInputError(f"{path}, line 1: no column {' or '.join(map(repr, missing))}; {expected}")
    return columns


def _case_from_row(row: Mapping[str, object], base: Path, place: str) -> Case:
    """One case from its cells; the id is settled afterwards (_with_unique_ids)."""
    cells = {name: _cell_text(row.get(name)) for name in MANIFEST_COLUMNS}
    for name in REQUIRED_COLUMNS:
        if not cells[name]:
            raise InvalidInputError(f"{place}, column {name}: empty; give the {name} image's path "
                                    "(relative to the manifest's folder)")
    return Case(
        id="",
        fixed=_absolute(base, cells["fixed"]),
        moving=_absolute(base, cells["moving"]),
        fixed_modality=_modality_cell(cells["fixed_modality"], place, "fixed_modality"),
        moving_modality=_modality_cell(cells["moving_modality"], place, "moving_modality"),
        stages=_stages_cell(cells["stages"], place),
        also=tuple(_absolute(base, part.strip()) for part in cells["also"].split(";") if part.strip()),
    )


def _cell_text(value) -> str:
    """A cell as text; a list or tuple (from the Python API) as its items separated by ';'."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ";".join(str(item) for item in value)
    return str(value).strip()


def _absolute(base: Path, text: str) -> Path:
    return Path(os.path.abspath(base / Path(text).expanduser()))


def _modality_cell(text: str, place: str, column: str) -> Optional[str]:
    if not text:
        return None
    if text.upper() not in MODALITIES:
        raise InvalidInputError(f"{place}, column {column}: {text!r} is not a modality; use one of "
                                f"{', '.join(MODALITIES)}, or leave it empty to have it recognised")
    return text.upper()


def _stages_cell(text: str, place: str) -> Tuple[str, ...]:
    if not text:
        return STAGE_NAMES
    names = tuple(part.lower() for part in STAGE_SEPARATORS.split(text) if part)
    unknown = [name for name in names if name not in STAGE_NAMES]
    if unknown:
        raise InvalidInputError(f"{place}, column stages: {unknown[0]!r} is not a stage; use "
                                f"{', '.join(STAGE_NAMES)} separated by ';' (e.g. rigid;affine), or leave it empty")
    if names != tuple(name for name in STAGE_NAMES if name in names):
        raise InvalidInputError(f"{place}, column stages: {text!r} is out of order; stages run in the order "
                                f"{', '.join(STAGE_NAMES)}")
    return names


def _with_unique_ids(cases: List[Case], given: List[str], places: Sequence[str]) -> List[Case]:
    """Each case with its id: the one given (checked to name a folder), else <moving>_to_<fixed>, with the
    moving image's folder in front where that repeats; two cases with one id (case ignored) are refused."""
    for text, place in zip(given, places):
        if text and (not CASE_ID.fullmatch(text) or text.lower() == RESULTS_NAME):
            raise InvalidInputError(f"{place}, column id: {text!r} cannot name the case's folder; use letters, "
                                    "digits, '.', '_' and '-', not starting with '.' (and not results.csv)")
    short = [f"{image_name(case.moving)}_to_{image_name(case.fixed)}" for case in cases]
    repeated = {name for name, count in Counter(short).items() if count > 1}
    ids = [text or _folder_name(f"{case.moving.parent.name}_{name}" if name in repeated else name)
           for text, name, case in zip(given, short, cases)]
    first_place: Dict[str, str] = {}
    for case_id, place in zip(ids, places):
        if case_id.lower() in first_place:
            raise InvalidInputError(f"{place}: case id {case_id!r} is also the id of {first_place[case_id.lower()]} "
                                    "(ids name the output folders); give each case its own id in an id column")
        first_place[case_id.lower()] = place
    return [Case(case_id, case.fixed, case.moving, case.fixed_modality, case.moving_modality, case.stages, case.also)
            for case_id, case in zip(ids, cases)]


def _folder_name(text: str) -> str:
    """`text` with every character a case id does not allow replaced by '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    return "_" + name if name.startswith(".") else name


