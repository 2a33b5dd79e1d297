"""Carrying images through a registration (issue 15): label maps and scans, both directions, `--also`, `apply`.

The label maps hold thin structures on purpose: a sheet one voxel thick, a rod two voxels thick and a line
one voxel wide, beside a sphere.  Two truths are used.  Moved in its header (no resampling), a label map sits
exactly where a known rigid motion puts it, so carrying it back must give the original labels.  Carried onto
a grid rotated against its own, the best any method can do is the partial-volume majority of the labels
(each output voxel takes the label covering most of it, counted on a 4x finer grid).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import SAMPLE_DATA
from OneClickRegistrationLib import InvalidInputError, applying, cli, evaluation, imageio, register
from OneClickRegistrationLib.demo import DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM

LABELS = {"sphere": 3, "sheet": 7, "rod": 200, "line": 1000}
# An oblique direction (the bundled sample's), so that physical space and index space differ.
DIRECTION = sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz")).GetDirection()


def _synthetic_labels() -> sitk.Image:
    """A 48^3 int16 label map at 1 mm: a sphere, a one-voxel sheet, a two-voxel rod and a one-voxel line."""
    z, y, x = np.mgrid[:48, :48, :48]
    values = np.zeros((48, 48, 48), np.int16)
    values[(x - 24) ** 2 + (y - 22) ** 2 + (z - 20) ** 2 < 11 ** 2] = LABELS["sphere"]
    values[34, 6:42, 6:42] = LABELS["sheet"]
    values[8:40, 38:40, 14:16] = LABELS["rod"]
    values[40, 12, 4:44] = LABELS["line"]
    image = sitk.GetImageFromArray(values)
    image.SetDirection(DIRECTION)
    image.SetOrigin((-np.asarray(DIRECTION).reshape(3, 3) @ (24.0, 22.0, 20.0)).tolist())  # the sphere's centre at 0
    return image


def _dice(a: np.ndarray, b: np.ndarray, label) -> float:
    return 2.0 * np.count_nonzero((a == label) & (b == label)) / max(1, np.count_nonzero(a == label)
                                                                     + np.count_nonzero(b == label))


def _values(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def _partial_volume_majority(labels: sitk.Image, reference: sitk.Image, transform, fine: int = 4) -> np.ndarray:
    """Each reference voxel's label covering most of it, counted at fine^3 points through the transform."""
    grid = sitk.Image([size * fine for size in reference.GetSize()], sitk.sitkUInt8)
    spacing = np.asarray(reference.GetSpacing()) / fine
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(reference.GetDirection())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    grid.SetOrigin((np.asarray(reference.GetOrigin()) - direction @ (spacing * (fine - 1) / 2)).tolist())
    samples = _values(sitk.Resample(labels, grid, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID()))
    shape = reference.GetSize()[::-1]
    present = np.unique(_values(labels))
    counts = np.stack([(samples == label).reshape(shape[0], fine, shape[1], fine, shape[2], fine).sum((1, 3, 5))
                       for label in present])
    return present[np.argmax(counts, axis=0)]


# ------------------------------------------------------------------ label maps: known truths, both methods


@pytest.mark.stack
@pytest.mark.parametrize("method", applying.LABEL_INTERPOLATIONS)
def test_label_map_moved_by_a_known_motion_comes_back_exactly_in_both_directions(method):
    """A label map moved in its header by a known rigid motion, carried back through that motion (moving ->
    fixed) and the original carried onto the moved grid through its inverse (fixed -> moving): both give the
    original labels, thin structures included, in the original pixel type."""
    labels = _synthetic_labels()
    motion = evaluation.rigid_transform((9, -6, 13), (2.3, -1.6, 0.7), (0, 0, 0))
    moved = evaluation.move_header(labels, motion)  # the truth-moved label map: same voxels, moved
    back = applying.apply_transform(motion, moved, labels, "label", label_interpolation=method)
    there = applying.apply_transform(motion.GetInverse(), labels, moved, "label", label_interpolation=method)
    for carried in (back, there):
        assert carried.GetPixelID() == sitk.sitkInt16
        assert set(np.unique(_values(carried))) == set(np.unique(_values(labels)))
        for name, label in LABELS.items():
            assert _dice(_values(carried), _values(labels), label) >= 0.95, (method, name)
    assert there.GetOrigin() == moved.GetOrigin() and there.GetDirection() == moved.GetDirection()


