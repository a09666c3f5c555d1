"""Canaries for auditing an image classifier (see :mod:`dpmed.privacy.audit`).

A canary is a training record whose labels are flipped (``y → 1 − y`` for every label):
a model that memorises it assigns its *wrong* labels a high likelihood, which an honest model
trained without it would not. ``m`` canaries are chosen from the training split; each is
included in the canary training run independently with probability ½ (the inclusion mask),
the rest are left out of that run entirely. After training, the membership score of a canary
is the log-likelihood the released model gives its flipped labels (its negated loss).

Whose randomness is what, and where it lives
--------------------------------------------
* **Which records are canaries** is drawn from the *config seed*. That is public, and may be:
  it reveals only that those records are in the training split, which the split itself
  already states. The audit's validity does not rest on it.
* **The inclusion mask** is what the audit guesses, so it must be independent of training
  (it is: training noise comes from OS entropy) and it must not be derivable from public
  files — it says which patients' records the canary model was trained on. Each bit is
  ``HMAC-SHA256(audit key, seed | record_id)`` mod 2: a fair coin per canary, independent
  across canaries, reproducible by whoever holds the key (``private_dir/audit.key``, created
  once from OS entropy) and unpredictable to anyone else. The mask itself is written under
  ``private_dir`` only (:func:`write_mask`); results carry counts, never the mask.
* DP noise and Poisson sampling of the canary run come from OS entropy as in production;
  nothing here touches them.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import numpy as np
import pandas as pd

from dpmed.errors import PrivacyError

__all__ = [
    "audit_key", "canary_scores", "canary_training_labels", "choose_canaries", "inclusion_mask",
    "membership_scores", "read_mask", "write_mask",
]

_CANARY_STREAM = 0x61756469  # "audi": keeps this draw apart from other uses of the seed


def choose_canaries(train_record_ids, m: int, seed: int) -> np.ndarray:
    """``m`` distinct training record ids, drawn with the config ``seed``, sorted.

    Raises
    ------
    PrivacyError: fewer than ``m`` distinct training records, ``m < 2`` or duplicates.
    """
    ids = np.asarray(train_record_ids, dtype=object)
    uniq = np.unique(ids.astype(str))
    if uniq.size != ids.size:
        raise PrivacyError("canaries: training record ids are not unique")
    if m < 2 or m > uniq.size:
        raise PrivacyError(f"canaries: need 2 <= m <= {uniq.size} training records, got m = {m}")
    rng = np.random.default_rng([int(seed), _CANARY_STREAM])
    return np.sort(rng.choice(uniq, size=m, replace=False))


def audit_key(private_dir: str | Path) -> bytes:
    """The secret audit key ``private_dir/audit.key`` (created from OS entropy if absent)."""
    from dpmed.io.identifiers import load_or_create_key

    return load_or_create_key(Path(private_dir) / "audit.key")


def inclusion_mask(key: bytes, canary_ids, seed: int) -> np.ndarray:
    """Inclusion bit of each canary: lowest bit of HMAC-SHA256(key, "seed|record_id").

    Independent fair coins (for a secret key), the same for the same key, seed and record.
    """
    if len(key) < 16:
        raise PrivacyError("canaries: audit key too short (need >= 16 bytes)")
    bits = [hmac.new(key, f"{int(seed)}|{rid}".encode(), hashlib.sha256).digest()[-1] & 1
            for rid in np.asarray(canary_ids, dtype=str)]
    return np.asarray(bits, dtype=bool)


def write_mask(path: str | Path, canary_ids, member) -> Path:
    """Write ``record_id, member`` atomically; ``path`` must lie under ``private_dir``."""
    from dpmed.io.atomic import write_parquet

    ids = np.asarray(canary_ids, dtype=str)
    member = np.asarray(member, dtype=bool)
    if ids.size != member.size:
        raise PrivacyError(f"canaries: {ids.size} ids but {member.size} mask bits")
    write_parquet(pd.DataFrame({"record_id": ids, "member": member}), path)
    return Path(path)


def read_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(record_ids, member)`` from :func:`write_mask`."""
    df = pd.read_parquet(path)
    if list(df.columns) != ["record_id", "member"]:
        raise PrivacyError(f"{path}: expected columns record_id, member; got {list(df.columns)}")
    return df["record_id"].to_numpy(dtype=str), df["member"].to_numpy(dtype=bool)


