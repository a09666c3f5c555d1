"""Chest-radiograph preprocessing (methods.md section A).

Pipeline (:func:`preprocess_radiograph`): modality-LUT'd pixels → photometric
interpretation → min–max normalisation to uint8 (truncating) → histogram equalisation →
area resize to size × size → round to uint8.

Functions that refuse *data* raise :class:`~dpmed.errors.BadRecordError` with empty
``source``/``record``; the caller fills them in with ``BadRecordError.with_context``.
Wrong arguments (a programming error) raise ``ValueError``.
"""

from __future__ import annotations

import numpy as np

from dpmed.errors import BadRecordError
from dpmed.preprocessing.resize import area_resize

__all__ = ["apply_photometric", "normalise_to_uint8", "equalise_histogram", "preprocess_radiograph"]


def _require_finite(arr: np.ndarray, what: str) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        n_bad = int(arr.size - np.count_nonzero(finite))
        raise BadRecordError("", "", f"{what} has {n_bad} NaN or inf pixel(s)")


def apply_photometric(pixels: np.ndarray, photometric: str) -> np.ndarray:
    """Bring a grey image to the MONOCHROME2 convention (higher value = brighter).

    Parameters
    ----------
    pixels: real array of any shape (normally float32 (rows, cols) with the modality LUT
        applied), not empty.
    photometric: the DICOM PhotometricInterpretation (case and surrounding blanks ignored).

    Returns
    -------
    float32 array of the same shape. MONOCHROME1 is inverted as ``max + min − x``, which
    maps the image's value range [min, max] onto itself (so a later min–max
    normalisation sees the same range); MONOCHROME2 is returned unchanged (as float32).

    Raises
    ------
    BadRecordError: any other photometric interpretation (RGB, YBR_*, PALETTE COLOR, ...).
    """
    pi = str(photometric).strip().upper()
    arr = np.asarray(pixels)
    if arr.size == 0:
        raise ValueError("apply_photometric got an empty array")
    if pi == "MONOCHROME2":
        return arr.astype(np.float32, copy=False)
    if pi == "MONOCHROME1":
        a = arr.astype(np.float64)  # float64 so max + min - x is exact for 16-bit data
        np.subtract(a.max() + a.min(), a, out=a)
        return a.astype(np.float32)
    raise BadRecordError(
        "", "", f"photometric interpretation {pi or 'missing'!r} is not grey-scale; "
        "only MONOCHROME1 and MONOCHROME2 images can be used"
    )


def normalise_to_uint8(img: np.ndarray) -> np.ndarray:
    """Min–max normalise to 8 bit, truncating (methods.md A).

    ``u = trunc((x − min) / max(x − min) · 255)`` computed in float64.

    Parameters
    ----------
    img: real array of any shape, not empty, all values finite.

    Returns
    -------
    uint8 array of the same shape; the image minimum maps to 0 and the maximum to 255.
    Values are **truncated** (floored, all are ≥ 0), not rounded. A constant image (max ==
    min) has nothing to scale and is mapped to all zeros (no division by zero).

    Raises
    ------
    BadRecordError: the image contains NaN or inf.
    """
    a = np.array(img, dtype=np.float64)  # a private copy, modified in place below
    if a.size == 0:
        raise ValueError("normalise_to_uint8 got an empty array")
    _require_finite(a, "image")
    a -= a.min()
    peak = a.max()
    if peak == 0:
        return np.zeros(a.shape, dtype=np.uint8)
    a /= peak  # divide first: x / peak * 255 is exactly 255 at the maximum
    a *= 255.0
    np.floor(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def equalise_histogram(img_uint8: np.ndarray) -> np.ndarray:
    """Histogram equalisation of a uint8 image via its cumulative histogram.

    ``lut[v] = round((cdf[v] − cdf_min) / (N − cdf_min) · 255)`` where ``cdf`` is the
    cumulative histogram, ``N`` the number of pixels and ``cdf_min`` the cdf at the
    smallest value present (so that value maps to 0 and the largest present value to 255)
    — the definition OpenCV's ``equalizeHist`` uses. Rounding is to nearest, ties to even
    (``np.rint``, like OpenCV's ``cvRound``).

    Parameters
    ----------
    img_uint8: uint8 array of any shape, not empty.

    Returns
    -------
    uint8 array of the same shape. A constant image (a single grey value, N == cdf_min)
    cannot be equalised and is returned unchanged (a copy), as OpenCV does.
    """
    a = np.asarray(img_uint8)
    if a.dtype != np.uint8:
        raise ValueError(f"equalise_histogram needs a uint8 image, got {a.dtype}")
    if a.size == 0:
        raise ValueError("equalise_histogram got an empty array")
    hist = np.bincount(a.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    n = int(a.size)
    cdf_min = int(cdf[np.flatnonzero(hist)[0]])
    if cdf_min == n:
        return a.copy()
    lut = np.rint((cdf - cdf_min) / (n - cdf_min) * 255.0)
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    return lut[a]


def preprocess_radiograph(pixels: np.ndarray, photometric: str, size: int = 512) -> np.ndarray:
    """Full chest-radiograph preprocessing (methods.md A).

    Steps: :func:`apply_photometric` → :func:`normalise_to_uint8` →
    :func:`equalise_histogram` → :func:`~dpmed.preprocessing.resize.area_resize` to
    ``(size, size)`` → round to nearest (ties to even) and clip to uint8. Equalisation is
    done at the native resolution before resizing, the order the issue specifies.

    Non-square images are resized straight to the square (the aspect ratio is *not*
    kept, no padding or cropping), as the paper resizes every radiograph to 512×512.

    Parameters
    ----------
    pixels: 2-D real array (rows, cols), the modality-LUT'd pixel values (e.g.
        ``DicomImage.pixels``), finite.
    photometric: "MONOCHROME1" or "MONOCHROME2".
    size: output side length (positive int).

    Returns
    -------
    uint8 array of shape (size, size), values 0..255.

    Raises
    ------
    BadRecordError: non-grey photometric interpretation, NaN/inf pixels.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise BadRecordError("", "", f"radiograph must be a 2-D grey image, got shape {arr.shape}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    grey = apply_photometric(arr, photometric)
    u8 = normalise_to_uint8(grey)
    eq = equalise_histogram(u8)
    resized = area_resize(eq, (int(size), int(size)))
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
