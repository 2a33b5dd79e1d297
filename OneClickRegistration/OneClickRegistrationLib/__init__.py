"""OneClickRegistration library: one-click registration of two head volumes.

Importable without 3D Slicer; needs only numpy, SimpleITK, scipy and numba.
The public API is small:

    from OneClickRegistrationLib import register
    result = register(fixed_image, moving_image)   # SimpleITK images
    sitk.WriteTransform(result.transform, "fixed_to_moving.h5")

Every transform follows the ITK convention: it maps a point of the fixed
image's physical space (LPS, millimetres) to the corresponding point of the
moving image's physical space.  See `pipeline.RegistrationResult`.

Importing the package imports nothing heavy: the names below are loaded on
first use (PEP 562), so `OneClickRegistrationLib.errors` and `.dependencies`
work before numpy, SimpleITK or numba are there (3D Slicer checks for numba,
and asks before installing it, after importing them).  numba itself is
imported only by the first registration that needs a kernel.

Modules, one concern each:
    imageio     reading, validating and describing images (geometry, masks)
    fileintegrity  truncated or corrupt image files refused before reading
    modality    recognising T1 / T2 / FLAIR / CT
    presets     the bundled per-modality-pair preset table
    linear      initialisation, rotation search, rigid and affine stages
    deformable  the diffeomorphic deformable stage
    working     the working copies: the head cropped and block-averaged to about 1 mm
    score       the overlap-masked quality score and its noise
    evidence    whether a stage earned its place, and why
    pipeline    the stage cascade that ties them together
    applying    carrying scans and label maps through a result, either direction
    quality_report  the QC report (index.html and pictures; matplotlib)
    background  the same registration in a worker process (keeps a GUI responsive)
    cli         the `oneclick-register` command line
    batch, batch_manifest, batch_cli  a whole cohort on a Dask cluster
"""

import importlib

# Public name -> the submodule that defines it.
_PUBLIC = {
    "InvalidInputError": "errors",
    "RegistrationCancelled": "errors",
    "RegistrationResult": "pipeline",
    "StageResult": "pipeline",
    "register": "pipeline",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """Load a public name from its submodule on first access (PEP 562)."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    """The public names too, before they are loaded (tab completion in the Slicer console)."""
    return sorted(set(globals()) | set(_PUBLIC))
