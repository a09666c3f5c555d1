"""dpmed.preprocessing: small composable image transforms (pure numpy/scipy).

Every function states its dtype, shape and value-range contract in its docstring.
Functions that refuse *data* raise :class:`dpmed.errors.BadRecordError` with empty
source/record (callers add them with ``with_context``); bad arguments raise ValueError.
"""

from dpmed.preprocessing.ct import ABDOMINAL_WINDOW, preprocess_ct, window_hu
from dpmed.preprocessing.mammography import extract_mass_patch, mask_bbox, square_patch_box
from dpmed.preprocessing.radiograph import (
    apply_photometric,
    equalise_histogram,
    normalise_to_uint8,
    preprocess_radiograph,
)
from dpmed.preprocessing.resize import area_resize, axis_weights

__all__ = [
    "ABDOMINAL_WINDOW",
    "apply_photometric",
    "area_resize",
    "axis_weights",
    "equalise_histogram",
    "extract_mass_patch",
    "mask_bbox",
    "normalise_to_uint8",
    "preprocess_ct",
    "preprocess_radiograph",
    "square_patch_box",
    "window_hu",
]
