"""Helpers shared by the DICOM-writing demo generators.

Everything here is deterministic: UIDs are derived from the seed and the record's position
(:func:`pydicom.uid.generate_uid` with ``entropy_srcs``), dates are computed from sampled
offsets against a fixed reference date, and fake identities come from small name lists.
No header carries the time the file was written.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

# Storage SOP classes used by the demo cohorts.
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
MG_STORAGE = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage (ROI masks)

_FAMILY = ["Doe", "Roe", "Smith", "Miller", "Novak", "Berg", "Klein", "Meyer", "Rossi", "Lund",
           "Moreau", "Costa", "Fischer", "Young", "Park", "Ortiz", "Hale", "Brandt", "Silva", "Weiss"]
_GIVEN_F = ["Jane", "Anna", "Maria", "Eva", "Lena", "Sara", "Ines", "Clara", "Nora", "Ida"]
_GIVEN_M = ["John", "Max", "Paul", "Ivan", "Leo", "Tom", "Karl", "Omar", "Jonas", "Luca"]
_INSTITUTIONS = ["Demo General Hospital", "Fictional University Clinic", "Sample City Medical Centre",
                 "Nowhere County Hospital"]

#: Studies are dated between this reference date and about seven years later.
REFERENCE_DATE = _dt.date(2015, 1, 1)


def make_uid(*parts: object) -> str:
    """A UID derived deterministically from ``parts`` (seed, cohort prefix, record indices…)."""
    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def fake_name(rng: np.random.Generator, sex: str) -> str:
    """A fake DICOM person name ``Family^Given`` from small lists."""
    given = _GIVEN_F if sex == "F" else _GIVEN_M
    return f"{_FAMILY[rng.integers(len(_FAMILY))]}^{given[rng.integers(len(given))]}"


def fake_institution(rng: np.random.Generator) -> str:
    return _INSTITUTIONS[rng.integers(len(_INSTITUTIONS))]


def da(date: _dt.date) -> str:
    """DICOM DA string (YYYYMMDD)."""
    return date.strftime("%Y%m%d")


def birth_date_for(study_date: _dt.date, age: int, rng: np.random.Generator) -> _dt.date:
    """A birth date such that the patient is exactly ``age`` full years old on ``study_date``."""
    days_past_birthday = int(rng.integers(0, 365))
    last_birthday = study_date - _dt.timedelta(days=days_past_birthday)
    try:
        return last_birthday.replace(year=last_birthday.year - age)
    except ValueError:  # 29 February
        return last_birthday.replace(year=last_birthday.year - age, day=28)


def age_on(birth: _dt.date, date: _dt.date) -> int:
    """Full years between ``birth`` and ``date``."""
    return date.year - birth.year - ((date.month, date.day) < (birth.month, birth.day))


def age_string(age: int) -> str:
    """DICOM AS string, e.g. ``"067Y"``."""
    return f"{int(age):03d}Y"


def base_dataset(*, sop_class_uid: str, sop_instance_uid: str, study_uid: str, series_uid: str,
                 modality: str, patient_name: str, patient_id: str, birth_date: _dt.date,
                 sex: str, age: int, study_date: _dt.date, accession: str, institution: str,
                 series_number: int = 1, instance_number: int = 1) -> Dataset:
    """A dataset with patient/study/series/instance modules filled with (fake) values."""
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = da(birth_date)
    ds.PatientSex = sex
    ds.PatientAge = age_string(age)
    ds.StudyDate = da(study_date)
    ds.SeriesDate = da(study_date)
    ds.ContentDate = da(study_date)
    ds.StudyTime = "090000"
    ds.AccessionNumber = accession
    ds.InstitutionName = institution
    ds.ReferringPhysicianName = ""
    ds.StudyID = accession[-8:]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.Manufacturer = "dpmed synthetic demo"
    ds.BurnedInAnnotation = "NO"
    return ds


def set_mono_pixels(ds: Dataset, stored: np.ndarray, *, bits_stored: int, photometric: str,
                    bits_allocated: int = 16) -> None:
    """Attach an unsigned greyscale pixel array (already in stored values) to ``ds``."""
    dtype = np.uint8 if bits_allocated == 8 else np.uint16
    arr = np.ascontiguousarray(stored, dtype=dtype)
    if arr.max(initial=0) >= 2 ** bits_stored:
        raise ValueError(f"stored values exceed BitsStored={bits_stored}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = arr.tobytes()


def write_dicom(path: Path, ds: Dataset) -> None:
    """Write ``ds`` as a DICOM Part 10 file (preamble, file meta, explicit VR little endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
