"""Stable hashes and random generators derived from ids, never from global state.

Everything random in a dataset (phantom anatomy, motion kernels, noise, splits, shards) draws
from a generator seeded by `derive_rng(run_seed, purpose, *ids)`, so the same inputs and seed give
the same bytes however Beam splits, orders or retries the work.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _digest(*parts: object) -> bytes:
    text = "\x1f".join(f"{type(part).__name__}:{part}" for part in parts)
    return hashlib.sha256(text.encode("utf-8")).digest()


def stable_hash(*parts: object) -> int:
    """A 64-bit unsigned hash of `parts` (str, int, float), identical across processes and runs."""
    return int.from_bytes(_digest(*parts)[:8], "little")


def derive_rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded from `parts` (e.g. run seed, purpose, series uid, slice index)."""
    words = np.frombuffer(_digest(*parts), dtype="<u4")
    return np.random.default_rng(np.random.SeedSequence([int(w) for w in words]))


def patient_key(patient_id: str, salt: str) -> str:
    """Salted SHA-256 of a patient ID, 16 hex digits: stable pseudonym stored instead of the ID."""
    return hashlib.sha256(f"{salt}\x1f{patient_id}".encode("utf-8")).hexdigest()[:16]
