"""Torch datasets over the preprocessed HDF5 caches, labelled from the manifest.

Scaling uses **fixed constants only**::

    x01 = (stored - lo) / (hi - lo)          # value_range attribute of the cache -> [0, 1]
    x   = (x01 - mean) / std                  # fixed constants, default mean 0.5, std 0.25

Never statistics of the data: a mean/std computed from the private training images would be
a release of private information outside the DP mechanism (methods E). The constants are
listed as a non-private input in the privacy card.

Each item is ``(image, target)``: ``image`` float32 of shape ``(C, H, W)`` (2D caches) or
``(C, X, Y, Z)`` (3D caches), the grey channel repeated ``C`` times; ``target`` float32
``(n_labels,)`` of 0/1.

Access
------
* Small caches (``images`` at most ``in_memory_max_bytes``, default 256 MiB) are read once
  into memory in their stored dtype (uint8 / float16) and converted per sample.
* Larger caches are read sample by sample (the cache is chunked one sample per chunk). The
  h5py handle is opened lazily and per process (the handle is dropped when the dataset is
  pickled into a DataLoader worker and re-opened there), so caches larger than RAM work
  with any number of workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import h5py

from dpmed.io.cache import decode_attr
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dpmed.errors import ConfigError, DpmedError

#: Default fixed normalisation constants (applied after scaling to [0, 1]).
DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25
DEFAULT_IN_MEMORY_MAX_BYTES = 256 * 2**20


class DataError(DpmedError):
    """A cache and the manifest do not fit together."""


def _decode(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _attr(fh: h5py.File, key: str, default=None):
    return decode_attr(fh.attrs[key]) if key in fh.attrs else default


def read_manifest(manifest) -> pd.DataFrame:
    """The manifest as a DataFrame (accepts a path or a DataFrame)."""
    if isinstance(manifest, pd.DataFrame):
        df = manifest
    else:
        df = pd.read_parquet(manifest)
    if "record_id" not in df.columns:
        raise DataError(f"manifest {manifest if not isinstance(manifest, pd.DataFrame) else ''}: no record_id column")
    if df["record_id"].duplicated().any():
        dup = df.loc[df["record_id"].duplicated(), "record_id"].iloc[0]
        raise DataError(f"manifest: record_id {dup!r} occurs more than once")
    return df


def cache_record_ids(path: str | Path) -> list[str]:
    with h5py.File(path, "r") as fh:
        return [_decode(s) for s in fh["record_id"][()]]


class CacheDataset(Dataset):
    """One cache (``results/{dataset}/preprocessed/{split}.h5``) + labels from the manifest.

    Parameters
    ----------
    cache_path: the HDF5 cache.
    manifest: path of ``manifest.parquet`` or the DataFrame itself.
    labels: label names; the manifest must hold ``label_<name>`` with 0/1 for every record.
        ``None`` or ``[]``: no targets (``target`` is an empty tensor) -- e.g. for embeddings.
    channels: number of channels to emit (the grey channel is repeated).
    mean, std: fixed normalisation constants (see the module docstring).
    in_memory_max_bytes: caches up to this size are loaded into memory.

    Raises :class:`DataError` if a cache record is missing from the manifest or has a
    missing / non-binary label.
    """

    def __init__(
        self,
        cache_path: str | Path,
        manifest=None,
        labels: Sequence[str] | None = None,
        *,
        channels: int = 1,
        mean: float = DEFAULT_MEAN,
        std: float = DEFAULT_STD,
        in_memory_max_bytes: int = DEFAULT_IN_MEMORY_MAX_BYTES,
    ):
        self.path = Path(cache_path)
        if not self.path.exists():
            raise DataError(f"cache {self.path} does not exist")
        if not (std > 0):
            raise ConfigError(f"normalisation std must be > 0, got {std!r}")
        if int(channels) < 1:
            raise ConfigError(f"channels must be >= 1, got {channels!r}")
        self.channels = int(channels)
        self.mean = float(mean)
        self.std = float(std)
        self.labels = list(labels or [])
        with h5py.File(self.path, "r") as fh:
            if "images" not in fh or "record_id" not in fh:
                raise DataError(f"cache {self.path}: needs datasets 'images' and 'record_id'")
            ds = fh["images"]
            self.n = int(ds.shape[0])
            self.sample_shape = tuple(int(s) for s in ds.shape[1:])
            self.dtype = ds.dtype
            nbytes = int(np.prod(ds.shape)) * ds.dtype.itemsize
            self.record_ids = [_decode(s) for s in fh["record_id"][()]]
            self.kind = _attr(fh, "kind")
            vr = _attr(fh, "value_range")
            self._memory = ds[()] if nbytes <= in_memory_max_bytes else None
        if len(self.record_ids) != self.n:
            raise DataError(f"cache {self.path}: {len(self.record_ids)} record ids for {self.n} images")
        if vr is None:
            vr = [0.0, 255.0] if self.dtype == np.uint8 else [0.0, 1.0]
        try:
            lo, hi = float(vr[0]), float(vr[1])
        except (TypeError, ValueError, IndexError):
            raise DataError(f"cache {self.path}: value_range attribute {vr!r} is not [lo, hi]") from None
        if not hi > lo:
            raise DataError(f"cache {self.path}: value_range {vr!r} must have hi > lo")
        self.value_range = (lo, hi)
        # x = ((v - lo)/(hi - lo) - mean)/std = v * a + b
        self._a = 1.0 / ((hi - lo) * self.std)
        self._b = (-lo / (hi - lo) - self.mean) / self.std

        self.meta = self._join_manifest(manifest) if manifest is not None else None
        if self.labels:
            if self.meta is None:
                raise ConfigError("labels given but no manifest")
            self.targets = torch.from_numpy(
                np.array(self.meta[[f"label_{lb}" for lb in self.labels]].to_numpy(dtype=np.float32), copy=True)
            )
        else:
            self.targets = torch.zeros((self.n, 0), dtype=torch.float32)
        self._fh = None
        self._pid = None

    # ------------------------------------------------------------------ manifest join
    def _join_manifest(self, manifest) -> pd.DataFrame:
        df = read_manifest(manifest)
        df = df.assign(record_id=df["record_id"].astype(str)).set_index("record_id", drop=False)
        missing = [r for r in self.record_ids if r not in df.index]
        if missing:
            raise DataError(
                f"cache {self.path}: {len(missing)} record(s) are not in the manifest "
                f"(first: {missing[0]!r}); the cache and the manifest are out of date with each other"
            )
        need = [f"label_{lb}" for lb in self.labels]
        absent = [c for c in need if c not in df.columns]
        if absent:
            raise DataError(f"manifest has no column(s) {absent} (labels {self.labels})")
        meta = df.loc[self.record_ids].reset_index(drop=True)
        for c in need:
            v = pd.to_numeric(meta[c], errors="coerce").to_numpy(dtype=float)
            bad = ~np.isin(v, (0.0, 1.0))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"cache {self.path}: record {self.record_ids[i]!r} has {c} = {meta[c].iloc[i]!r}; "
                    "labels must be 0 or 1"
                )
        return meta

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.n

    def _raw(self, i: int) -> np.ndarray:
        if self._memory is not None:
            return self._memory[i]
        if self._fh is None or self._pid != os.getpid():
            self._fh = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._fh["images"][i]

    def image(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(self._raw(int(i)), dtype=np.float32))
        x = x * self._a + self._b
        return x.unsqueeze(0).expand(self.channels, *x.shape).contiguous()

    def __getitem__(self, i: int):
        return self.image(i), self.targets[int(i)]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fh"] = None
        state["_pid"] = None
        return state

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