@pytest.mark.stack
def test_nearest_and_gaussian_label_interpolation_on_thin_structures_off_the_grid():
    """Onto grids rotated by 10 degrees against the labels' own (four motions), where linear interpolation
    would invent hundreds of values: both methods keep the pixel type and the label set exactly.  Against the
    partial-volume majority, nearest neighbour keeps every structure (mean Dice 0.98 sphere, 0.93 sheet, 0.90
    rod, 0.75 line) and the label-wise Gaussian follows the outlines better: >= 0.95 on the sphere, the
    one-voxel sheet and the two-voxel rod, and better than nearest neighbour on every structure on average,
    the one-voxel line included (on a single motion it may thin the line more)."""
    labels = _synthetic_labels()
    label_set = set(np.unique(_values(labels)))
    rng = np.random.default_rng(3)
    dice = {method: [] for method in applying.LABEL_INTERPOLATIONS}
    for _ in range(4):
        transform = evaluation.random_rigid(rng, 10.0, 2.0, (0, 0, 0))
        truth = _partial_volume_majority(labels, labels, transform)
        blended = np.round(_values(sitk.Resample(labels, labels, transform, sitk.sitkLinear, 0, sitk.sitkFloat32)))
        assert len(set(np.unique(blended)) - label_set) > 100  # the grid is really off: linear would invent values
        for method in applying.LABEL_INTERPOLATIONS:
            carried = applying.apply_transform(transform, labels, labels, "auto", label_interpolation=method)
            assert carried.GetPixelID() == sitk.sitkInt16
            assert set(np.unique(_values(carried))) == label_set
            dice[method].append([_dice(_values(carried), truth, label) for label in LABELS.values()])
    mean = {method: dict(zip(LABELS, np.mean(values, axis=0))) for method, values in dice.items()}
    print({method: {name: round(value, 3) for name, value in values.items()} for method, values in mean.items()})
    assert min(mean["nearest"][name] for name in ("sphere", "sheet", "rod")) >= 0.88
    assert mean["nearest"]["line"] >= 0.7
    assert min(mean["gaussian"][name] for name in ("sphere", "sheet", "rod")) >= 0.95
    assert all(mean["gaussian"][name] > mean["nearest"][name] for name in LABELS)


@pytest.mark.stack
def test_gaussian_labels_are_the_same_when_computed_in_slabs(monkeypatch):
    """A clinical-size grid is carried in slabs; a slab boundary changes nothing (slabs of 3 planes here)."""
    labels = _synthetic_labels()
    transform = evaluation.rigid_transform((9, -6, 13), (1.3, -0.6, 0.7), (0, 0, 0))
    whole = _values(applying.apply_transform(transform, labels, labels, "label", label_interpolation="gaussian"))
    monkeypatch.setattr(imageio, "RESAMPLE_SLAB_VOXELS", 3 * 48 * 48)
    sliced = _values(applying.apply_transform(transform, labels, labels, "label", label_interpolation="gaussian"))
    assert np.array_equal(whole, sliced)


@pytest.mark.stack
def test_auto_kind_tells_label_maps_from_scans():
    """Integer values, few of them: a label map, even stored as float (kept float); a scan stays a scan."""
    flair = sitk.ReadImage(str(SAMPLE_DATA / "FLAIR.nii.gz"))  # uint8, about 250 values
    float_labels = sitk.Cast(_synthetic_labels(), sitk.sitkFloat32)
    assert applying.image_kind(flair) == "image" and applying.image_kind(_synthetic_labels()) == "label"
    assert applying.image_kind(float_labels) == "label" and applying.image_kind(flair, "label") == "label"
    transform = evaluation.rigid_transform((4, 3, -5), (0.4, 0.3, -0.2), (0, 0, 0))
    carried = applying.apply_transform(transform, float_labels, float_labels)
    assert carried.GetPixelID() == sitk.sitkFloat32
    assert set(np.unique(_values(carried))) == {0.0, *map(float, LABELS.values())}


# ------------------------------------------------------------------ scans


