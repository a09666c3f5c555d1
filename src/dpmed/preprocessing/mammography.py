"""Mass-patch extraction from mammograms and ROI masks (methods.md section B)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dpmed.errors import BadRecordError
from dpmed.preprocessing.radiograph import normalise_to_uint8
from dpmed.preprocessing.resize import area_resize

__all__ = ["mask_bbox", "square_patch_box", "extract_mass_patch"]

Box = tuple[int, int, int, int]


def mask_bbox(mask: np.ndarray) -> Box:
    """Half-open bounding box ``(row0, col0, row1, col1)`` of all pixels with ``mask > 0``.

    This is the union of the bounding boxes of all the mask's contours (i.e. of every
    connected foreground region), so ``mask[row0:row1, col0:col1]`` holds all foreground.

    Parameters
    ----------
    mask: 2-D real or bool array (any dtype; foreground is ``> 0``).

    Raises
    ------
    BadRecordError("", "", "ROI mask is empty"): no foreground pixel.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise BadRecordError("", "", f"ROI mask must be 2-D, got shape {m.shape}")
    fg = m > 0
    rows = np.flatnonzero(fg.any(axis=1))
    if rows.size == 0:
        raise BadRecordError("", "", "ROI mask is empty")
    cols = np.flatnonzero(fg.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _place(lo: int, hi: int, side: int, limit: int) -> int:
    """Start of a window of ``side`` centred on [lo, hi), shifted into [0, limit)."""
    start = (lo + hi - side) // 2  # centre; an odd remainder goes to the far side
    return int(min(max(start, 0), limit - side))


def square_patch_box(
    bbox: Sequence[int], image_shape: Sequence[int], margin: int = 60, min_side: int = 128
) -> Box:
    """Square crop window around a lesion box (half-open ``(row0, col0, row1, col1)``).

    ``side = max(max(h, w) + 2·margin, min_side)`` with ``h, w`` the box height and width;
    the square is centred on the box (integer centre, rounding towards the top/left) and
    then *shifted* (not shrunk) so that it lies inside the image. If ``side`` exceeds the
    image's smaller dimension it is clamped to that dimension; the patch then spans the
    whole image along that axis and, for a lesion wider than that, cannot contain all of
    the lesion along the other axis (it stays centred on it).

    Parameters
    ----------
    bbox: (row0, col0, row1, col1) with 0 ≤ row0 < row1 ≤ H, 0 ≤ col0 < col1 ≤ W.
    image_shape: (H, W) (further entries are ignored).
    margin, min_side: non-negative / positive ints, in pixels.

    Returns
    -------
    (row0, col0, row1, col1), half-open, ``row1 − row0 == col1 − col0``, inside the image.
    """
    r0, c0, r1, c1 = (int(v) for v in bbox)
    height, width = int(image_shape[0]), int(image_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image shape must be positive, got {tuple(image_shape)}")
    if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
        raise ValueError(f"bounding box {tuple(bbox)} is empty or outside an image of shape {(height, width)}")
    if margin < 0 or min_side < 1:
        raise ValueError(f"need margin >= 0 and min_side >= 1, got {margin}, {min_side}")
    side = max(max(r1 - r0, c1 - c0) + 2 * int(margin), int(min_side))
    side = min(side, height, width)
    row = _place(r0, r1, side, height)
    col = _place(c0, c1, side, width)
    return row, col, row + side, col + side


def extract_mass_patch(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    margin: int = 60,
    min_side: int = 128,
    size: int = 128,
) -> np.ndarray:
    """Cut an 8-bit square patch around the lesion in ``mask`` out of ``image``.

    Steps: ``image`` → :func:`~dpmed.preprocessing.radiograph.normalise_to_uint8` (min–max
    over the *whole* image, truncating) → :func:`mask_bbox` → :func:`square_patch_box`
    → crop → :func:`~dpmed.preprocessing.resize.area_resize` to (size, size) (area
    averaging; linear interpolation if the crop is smaller than ``size``, which happens
    only for images smaller than ``size``) → round to nearest (ties to even), clip, uint8.

    Parameters
    ----------
    image: 2-D real array (grey, MONOCHROME2 convention), finite.
    mask: 2-D array of the same shape; foreground is ``> 0``.

    Returns
    -------
    uint8 array of shape (size, size).

    Raises
    ------
    BadRecordError: image/mask shapes differ, mask empty ("ROI mask is empty"), image not
        2-D or with NaN/inf.
    """
    img = np.asarray(image)
    m = np.asarray(mask)
    if img.ndim != 2:
        raise BadRecordError("", "", f"mammogram must be a 2-D grey image, got shape {img.shape}")
    if img.shape != m.shape:
        raise BadRecordError(
            "", "", f"ROI mask shape {m.shape} differs from the image shape {img.shape}; "
            "the mask does not belong to this image or was saved at another resolution"
        )
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    u8 = normalise_to_uint8(img)
    r0, c0, r1, c1 = square_patch_box(mask_bbox(m), img.shape, margin=margin, min_side=min_side)
    patch = area_resize(u8[r0:r1, c0:c1], (int(size), int(size)))
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8)
