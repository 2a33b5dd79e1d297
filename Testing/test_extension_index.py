"""Ready for Slicer's Extensions Index: the catalog entry, CMakeLists.txt, licence, README and screenshot.

What the index's pull-request checklist and its CI (Slicer/ExtensionsIndex `scripts/check_description_files.py`
and `scripts/check_repository_structure.py`, kept in ../shared/slicer-python/extensions-index) ask of a new
extension, checked against this working tree:

* the catalog entry OneClickRegistration.json validates against schema v1.0.1 and says what we mean;
* CMakeLists.txt, the entry, LICENSE.txt, pyproject.toml and README.md agree with each other;
* the icon and screenshot URLs name files that exist here, and the screenshot is the picture
  `OneClickRegistrationLib.pictures` draws (it also works without numba and scipy);
* the index's own check functions pass on this repository, with their network calls (git clone,
  downloads from raw.githubusercontent.com, the schema download) served from this working tree and
  ../shared instead, and they fail when a required piece is taken away (so the stand-ins are not vacuous).

Tests that need ../shared skip and say so when it is missing.
"""

from __future__ import annotations

import inspect
import json
import mimetypes
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT

from OneClickRegistrationLib import pictures

SHARED_SLICER = ROOT.parent / "shared" / "slicer-python"
INDEX = SHARED_SLICER / "extensions-index"
EXTENSION_NAME = "OneClickRegistration"
CATALOG_ENTRY = ROOT / f"{EXTENSION_NAME}.json"
OWNER = "OneClickRegistration"
REPOSITORY = "SlicerOneClickRegistration"
SCM_URL = f"https://github.com/{OWNER}/{REPOSITORY}"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / f"{EXTENSION_NAME}.png"
ICON = ROOT / EXTENSION_NAME / "Resources" / "Icons" / f"{EXTENSION_NAME}.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def shared_slicer_file(relative: str) -> Path:
    """Path of a file under ../shared/slicer-python, or skip the test saying it is missing."""
    path = SHARED_SLICER / relative
    if not path.exists():
        pytest.skip(f"needs {relative} from {SHARED_SLICER} (not found on this machine)")
    return path


# ---------------------------------------------------------------------------------------------
# Reading the project's own files


def catalog_entry() -> dict:
    return json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))


