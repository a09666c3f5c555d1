"""Sampling of synthetic demographics and of the age-dependent acquisition difficulty.

The demo cohorts mimic the imbalance of the studies they stand in for: more men than women in
the chest-radiograph and CT cohorts (about 60/40), and an age distribution that puts most
patients between 50 and 85 years while keeping a few percent in every age bin used by the
subgroup analysis ([0,30), [30,60), [60,70), [70,80), [80,100)).
"""

from __future__ import annotations

import numpy as np

AGE_BINS = (0, 30, 60, 70, 80, 100)


def sample_sex(rng: np.random.Generator, n: int, p_male: float = 0.6) -> np.ndarray:
    """Return ``n`` sexes as an array of ``"M"``/``"F"``."""
    return np.where(rng.random(n) < p_male, "M", "F")


def sample_age(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return ``n`` integer ages in years for a hospital (ICU/oncology) population.

    Mixture: 5 % young adults 18–29, 12 % 30–49, 83 % around 68 ± 11 (clipped to 50–96).
    """
    u = rng.random(n)
    young = rng.uniform(18, 30, n)
    middle = rng.uniform(30, 50, n)
    old = np.clip(rng.normal(68.0, 11.0, n), 50, 96)
    age = np.where(u < 0.05, young, np.where(u < 0.17, middle, old))
    return np.floor(age).astype(int)


def sample_age_screening(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ages of a (female) mammography population: 57 ± 11, clipped to 30–90."""
    return np.floor(np.clip(rng.normal(57.0, 11.0, n), 30, 90)).astype(int)


def difficulty(age: float) -> float:
    """Acquisition difficulty in [0, 1] that grows with age.

    Older patients are imaged more often at the bedside, move more and carry more devices; the
    generators turn this number into more noise, lower contrast and more foreign bodies, so that
    subgroup analyses have a real (not a label-driven) effect to find.
    """
    return float(np.clip((age - 35.0) / 50.0, 0.0, 1.0))


def age_bin(age: int) -> str:
    """Label of the subgroup age bin, e.g. ``"[60,70)"``."""
    for lo, hi in zip(AGE_BINS[:-1], AGE_BINS[1:]):
        if lo <= age < hi:
            return f"[{lo},{hi})"
    return f"[{AGE_BINS[-2]},{AGE_BINS[-1]})"