@pytest.mark.stack
def test_scans_keep_their_pixel_type_rounded_and_bspline_matches_itk(monkeypatch):
    """Linear: exactly how register() resamples the moving image.  B-spline (from float32 coefficients
    computed once, in slabs): ITK's own cubic B-spline, rounded and clamped for 8-bit, to float precision
    for float32."""
    t1, t2 = (sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")), [2, 2, 2])
              for name in ("T1", "T2"))  # uint8, float32
    transform = evaluation.rigid_transform((5, -3, 7), (1.3, -2.2, 0.7), imageio.mask_center(imageio.head_mask(t1)))
    linear = applying.apply_transform(transform, t1, t1, "image")
    assert linear.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(_values(linear), _values(imageio.resample_onto(t1, t1, transform)))
    monkeypatch.setattr(imageio, "RESAMPLE_SLAB_VOXELS", 20 * 62 * 80)  # four slabs
    for image in (t1, t2):
        mine = _values(applying.apply_transform(transform, image, t1, "image", image_interpolation="bspline"))
        background = float(_values(image).min())
        itk = _values(sitk.Resample(image, t1, transform, sitk.sitkBSpline, background, sitk.sitkFloat64))
        assert mine.dtype == _values(image).dtype
        if mine.dtype == np.uint8:
            itk = np.clip(np.copysign(np.floor(np.abs(itk) + 0.5), itk), 0, 255)
            assert np.abs(mine - itk).max() <= 1 and np.mean(mine != itk) < 1e-4
        else:
            assert np.abs(mine - itk).max() < 1e-3 * (itk.max() - itk.min())


# ------------------------------------------------------------------ transforms and bad arguments


def _bump_field(reference: sitk.Image, centre, amplitude_mm, width_mm: float) -> sitk.DisplacementFieldTransform:
    """A smooth Gaussian bump of displacement on the reference grid."""
    index = np.moveaxis(np.indices(reference.GetSize()[::-1])[::-1], 0, -1).astype(np.float64)
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    points = np.asarray(reference.GetOrigin()) + (index * np.asarray(reference.GetSpacing())) @ direction.T
    weight = np.exp(-((points - np.asarray(centre)) ** 2).sum(-1) / (2 * width_mm ** 2))
    field = sitk.GetImageFromArray(weight[..., None] * np.asarray(amplitude_mm, dtype=np.float64), isVector=True)
    field.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(field)


@pytest.mark.stack
def test_inverse_of_a_saved_composite_with_a_displacement_field(tmp_path):
    """Written and read back like the command line's .h5, rigid o field is inverted to within 0.05 mm."""
    labels = _synthetic_labels()
    rigid = evaluation.rigid_transform((6, -4, 3), (2.0, 1.0, -1.5), (0, 0, 0))
    composite = sitk.CompositeTransform([rigid, _bump_field(labels, (3, -2, 4), (2.5, -1.5, 1.0), 8.0)])
    sitk.WriteTransform(composite, str(tmp_path / "t.h5"))
    inverse = applying.inverse_of(sitk.ReadTransform(str(tmp_path / "t.h5")))
    points = np.random.default_rng(0).uniform(-15.0, 15.0, (500, 3))  # around the bump, inside the field
    errors = [np.linalg.norm(np.subtract(inverse.TransformPoint(composite.TransformPoint(p)), p)) for p in points]
    assert max(errors) < 0.05
    with pytest.raises(InvalidInputError, match="cannot be inverted"):
        applying.inverse_of(sitk.BSplineTransformInitializer(labels, [4, 4, 4]))


BAD_ARGUMENTS = {
    "a numpy array": (lambda image: (sitk.Euler3DTransform(), np.zeros((9, 9, 9)), image, {}), "not a SimpleITK"),
    "a 2D image": (lambda image: (sitk.Euler3DTransform(), image[:, :, 3], image, {}), "is 2D"),
    "a colour image": (lambda image: (sitk.Euler3DTransform(), sitk.Compose([image] * 3), image, {}),
                       "3 components per voxel"),
    "a 2D transform": (lambda image: (sitk.Euler2DTransform(), image, image, {}), "3D SimpleITK transform"),
    "no reference": (lambda image: (sitk.Euler3DTransform(), image, None, {}), "reference must be a 3D"),
    "an unknown kind": (lambda image: (sitk.Euler3DTransform(), image, image, {"kind": "mask"}),
                        "kind 'mask' is not one of auto, image, label"),
    "an unknown label interpolation": (lambda image: (sitk.Euler3DTransform(), image, image,
                                                      {"label_interpolation": "linear"}), "nearest, gaussian"),
}