def cmake_text() -> str:
    return (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")


def cmake_set(name: str) -> str:
    """The quoted value of `set(NAME "value")` in the top-level CMakeLists.txt (the first one)."""
    match = re.search(rf'^\s*set\s*\(\s*{name}\s+"([^"]*)"', cmake_text(), re.MULTILINE)
    assert match, f"no set({name} \"...\") in CMakeLists.txt"
    return match.group(1)


def cmake_project_name() -> str:
    match = re.search(r"^\s*project\s*\(\s*([^\s)]+)", cmake_text(), re.MULTILINE | re.IGNORECASE)
    assert match, "no project() in CMakeLists.txt"
    return match.group(1)


def raw_url_to_local(url: str) -> Path:
    """The file of this repository that a raw.githubusercontent.com URL of the public repository names."""
    parts = urlsplit(url)
    assert parts.scheme == "https" and parts.netloc == "raw.githubusercontent.com", url
    owner, repository, revision, *path = parts.path.strip("/").split("/")
    assert (owner, repository) == (OWNER, REPOSITORY), f"{url} is not on {SCM_URL}"
    assert revision == catalog_entry()["scm_revision"], f"{url} is not on the catalog's revision"
    return ROOT.joinpath(*path)


def png_size(path: Path):
    """(width, height) of a PNG, read from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def version(text: str):
    return tuple(int(part) for part in text.split("."))


# ---------------------------------------------------------------------------------------------
# The catalog entry, CMakeLists.txt, licence and README


def test_catalog_entry_validates_against_schema_v1_0_1():
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = shared_slicer_file("extensions-index/schemas/slicer-extension-catalog-entry-schema-v1.0.1.json")
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    entry = catalog_entry()
    assert entry["$schema"].split("#")[0].rsplit("/", 1)[-1] == schema_path.name
    assert entry["$schema"].split("#")[0] == schema["$id"].split("#")[0]
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(entry)
    # The schema is strict enough to notice mistakes: an unknown key or an impossible tier fails.
    without_url = {key: value for key, value in entry.items() if key != "scm_url"}
    for broken in ({**entry, "homepage": SCM_URL}, {**entry, "tier": 6}, without_url):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_catalog_entry_content_and_format():
    text = CATALOG_ENTRY.read_text(encoding="utf-8")
    entry = json.loads(text)
    assert entry["category"] == "Registration"
    assert entry["scm_url"] == SCM_URL
    assert entry["scm_revision"] == "main"  # a branch, so updates need no new pull request
    assert entry["tier"] == 1  # a new extension starts as tier 1; maintainers raise it
    assert entry["build_dependencies"] == [] and cmake_set("EXTENSION_DEPENDS") == "NA"
    assert entry.get("build_subdirectory", ".") == "."  # not a superbuild
    # The index's own format check wants LF line endings; keep the examples' layout (sorted keys, 2 spaces).
    assert "\r" not in text
    assert text == json.dumps(entry, indent=2, sort_keys=True) + "\n"


def test_cmakelists_agrees_with_the_catalog_entry():
    entry = catalog_entry()
    name = cmake_project_name()
    assert name == CATALOG_ENTRY.stem == EXTENSION_NAME
    assert not name.lower().startswith("slicer"), "the extension name must not start with Slicer"
    repository = urlsplit(entry["scm_url"]).path.strip("/").split("/")[-1]
    assert repository.startswith("Slicer") and repository == "Slicer" + name
    assert cmake_set("EXTENSION_CATEGORY") == entry["category"]
    homepage = urlsplit(cmake_set("EXTENSION_HOMEPAGE"))
    assert f"{homepage.scheme}://{homepage.netloc}{homepage.path}".rstrip("/") == entry["scm_url"]
    # The module in the repository is the one the extension is named after.
    assert (ROOT / name / f"{name}.py").is_file()
    assert "add_subdirectory(OneClickRegistration)" in cmake_text()


def test_icon_and_screenshot_urls_name_files_in_this_repository():
    icon = raw_url_to_local(cmake_set("EXTENSION_ICONURL"))
    assert icon == ICON and icon.is_file()
    assert png_size(icon) == (128, 128)
    screenshots = [raw_url_to_local(url) for url in cmake_set("EXTENSION_SCREENSHOTURLS").split()]
    assert screenshots == [SCREENSHOT] and SCREENSHOT.is_file()
    width, height = png_size(SCREENSHOT)
    assert 900 <= width <= 1200 and 500 <= height <= 800


def test_contributors_and_description_follow_the_conventions():
    contributors = [c.strip() for c in cmake_set("EXTENSION_CONTRIBUTORS").split(",")]
    assert contributors
    for contributor in contributors:
        # "Firstname Lastname (Organization)", as Slicer's extension template writes it.
        assert re.fullmatch(r"[^(),]+\S \([^()]+\)", contributor), contributor
    description = cmake_set("EXTENSION_DESCRIPTION")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", description.strip()) if s]
    assert 1 <= len(sentences) <= 2, "the checklist asks for a 1-2 sentence description"


def test_cmake_minimum_required_covers_slicer_5_6_and_the_5_10_template():
    match = re.match(r"(?:\s*#.*\n)*\s*cmake_minimum_required\s*\(\s*VERSION\s+([\d.]+)\.\.\.([\d.]+)"
                     r"\s+FATAL_ERROR\s*\)", cmake_text())
    assert match, "CMakeLists.txt must start with cmake_minimum_required(VERSION min...max FATAL_ERROR)"
    low, high = version(match.group(1)), version(match.group(2))
    # Slicer 5.6 and 5.8 build with CMake 3.16.3 (their extension template: 3.16.3...3.19.7).
    assert low <= (3, 16, 3)
    template = shared_slicer_file("v5.10.0/templates/Extensions/Default/CMakeLists.txt").read_text()
    expected = re.search(r"cmake_minimum_required\(VERSION ([\d.]+)\.\.\.([\d.]+) FATAL_ERROR\)", template)
    assert expected, "the Slicer 5.10 template's cmake_minimum_required changed form"
    assert low <= version(expected.group(1)) and high == version(expected.group(2))


def test_licence_is_bsd_3_clause_everywhere():
    licence = (ROOT / "LICENSE.txt").read_text(encoding="utf-8")
    assert licence.startswith("BSD 3-Clause License\n")
    assert "Copyright (c) 2026, OneClickRegistration contributors" in licence
    for clause in ("1. Redistributions of source code must retain",
                   "2. Redistributions in binary form must reproduce",
                   "3. Neither the name of the copyright holder nor the names of its"):
        assert clause in licence
    assert "slicer" not in licence.lower(), "LICENSE.txt is this project's licence only"
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^license\s*=\s*\{\s*text\s*=\s*"BSD-3-Clause"\s*\}', pyproject, re.MULTILINE)
    # The checklist: "the name of the license is mentioned in extension homepage" (the README).
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Licence and the Extensions Index", 1)
    assert len(section) == 2, "README.md needs its '## Licence and the Extensions Index' section"
    body = section[1].split("\n## ", 1)[0]
    for needed in ("BSD-3-Clause", "LICENSE.txt", "make screenshot", REPOSITORY, CATALOG_ENTRY.name):
        assert needed in body, needed


def test_readme_layout_lists_the_submission_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for path in ("LICENSE.txt", CATALOG_ENTRY.name, "Resources/Screenshots/", "pictures.py"):
        assert f"`{path}" in layout or f"{path}`" in layout, f"{path} is missing from README's Layout table"


# ---------------------------------------------------------------------------------------------
# The index's own scripts, run on this repository with local stand-ins for the network


def load_index_script(name: str):
    """Import scripts/<name> of the Extensions Index by path.

    check_description_files.py's print_categories (not used here) nests quotes and a backslash in an
    f-string, which only Python 3.12+ can parse; on older Pythons that one line of that one function is
    replaced by `pass` before compiling. Nothing else is changed, and nothing is written to disk.
    """
    path = shared_slicer_file(f"extensions-index/scripts/{name}")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    replaced = []
    while True:
        try:
            code = compile("".join(lines), str(path), "exec")
            break
        except SyntaxError as error:
            index = (error.lineno or 0) - 1
            enclosing = next((line for line in reversed(lines[:index + 1]) if line.startswith("def ")), "")
            if sys.version_info >= (3, 12) or index < 0 or not enclosing.startswith("def print_categories(") \
                    or len(replaced) > 2:
                raise
            indent = lines[index][:len(lines[index]) - len(lines[index].lstrip())]
            lines[index] = f"{indent}pass  # Python 3.12+ syntax; not used by these tests\n"
            replaced.append(index + 1)
    module = types.ModuleType(f"extensions_index_{path.stem}")
    module.__file__ = str(path)
    exec(code, module.__dict__)
    return module


class RequestException(Exception):
    """Stand-in for requests.RequestException."""


class LocalResponse:
    def __init__(self, url: str, status: int, body: bytes = b"", content_type: str = "text/plain"):
        self.url, self.status_code, self.content = url, status, body
        self.headers = {"Content-Type": content_type}
        self.text = body.decode("utf-8", "replace")

    def raise_for_status(self):
        if self.status_code >= 400:
            raise RequestException(f"{self.status_code} for url: {self.url}")

    def json(self):
        return json.loads(self.content)


class LocalWeb:
    """Stand-in for the `requests` module: serves the public repository's raw files from a local folder.

    https://raw.githubusercontent.com/<owner>/<repository>/<revision>/<path> of the extension is read from
    `repository_folder`, Slicer's catalog schemas from ../shared, with GitHub's content type for the file
    name; every other URL answers 404. Every URL asked for is recorded in `requested`.
    """

    RequestException = RequestException

    def __init__(self, repository_folder: Path, revision: str):
        self.repository_folder = repository_folder
        self.revision = revision
        self.requested: List[str] = []

    def get(self, url, timeout=None, headers=None, **_):
        self.requested.append(url)
        parts = urlsplit(url)
        segments = parts.path.strip("/").split("/")
        path: Optional[Path] = None
        if parts.netloc == "raw.githubusercontent.com" and len(segments) > 3:
            if segments[:3] == [OWNER, REPOSITORY, self.revision]:
                path = self.repository_folder.joinpath(*segments[3:])
            elif segments[:4] == ["Slicer", "Slicer", "main", "Schemas"] and len(segments) == 5:
                path = INDEX / "schemas" / segments[4]
        if path is None or not path.is_file():
            return LocalResponse(url, 404, b"404: Not Found")
        content_type = mimetypes.guess_type(path.name)[0] or "text/plain"
        return LocalResponse(url, 200, path.read_bytes(), content_type)


def files_to_publish() -> List[str]:
    """What pushing this working tree would publish: tracked and new files that .gitignore does not exclude."""
    try:
        listing = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"needs git and this repository's git metadata to list its files ({error})")
    return [path for path in listing.split("\0")
            if path and not path.split("/", 1)[0].startswith(".venv") and (ROOT / path).is_file()]


class LocalGit:
    """Stand-in for `subprocess` in check_clone_repository: 'git clone URL DIR' copies this working tree's
    publishable files when URL is the catalog's scm_url; 'git checkout REV' accepts a local branch name."""

    TimeoutExpired = subprocess.TimeoutExpired
    CalledProcessError = subprocess.CalledProcessError
    CompletedProcess = subprocess.CompletedProcess

    def __init__(self, url: str, branches: List[str]):
        self.url, self.branches = url, branches
        self.commands: List[List[str]] = []

    def run(self, command, cwd=None, check=False, capture_output=False, text=False, timeout=None, **_):
        command = list(command)
        self.commands.append(command)
        if command[:2] == ["git", "clone"]:
            url, destination = command[-2], Path(command[-1])
            normalised = url.rstrip("/")
            normalised = normalised[:-4] if normalised.endswith(".git") else normalised
            if normalised != self.url:
                raise subprocess.CalledProcessError(128, command, stderr=f"fatal: repository '{url}' not found")
            for relative in files_to_publish():
                target = destination / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / relative, target)
        elif command[:2] == ["git", "checkout"]:
            if command[2] not in self.branches:
                raise subprocess.CalledProcessError(1, command, stderr=f"error: pathspec '{command[2]}' did not match")
        else:
            raise AssertionError(f"unexpected command {command}")
        return subprocess.CompletedProcess(command, 0, "", "")


