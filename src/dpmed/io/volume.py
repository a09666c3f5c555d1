"""The in-memory 3-D volume shared by the NIfTI and DICOM-series readers.

Orientation contract (the one ``nibabel.as_closest_canonical`` gives, "RAS+"): increasing
index along array axis 0 moves towards the patient's Right, along axis 1 towards Anterior,
along axis 2 towards Superior (head). The affine maps voxel indices ``(i, j, k, 1)`` to RAS
world coordinates in mm. Oblique acquisitions get the *closest* such axes: arrays are only
flipped/transposed, never resampled, so the affine may keep small off-diagonal terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class Volume:
    """A 3-D scalar volume in RAS+ canonical orientation.

    Attributes
    ----------
    data: float32 array of shape (X, Y, Z); axis 0 → Right, 1 → Anterior, 2 → Superior.
        Values are physical (e.g. Hounsfield units for CT; NIfTI scl_slope/inter applied).
    affine: float64 (4, 4) voxel → RAS world (mm) transform of ``data``.
    zooms: voxel size in mm along the three array axes, as floats.
    """

    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"Volume.data must be 3-D, got shape {self.data.shape}")
        if self.data.dtype != np.float32:
            raise ValueError(f"Volume.data must be float32, got {self.data.dtype}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {self.affine.shape}")
        if len(self.zooms) != 3:
            raise ValueError(f"Volume.zooms must have 3 entries, got {self.zooms}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the array axes (``('R', 'A', 'S')`` for canonical data)."""
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]


def canonical_volume(data: np.ndarray, affine: np.ndarray) -> Volume:
    """Reorient a 3-D array with a voxel→RAS affine to RAS+ and wrap it in a :class:`Volume`.

    Only axis flips and permutations are applied (``nibabel.as_closest_canonical``);
    values are never interpolated. ``data`` is converted to float32.
    """
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D array, got shape {data.shape}")
    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64))
    canon = nib.as_closest_canonical(img)
    out = np.ascontiguousarray(np.asanyarray(canon.dataobj), dtype=np.float32)
    zooms = tuple(float(z) for z in canon.header.get_zooms()[:3])
    return Volume(data=out, affine=np.asarray(canon.affine, dtype=np.float64), zooms=zooms)  # type: ignore[arg-type]