@pytest.mark.stack
@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_apply_transform_refuses_bad_arguments_in_one_line(case):
    build, expected = BAD_ARGUMENTS[case]
    transform, image, reference, options = build(_synthetic_labels())
    with pytest.raises(InvalidInputError) as raised:
        applying.apply_transform(transform, image, reference, **options)
    assert expected in str(raised.value) and "\n" not in str(raised.value)


# ------------------------------------------------------------------ the bundled sample: --also and `apply`


def _sample_labels(reference: sitk.Image) -> sitk.Image:
    """A uint8 label map on the bundled sample's grid: bright FLAIR tissue (1), a one-voxel sheet (4) and a
    two-voxel rod (9) inside the head."""
    flair = _values(sitk.ReadImage(str(SAMPLE_DATA / "FLAIR.nii.gz")))
    values = np.where(flair > 120, 1, 0).astype(np.uint8)
    values[70, 40:120, 30:95] = 4
    values[30:110, 80:82, 60:62] = 9
    labels = sitk.GetImageFromArray(values)
    labels.CopyInformation(reference)
    return labels


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """The demo's case through the command line: the bundled T2, FLAIR and a label map moved by the demo's
    known motion (in their headers), the T2 registered to the T1 (rigid), the others carried with --also."""
    folder = tmp_path_factory.mktemp("sample")
    fixed_path = SAMPLE_DATA / "T1.nii.gz"
    fixed = sitk.ReadImage(str(fixed_path))
    truth = evaluation.rigid_transform(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM,
                                       imageio.mask_center(imageio.head_mask(imageio.as_float32(fixed))))
    labels = _sample_labels(fixed)
    paths = {"fixed": fixed_path, "labels_truth": folder / "labels_on_T1.nii.gz"}
    sitk.WriteImage(labels, str(paths["labels_truth"]))
    for name, image in (("T2", sitk.ReadImage(str(SAMPLE_DATA / "T2.nii.gz"))),
                        ("FLAIR", sitk.ReadImage(str(SAMPLE_DATA / "FLAIR.nii.gz"))), ("labels", labels)):
        paths[name] = folder / f"{name}_moved.nii.gz"
        sitk.WriteImage(evaluation.move_header(image, truth), str(paths[name]))
    out = folder / "out"
    status = cli.main([str(fixed_path), str(paths["T2"]), "-o", str(out), "--stages", "rigid", "-q",
                       "--also", str(paths["FLAIR"]), "--also", str(paths["labels"])])
    assert status == 0
    return {"paths": paths, "out": out, "folder": folder, "labels": labels}


def test_also_carries_a_label_map_and_a_volume_of_the_moving_session(sample_run):
    """The FLAIR and the label map of the T2's session land where they belong on the T1 grid: the label map
    keeps its uint8 type and label set, Dice >= 0.95 per label (the sheet and the rod included); the FLAIR
    keeps its type and matches the bundled FLAIR (already on the T1 grid)."""
    out = sample_run["out"]
    carried = sitk.ReadImage(str(out / "labels_moved_registered.nii.gz"))
    truth = _values(sample_run["labels"])
    assert carried.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(_values(carried))) == {0, 1, 4, 9}
    for label in (1, 4, 9):
        assert _dice(_values(carried), truth, label) >= 0.95, label
    flair = sitk.ReadImage(str(out / "FLAIR_moved_registered.nii.gz"))
    original = _values(sitk.ReadImage(str(SAMPLE_DATA / "FLAIR.nii.gz"))).astype(float)
    assert flair.GetPixelID() == sitk.sitkUInt8
    head = original > 20
    assert np.abs(_values(flair).astype(float) - original)[head].mean() < 4.0  # of 255 grey levels
    assert np.corrcoef(_values(flair)[head], original[head])[0, 1] > 0.99
    report = json.loads((out / "T2_moved_report.json").read_text())
    assert [(entry["kind"], entry["output"]) for entry in report["also"]] == [
        ("image", str(out / "FLAIR_moved_registered.nii.gz")), ("label", str(out / "labels_moved_registered.nii.gz"))]