def local_branches() -> List[str]:
    try:
        output = subprocess.run(["git", "for-each-ref", "--format=%(refname:short)", "refs/heads"],
                                cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"needs git to list this repository's branches ({error})")
    return output.split()


@pytest.fixture
def index_checks(tmp_path, monkeypatch):
    """check_description_files.py with its network replaced: (module, web stand-in, git stand-in, clone folder)."""
    module = load_index_script("check_description_files.py")
    web = LocalWeb(tmp_path / "clone", catalog_entry()["scm_revision"])
    git = LocalGit(SCM_URL, local_branches())
    monkeypatch.setattr(module, "requests", web, raising=False)
    monkeypatch.setattr(module, "subprocess", git)
    if module.jsonschema is None:
        pytest.skip("needs jsonschema (the test extras)")
    (tmp_path / "clone").mkdir()
    return module, web, git, tmp_path / "clone"


def submission_checks(module) -> List[str]:
    """Names of the checks main() runs on a submitted entry, read from the script's own list."""
    source = inspect.getsource(module.main)
    names = re.findall(r'\(\s*"[^"]+",\s*(check_\w+),', source)
    assert names, "could not find the list of checks in check_description_files.main"
    return names


def run_check(module, name: str, extension_name: str, metadata: dict, folder: Path):
    check = getattr(module, name)
    parameters = inspect.signature(check).parameters
    arguments = {}
    if "cloned_repository_folder" in parameters:
        arguments["cloned_repository_folder"] = str(folder)
    if "extension_file_path" in parameters:
        arguments["extension_file_path"] = str(CATALOG_ENTRY)
    return check(extension_name, metadata, **arguments)


