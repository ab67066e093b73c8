"""Sample keys and patient-level splits: pure functions of (source, frame) and (salt, patient)."""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def _bytes(text: str) -> bytes:
    """UTF-8, with a file name that is not valid UTF-8 (held as surrogate escapes) back to its own bytes."""
    return text.encode("utf-8", "surrogateescape")


def sample_key(source: str, frame: int) -> str:
    """16 hex characters: short, dot-free (WebDataset splits at the first dot), stable."""
    return hashlib.blake2b(_bytes(f"{source}#{frame}"), digest_size=8).hexdigest()


def patient_hash(patient: str, salt: str) -> str:
    """Salted hash of a patient id: stored instead of the id, and the basis of the split."""
    return hashlib.sha256(_bytes(f"{salt}\x00{patient}")).hexdigest()[:16]


def assign_split(phash: str, val_fraction: float, test_fraction: float) -> str:
    """train / val / test from the patient hash: every image of a patient lands in one split."""
    u = int(phash, 16) / float(16 ** len(phash))
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
