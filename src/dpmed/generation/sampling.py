"""Synthetic patches written exactly like real ones: an HDF5 cache plus a manifest.

Every downstream stage reads a split as ``(cache, manifest)``: the cache
(:mod:`dpmed.io.cache`) holds uint8 patches and record ids, the manifest holds labels
(``label_<name>``) and demographics joined on ``record_id``
(:class:`dpmed.training.data.CacheDataset`). A synthetic set is therefore written as

* ``{out}.h5``: ``images`` (N, S, S) uint8, ``record_id`` ``syn-<class>-<i>`` (class value,
  6-digit index per class), attributes ``dataset``, ``split`` (default ``"synthetic"``),
  ``kind`` ``"mammography"``, ``params`` (generator file, selected epoch, N per class, seed),
  ``value_range`` [0, 255];
* a **synthetic manifest** parquet with the columns of the real manifest: ``record_id``,
  ``patient_id`` (= the record id: each synthetic patch is its own "patient", so patient-level
  grouping never merges two of them), ``split``, ``sex`` ``"U"``, ``age`` NaN, ``age_group``
  ``"unknown"`` (a generator has no demographics), ``label_<name>`` 0/1, ``source_path`` ``""``,
  ``synthetic`` True; any further column of a real manifest passed as ``like`` (laterality,
  view, breast_density, abnormality_id ...) is present and empty.

Both files are written atomically (the cache first, then the manifest).

Pixel mapping: generator output ``x ∈ [−1, 1]`` → ``round((x + 1) · 127.5)`` clipped to
0..255, the inverse of the ``[0, 255] → [−1, 1]`` scaling of :func:`~dpmed.generation.training.load_patches`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from dpmed.errors import ConfigError
from dpmed.io.atomic import write_parquet
from dpmed.io.cache import CacheWriter
from dpmed.generation.gan import sample_latent
from dpmed.privacy.guarantee import Guarantee, post_processing

__all__ = ["to_uint8", "generate_patches", "synthetic_record_id", "synthetic_manifest", "synthetic_guarantee",
           "write_synthetic_set"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [−1, 1] ``(N, 1, S, S)`` or ``(N, S, S)`` → uint8 ``(N, S, S)``."""
    a = x.detach().cpu().double().numpy()
    if a.ndim == 4:
        a = a[:, 0]
    return np.clip(np.rint((a + 1.0) * 127.5), 0, 255).astype(np.uint8)


def synthetic_record_id(cls: int, i: int) -> str:
    return f"syn-{int(cls)}-{int(i):06d}"


def generate_patches(generator, n_per_class: int, *, seed: int, batch_size: int = 64,
                     device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``n_per_class`` uint8 patches of every class: ``(images (C·n, S, S), labels (C·n,))``.

    z and labels come from a generator seeded with ``seed`` (the generator is post-processing:
    its sampling noise protects nothing). Classes in order 0, 1, …
    """
    if int(n_per_class) < 1 or int(batch_size) < 1:
        raise ConfigError(f"n_per_class and batch_size must be >= 1, got {n_per_class}, {batch_size}")
    st = generator.settings
    gen = torch.Generator().manual_seed(int(seed))
    generator = generator.to(device).eval()
    images, labels = [], []
    for c in range(st.num_classes):
        for start in range(0, int(n_per_class), int(batch_size)):
            n = min(int(batch_size), int(n_per_class) - start)
            z, _ = sample_latent(n, st.latent_dim, st.num_classes, gen)
            y = torch.full((n,), c, dtype=torch.long)
            with torch.no_grad():
                images.append(to_uint8(generator(z.to(device), y.to(device))))
            labels.append(np.full(n, c, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def synthetic_manifest(record_ids: Sequence[str], labels: np.ndarray, label: str, *,
                       split: str = "synthetic", like: pd.DataFrame | None = None) -> pd.DataFrame:
    """The manifest rows of synthetic records (see the module docstring)."""
    df = pd.DataFrame({
        "record_id": list(record_ids), "patient_id": list(record_ids), "split": split, "sex": "U",
        "age": np.nan, "age_group": "unknown", f"label_{label}": np.asarray(labels, dtype=np.int64),
        "source_path": "",
    })
    if like is not None:
        for col in like.columns:
            if col not in df.columns:
                df[col] = ""
        df = df[[c for c in like.columns] + [c for c in df.columns if c not in like.columns]]
    df["synthetic"] = True
    return df


def synthetic_guarantee(generator_guarantee: Guarantee | dict) -> Guarantee:
    """The guarantee of patches sampled from a generator: post-processing of the generator's.

    A DP generator's (ε, δ) carries over unchanged; a generator trained without DP gives the
    synthetic set no guarantee either (:func:`dpmed.privacy.guarantee.post_processing`).
    """
    g = generator_guarantee if isinstance(generator_guarantee, Guarantee) else Guarantee.from_dict(generator_guarantee)
    return post_processing(g, released="synthetic patches sampled from the generator")


def write_synthetic_set(generator, out_h5, out_manifest, *, n_per_class: int, seed: int, label: str,
                        dataset: str, split: str = "synthetic", like: pd.DataFrame | None = None,
                        params: dict[str, Any] | None = None, guarantee: Guarantee | dict | None = None,
                        batch_size: int = 64, device: str = "cpu") -> pd.DataFrame:
    """Sample ``n_per_class`` patches per class and write the cache and its manifest.

    Parameters
    ----------
    generator: an MCGAN generator (e.g. from :func:`~dpmed.generation.training.load_generator`).
    out_h5, out_manifest: output paths (written atomically).
    n_per_class, seed: sample size per class and sampling seed.
    label: label name (``label_<label>`` column; class value = label value).
    dataset, split: cache attributes.
    like: a real manifest whose columns the synthetic manifest takes on.
    params: extra provenance for the cache's ``params`` attribute (generator path, epoch, ...).
    guarantee: the generator's guarantee; the set's (:func:`synthetic_guarantee`) is stored as
        the cache attribute ``guarantee`` (JSON), so every reader of the set can see it.

    Returns the synthetic manifest.
    """
    images, labels = generate_patches(generator, n_per_class, seed=seed, batch_size=batch_size, device=device)
    counters = {}
    ids = []
    for c in labels:
        ids.append(synthetic_record_id(c, counters.get(int(c), 0)))
        counters[int(c)] = counters.get(int(c), 0) + 1
    S = generator.settings.image_size
    attrs = {"dataset": dataset, "split": split, "kind": "mammography", "value_range": [0, 255],
             "params": {"synthetic": True, "n_per_class": int(n_per_class), "seed": int(seed),
                        "size": S, **(params or {})}}
    if guarantee is not None:
        attrs["guarantee"] = synthetic_guarantee(guarantee).to_dict()
    with CacheWriter(out_h5, len(images), (S, S), np.uint8, attrs) as writer:
        for i, (rid, img) in enumerate(zip(ids, images)):
            writer.write(i, rid, img)
    manifest = synthetic_manifest(ids, labels, label, split=split, like=like)
    write_parquet(manifest, Path(out_manifest))
    return manifest
