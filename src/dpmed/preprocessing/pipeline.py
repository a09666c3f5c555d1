"""Preprocess one split of a dataset into its HDF5 cache, streaming and in parallel.

Samples are decoded and transformed in worker processes and written in manifest order by the
parent as they arrive. At most ``4 × workers`` samples are in flight, so memory does not grow
with the cohort.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpmed.errors import BadRecordError
from dpmed.io.cache import CacheWriter
from dpmed.io.identifiers import quiet_readers
from dpmed.parallel import ordered_map  # noqa: F401  (re-exported: the project's one pool map)

# How each kind is stored: dtype and what its values mean.
STORAGE = {
    "radiograph": (np.uint8, [0, 255]),
    "mammography": (np.uint8, [0, 255]),
    # float16 halves the paper-scale cache (224×224×128 volumes); [0, 1] at float16 resolves
    # better than 0.25 HU of a 400 HU window.
    "ct": (np.float16, [0.0, 1.0]),
}


def sample_shape(kind: str, params: dict) -> tuple[int, ...]:
    if kind == "radiograph":
        return (params["size"], params["size"])
    if kind == "mammography":
        return (params["size"], params["size"])
    if kind == "ct":
        return tuple(params["shape"])
    raise ValueError(f"unknown dataset kind {kind!r}")


def preprocess_one(kind: str, params: dict, image_path: str, mask_path: str = "") -> np.ndarray:
    """Read one record's files and return its preprocessed sample (see :data:`STORAGE`)."""
    from dpmed.io.dicom import read_dicom_image

    if kind == "radiograph":
        from dpmed.preprocessing.radiograph import preprocess_radiograph

        image = read_dicom_image(image_path)
        return preprocess_radiograph(image.pixels, image.photometric, params["size"])
    if kind == "mammography":
        from dpmed.preprocessing.mammography import extract_mass_patch
        from dpmed.preprocessing.radiograph import apply_photometric

        image = read_dicom_image(image_path)
        mask = read_dicom_image(mask_path)
        pixels = apply_photometric(image.pixels, image.photometric)
        return extract_mass_patch(
            pixels, mask.pixels > 0, margin=params["margin"], min_side=params["min_side"], size=params["size"]
        )
    if kind == "ct":
        from dpmed.preprocessing.ct import preprocess_ct

        path = Path(image_path)
        if path.is_dir():
            from dpmed.io.dicom import read_dicom_series, series_files

            volume = read_dicom_series(series_files(path))
        else:
            from dpmed.io.nifti import read_nifti_volume

            volume = read_nifti_volume(path)
        return preprocess_ct(volume.data, tuple(params["window"]), tuple(params["shape"]))
    raise ValueError(f"unknown dataset kind {kind!r}")


def _task(args) -> tuple[str, np.ndarray]:
    kind, params, record_id, source, image_path, mask_path = args
    try:
        with quiet_readers():  # library warnings quote header values; they must not reach the log
            return record_id, preprocess_one(kind, params, image_path, mask_path)
    except BadRecordError as err:
        raise BadRecordError(source, f"record {record_id}", err.reason) from None
    except Exception as err:  # the type only: a library's message may quote the file's content
        raise BadRecordError(source, f"record {record_id}", f"preprocessing failed ({type(err).__name__})") from None


def preprocess_split(
    manifest: pd.DataFrame,
    sources: pd.DataFrame,
    *,
    dataset: str,
    split: str,
    kind: str,
    params: dict,
    out_path: str | Path,
    workers: int = 1,
) -> int:
    """Write ``out_path`` for the records of ``split``; return how many samples were written."""
    rows = manifest.loc[manifest["split"] == split, ["record_id", "source_path"]].merge(
        sources, on="record_id", how="left", validate="one_to_one"
    )
    if rows["image_path"].isna().any():
        missing = rows.loc[rows["image_path"].isna(), "record_id"].iloc[0]
        raise RuntimeError(f"record {missing} is in the manifest but not in the private source index")
    rows = rows.sort_values("record_id", ignore_index=True)
    dtype, value_range = STORAGE[kind]
    attrs = {"dataset": dataset, "split": split, "kind": kind, "params": params, "value_range": value_range}
    tasks = (
        (kind, params, r.record_id, r.source_path, r.image_path, r.mask_path or "")
        for r in rows.itertuples(index=False)
    )
    with CacheWriter(out_path, len(rows), sample_shape(kind, params), dtype, attrs) as writer:
        for i, (record_id, sample) in enumerate(ordered_map(_task, tasks, workers)):
            writer.write(i, record_id, sample)
    return len(rows)
