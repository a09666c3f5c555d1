"""Abdominal CT preprocessing (methods.md section A): HU window, then resize."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpmed.errors import BadRecordError
from dpmed.preprocessing.resize import area_resize

__all__ = ["window_hu", "preprocess_ct", "ABDOMINAL_WINDOW"]

#: The abdominal window of the paper, in Hounsfield units.
ABDOMINAL_WINDOW: tuple[float, float] = (-150.0, 250.0)


def window_hu(hu: np.ndarray, low: float = -150.0, high: float = 250.0) -> np.ndarray:
    """Clip Hounsfield units to [low, high] and scale linearly to [0, 1].

    ``out = (clip(hu, low, high) − low) / (high − low)``, computed in float64.

    Parameters
    ----------
    hu: real array of any shape, Hounsfield units, all finite.
    low, high: window bounds in HU, ``low < high`` (default: the abdominal window
        [−150, 250]).

    Returns
    -------
    float32 array of the same shape with values in [0, 1]; ``low`` and below → 0,
    ``high`` and above → 1.

    Raises
    ------
    ValueError: ``low >= high`` or non-finite bounds.
    BadRecordError: NaN or inf in ``hu`` (the reason says how many).
    """
    low, high = float(low), float(high)
    if not (np.isfinite(low) and np.isfinite(high)) or low >= high:
        raise ValueError(f"window needs finite low < high, got ({low}, {high})")
    a = np.asarray(hu, dtype=np.float64)
    n_bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if n_bad:
        raise BadRecordError("", "", f"CT data has {n_bad} NaN or inf voxel(s)")
    out = (np.clip(a, low, high) - low) / (high - low)
    return out.astype(np.float32)


def preprocess_ct(
    volume_hu: np.ndarray,
    window: Sequence[float] = ABDOMINAL_WINDOW,
    shape: Sequence[int] = (224, 224, 128),
) -> np.ndarray:
    """Window a CT volume and resize it to the configured shape.

    Steps: :func:`window_hu` with ``window = (low, high)`` →
    :func:`~dpmed.preprocessing.resize.area_resize` to ``shape`` (area averaging when
    shrinking, linear interpolation when enlarging, per axis) → clip to [0, 1] (guards
    against float rounding only).

    Axis order: ``shape`` refers to the axes of ``volume_hu`` as given. For volumes from
    :mod:`dpmed.io.nifti` / :func:`dpmed.io.dicom.read_dicom_series` these are the
    canonical RAS+ array axes (0: right, 1: anterior, 2: superior), so the default
    (224, 224, 128) is 224 × 224 in-plane and 128 axial slices. The voxel spacing is not
    preserved: each volume is stretched to the same grid, as in the paper.

    Parameters
    ----------
    volume_hu: 3-D real array, Hounsfield units, finite.
    window: (low, high) in HU, low < high.
    shape: three positive ints.

    Returns
    -------
    float32 array of shape ``shape`` with values in [0, 1].
    """
    arr = np.asarray(volume_hu)
    if arr.ndim != 3:
        raise BadRecordError("", "", f"CT volume must be 3-D, got shape {arr.shape}")
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must have 3 entries, got {shape}")
    low, high = window
    windowed = window_hu(arr, low, high)
    out = area_resize(windowed, shape)
    return np.clip(out, 0.0, 1.0, out=out)