def test_apply_on_the_saved_transform_reproduces_the_registered_volume(sample_run, capsys):
    """`oneclick-register apply` with the .h5 the command line wrote: the registered volume voxel for voxel,
    and the --also label map again."""
    paths, out = sample_run["paths"], sample_run["out"]
    transform = out / "T2_moved_to_T1.h5"
    again = sample_run["folder"] / "again"
    for name, written in (("T2", "T2_moved_registered.nii.gz"), ("labels", "labels_moved_registered.nii.gz")):
        assert cli.main(["apply", "--transform", str(transform), "--reference", str(paths["fixed"]),
                         str(paths[name]), "-o", str(again / written)]) == 0
        assert np.array_equal(_values(sitk.ReadImage(str(again / written))), _values(sitk.ReadImage(str(out / written))))
    assert "label map, nearest neighbour" in capsys.readouterr().out


@pytest.mark.parametrize("method", applying.LABEL_INTERPOLATIONS)
def test_apply_inverse_carries_fixed_space_labels_onto_the_moving_grid(sample_run, method):
    """Labels drawn on the T1, carried with --inverse onto the moved T2's grid: exactly the labels the known
    motion moved there (the moved label map's voxels)."""
    paths = sample_run["paths"]
    output = sample_run["folder"] / f"inverse_{method}.nii.gz"
    assert cli.main(["apply", "--transform", str(sample_run["out"] / "T2_moved_to_T1.h5"), "--inverse",
                     "--reference", str(paths["T2"]), str(paths["labels_truth"]), "-o", str(output),
                     "--label-interpolation", method]) == 0
    carried = sitk.ReadImage(str(output))
    assert carried.GetOrigin() == sitk.ReadImage(str(paths["T2"])).GetOrigin()
    for label in (1, 4, 9):
        assert _dice(_values(carried), _values(sample_run["labels"]), label) >= 0.95, label


BAD_APPLY = {
    "missing transform": (lambda p: ["--transform", p["folder"] / "none.h5", "--reference", p["fixed"], p["T2"], "-o",
                                     p["folder"] / "x.nii.gz"], "--transform"),
    "an image given as transform": (lambda p: ["--transform", p["T2"], "--reference", p["fixed"], p["T2"], "-o",
                                               p["folder"] / "x.nii.gz"], "cannot be read as an ITK transform"),
    "output over the input": (lambda p: ["--transform", p["transform"], "--reference", p["fixed"], p["T2"], "-o",
                                         p["T2"]], "would overwrite the scan"),
    "output as PNG": (lambda p: ["--transform", p["transform"], "--reference", p["fixed"], p["T2"], "-o",
                                 p["folder"] / "x.png"], "a volume cannot be written as .png"),
    "no output": (lambda p: ["--transform", p["transform"], "--reference", p["fixed"], p["T2"]],
                  "required: -o/--output"),
    "unknown kind": (lambda p: ["--transform", p["transform"], "--reference", p["fixed"], p["T2"], "-o",
                                p["folder"] / "x.nii.gz", "--kind", "mask"], "invalid choice: 'mask'"),
    "missing input": (lambda p: ["--transform", p["transform"], "--reference", p["fixed"], p["folder"] / "no.nii",
                                 "-o", p["folder"] / "x.nii.gz"], "INPUT"),
}


@pytest.mark.parametrize("case", list(BAD_APPLY))
def test_apply_refuses_bad_input_in_one_line(sample_run, capsys, case):
    folder = sample_run["folder"] / "bad"
    folder.mkdir(exist_ok=True)
    paths = dict(sample_run["paths"], folder=folder, transform=sample_run["out"] / "T2_moved_to_T1.h5")
    arguments, expected = BAD_APPLY[case]
    status = cli.main(["apply", *map(str, arguments(paths))])
    error = capsys.readouterr().err.strip()
    assert status == 2 and error.startswith("oneclick-register: error:") and "\n" not in error
    assert expected in error
    assert list(folder.iterdir()) == []


BAD_ALSO = {
    "--also-kind for each of too few": (["--also", "{FLAIR}", "--also", "{labels}", "--also-kind", "image",
                                         "--also-kind", "label", "--also-kind", "label"], "3 --also-kind for 2"),
    "--also-kind without --also": (["--also-kind", "label"], "add --also PATH"),
    "--also named like the moving image": (["--also", "{T2}"], "give images with different names"),
    "--also far from the moving image": (["--also", "{far}"], "does not overlap the moving image"),
}


