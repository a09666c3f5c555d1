"""Small DICOM files for tests, written with the demo cohort's DICOM helpers."""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

import numpy as np

from dpmed.demo._dicom import DX_STORAGE, base_dataset, make_uid, set_mono_pixels, write_dicom


def write_dx(path: Path, *, patient_id: str, sex: str = "M", age: int = 67, name: str = "Doe^John",
             pixels: bool = True, study=dt.date(2020, 3, 4), institution: str = "Test Hospital") -> None:
    ds = base_dataset(
        sop_class_uid=DX_STORAGE, sop_instance_uid=make_uid(path), study_uid=make_uid(path, 1),
        series_uid=make_uid(path, 2), modality="DX", patient_name=name, patient_id=patient_id,
        birth_date=study.replace(year=study.year - age) - dt.timedelta(days=10), sex=sex, age=age,
        study_date=study, accession=f"ACC{patient_id}", institution=institution,
    )
    # Pixels differ per file (ingestion refuses one image under two records).
    rng = np.random.default_rng(zlib.crc32(str(Path(path).name + patient_id + str(study)).encode()))
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 16 + rng.integers(0, 16, (8, 8), dtype=np.uint16)
    set_mono_pixels(ds, stored, bits_stored=12, photometric="MONOCHROME2")
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if not pixels:
        del ds.PixelData
    write_dicom(path, ds)


def write_pacs_dx(path: Path, *, patient_id: str, name: str, birth: dt.date, study: dt.date,
                  study_uid: str, series_uid: str, sop_uid: str, accession: str, sex: str = "F",
                  with_age: bool = False) -> None:
    """A DX file as a PACS exports it: identifiers in the header, UIDs chosen by the caller.

    Without ``with_age`` the header has no PatientAge, so the age comes from the two dates.
    """
    ds = base_dataset(
        sop_class_uid=DX_STORAGE, sop_instance_uid=sop_uid, study_uid=study_uid, series_uid=series_uid,
        modality="DX", patient_name=name, patient_id=patient_id, birth_date=birth, sex=sex, age=0,
        study_date=study, accession=accession, institution="St. Elsewhere Hospital",
    )
    if not with_age:
        del ds.PatientAge
    rng = np.random.default_rng(zlib.crc32(sop_uid.encode()))
    stored = rng.integers(0, 4096, (8, 8), dtype=np.uint16)
    set_mono_pixels(ds, stored, bits_stored=12, photometric="MONOCHROME2")
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    write_dicom(path, ds)
