"""The large-deformation diffeomorphic engine (diffeomorphic.py), in 2D and 3D.

* dipy's classic pair, made here with numpy: a filled disk warped into a
  thick "C" (its hole has to leave through the opening), registered with
  the default settings;
* the MNI T1 template on a 2 mm grid against itself warped by a known smooth
  deformation of 12.5 mm peak, the error of the recovered mapping in mm;
* the contract: settings and input errors, inputs untouched, progress and
  its exceptions, 2D and 3D shapes, identical images.

Geometry checks (warping, round trips, Jacobians) are recomputed here with
scipy, independently of the library's kernels.  Times are printed (pytest -s),
never asserted.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import ROOT, shared_file

from OneClickRegistrationLib.diffeomorphic import (DiffeomorphicOutcome, DiffeomorphicSettings,
                                                   register_diffeomorphic)
from OneClickRegistrationLib.errors import InvalidInputError, RegistrationCancelled

MNI_T1 = "mni_templates_ct_t1_t2_pd/spm_avg152T1.nii.gz"
# dipy's 256 x 256 pair: a disk of 19792 pixels and a "C" of about 9456 (here 9454).
SHAPE_SIZE = 256
DISK_RADIUS = 79.4
C_INNER_RADIUS = 53.0
C_OPENING_DEG = 50.0
HEAD_SPACING_MM = 2.0
HEAD_MARGIN_VOXELS = 5
BUMPS, BUMP_SIGMA_VOXELS, PEAK_MM, SEED = 6, 14.0, 12.5, 7
FAST = DiffeomorphicSettings(finest_iterations=5)


def _disk_and_c() -> tuple:
    """(disk, C) as float32 0/1 images: the C is the disk's rim with a wedge cut out on the right."""
    centre = (SHAPE_SIZE - 1) / 2.0
    y, x = np.mgrid[0:SHAPE_SIZE, 0:SHAPE_SIZE].astype(np.float64)
    radius = np.hypot(y - centre, x - centre)
    angle = np.degrees(np.abs(np.arctan2(y - centre, x - centre)))
    disk = radius <= DISK_RADIUS
    c_shape = disk & (radius >= C_INNER_RADIUS) & (angle >= C_OPENING_DEG / 2.0)
    return disk.astype(np.float32), c_shape.astype(np.float32)