@pytest.mark.parametrize("case", list(BAD_ALSO))
def test_bad_also_is_refused_before_any_work(sample_run, capsys, case):
    paths = dict(sample_run["paths"])
    far = sitk.ReadImage(str(paths["FLAIR"]))
    far.SetOrigin([coordinate + 1000.0 for coordinate in far.GetOrigin()])
    paths["far"] = sample_run["folder"] / "far.nii.gz"
    sitk.WriteImage(far, str(paths["far"]))
    out = sample_run["folder"] / "bad_also"
    extra, expected = BAD_ALSO[case]
    status = cli.main([str(paths["fixed"]), str(paths["T2"]), "-o", str(out), "-q",
                       *[argument.format(**paths) for argument in extra]])
    error = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in error and expected in error, error
    assert not out.exists()


# ------------------------------------------------------------------ a deformable result in the Python API


@pytest.fixture(scope="module")
def deformable_result(tmp_path_factory):
    """The 2 mm sample pair, the T2 bent by a 5 mm bump and moved by the demo's motion, written as fixed.nii.gz
    and moving.nii.gz and registered as read back (as the command line would): the deformable stage is kept."""
    folder = tmp_path_factory.mktemp("deformable")
    fixed, t2 = (sitk.BinShrink(sitk.ReadImage(str(SAMPLE_DATA / f"{name}.nii.gz")), [2, 2, 2]) for name in ("T1", "T2"))
    centre = imageio.mask_center(imageio.head_mask(imageio.as_float32(fixed)))
    bent = sitk.Resample(t2, t2, _bump_field(t2, centre + (15, 10, 20), (4.0, -3.0, 2.0), 18.0), sitk.sitkLinear, 0.0)
    moving = evaluation.move_header(bent, evaluation.rigid_transform(DEMO_ROTATION_DEG, DEMO_TRANSLATION_MM, centre))
    for name, image in (("fixed", fixed), ("moving", moving)):
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))  # NIfTI keeps the geometry in float32
    result = register(*(sitk.ReadImage(str(folder / f"{name}.nii.gz")) for name in ("fixed", "moving")))
    assert result.stage("deformable").accepted, result.stage("deformable").message
    return result, folder


def test_result_apply_reproduces_its_resampled_moving_image_and_round_trips(deformable_result, tmp_path):
    """result.apply(moving) is result.resampled_moving voxel for voxel; the transform saved as .h5 and applied
    by the command line gives it too; a label map carried fixed -> moving -> fixed comes back (Dice 0.99, a
    one-voxel sheet 0.95), and the command line's --inverse (the field inverted numerically) agrees with
    result.apply(inverse=True)."""
    result, inputs = deformable_result
    assert np.array_equal(_values(result.apply(result.moving_image)), _values(result.resampled_moving))
    sitk.WriteTransform(result.transform, str(tmp_path / "t.h5"))  # as the command line writes it
    assert cli.main(["apply", "--transform", str(tmp_path / "t.h5"), "--reference", str(inputs / "fixed.nii.gz"),
                     str(inputs / "moving.nii.gz"), "-o", str(tmp_path / "again.nii.gz")]) == 0
    assert np.array_equal(_values(sitk.ReadImage(str(tmp_path / "again.nii.gz"))), _values(result.resampled_moving))

    labels = _values(_sample_labels(sitk.ReadImage(str(SAMPLE_DATA / "T1.nii.gz"))))[::2, ::2, ::2]
    labels[35, 20:60, 15:48] = 4  # a one-voxel sheet at 2 mm
    fixed_labels = sitk.GetImageFromArray(np.ascontiguousarray(labels))
    fixed_labels.CopyInformation(result.fixed_image)
    on_moving = result.apply(fixed_labels, inverse=True)
    assert on_moving.GetSize() == result.moving_image.GetSize() and on_moving.GetPixelID() == sitk.sitkUInt8
    back = _values(result.apply(on_moving))
    assert _dice(back, labels, 1) >= 0.98
    assert _dice(back, labels, 4) >= 0.9  # two nearest-neighbour steps onto rotated grids each cost a one-voxel
    # sheet a few per cent of its voxels (see the test off the grid above)
    sitk.WriteImage(fixed_labels, str(tmp_path / "labels.nii.gz"))
    assert cli.main(["apply", "--transform", str(tmp_path / "t.h5"), "--inverse", "--reference",
                     str(inputs / "moving.nii.gz"), str(tmp_path / "labels.nii.gz"), "-o",
                     str(tmp_path / "labels_on_moving.nii.gz")]) == 0
    by_command = _values(sitk.ReadImage(str(tmp_path / "labels_on_moving.nii.gz")))
    assert np.mean(by_command == _values(on_moving)) > 0.999
