"""Read NIfTI volumes (CT) into a canonical :class:`~dpmed.io.volume.Volume`."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from dpmed.errors import BadRecordError
from dpmed.io.volume import Volume

__all__ = ["read_nifti_volume", "Volume"]


def read_nifti_volume(path: str | os.PathLike) -> Volume:
    """Read a NIfTI-1/2 file (``.nii`` or ``.nii.gz``) as a float32 RAS+ volume.

    Contract
    --------
    * ``data``: float32, 3-D, reoriented with ``nibabel.as_closest_canonical`` (axis 0 →
      Right, 1 → Anterior, 2 → Superior; flips/transposes only, no resampling). The NIfTI
      ``scl_slope``/``scl_inter`` scaling is applied (values are e.g. Hounsfield units).
    * ``affine``: the canonical image's voxel → RAS (mm) affine, float64 (4, 4).
    * ``zooms``: voxel sizes (mm) along the three canonical axes.

    A 4-D image whose 4th dimension is 1 (and any further trailing singleton dimensions)
    is squeezed to 3-D. Anything that is not 3-D after that — a true 4-D series, a 2-D
    image — is refused.

    Raises
    ------
    BadRecordError(source=str(path), record="", reason)
        the file is missing, is not a readable NIfTI image, has the wrong number of
        dimensions, or contains NaN/inf voxels (the reason gives how many).
    """
    source = str(path)
    p = Path(path)
    if not p.exists():
        raise BadRecordError(source, "", "file not found; check the path and the data root")
    if not p.is_file():
        raise BadRecordError(source, "", "path is not a regular file (expected a .nii or .nii.gz)")
    try:
        img = nib.load(str(p))
    except Exception as exc:  # nibabel raises ImageFileError, gzip/EOF/OSError, ...
        raise BadRecordError(
            source, "", f"not a readable NIfTI image ({type(exc).__name__}); "
            "expected an uncorrupted .nii or .nii.gz file"
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadRecordError(
            source, "", f"not a NIfTI image (nibabel read it as {type(img).__name__}); "
            "convert it to .nii/.nii.gz"
        )

    shape = tuple(int(n) for n in img.shape)
    if len(shape) > 3 and all(n == 1 for n in shape[3:]):
        effective = shape[:3]
    else:
        effective = shape
    if len(effective) != 3:
        if len(effective) > 3:
            reason = (
                f"image is {len(shape)}-D with shape {shape}; only 3-D volumes (or 4-D with a "
                "single volume) are supported — select one volume first"
            )
        else:
            reason = f"image is {len(shape)}-D with shape {shape}; a 3-D volume is required"
        raise BadRecordError(source, "", reason)

    try:
        canon = nib.as_closest_canonical(img)
        data = canon.get_fdata(dtype=np.float32)
    except Exception as exc:  # truncated gzip stream, bad affine, ...
        raise BadRecordError(
            source, "", f"voxel data could not be read ({type(exc).__name__}); the file may be truncated"
        ) from exc
    # canonical axes may be permuted relative to the file's: take the shape from `canon`
    data = np.ascontiguousarray(data.reshape(tuple(int(n) for n in canon.shape[:3])))

    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise BadRecordError(
            source, "", f"volume contains {n_bad} non-finite voxel(s) (NaN or inf) out of {data.size}; "
            "fix or exclude this volume"
        )
    zooms = tuple(float(z) for z in canon.header.get_zooms()[:3])
    return Volume(data=data, affine=np.asarray(canon.affine, dtype=np.float64), zooms=zooms)  # type: ignore[arg-type]
