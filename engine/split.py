"""The subject-level split of a dataset whose dataset.json lists none: which subjects train, which
are held out for validation and for testing, drawn from a seed. Importing this does not import torch,
so the command lines and the training config check their fractions with the same rule."""
from __future__ import annotations

import hashlib

VAL_FRACTION = TEST_FRACTION = 0.1      # the default held-out shares


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    """ValueError unless both shares lie in [0, 1) and leave subjects to train on."""
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(f"validation and test fractions must each lie in [0, 1) and leave subjects to train on; "
                         f"got {val_fraction:g} and {test_fraction:g}")


def _hash_fraction(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def hash_split(subjects: list[str], seed: int = 0, val_fraction: float = VAL_FRACTION,
               test_fraction: float = TEST_FRACTION) -> dict[str, list[str]]:
    """Deterministic subject-level split: subjects ordered by a seeded hash of their name, then
    cut by the fractions (default ~80/10/10); a non-zero fraction holds out at least one subject,
    a validation subject from 3 subjects on, a test subject from 5 on, and one always trains."""
    check_fractions(val_fraction, test_fraction)
    ordered = sorted(subjects, key=lambda s: (_hash_fraction(seed, s), s))
    n = len(ordered)
    n_val = max(1, round(val_fraction * n)) if n >= 3 and val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if n >= 5 and test_fraction > 0 else 0
    n_test = min(n_test, max(0, n - 1 - n_val))
    n_train = n - n_val - n_test
    return {"train": sorted(ordered[:n_train]), "val": sorted(ordered[n_train:n_train + n_val]),
            "test": sorted(ordered[n_train + n_val:])}