def test_index_checks_pass_on_this_repository(index_checks, capsys):
    module, web, git, folder = index_checks
    metadata = module.parse_json(str(CATALOG_ENTRY))
    names = submission_checks(module)
    # The topics check asks api.github.com for the live repository's topics: a maintainer sets the
    # '3d-slicer-extension' topic on GitHub (see README), nothing in this tree can satisfy it.
    assert names[0] == "check_clone_repository" and "check_git_repository_topics" in names
    failures: Dict[str, str] = {}
    for name in names:
        if name == "check_git_repository_topics":
            continue
        try:
            run_check(module, name, CATALOG_ENTRY.stem, metadata, folder)
        except module.ExtensionCheckError as error:
            failures[name] = str(error)
    assert failures == {}
    # The stand-ins were really used: the clone, the checkout of the catalog's revision, the schema
    # download and both image downloads went through them.
    assert ["git", "clone", SCM_URL, str(folder)] in git.commands
    assert ["git", "checkout", metadata["scm_revision"]] in git.commands
    assert metadata["$schema"].split("#")[0] in web.requested
    assert cmake_set("EXTENSION_ICONURL") in web.requested
    assert cmake_set("EXTENSION_SCREENSHOTURLS") in web.requested
    assert (folder / "LICENSE.txt").is_file() and (folder / "CMakeLists.txt").is_file()
    # Dependencies between catalog entries: ours needs none that the index would have to hold.
    entries = folder.parent / "entries"
    entries.mkdir()
    shutil.copy2(CATALOG_ENTRY, entries / CATALOG_ENTRY.name)
    module.check_dependencies(str(entries))
    capsys.readouterr()


