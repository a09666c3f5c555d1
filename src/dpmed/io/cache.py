"""HDF5 caches of preprocessed samples: one file per dataset and split.

Layout (the contract every later stage reads):

* ``images``     (N, *sample_shape), chunked one sample per chunk so any sample loads alone;
* ``record_id``  (N,) UTF-8 strings aligned with ``images`` (join with the manifest on it);
* attributes: ``dataset``, ``split``, ``kind``, ``params`` (JSON of the preprocessing
  parameters), ``value_range`` (JSON [lo, hi] of the stored values) and ``dpmed_version``.

Files are written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

import dpmed
from dpmed.io.atomic import atomic_path


class CacheWriter:
    """Write N samples of a fixed shape, one at a time (memory stays flat)."""

    def __init__(self, path: str | Path, n: int, sample_shape: tuple[int, ...], dtype, attrs: dict[str, Any]):
        self.path = Path(path)
        self.n = int(n)
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.dtype = np.dtype(dtype)
        self.attrs = attrs
        self._written = np.zeros(self.n, dtype=bool)

    def __enter__(self) -> "CacheWriter":
        # HDF5 locking fails on some network file systems; a single writer needs none.
        os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._file = h5py.File(tmp, "w")
        chunks = (1, *self.sample_shape) if self.n else None
        self._images = self._file.create_dataset(
            "images", shape=(self.n, *self.sample_shape), dtype=self.dtype, chunks=chunks
        )
        self._ids = self._file.create_dataset("record_id", shape=(self.n,), dtype=h5py.string_dtype("utf-8"))
        for key, value in self.attrs.items():
            self._file.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        self._file.attrs["dpmed_version"] = dpmed.__version__
        return self

    def write(self, index: int, record_id: str, sample: np.ndarray) -> None:
        if sample.shape != self.sample_shape:
            raise ValueError(f"sample {record_id}: shape {sample.shape} != {self.sample_shape}")
        self._images[index] = sample.astype(self.dtype, copy=False)
        self._ids[index] = record_id
        self._written[index] = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._file.close()
        if exc_type is None and not self._written.all():
            missing = int((~self._written).sum())
            exc = RuntimeError(f"{self.path}: {missing} of {self.n} samples were never written")
            self._atomic.__exit__(type(exc), exc, None)
            raise exc
        return bool(self._atomic.__exit__(exc_type, exc, tb))


def read_cache(path: str | Path) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Load a whole cache (images, record ids, attributes). For small caches and tests."""
    with h5py.File(path, "r") as fh:
        images = fh["images"][()]
        ids = [s.decode() if isinstance(s, bytes) else s for s in fh["record_id"][()]]
        attrs = {k: decode_attr(v) for k, v in fh.attrs.items()}
    return images, ids, attrs


def decode_attr(value):
    """An HDF5 attribute as written by :class:`CacheWriter` (JSON strings decoded)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
