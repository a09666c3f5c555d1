"""A site's arrays: its records' embeddings (scaled by non-private bounds) and labels, per split.

Embeddings come from the pipeline's ``results/{dataset}/embeddings/{encoder}.h5`` (``record_id``,
``embedding``); labels from the manifest's ``label_<name>`` columns (0/1): the label vector itself
for a multi-label task, the index of the single positive column for a multi-class one.
A site's *training file* (:func:`write_site_file`) is what its SuperNode reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import pandas as pd
import torch

from dpmed.errors import ConfigError, DpmedError
from dpmed.io.atomic import atomic_path
from dpmed.federated.scaling import FeatureBounds
from dpmed.federated.sites import SPLITS, SiteRecords


def read_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(record_ids (N,), embeddings (N, D) float32)`` of an embeddings file; errors name the file."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as fh:
            ids = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in fh["record_id"][()]])
            emb = np.asarray(fh["embedding"][()], np.float32)
    except (OSError, KeyError) as exc:
        raise DpmedError(f"embeddings file {path.name}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if emb.ndim != 2 or len(emb) != len(ids) or not np.isfinite(emb).all():
        raise DpmedError(f"embeddings file {path.name}: embedding must be a finite (N, D) array "
                         f"aligned with record_id")
    return ids, emb


def labels_of(manifest: pd.DataFrame, label_names: Sequence[str], kind: str) -> np.ndarray:
    """Labels of the manifest's rows: ``(n, C)`` 0/1 (multi-label) or ``(n,)`` class indices.

    Raises
    ------
    DpmedError: a missing label column, or (multi-class) a row without exactly one positive label.
    """
    cols = [f"label_{n}" for n in label_names]
    missing = [c for c in cols if c not in manifest.columns]
    if missing:
        raise DpmedError(f"manifest: no label column {missing}")
    y = manifest[cols].to_numpy().astype(int)
    if kind == "multilabel":
        return y
    bad = y.sum(axis=1) != 1
    if bad.any():
        raise DpmedError(f"manifest: {int(bad.sum())} records do not have exactly one positive "
                         "label, so they have no class in a multi-class task")
    return y.argmax(axis=1)


def site_arrays(site: SiteRecords, record_ids: np.ndarray, embeddings: np.ndarray, manifest: pd.DataFrame,
                label_names: Sequence[str], kind: str, bounds: FeatureBounds
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (scaled features, labels)}`` of one site.

    Raises
    ------
    DpmedError: records of the site that have no embedding (names the site and the count).
    """
    row_of = {r: i for i, r in enumerate(record_ids)}
    man = manifest.set_index("record_id")
    out = {}
    for split in SPLITS:
        ids = list(site.split(split))
        missing = [r for r in ids if r not in row_of]
        if missing:
            raise DpmedError(f"site {site.site}: {len(missing)} {split} records have no embedding")
        x = bounds.scale(embeddings[[row_of[r] for r in ids]]) if ids else np.zeros((0, bounds.dim), np.float32)
        y = labels_of(man.loc[ids].reset_index(), label_names, kind)
        out[split] = (x, y)
    return out


def write_site_file(path: str | Path, x: np.ndarray, c: np.ndarray) -> None:
    """A site's training data for its SuperNode: scaled features ``x`` (n, D) and conditions ``c`` (n, C)."""
    x, c = np.asarray(x, np.float32), np.asarray(c, np.float32)
    if x.ndim != 2 or c.ndim != 2 or len(x) != len(c):
        raise ConfigError(f"site file: x {x.shape} and c {c.shape} must be (n, D) and (n, C)")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, x=x, c=c)


def read_site_file(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`write_site_file`; errors name the file."""
    path = Path(path)
    try:
        with np.load(path) as z:
            x, c = z["x"], z["c"]
    except (OSError, KeyError, ValueError) as exc:
        raise DpmedError(f"site file {path.name}: cannot be read ({type(exc).__name__}: {exc})") from exc
    if x.ndim != 2 or c.ndim != 2 or len(x) != len(c) or not np.isfinite(x).all():
        raise DpmedError(f"site file {path.name}: x {x.shape} and c {c.shape} are not (n, D), (n, C) "
                         "finite arrays")
    if len(x) and (x.min() < 0 or x.max() > 1):
        raise DpmedError(f"site file {path.name}: features outside [0, 1]; scale them with the "
                         "federation's agreed bounds (FeatureBounds.scale) before writing the file")
    return torch.from_numpy(x), torch.from_numpy(c)
