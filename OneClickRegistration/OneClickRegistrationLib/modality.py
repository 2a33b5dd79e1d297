"""Recognising the modality of a head volume: T1, T2, FLAIR or CT.

First from what the scanner or the user wrote (DICOM Modality and
SeriesDescription, a node or file name), then from the image content.
Every answer carries a confidence in [0, 1] and a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import SimpleITK as sitk

from .errors import InvalidInputError

MODALITIES = ("T1", "T2", "FLAIR", "CT")


@dataclass(frozen=True)
class ModalityGuess:
    """A recognised modality with how sure we are and why."""

    modality: str
    confidence: float
    reason: str
    source: str  # 'caller', 'tags', 'name' or 'content'

    def as_dict(self) -> dict:
        return {"modality": self.modality, "confidence": round(self.confidence, 3),
                "reason": self.reason, "source": self.source}

    def __str__(self) -> str:
        return f"{self.modality} ({self.confidence:.0%}: {self.reason})"


def parse_modality(text: str) -> str:
    """Normalise a user-given modality name ('t1', 'Flair', 'ct') or fail clearly."""
    name = str(text).strip().upper()
    if name not in MODALITIES:
        raise InvalidInputError(
            f"unknown modality {text!r}: use one of {', '.join(MODALITIES)}")
    return name


def identify_modality(image: sitk.Image, hints: Optional[Mapping[str, str]] = None) -> ModalityGuess:
    """Recognise the modality of `image`, using `hints` (name, DICOM tags) when they are conclusive."""
    raise NotImplementedError("being written")
