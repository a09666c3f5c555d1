"""Synthetic caches + manifest for the training / embedding tests (learnable blob task)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpmed.io.cache import CacheWriter

LABELS = ["blob_a", "blob_b"]


def _image(rng: np.random.Generator, size: int, a: int, b: int) -> np.ndarray:
    img = rng.uniform(20, 90, size=(size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    r = size / 8
    if a:  # bright blob in the upper-left quadrant
        cy, cx = rng.uniform(0.15, 0.4, 2) * size
        img += 160 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    if b:  # bright blob in the lower-right quadrant
        cy, cx = rng.uniform(0.6, 0.85, 2) * size
        img += 160 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cohort(root: Path, sizes=(96, 32, 32), size: int = 24, seed: int = 0, extra_cache_ids=()):
    """Write train/val/test caches and a manifest under ``root``; return (paths dict, manifest path)."""
    rng = np.random.default_rng(seed)
    rows = []
    paths = {}
    k = 0
    for split, n in zip(("train", "val", "test"), sizes):
        labels = rng.integers(0, 2, size=(n, 2))
        ids = []
        imgs = []
        for i in range(n):
            rid = f"{split}-{i:04d}"
            ids.append(rid)
            imgs.append(_image(rng, size, *labels[i]))
            # patients: in train, every 3rd patient has two records (max_records_per_patient = 2)
            pid = f"p{k // 2:04d}" if (split == "train" and (k % 6) < 2) else f"q{k:04d}"
            k += 1
            rows.append({
                "record_id": rid, "patient_id": pid, "split": split,
                "sex": "F" if i % 2 else "M", "age": 30 + (i % 50), "age_group": "[30,60)" if i % 50 < 30 else "[60,70)",
                "label_blob_a": int(labels[i, 0]), "label_blob_b": int(labels[i, 1]),
            })
        path = root / "preprocessed" / f"{split}.h5"
        allids = ids + list(extra_cache_ids if split == "train" else [])
        with CacheWriter(path, len(allids), (size, size), np.uint8,
                         {"dataset": "synthetic", "split": split, "kind": "radiograph", "value_range": [0, 255]}) as w:
            for i, rid in enumerate(ids):
                w.write(i, rid, imgs[i])
            for j, rid in enumerate(extra_cache_ids if split == "train" else []):
                w.write(len(ids) + j, rid, imgs[0])
        paths[split] = path
    man = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(man, index=False)
    return paths, man


def make_ct_cohort(root: Path, sizes=(12, 4, 4), shape=(8, 8, 8), seed: int = 0):
    """Tiny float16 volume caches (values in [0, 1]) with one label ``pdac`` (bright cube)."""
    rng = np.random.default_rng(seed)
    rows, paths = [], {}
    for split, n in zip(("train", "val", "test"), sizes):
        y = np.arange(n) % 2
        path = root / "preprocessed" / f"{split}.h5"
        with CacheWriter(path, n, shape, np.float16,
                         {"dataset": "ct", "split": split, "kind": "ct", "value_range": [0.0, 1.0]}) as w:
            for i in range(n):
                vol = rng.uniform(0, 0.3, size=shape)
                if y[i]:
                    vol[2:5, 2:5, 2:5] += 0.6
                rid = f"ct-{split}-{i}"
                w.write(i, rid, vol.astype(np.float16))
                rows.append({"record_id": rid, "patient_id": rid, "split": split, "sex": "F", "age": 60,
                             "age_group": "Q2", "label_pdac": int(y[i])})
        paths[split] = path
    man = root / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(man, index=False)
    return paths, man