def canary_training_labels(record_ids, y, canary_ids, member) -> tuple[np.ndarray, np.ndarray]:
    """Training set of the canary run from the production training set.

    Parameters
    ----------
    record_ids: (n,) training record ids; ``y``: (n, L) 0/1 labels aligned with them.
    canary_ids, member: the canaries and their inclusion mask.

    Returns
    -------
    ``keep`` (n,) bool — False for canaries left out — and ``y_train`` (n, L): ``y`` with
    every label of included canaries flipped.
    """
    rid = np.asarray(record_ids, dtype=str)
    y = np.asarray(y)
    y2 = y.reshape(len(rid), -1)
    pos = {r: i for i, r in enumerate(rid)}
    missing = [c for c in np.asarray(canary_ids, dtype=str) if c not in pos]
    if missing:
        raise PrivacyError(f"canaries: record {missing[0]} is not in the training set")
    idx = np.array([pos[c] for c in np.asarray(canary_ids, dtype=str)], dtype=np.int64)
    member = np.asarray(member, dtype=bool)
    keep = np.ones(len(rid), dtype=bool)
    keep[idx[~member]] = False
    y_train = y2.copy()
    y_train[idx[member]] = 1 - y_train[idx[member]]
    return keep, y_train.reshape(y.shape)


def membership_scores(probabilities, y_flipped, eps: float = 1e-7) -> np.ndarray:
    """Log-likelihood of each canary's flipped labels under the released model.

    ``probabilities``: (m, L) predicted P(label = 1) of the canaries; ``y_flipped``: (m, L).
    Returns ``Σ_l [y log p + (1 − y) log(1 − p)]`` per canary, i.e. minus the (unweighted)
    binary cross-entropy: higher = the model fits the wrong labels = more likely a member.
    ``p`` is clipped to ``[eps, 1 − eps]`` so a saturated model gives finite scores.
    """
    p = np.asarray(probabilities, dtype=float)
    y = np.asarray(y_flipped, dtype=float)
    if p.ndim == 1:
        p, y = p[:, None], y.reshape(-1, 1)
    if p.shape != y.shape:
        raise PrivacyError(f"canaries: probabilities {p.shape} and labels {y.shape} differ")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise PrivacyError("canaries: probabilities must be finite and in [0, 1]")
    p = np.clip(p, eps, 1 - eps)
    return (y * np.log(p) + (1 - y) * np.log1p(-p)).sum(axis=1)


def canary_scores(predictions: pd.DataFrame, labels: list[str], canary_ids) -> np.ndarray:
    """Membership scores of the canaries from the released model's predictions table.

    ``predictions``: one row per scored record with ``record_id``, ``y_<label>`` (the
    record's *true* labels, 0/1) and ``score_<label>`` (predicted probability), as the
    trainer writes them; it must hold every canary once. Returns the scores aligned with
    ``canary_ids`` (:func:`membership_scores` of the flipped labels).
    """
    need = ["record_id"] + [f"{p}_{lb}" for lb in labels for p in ("y", "score")]
    miss = [c for c in need if c not in predictions.columns]
    if miss:
        raise PrivacyError(f"canaries: predictions lack columns {miss}")
    ids = np.asarray(canary_ids, dtype=str)
    table = predictions.assign(record_id=predictions["record_id"].astype(str))
    table = table[table["record_id"].isin(set(ids))]
    if table["record_id"].duplicated().any():
        dup = table.loc[table["record_id"].duplicated(), "record_id"].iloc[0]
        raise PrivacyError(f"canaries: record {dup} is scored twice")
    table = table.set_index("record_id")
    missing = [c for c in ids if c not in table.index]
    if missing:
        raise PrivacyError(f"canaries: {len(missing)} canaries are not scored, e.g. {missing[0]}")
    table = table.loc[ids]
    y = table[[f"y_{lb}" for lb in labels]].to_numpy(dtype=float)
    p = table[[f"score_{lb}" for lb in labels]].to_numpy(dtype=float)
    return membership_scores(p, 1 - y)
