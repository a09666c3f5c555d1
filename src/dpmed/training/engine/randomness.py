"""Where each random number comes from.

Public (the config seed): model initialisation, torch/numpy/python global state, the
non-private shuffle, and the task's own generator (augmentation, a generator's latent draws).
Secret (OS entropy): the Poisson sampler and the DP noise -- the randomness the guarantee
rests on. The secret seed is drawn with :mod:`secrets` once per run and lives only in the
checkpoint under the private directory, so a killed job resumes exactly while nobody holding
the code, the config and every released file can regenerate the noise or the batches.

Test-only entry point: with the environment variable :data:`TEST_NOISE_ENV` set to an integer,
the secret seed is derived from it and the config seed instead, so two runs (resumed vs
uninterrupted, SLURM vs local) can be compared bit for bit. Such a run's guarantee does not hold
and its card says so; nothing in the package or the workflow sets the variable.
"""

from __future__ import annotations

import os
import random
import secrets
from dataclasses import dataclass

import numpy as np
import torch

from dpmed.errors import ConfigError

TEST_NOISE_ENV = "DPMED_TEST_NOISE_SEED"


@dataclass(frozen=True)
class SecretSeed:
    """The seed of the sampler and noise generators, and what the card says about it."""

    value: int
    holds: bool       # False: reproducible test noise, the DP guarantee does not hold
    source: str


def draw_secret_seed(config_seed: int) -> SecretSeed:
    """A fresh secret seed from OS entropy (or the test-only seeded one, see the module doc)."""
    injected = os.environ.get(TEST_NOISE_ENV)
    if injected is None or injected == "":
        return SecretSeed(secrets.randbits(63), True,
                          "OS entropy: a secret per-run seed from Python's secrets module for the Poisson sampler "
                          "and the Gaussian noise, kept only with the checkpoint in the private directory and "
                          "deleted with it")
    try:
        base = int(injected)
    except ValueError:
        raise ConfigError(f"{TEST_NOISE_ENV}={injected!r} is not an integer") from None
    value = int(np.random.SeedSequence([base, int(config_seed)]).generate_state(1, dtype=np.uint64)[0]) >> 1
    return SecretSeed(value, False,
                      f"TEST ONLY: seeded from {TEST_NOISE_ENV} and the public config seed; anyone with those can "
                      "regenerate the noise and the batches, so the DP guarantee does NOT hold")


def public_seeds(seed: int) -> list[int]:
    """Independent 63-bit seeds for: model init/global torch, numpy, python, shuffle, task."""
    ss = np.random.SeedSequence(int(seed))
    return [int(x) & ((1 << 63) - 1) for x in ss.generate_state(5, dtype=np.uint64)]


def seed_globals(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators from the config seed."""
    s = public_seeds(seed)
    torch.manual_seed(s[0])
    np.random.seed(s[1] % 2**32)
    random.seed(s[2])


def make_generators(seed: int, secret: SecretSeed, device: torch.device) -> dict[str, torch.Generator]:
    """``shuffle`` and ``task`` (public), ``sampler`` and ``noise`` (secret; noise on ``device``)."""
    s = public_seeds(seed)
    sec = np.random.SeedSequence(secret.value).generate_state(2, dtype=np.uint64)
    return {
        "shuffle": torch.Generator().manual_seed(s[3]),
        "task": torch.Generator().manual_seed(s[4]),
        "sampler": torch.Generator().manual_seed(int(sec[0]) >> 1),
        "noise": torch.Generator(device=device).manual_seed(int(sec[1]) >> 1),
    }


def rng_state(gens: dict[str, torch.Generator]) -> dict:
    """Every random state a run consumes (global and its own generators), tensors only."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    st = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
        "generators": {k: g.get_state() for k, g in gens.items()},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict, gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    for k, g in gens.items():
        g.set_state(st["generators"][k])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