def test_index_checks_fail_without_what_they_require(index_checks):
    """The same checks, with the stand-ins, reject a repository missing each required piece."""
    module, web, git, folder = index_checks
    metadata = module.parse_json(str(CATALOG_ENTRY))
    run_check(module, "check_clone_repository", EXTENSION_NAME, metadata, folder)
    errors = module.ExtensionCheckError

    (folder / "Resources" / "Screenshots" / SCREENSHOT.name).unlink()
    with pytest.raises(errors, match="EXTENSION_SCREENSHOTURLS"):
        run_check(module, "check_cmakelists_content", EXTENSION_NAME, metadata, folder)
    (folder / "LICENSE.txt").unlink()
    with pytest.raises(errors, match="No license file"):
        run_check(module, "check_license_file", EXTENSION_NAME, metadata, folder)
    with pytest.raises(errors, match="does not match"):
        run_check(module, "check_cmakelists_content", "Another" + EXTENSION_NAME, metadata, folder)
    with pytest.raises(errors, match="should not"):
        run_check(module, "check_extension_name", "Slicer" + EXTENSION_NAME, metadata, folder)
    with pytest.raises(errors, match="should\\* start with 'Slicer'"):
        run_check(module, "check_git_repository_name", EXTENSION_NAME,
                  {**metadata, "scm_url": f"https://github.com/{OWNER}/{EXTENSION_NAME}"}, folder)
    with pytest.raises(errors, match="schema validation failed"):
        run_check(module, "check_json_schema", EXTENSION_NAME, {**metadata, "homepage": SCM_URL}, folder)
    with pytest.raises(errors, match="unknown"):
        run_check(module, "check_category", EXTENSION_NAME, {**metadata, "category": "Registrations"}, folder)
    with pytest.raises(errors, match="clone"):
        run_check(module, "check_clone_repository", EXTENSION_NAME,
                  {**metadata, "scm_url": f"https://github.com/{OWNER}/Elsewhere"}, folder.parent / "other")


def test_index_repository_structure_accepts_the_catalog_entry(tmp_path, capsys):
    """check_repository_structure.py on a copy of the index's layout with our entry added: nothing unexpected."""
    module = load_index_script("check_repository_structure.py")
    index = tmp_path / "ExtensionsIndex"
    for folder in ("scripts", "schemas", ".github"):
        (index / folder).mkdir(parents=True)
    (index / "README.md").write_text("# Slicer Extensions Index\n")
    for example in sorted((INDEX / "examples").glob("*.json")):
        shutil.copy2(example, index / example.name)
    shutil.copy2(CATALOG_ENTRY, index / CATALOG_ENTRY.name)
    module.__file__ = str(index / "scripts" / "check_repository_structure.py")
    assert module.check_filenames() == []
    # Only the .json goes to the index: the licence or the screenshot there would be flagged.
    shutil.copy2(ROOT / "LICENSE.txt", index / "LICENSE.txt")
    assert module.check_filenames() == ["LICENSE.txt"]
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------
# The screenshot and the pictures module


def synthetic_head(direction=None) -> sitk.Image:
    """An ellipsoid 'head' (2 mm voxels) with two bright inner blobs and a dark one, LPS centred at the origin."""
    size = np.array([72, 80, 70])
    spacing = 2.0
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([spacing] * 3)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin((-(direction @ ((size - 1) * spacing / 2.0))).tolist())
    index = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), axis=-1)  # x, y, z
    points = sitk_points(image, index)
    head = ((points / np.array([60.0, 70.0, 58.0])) ** 2).sum(-1) <= 1.0
    values = np.where(head, 100.0, 0.0)
    for centre, radius, value in (((20, -25, 10), 14, 220.0), ((-18, 15, -12), 10, 180.0), ((0, 20, 25), 9, 30.0)):
        values[np.linalg.norm(points - np.array(centre, float), axis=-1) <= radius] = value
    filled = sitk.GetImageFromArray(np.transpose(values, (2, 1, 0)).astype(np.float32))
    filled.CopyInformation(image)
    return filled