def _sample(volume: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """volume(x + displacement(x)) with linear interpolation, edges clamped (any dimension)."""
    grid = np.indices(volume.shape, dtype=np.float64)
    return ndimage.map_coordinates(volume, grid + displacement, order=1, mode="nearest")


def _compose(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Displacement of (id + second) o (id + first)."""
    return first + np.stack([_sample(component, first) for component in second])


def _central_jacobian(displacement: np.ndarray) -> np.ndarray:
    """det(I + D u) by central differences, per voxel."""
    ndim = displacement.shape[0]
    matrix = np.empty(displacement.shape[1:] + (ndim, ndim))
    for component in range(ndim):
        for axis, derivative in enumerate(np.gradient(displacement[component])):
            matrix[..., component, axis] = derivative + (component == axis)
    return np.linalg.det(matrix)


def _blob(shape: tuple, centre: tuple, sigma: float) -> np.ndarray:
    """A Gaussian blob of peak 1 (any dimension), float32."""
    grid = np.indices(shape, dtype=np.float64)
    squared = sum((axis - c) ** 2 for axis, c in zip(grid, centre))
    return np.exp(-squared / (2.0 * sigma ** 2)).astype(np.float32)


@pytest.fixture(scope="module")
def circle_to_c():
    """The disk (moving) registered to the C (fixed) with the default settings."""
    disk, c_shape = _disk_and_c()
    outcome = register_diffeomorphic(c_shape[np.newaxis], disk[np.newaxis])
    return disk, c_shape, outcome


def test_shapes_match_dipys_pixel_counts():
    disk, c_shape = _disk_and_c()
    assert disk.sum() == 19792
    assert abs(c_shape.sum() - 9456) < 20


def test_disk_becomes_the_c_without_folding(circle_to_c):
    disk, c_shape, outcome = circle_to_c
    warped = _sample(disk, outcome.forward) > 0.5
    target = c_shape > 0.5
    dice = 2.0 * (warped & target).sum() / (warped.sum() + target.sum())
    region = target | (disk > 0.5)
    round_trip = np.linalg.norm(_compose(outcome.forward, outcome.inverse), axis=0)[region].max()
    central = _central_jacobian(outcome.forward).min()
    print(f"\ncircle -> C: Dice {dice:.4f}, min Jacobian {outcome.min_jacobian:.3f} (central differences "
          f"{central:.3f}), inverse o forward {round_trip:.3f} px over the shapes "
          f"({outcome.inverse_consistency_voxels:.3f} over the grid), iterations {outcome.iterations_run}, "
          f"{outcome.seconds:.2f} s")
    assert dice >= 0.97
    assert outcome.min_jacobian > 0.0
    assert central > 0.0
    assert round_trip <= 0.5
    assert outcome.forward.shape == outcome.inverse.shape == (2, SHAPE_SIZE, SHAPE_SIZE)
    assert outcome.forward.dtype == np.float32


def _head_case():
    """(fixed, moving, head mask, true forward displacement) for the MNI T1 on a 2 mm grid with a margin."""
    image = sitk.ReadImage(str(shared_file(MNI_T1)), sitk.sitkFloat32)
    scale = [s / HEAD_SPACING_MM for s in image.GetSpacing()]
    size = [int(round(n * s)) + 2 * HEAD_MARGIN_VOXELS for n, s in zip(image.GetSize(), scale)]
    origin = image.TransformContinuousIndexToPhysicalPoint(
        [-HEAD_MARGIN_VOXELS / s for s in scale])
    resampled = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin, [HEAD_SPACING_MM] * 3,
                              image.GetDirection(), 0.0, sitk.sitkFloat32)
    fixed = sitk.GetArrayFromImage(resampled)
    head = ndimage.binary_fill_holes(ndimage.binary_closing(fixed > 0.15 * fixed.max(), iterations=2))
    to_fixed = _bumps(head)
    moving = _sample(fixed, to_fixed).astype(np.float32)  # moving(y) = fixed(y + to_fixed(y))
    forward = -to_fixed
    for _ in range(15):  # the inverse of a contraction by fixed-point iteration
        forward = -np.stack([_sample(component, forward) for component in to_fixed])
    return fixed, moving, head, forward


def _bumps(head: np.ndarray) -> np.ndarray:
    """A smooth displacement: Gaussian bumps of random direction centred inside the head, peak PEAK_MM."""
    rng = np.random.default_rng(SEED)
    inside = np.argwhere(ndimage.binary_erosion(head, iterations=10))
    grid = np.indices(head.shape, dtype=np.float64)
    field = np.zeros((3,) + head.shape)
    for _ in range(BUMPS):
        centre = inside[rng.integers(len(inside))]
        direction = rng.normal(size=3)
        squared = sum((axis - c) ** 2 for axis, c in zip(grid, centre))
        field += (direction / np.linalg.norm(direction))[:, None, None, None] \
            * np.exp(-squared / (2 * BUMP_SIGMA_VOXELS ** 2))
    field *= PEAK_MM / HEAD_SPACING_MM / np.linalg.norm(field, axis=0).max()
    return field


def test_head_recovers_a_known_deformation():
    fixed, moving, head, truth = _head_case()
    assert _central_jacobian(truth).min() > 0.3, "the known deformation must itself be a diffeomorphism"
    outcome = register_diffeomorphic(fixed[np.newaxis], moving[np.newaxis])
    error = HEAD_SPACING_MM * np.linalg.norm(outcome.forward - truth, axis=0)[head]
    before = HEAD_SPACING_MM * np.linalg.norm(truth, axis=0)[head]
    print(f"\nhead {fixed.shape}: error before {before.mean():.2f} mm mean, {np.percentile(before, 95):.2f} p95; "
          f"after {error.mean():.2f} mm mean, {np.percentile(error, 95):.2f} p95; min Jacobian "
          f"{outcome.min_jacobian:.3f}, inverse consistency {outcome.inverse_consistency_voxels:.3f} voxels, "
          f"iterations {outcome.iterations_run}, {outcome.seconds:.1f} s")
    assert error.mean() <= 1.5
    assert error.mean() < 0.5 * before.mean()
    assert outcome.min_jacobian > 0.0
    assert outcome.forward.shape == (3,) + fixed.shape


def test_identical_images_give_no_displacement():
    image = (_blob((40, 48), (18, 22), 6.0) + 0.5 * _blob((40, 48), (28, 30), 3.0))[np.newaxis]
    outcome = register_diffeomorphic(image, image.copy(), settings=FAST)
    assert np.abs(outcome.forward).max() < 1e-4
    assert np.abs(outcome.inverse).max() < 1e-4
    assert outcome.min_jacobian == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("shape, centre, shift", [
    ((48, 56), (24, 26), (0.0, 3.0)),
    ((32, 36, 40), (16, 18, 20), (2.0, 0.0, -2.0)),
])
def test_2d_and_3d_shift_is_recovered(shape, centre, shift):
    fixed = _blob(shape, centre, 5.0)[np.newaxis]
    moving = _blob(shape, tuple(c + s for c, s in zip(centre, shift)), 5.0)[np.newaxis]
    outcome = register_diffeomorphic(fixed, moving, settings=DiffeomorphicSettings(metric="ssd"))
    assert isinstance(outcome, DiffeomorphicOutcome)
    assert outcome.forward.shape == outcome.inverse.shape == (len(shape),) + shape
    assert outcome.forward.dtype == outcome.inverse.dtype == np.float32
    found = outcome.forward[(slice(None),) + tuple(centre)]
    assert np.allclose(found, shift, atol=0.5), found
    assert outcome.min_jacobian > 0.0
    assert len(outcome.iterations_run) >= 1


def test_mask_limits_where_the_metric_counts_and_is_reported_on():
    fixed = _blob((48, 48), (24, 20), 5.0)[np.newaxis]
    moving = _blob((48, 48), (24, 22), 5.0)[np.newaxis]
    mask = np.zeros((48, 48), dtype=bool)
    mask[10:38, 8:34] = True
    outcome = register_diffeomorphic(fixed, moving, mask=mask, settings=FAST)
    assert outcome.forward[1, 24, 20] == pytest.approx(2.0, abs=0.5)
    assert outcome.min_jacobian > 0.0


def test_multichannel_ssd_feature_stacks():
    shape = (40, 44)
    fixed = np.stack([_blob(shape, (20, 20), 4.0), _blob(shape, (14, 26), 3.0)])
    moving = np.stack([_blob(shape, (20, 22), 4.0), _blob(shape, (14, 28), 3.0)])
    outcome = register_diffeomorphic(fixed, moving, settings=DiffeomorphicSettings(metric="ssd"))
    assert outcome.forward[1, 20, 20] == pytest.approx(2.0, abs=0.5)


def test_inputs_are_not_modified():
    fixed = _blob((36, 40), (18, 20), 5.0)[np.newaxis]
    moving = _blob((36, 40), (18, 22), 5.0)[np.newaxis]
    mask = fixed[0] > 0.1
    copies = fixed.copy(), moving.copy(), mask.copy()
    register_diffeomorphic(fixed, moving, mask=mask, settings=FAST)
    for before, after in zip(copies, (fixed, moving, mask)):
        assert np.array_equal(before, after)


def test_progress_is_reported_in_order_up_to_one():
    fixed = _blob((36, 40), (18, 20), 5.0)[np.newaxis]
    moving = _blob((36, 40), (18, 22), 5.0)[np.newaxis]
    reports = []
    register_diffeomorphic(fixed, moving, settings=FAST, progress=lambda f, m: reports.append((f, m)))
    fractions = [fraction for fraction, _ in reports]
    assert len(reports) >= 8
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(message, str) and message for _, message in reports)


def test_an_exception_from_progress_propagates_unchanged():
    fixed = _blob((36, 40), (18, 20), 5.0)[np.newaxis]
    moving = _blob((36, 40), (18, 22), 5.0)[np.newaxis]
    calls = []

    def cancel(fraction, message):
        calls.append(fraction)
        if len(calls) == 5:
            raise RegistrationCancelled("stop")

    with pytest.raises(RegistrationCancelled, match="^stop$"):
        register_diffeomorphic(fixed, moving, progress=cancel)
    assert len(calls) == 5


def test_settings_from_dict_keeps_defaults_and_takes_values():
    assert DiffeomorphicSettings.from_dict({}) == DiffeomorphicSettings()
    settings = DiffeomorphicSettings.from_dict({"metric": "ssd", "finest_iterations": 10, "step_voxels": 0.5,
                                                "elastic_sigma_voxels": 0})
    assert (settings.metric, settings.finest_iterations, settings.step_voxels) == ("ssd", 10, 0.5)
    assert isinstance(settings.finest_iterations, int) and settings.elastic_sigma_voxels == 0.0


@pytest.mark.parametrize("values, key", [
    ({"metric": "mind"}, "metric"),
    ({"coarsest_size": 2}, "coarsest_size"),
    ({"finest_iterations": 2.5}, "finest_iterations"),
    ({"finest_iterations": True}, "finest_iterations"),
    ({"step_voxels": 0}, "step_voxels"),
    ({"step_voxels": 1.5}, "step_voxels"),
    ({"fluid_sigma_voxels": -1}, "fluid_sigma_voxels"),
    ({"elastic_sigma_voxels": "big"}, "elastic_sigma_voxels"),
    ({"log_jacobian_diffusion": float("nan")}, "log_jacobian_diffusion"),
    ({"lncc_radius": 0}, "lncc_radius"),
    ({"smoothing": 1}, "smoothing"),
])
def test_settings_errors_name_the_key(values, key):
    with pytest.raises(InvalidInputError, match=f"^diffeomorphic.{key}: ") as error:
        DiffeomorphicSettings.from_dict(values)
    assert "\n" not in str(error.value)


def test_settings_must_be_an_object():
    with pytest.raises(InvalidInputError, match="expected an object"):
        DiffeomorphicSettings.from_dict(["lncc"])


def _good_pair():
    """A small valid 2D pair: a blob and the same blob one pixel to the right."""
    return _blob((20, 24), (10, 12), 4.0)[np.newaxis], _blob((20, 24), (10, 13), 4.0)[np.newaxis]


@pytest.mark.parametrize("change, problem", [
    (lambda fixed, moving, mask: (fixed[0], moving, mask), "fixed: expected a numpy array shaped"),
    (lambda fixed, moving, mask: (fixed, moving.tolist(), mask), "moving: expected a numpy array shaped"),
    (lambda fixed, moving, mask: (fixed, moving[:, :, :12], mask), "need the same channels and grid"),
    (lambda fixed, moving, mask: (fixed, np.where(moving > 0.5, np.nan, moving), mask), "NaN or infinite"),
    (lambda fixed, moving, mask: (np.ones_like(fixed), moving, mask), "every channel is constant"),
    (lambda fixed, moving, mask: (fixed[:, :3], moving[:, :3], None), "too small"),
    (lambda fixed, moving, mask: (fixed.astype(complex), moving, mask), "expected real numbers"),
    (lambda fixed, moving, mask: (fixed, moving, mask[:10]), "mask: expected a bool array shaped"),
    (lambda fixed, moving, mask: (fixed, moving, mask.astype(np.uint8)), "mask: expected dtype bool"),
    (lambda fixed, moving, mask: (fixed, moving, np.zeros_like(mask)), "mask: is empty"),
])
def test_bad_input_gets_a_one_line_error(change, problem):
    fixed, moving = _good_pair()
    fixed, moving, mask = change(fixed, moving, fixed[0] > 0.1)
    with pytest.raises(InvalidInputError, match=problem) as error:
        register_diffeomorphic(fixed, moving, mask=mask, settings=FAST)
    assert "\n" not in str(error.value)


def test_module_imports_without_numba():
    code = ("import sys; sys.modules['numba'] = None; sys.path.insert(0, 'OneClickRegistration'); "
            "import OneClickRegistrationLib.diffeomorphic; "
            "print('OneClickRegistrationLib.deformable_kernels' in sys.modules)")
    output = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    assert output.stdout.strip() == "False"
