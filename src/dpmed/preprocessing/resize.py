"""Separable area-weighted resampling of n-D arrays (pure numpy/scipy)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

__all__ = ["area_resize", "axis_weights"]


@lru_cache(maxsize=64)
def _axis_weights_cached(n_in: int, n_out: int) -> sp.csr_array:
    if n_out <= n_in:
        # Shrinking (or identity): output pixel j covers the input interval
        # [j * n_in / n_out, (j + 1) * n_in / n_out). Measured in units of 1 / n_out of an
        # input pixel, the footprint is [j * n_in, (j + 1) * n_in) and input pixel i is
        # [i * n_out, (i + 1) * n_out): overlaps are exact integers, weight = overlap / n_in.
        max_span = -(-n_in // n_out) + 1  # input pixels a footprint can touch
        j = np.arange(n_out, dtype=np.int64)[:, None]
        i = (j * n_in) // n_out + np.arange(max_span, dtype=np.int64)[None, :]
        lo = np.maximum(i * n_out, j * n_in)
        hi = np.minimum((i + 1) * n_out, (j + 1) * n_in)
        overlap = hi - lo
        keep = (overlap > 0) & (i < n_in)
        rows = np.broadcast_to(j, i.shape)[keep]
        cols = i[keep]
        vals = overlap[keep].astype(np.float64) / n_in
    else:
        # Enlarging: linear interpolation with pixel centres aligned
        # (x_in = (j + 0.5) * n_in / n_out - 0.5), clamped at the borders (edge values are
        # repeated, not extrapolated).
        x = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0.0, n_in - 1)
        i0 = np.floor(x).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w1 = x - i0
        rows = np.concatenate([np.arange(n_out), np.arange(n_out)])
        cols = np.concatenate([i0, i1])
        vals = np.concatenate([1.0 - w1, w1])
    w = sp.coo_array((vals, (rows, cols)), shape=(n_out, n_in)).tocsr()
    w.sum_duplicates()
    w.eliminate_zeros()
    return w


def axis_weights(n_in: int, n_out: int) -> np.ndarray:
    """Dense (n_out, n_in) float64 weight matrix that :func:`area_resize` uses on one axis.

    Every row sums to 1. When shrinking, entry (j, i) is the fraction of output pixel j's
    footprint covered by input pixel i; when enlarging, the linear-interpolation weights.
    """
    _check_len(n_in, "input length")
    _check_len(n_out, "output length")
    return _axis_weights_cached(int(n_in), int(n_out)).toarray()


def _check_len(n: int, what: str) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")


def area_resize(array: np.ndarray, out_shape: Sequence[int]) -> np.ndarray:
    """Resample an n-D array to ``out_shape`` with area weighting, axis by axis.

    Contract
    --------
    * ``array``: any real dtype, any number of dimensions ≥ 1, every axis length ≥ 1.
    * ``out_shape``: one positive integer per axis of ``array``.
    * Returns float32 of shape ``out_shape``; computed in float64. No rounding or clipping
      (callers that need uint8 round and clip themselves). Because every weight row is a
      convex combination, the output lies within [min(array), max(array)]; NaN/inf
      propagate to every output pixel whose footprint touches them.

    Per axis:
    * **shrinking** (n_out < n_in): each output pixel is the average of the input over its
      footprint of n_in / n_out input pixels, with partially covered input pixels weighted
      by the covered fraction — exact area resampling, what OpenCV's ``INTER_AREA``
      computes when shrinking. An integer factor gives plain block means; the array mean is
      preserved exactly (up to float rounding).
    * **enlarging** (n_out > n_in): linear interpolation between input pixel centres
      (half-pixel aligned, ``align_corners=False`` style), with edge values repeated
      beyond the outermost centres. (Area weighting would give blocky nearest-neighbour
      output when enlarging; linear is what users expect.)
    * equal lengths: the axis is left untouched.

    The axes are processed separably by sparse weight-matrix products; the order of the
    axes does not change the result (beyond float rounding), the largest reductions are
    applied first for speed.
    """
    arr = np.asarray(array)
    out_shape = tuple(out_shape)
    if arr.ndim == 0:
        raise ValueError("area_resize needs an array with at least one dimension")
    if len(out_shape) != arr.ndim:
        raise ValueError(f"out_shape {out_shape} has {len(out_shape)} entries, array has {arr.ndim} dims")
    for n in arr.shape:
        _check_len(n, "input axis length")
    for n in out_shape:
        _check_len(n, "output axis length")
    if np.iscomplexobj(arr):
        raise ValueError("area_resize does not support complex arrays")
    out_shape = tuple(int(n) for n in out_shape)

    out = np.asarray(arr, dtype=np.float64)
    axes = [ax for ax in range(arr.ndim) if out_shape[ax] != arr.shape[ax]]
    axes.sort(key=lambda ax: out_shape[ax] / arr.shape[ax])
    for ax in axes:
        w = _axis_weights_cached(out.shape[ax], out_shape[ax])
        moved = np.moveaxis(out, ax, 0)
        rest = moved.shape[1:]
        flat = moved.reshape(moved.shape[0], -1)
        res = w @ flat  # sparse (n_out, n_in) @ dense (n_in, rest) -> dense
        out = np.moveaxis(np.asarray(res).reshape((out_shape[ax],) + rest), 0, ax)
    return np.ascontiguousarray(out, dtype=np.float32)