def sitk_points(image: sitk.Image, index: np.ndarray) -> np.ndarray:
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return np.asarray(image.GetOrigin()) + (index * np.asarray(image.GetSpacing())) @ direction.T


def shifted_header(image: sitk.Image, shift_mm) -> sitk.Image:
    moved = sitk.Image(image)
    moved.SetOrigin((np.asarray(image.GetOrigin()) + np.asarray(shift_mm, float)).tolist())
    return moved


def near(edges: np.ndarray, reference: np.ndarray, pixels: int = 2) -> float:
    """Fraction of `edges` pixels within `pixels` (chessboard distance) of a `reference` edge pixel."""
    grown = reference.copy()
    for _ in range(pixels):
        step = grown.copy()
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        step[:, 1:] |= grown[:, :-1]
        step[:, :-1] |= grown[:, 1:]
        grown = step
    return float(grown[edges].mean()) if edges.any() else 0.0


def test_pictures_show_the_misalignment_before_and_not_after(tmp_path):
    fixed = synthetic_head()
    shift = (9.0, -7.0, 6.0)
    moving = shifted_header(fixed, shift)
    truth = sitk.TranslationTransform(3, shift)  # fixed -> moving
    panels = pictures.comparison_panels(fixed, moving, truth, panel_pixels=120)
    assert set(panels) == set(pictures.PLANES)
    for plane, entry in panels.items():
        fixed_edges = pictures._edges(entry["fixed"], np.ones_like(entry["fixed"], bool))
        assert entry["after_edges"].any() and entry["before_edges"].any(), plane
        # After: the moving image's edges lie on the fixed image's; before they do not.
        assert near(entry["after_edges"], fixed_edges) > 0.95, plane
        assert near(entry["before_edges"], fixed_edges) < 0.8, plane
        assert np.abs(entry["after"] - entry["fixed"]).mean() < 0.25 * np.abs(entry["before"] - entry["fixed"]).mean()
    # A RegistrationResult-like object is read through its .transform.
    same = pictures.comparison_panels(fixed, moving, types.SimpleNamespace(transform=truth), panel_pixels=120)
    assert all(np.array_equal(same[p]["after"], panels[p]["after"]) for p in pictures.PLANES)
    with pytest.raises(TypeError):
        pictures.comparison_panels(fixed, moving, "not a transform")

    path = tmp_path / "sub" / "check.png"
    picture = pictures.write_comparison_png(fixed, moving, truth, path, title="T1 onto T1", panel_pixels=120)
    written = sitk.ReadImage(str(path))
    assert written.GetNumberOfComponentsPerPixel() == 3 and written.GetPixelID() == sitk.sitkVectorUInt8
    assert np.array_equal(sitk.GetArrayFromImage(written), picture)
    assert picture.shape == (pictures.TITLE_BAR + pictures.PLANE_ROW + 2 * 120 + 2 * pictures.GAP,
                             pictures.LABEL_COLUMN + 3 * 120 + 4 * pictures.GAP, 3)
    assert (picture == np.array(pictures.EDGE_COLOUR, np.uint8)).all(-1).sum() > 100
    # The title is drawn: the title bar is not plain background.
    assert (picture[: pictures.TITLE_BAR] != np.array(pictures.BACKGROUND, np.uint8)).any(-1).sum() > 200


