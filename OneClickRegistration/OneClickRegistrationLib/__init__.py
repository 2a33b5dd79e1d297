"""OneClickRegistration library: one-click registration of two head volumes.

Importable without 3D Slicer; needs only numpy, SimpleITK, scipy and numba.
The public API is small:

    from OneClickRegistrationLib import register
    result = register(fixed_image, moving_image)   # SimpleITK images
    sitk.WriteTransform(result.transform, "fixed_to_moving.h5")

Every transform follows the ITK convention: it maps a point of the fixed
image's physical space (LPS, millimetres) to the corresponding point of the
moving image's physical space.  See `pipeline.RegistrationResult`.

Modules, one concern each:
    imageio     reading, validating and describing images (geometry, masks)
    modality    recognising T1 / T2 / FLAIR / CT
    presets     the bundled per-modality-pair preset table
    linear      initialisation, rotation search, rigid and affine stages
    deformable  the diffeomorphic deformable stage
    score       the overlap-masked quality score
    pipeline    the stage cascade that ties them together
    cli         the `oneclick-register` command line
"""

from .errors import InvalidInputError, RegistrationCancelled
from .pipeline import RegistrationResult, StageResult, register

__all__ = [
    "InvalidInputError",
    "RegistrationCancelled",
    "RegistrationResult",
    "StageResult",
    "register",
]