def test_pictures_follow_the_radiological_convention_for_any_header():
    """A blob on the patient's left shows on the right of the axial and coronal panels; one superior shows
    at the top; one anterior on the left of the sagittal panel, whatever the image's direction matrix."""
    ras_stored = np.diag([-1.0, -1.0, 1.0])
    c, s = np.cos(np.deg2rad(12)), np.sin(np.deg2rad(12))
    oblique = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1.0]])
    for direction in (np.eye(3), ras_stored, oblique):
        head = synthetic_head(direction)
        array = sitk.GetArrayFromImage(head)
        array[:] = np.where(array > 0, 100.0, 0.0)
        index = np.stack(np.meshgrid(*[np.arange(n) for n in head.GetSize()], indexing="ij"), axis=-1)
        points = np.transpose(sitk_points(head, index), (2, 1, 0, 3))  # z, y, x
        # One blob in each plane through the centre, off the other two planes: left-anterior in the axial
        # plane, left-superior in the coronal one, anterior-superior in the sagittal one (LPS, mm).
        for centre in ((35.0, -35.0, 0.0), (35.0, 0.0, 30.0), (0.0, -35.0, 30.0)):
            array[np.linalg.norm(points - np.array(centre), axis=-1) <= 12] = 255.0
        marked = sitk.GetImageFromArray(array)
        marked.CopyInformation(head)
        panels = pictures.comparison_panels(marked, marked, None, panel_pixels=100)

        def bright_centre(plane):
            rows, cols = np.nonzero(panels[plane]["fixed"] > 0.9)
            assert rows.size, plane
            return rows.mean() / 100.0, cols.mean() / 100.0

        axial, coronal, sagittal = (bright_centre(p) for p in pictures.PLANES)
        assert axial[1] > 0.5 and axial[0] < 0.5  # patient left on screen right; anterior at the top
        assert coronal[1] > 0.5 and coronal[0] < 0.5  # left on the right; superior at the top
        assert sagittal[1] < 0.5 and sagittal[0] < 0.5  # anterior on the left; superior at the top


def test_pictures_module_needs_only_numpy_and_simpleitk(tmp_path):
    """pictures.py loads and draws with numba, scipy and matplotlib unavailable (as in a fresh Slicer)."""
    code = f"""
import sys
for blocked in ("numba", "scipy", "matplotlib", "PIL"):
    sys.modules[blocked] = None
import importlib.util
spec = importlib.util.spec_from_file_location("pictures_alone", {str(Path(pictures.__file__))!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
import SimpleITK as sitk
image = sitk.GaussianSource(sitk.sitkFloat32, [40, 44, 38], [8.0, 9.0, 7.0], [20.0, 22.0, 19.0], 100.0)
module.write_comparison_png(image, image, None, {str(tmp_path / "alone.png")!r}, title="alone", panel_pixels=64)
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("numba", "scipy", "OneClickRegistrationLib")
                and sys.modules[name] is not None)
print("loaded:", loaded)
"""
    output = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert output.returncode == 0, output.stderr
    assert output.stdout.strip() == "loaded: []"
    assert png_size(tmp_path / "alone.png")[0] == pictures.LABEL_COLUMN + 3 * 64 + 4 * pictures.GAP


def test_screenshot_is_the_pictures_layout_of_a_registration():
    """The committed screenshot is what `make screenshot` draws: the pictures layout, red edges in both rows."""
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(SCREENSHOT)))
    size = pictures.PANEL
    assert picture.shape == (pictures.TITLE_BAR + pictures.PLANE_ROW + 2 * size + 2 * pictures.GAP,
                             pictures.LABEL_COLUMN + 3 * size + 4 * pictures.GAP, 3)
    red = (picture == np.array(pictures.EDGE_COLOUR, np.uint8)).all(-1)
    for row in range(2):
        top = pictures.TITLE_BAR + pictures.PLANE_ROW + row * (size + pictures.GAP)
        for column in range(3):
            left = pictures.LABEL_COLUMN + pictures.GAP + column * (size + pictures.GAP)
            panel = picture[top:top + size, left:left + size]
            assert red[top:top + size, left:left + size].sum() > 300, (row, column)
            # An image of a head: a bright middle, not an empty panel.
            grey = panel[~red[top:top + size, left:left + size]].mean(-1)
            assert grey.std() > 30 and grey.max() > 200, (row, column)


@pytest.mark.slow
def test_make_screenshot_redraws_the_committed_screenshot(tmp_path):
    """`make screenshot` (a registration of the bundled pair, about 30 s) gives the committed picture again."""
    path = tmp_path / "screenshot.png"
    picture, result, error = pictures.screenshot(path)
    assert result.score > 0.5 and error < 1.0
    committed = sitk.GetArrayFromImage(sitk.ReadImage(str(SCREENSHOT)))
    assert picture.shape == committed.shape
    # Identical on the machine that drew it; elsewhere the last digits of the registration may move an edge pixel.
    assert (picture != committed).any(-1).mean() < 0.01
