"""Ingestion: one canonical manifest per dataset, whatever the source format.

Adapters turn a data source into :class:`SourceRecord` s:

* ``dicom_folder``   a labels CSV (column ``path`` relative to the CSV's folder, one column per
  label, optional ``patient_id``/``sex``/``age`` and split columns) + the DICOM files it names.
  Whatever the table lacks (patient, sex, age) is read from the DICOM header.
* ``nifti_clinical`` a clinical CSV (``patient_id, sex, age, path`` + labels) + NIfTI volumes
  (a ``path`` that is a folder is read as a DICOM series).
* ``cbis_ddsm``      CBIS-DDSM mass description CSVs + their image and ROI-mask DICOMs.

Every record is then opened and decoded once (in parallel) so the manifest only lists records
that preprocessing can use: the right modality, a real (non-constant) image, plausible Hounsfield
units for CT, no second copy of a file or of an image's pixels under another record. Bad records
either stop the run with one message naming table line, file and reason, or — with
``on_bad_record: skip`` — are left out and listed in ``rejected.csv``.

What this module returns for ``results/`` is built structurally, not by filtering: record and
patient pseudonyms, the table name and line (``source_path``), whole-year ages, whitelisted
values and reasons written by dpmed that quote no input value. Real file paths go to the private
index (``sources``) only; the :class:`~dpmed.io.identifiers.Redactor` is a second line of defence.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from dpmed.errors import BadRecordError, ConfigError, DataError
from dpmed.io.identifiers import Redactor, header_identifiers, pseudonym, quiet_readers
from dpmed.parallel import ordered_map

SPLITS = ("train", "val", "test")
TRAIN_POOL = "train+val"  # a given split that leaves train vs val to the seeded splitter

CBIS_REQUIRED = ("patient_id", "abnormality id", "pathology", "image file path", "ROI mask file path")
CBIS_MALIGNANT = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}
# CBIS-DDSM descriptive columns copied to the manifest, each only when its value is one of these.
CBIS_WHITELIST = {
    "laterality": ("left or right breast", re.compile(r"LEFT|RIGHT")),
    "view": ("image view", re.compile(r"CC|MLO|ML|LM|LMO|XCCL|XCCM|FB|SIO|AT")),
    "breast_density": ("breast_density", re.compile(r"[1-4]")),
    "abnormality_id": ("abnormality id", re.compile(r"\d{1,3}")),
}
REJECTED_COLUMNS = ["source", "record", "reason"]


@dataclasses.dataclass
class SourceRecord:
    """One record as an adapter found it; nothing here is validated yet."""

    row: str  # locates the record without identifying anyone, e.g. "labels.csv line 17"
    image_path: Path
    key: str  # unique within the dataset (normalised relative path); hashed into the record id
    mask_path: Path | None = None
    patient: str | None = None
    sex: Any = None
    age: Any = None
    grades: dict[str, Any] = dataclasses.field(default_factory=dict)
    split: str | None = None
    site: Any = None  # the table's optional ``site`` cell (overrides DICOM InstitutionName)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    identifiers: list[str] = dataclasses.field(default_factory=list)

    @property
    def same_file(self) -> str:
        """The resolved image (and mask) path: equal for two spellings of the same file."""
        mask = os.path.realpath(self.mask_path) if self.mask_path else ""
        return f"{os.path.realpath(self.image_path)}|{mask}|{self.extra.get('abnormality_id', '')}"


@dataclasses.dataclass
class IngestResult:
    manifest: pd.DataFrame  # shareable: pseudonyms, table lines and whitelisted fields only
    sources: pd.DataFrame  # private: record_id -> real file paths
    rejected: pd.DataFrame  # shareable: every skipped record with its reason


# --------------------------------------------------------------------------- parsing helpers
# Reasons never quote the offending value: a malformed cell may hold a name or a date. The
# table line in the rejection tells the user where to look.

_AGE_UNITS = {"Y": 1.0, "M": 1.0 / 12.0, "W": 7.0 / 365.25, "D": 1.0 / 365.25}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def parse_sex(value: Any) -> str:
    """'M'/'F' from the usual spellings (M, F, male, female; any case)."""
    if _is_missing(value):
        raise ValueError("sex is missing")
    text = str(value).strip().upper()
    if text in ("M", "MALE"):
        return "M"
    if text in ("F", "FEMALE"):
        return "F"
    raise ValueError("unparsable sex (expected M/F/male/female)")


def parse_age(value: Any) -> float:
    """Age in years from a number or a DICOM age string (``067Y``, ``006M``, ``010W``, ``003D``)."""
    if _is_missing(value):
        raise ValueError("age is missing")
    text = str(value).strip()
    match = re.fullmatch(r"(\d{1,3})\s*([YMWD])", text.upper())
    if match:
        age = int(match.group(1)) * _AGE_UNITS[match.group(2)]
    else:
        try:
            age = float(text)
        except ValueError:
            raise ValueError("unparsable age (expected years or a DICOM age like 067Y)") from None
    if not (math.isfinite(age) and 0 <= age < 130):
        raise ValueError("implausible age (expected 0 to 130 years)")
    return age


def age_from_dates(birth: str, study: str) -> int:
    """Full years between a DICOM birth date and study date (``YYYYMMDD``), as DICOM ``AS`` counts them."""
    try:
        b = dt.datetime.strptime(birth.strip()[:8], "%Y%m%d").date()
    except ValueError:
        raise ValueError("PatientBirthDate is not a DICOM date (YYYYMMDD)") from None
    try:
        s = dt.datetime.strptime(study.strip()[:8], "%Y%m%d").date()
    except ValueError:
        raise ValueError("StudyDate is not a DICOM date (YYYYMMDD)") from None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
    if years < 0:
        raise ValueError("PatientBirthDate is after StudyDate")
    return years


def parse_grade(value: Any, label: str, lo: int, hi: int) -> int:
    if _is_missing(value):
        raise ValueError(f"label {label} is missing")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"label {label} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"label {label} is not an integer grade")
    grade = int(number)
    if not lo <= grade <= hi:
        raise ValueError(f"label {label} grade outside its range [{lo}, {hi}]")
    return grade


# --------------------------------------------------------------------------- adapters


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV as text columns; unreadable tables raise errors that name the file."""
    if not path.exists():
        raise ConfigError(f"{path}: table not found (check the dataset's table/description_csvs in the config)")
    try:
        # Everything as text: parsing (and its error messages) is ours, not pandas' guesswork.
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the table is empty (not even a header line)") from None
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
            "save the table as UTF-8 CSV"
        ) from None
    except pd.errors.ParserError as err:
        detail = str(err).strip().splitlines()[-1]
        raise DataError(f"{path}: not a readable CSV table ({detail})") from None
    if table.empty:
        raise DataError(f"{path}: the table has a header but lists no records")
    return table


def _require_columns(table: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.columns)}")


def _line(path: Path, index: int) -> str:
    return f"{path.name} line {index + 2}"  # +1 for the header, +1 for 1-based lines


def _normalised(rel: str) -> str:
    """One spelling per relative path (``./a/b.dcm``, ``a//b.dcm``, ``a/x/../b.dcm`` -> ``a/b.dcm``)."""
    return os.path.normpath(rel.strip()).replace(os.sep, "/")


def adapt_table(cfg: dict, *, volume: bool) -> list[SourceRecord]:
    """``dicom_folder`` (volume=False) and ``nifti_clinical`` (volume=True) adapters."""
    table_path = Path(cfg["table"])
    table = _read_table(table_path)
    base = table_path.parent
    required = ["path", *cfg["labels"]]
    if volume:
        required += ["patient_id", "sex", "age"]
    split_col = cfg["split"]["column"]
    if split_col:
        required.append(split_col)
    _require_columns(table, table_path, required)
    records = []
    for i, row in enumerate(table.to_dict("records")):
        rel = str(row["path"]).strip()
        records.append(
            SourceRecord(
                row=_line(table_path, i),
                image_path=base / rel,
                key=_normalised(rel),
                patient=row.get("patient_id") or None,
                sex=row.get("sex"),
                age=row.get("age"),
                grades={label: row[label] for label in cfg["labels"]},
                split=row[split_col] if split_col else None,
                site=row.get("site"),
                identifiers=[rel] + ([str(row["site"]).strip()] if not _is_missing(row.get("site")) else []),
            )
        )
    return records


def _cbis_record(row: dict, line: str, root: Path, given_split: str) -> SourceRecord:
    rel = str(row["image file path"]).strip()
    mask_rel = str(row["ROI mask file path"]).strip()
    pathology = str(row["pathology"]).strip().upper()
    grade = CBIS_MALIGNANT.get(pathology, "unknown pathology (expected MALIGNANT, BENIGN or BENIGN_WITHOUT_CALLBACK)")
    extra = {}
    for field, (column, allowed) in CBIS_WHITELIST.items():
        value = str(row.get(column, "")).strip().upper()
        extra[field] = value if allowed.fullmatch(value) else ""
    return SourceRecord(
        row=line,
        image_path=root / rel,
        mask_path=root / mask_rel,
        key=f"{_normalised(rel)}|{extra['abnormality_id'] or row['abnormality id']}",
        patient=row["patient_id"] or None,
        grades={"malignant": grade},
        # Training-set patients are split into train/val later; a patient in both CSVs is
        # caught as "a patient in two splits".
        split="test" if given_split == "test" else TRAIN_POOL,
        extra=extra,
        identifiers=[rel, mask_rel],
    )


def adapt_cbis_ddsm(cfg: dict) -> list[SourceRecord]:
    if list(cfg["labels"]) != ["malignant"]:
        raise ConfigError("cbis_ddsm adapter: labels must be [malignant] (pathology MALIGNANT vs BENIGN*)")
    root = Path(cfg["root"])
    records = []
    for given_split, paths in cfg["description_csvs"].items():
        for csv in paths:
            csv = Path(csv)
            table = _read_table(csv)
            # CBIS-DDSM spells the density column differently in its mass and calc tables.
            table = table.rename(columns={"breast density": "breast_density"})
            _require_columns(table, csv, CBIS_REQUIRED)
            for i, row in enumerate(table.to_dict("records")):
                records.append(_cbis_record(row, _line(csv, i), root, given_split))
    return records


# Adapters whose records carry a site (DICOM InstitutionName or a ``site`` table column).
SITE_ADAPTERS = ("dicom_folder", "nifti_clinical")

ADAPTERS: dict[str, Callable[[dict], list[SourceRecord]]] = {
    "dicom_folder": lambda cfg: adapt_table(cfg, volume=False),
    "nifti_clinical": lambda cfg: adapt_table(cfg, volume=True),
    "cbis_ddsm": adapt_cbis_ddsm,
}


# --------------------------------------------------------------------------- inspection (workers)


def _header_facts(path: Path) -> dict:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    birth, study = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
    return {
        "patient": str(ds.get("PatientID", "") or "") or None,
        "sex": ds.get("PatientSex"),
        "age": ds.get("PatientAge") or None,
        "dates": (birth, study) if birth and study else None,
        "identifiers": header_identifiers(ds),
        "modality": str(ds.get("Modality", "") or ""),
        "institution": str(ds.get("InstitutionName", "") or "").strip() or None,
        "sop_class": pydicom.uid.UID(str(ds.get("SOPClassUID", "") or "")).name,
    }


_NO_HEADER = {"patient": None, "sex": None, "age": None, "dates": None, "identifiers": [], "modality": "",
              "institution": None, "sop_class": ""}


class _Refused(Exception):
    """A record refused by a check: which of its files (``part``) and why."""

    def __init__(self, part: str, reason: str):
        super().__init__(reason)
        self.part, self.reason = part, reason


def _header_or_refuse(path: Path, part: str) -> dict:
    from dpmed.io.dicom import read_dicom_image

    try:
        return _header_facts(path)
    except Exception:
        try:  # let the reader say what is wrong with the file (not DICOM, truncated, ...)
            read_dicom_image(path)
        except BadRecordError as err:
            raise _Refused(part, err.reason) from None
        raise _Refused(part, "the DICOM header cannot be read") from None


def _inspect_projection(record: SourceRecord, kind: str) -> dict:
    """A radiograph or a mammogram (+ its ROI mask): header checks first, then decode."""
    from dpmed.io.checks import check_modality, check_not_constant, content_digest
    from dpmed.io.dicom import read_dicom_image

    facts = _header_or_refuse(record.image_path, "image file")
    try:
        check_modality(kind, facts["modality"], facts["sop_class"])
        image = read_dicom_image(record.image_path)
        check_not_constant(image.pixels)
    except (ValueError, BadRecordError) as err:
        raise _Refused("image file", getattr(err, "reason", str(err))) from None
    arrays = [image.pixels]
    if kind == "mammography":
        mask_path = record.mask_path
        if mask_path is None or not mask_path.exists():
            raise _Refused("ROI mask file", "ROI mask file not found")
        try:
            mask = read_dicom_image(mask_path)
        except BadRecordError as err:
            raise _Refused("ROI mask file", err.reason) from None
        if mask.pixels.shape != image.pixels.shape:
            raise _Refused("ROI mask file", f"ROI mask shape {mask.pixels.shape} differs from image shape {image.pixels.shape}")
        if not np.any(mask.pixels > 0):
            raise _Refused("ROI mask file", "ROI mask is empty")
        arrays.append(mask.pixels)  # several masses of one image are several records
    return {**facts, "digest": content_digest(*arrays)}


def _inspect_series(folder: Path) -> dict:
    """A CT series folder: every slice decoded, the offending one named by its place in the folder."""
    from dpmed.io.checks import check_hounsfield, check_modality, content_digest
    from dpmed.io.dicom import read_dicom_series, series_files

    slices = series_files(folder)
    if not slices:
        raise _Refused("series folder", "DICOM series folder holds no slice files")
    where = {str(p): f"series file {i + 1} of {len(slices)} (in name order)" for i, p in enumerate(slices)}
    facts = _header_or_refuse(slices[0], where[str(slices[0])])
    try:
        check_modality("ct", facts["modality"], facts["sop_class"])
        volume = read_dicom_series(slices)
        check_hounsfield(volume.data)
    except BadRecordError as err:
        raise _Refused(where.get(err.source, "series folder"), err.reason) from None
    except ValueError as err:
        raise _Refused("series folder", str(err)) from None
    return {**facts, "digest": content_digest(volume.data)}


def _inspect_nifti(path: Path) -> dict:
    from dpmed.io.checks import check_hounsfield, content_digest
    from dpmed.io.nifti import read_nifti_volume

    try:
        volume = read_nifti_volume(path)
        check_hounsfield(volume.data)
    except (ValueError, BadRecordError) as err:
        raise _Refused("volume file", getattr(err, "reason", str(err))) from None
    return {**_NO_HEADER, "digest": content_digest(volume.data)}


def inspect_record(record: SourceRecord, kind: str) -> dict:
    """Open, check and decode a record's files; return header facts and a digest of the pixels.

    Raises
    ------
    BadRecordError: source = which file of the record (``image file``, ``ROI mask file``,
        ``series file 3 of 40 (in name order)``, ...), record = the table line, reason in dpmed's
        own words (no header value is quoted).
    """
    path = record.image_path
    try:
        with quiet_readers():
            if not path.exists():
                raise _Refused("image file", "file not found")
            if kind == "ct":
                return _inspect_series(path) if path.is_dir() else _inspect_nifti(path)
            return _inspect_projection(record, kind)
    except _Refused as err:
        raise BadRecordError(err.part, record.row, err.reason) from None


def _inspect_safely(args) -> tuple[bool, Any]:
    record, kind = args
    try:
        return True, inspect_record(record, kind)
    except BadRecordError as err:
        return False, err
    except Exception as err:  # an unreadable file must be reported as such, not crash the run
        return False, BadRecordError("image file", record.row, f"cannot read ({type(err).__name__})")


# --------------------------------------------------------------------------- resolution


def _resolve_age(record: SourceRecord, facts: dict, optional: bool) -> float:
    """Whole years (as DICOM AS counts them): an exact age would give the birth date back."""
    raw = record.age if not _is_missing(record.age) else facts.get("age")
    try:
        if _is_missing(raw) and facts.get("dates"):
            return float(age_from_dates(*facts["dates"]))
        return float(math.floor(parse_age(raw)))
    except ValueError:
        if optional and _is_missing(raw) and not facts.get("dates"):
            return float("nan")
        raise


def _resolve(record: SourceRecord, facts: dict, cfg: dict) -> dict:
    """Combine table and header facts into validated fields. Raises ValueError with the reason."""
    patient = record.patient or facts.get("patient")
    if not patient:
        raise ValueError("no patient id in the table or the DICOM header")
    optional = not cfg["demographics_required"]
    raw_sex = record.sex if not _is_missing(record.sex) else facts.get("sex")
    try:
        sex = parse_sex(raw_sex)
    except ValueError:
        if not (optional and _is_missing(raw_sex)):
            raise
        sex = "U"
    age = _resolve_age(record, facts, optional)
    grades = cfg["grades"]
    labels = {}
    for label, value in record.grades.items():
        if isinstance(value, str) and value.startswith("unknown pathology"):
            raise ValueError(value)
        grade = parse_grade(value, label, grades["min"], grades["max"])
        labels[label] = int(grade >= grades["positive_from"])
    split = record.split
    if split is not None and not _is_missing(split):
        split = str(split).strip().lower()
        if split not in SPLITS and split != TRAIN_POOL:
            raise ValueError("split is not one of train/val/test")
    else:
        split = None
    site = None
    if cfg["adapter"] in SITE_ADAPTERS:
        site = normalise_site(record.site if not _is_missing(record.site) else facts.get("institution"))
    return {"patient": str(patient), "sex": sex, "age": age, "labels": labels, "split": split, "site": site}


def normalise_site(name: Any) -> str | None:
    """One spelling per site name: stripped, inner whitespace collapsed, case-folded (``None`` if empty).

    ``"  Demo  General Hospital"`` and ``"DEMO GENERAL HOSPITAL"`` are the same site.
    """
    if _is_missing(name):
        return None
    text = " ".join(str(name).split()).casefold()
    return text or None


def site_pseudonym(key: bytes, site: str) -> str:
    """A site's keyed pseudonym (``S-…``). The HMAC input carries a ``site:`` domain prefix, so a
    site name can never give the same pseudonym as a patient id that happens to equal it."""
    return pseudonym(key, "site:" + site, "S")


def age_group_edges(ages: np.ndarray, spec) -> list[float]:
    """Bin edges from the config: explicit edges, or cohort quartiles (last edge open)."""
    if spec == "quartiles":
        finite = ages[np.isfinite(ages)]
        if finite.size == 0:
            return [0.0, math.inf]
        q = np.quantile(finite, [0.25, 0.5, 0.75])
        return [0.0, *[float(round(x, 1)) for x in q], math.inf]
    return [float(e) for e in spec]


def age_group_labels(edges: list[float], quartiles: bool) -> list[str]:
    labels = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        span = f"[{lo:g},{hi:g})" if math.isfinite(hi) else f"[{lo:g},+)"
        labels.append(f"Q{i + 1}{span}" if quartiles else span)
    return labels


def assign_age_group(age: float, edges: list[float], labels: list[str]) -> str:
    if not math.isfinite(age):
        return "unknown"
    i = int(np.searchsorted(edges, age, side="right")) - 1
    if i < 0 or i >= len(labels):
        raise ValueError(f"age outside the configured age groups [{edges[0]:g}, {edges[-1]:g})")
    return labels[i]


def assign_splits(patients: pd.DataFrame, fractions: dict, seed: int) -> dict[str, str]:
    """Patient-wise stratified split.

    ``patients`` has columns ``patient`` (original id, never output) and ``stratum``. Within each
    stratum patients are shuffled with the seed and cut at the cumulative fractions, so every
    split keeps the class ratio as closely as integer counts allow.
    """
    rng = np.random.default_rng(seed)
    shares = np.array([fractions["train"], fractions["val"], fractions["test"]], dtype=float)
    cum = np.cumsum(shares / shares.sum())
    out: dict[str, str] = {}
    for _, group in patients.sort_values(["stratum", "patient"]).groupby("stratum", sort=True):
        ids = group["patient"].to_numpy()
        ids = ids[rng.permutation(len(ids))]
        cuts = np.rint(cum * len(ids)).astype(int)
        for i, pid in enumerate(ids):
            out[pid] = SPLITS[int(np.searchsorted(cuts, i, side="right"))]
    return out


def _stratum(labels: list[dict]) -> int:
    """A patient's stratum: positive-label count over their records, capped at 3."""
    positives = {k for rec in labels for k, v in rec.items() if v}
    return min(len(positives), 3) if len(labels[0]) > 1 else int(bool(positives))


# --------------------------------------------------------------------------- the whole stage


def _duplicate_files(records: list[SourceRecord], errors: dict[int, BadRecordError]) -> None:
    """The same file listed twice (``a/b.dcm``, ``./a/b.dcm``, ``x/../a/b.dcm``, a symlink): later ones are bad."""
    first: dict[str, int] = {}
    for i, rec in enumerate(records):
        j = first.setdefault(rec.same_file, i)
        if j != i:
            errors[i] = BadRecordError(
                "image file", rec.row, f"the same file as {records[j].row} (listed twice, e.g. under "
                "two spellings of its path); one image must be one record"
            )


def _duplicate_content(records: list[SourceRecord], facts: dict[int, dict], errors: dict[int, BadRecordError]) -> None:
    """The same decoded pixels under two records (a copy, another encoding): later ones are bad."""
    first: dict[str, int] = {}
    for i in sorted(facts):
        j = first.setdefault(facts[i]["digest"], i)
        if j != i:
            errors[i] = BadRecordError(
                "image file", records[i].row, f"the same pixel content as {records[j].row}; one image "
                "under two records would reach two splits (test leakage)"
            )


def _inspect_all(records: list[SourceRecord], todo: list[int], kind: str, workers: int) -> list:
    items = [(records[i], kind) for i in todo]
    return list(ordered_map(_inspect_safely, items, workers if len(items) >= 2 * workers else 1))


def _rejected_table(errors: dict[int, BadRecordError], redact: Redactor) -> pd.DataFrame:
    rows = [{"source": redact(e.source), "record": e.record, "reason": redact(e.reason)} for _, e in sorted(errors.items())]
    return pd.DataFrame(rows, columns=REJECTED_COLUMNS)


def _stop_on_first(errors: dict[int, BadRecordError], redact: Redactor) -> None:
    err = errors[min(errors)]
    more = f" ({len(errors) - 1} more bad record(s); set on_bad_record: skip to list them all)" if len(errors) > 1 else ""
    raise BadRecordError(redact(err.source), err.record, redact(err.reason) + more)


def _assign_age_groups(records, resolved: dict[int, dict], errors, cfg: dict) -> list[float]:
    """Age group of every resolved record (quartile edges from the records that passed)."""
    quartiles = cfg["age_groups"] == "quartiles"
    ages = np.array([r["age"] for r in resolved.values()], dtype=float)
    edges = age_group_edges(ages, cfg["age_groups"])
    group_labels = age_group_labels(edges, quartiles)
    for i in list(resolved):
        try:
            resolved[i]["age_group"] = assign_age_group(resolved[i]["age"], edges, group_labels)
        except ValueError as err:
            errors[i] = BadRecordError("table", records[i].row, str(err))
            del resolved[i]
    return edges


def _split_of_patients(resolved: dict[int, dict], cfg: dict) -> dict[str, str]:
    """Given splits as given; the rest patient-wise, stratified and seeded."""
    by_patient: dict[str, list[int]] = {}
    for i, r in resolved.items():
        by_patient.setdefault(r["patient"], []).append(i)
    given = {r["patient"]: r["split"] for r in resolved.values() if r["split"] in SPLITS}
    free = pd.DataFrame(
        [
            {"patient": p, "stratum": _stratum([resolved[i]["labels"] for i in idx])}
            for p, idx in by_patient.items()
            if p not in given
        ],
        columns=["patient", "stratum"],
    )
    split_of = dict(given)
    if len(free):
        split_of.update(assign_splits(free, dict(cfg["split"]), cfg["split"]["seed"]))
    return split_of


def _check_split_sizes(name: str, split_of: dict[str, str], resolved: dict[int, dict], cfg: dict, rejected) -> None:
    """Every split the config asks for gets ``min_patients``: a split given in the table, or one with a
    fraction > 0 unless every record's split is fixed by the adapter (a test-only external cohort
    listed in CBIS-DDSM's test CSVs has nothing to carve)."""
    minimum = cfg["split"]["min_patients"]
    given = {r["split"] for r in resolved.values()}
    carved = cfg["split"].get("column") is not None or any(r["split"] not in SPLITS for r in resolved.values())
    counts = pd.Series(list(split_of.values()), dtype=object).value_counts()
    for split in SPLITS:
        wanted = (carved and cfg["split"][split] > 0) or split in given
        n = int(counts.get(split, 0))
        if wanted and n < minimum:
            raise DataError(
                f"dataset {name}: split {split} gets {n} patient(s), fewer than split.min_patients = "
                f"{minimum} ({len(split_of)} patients in all); add patients, change the split "
                "fractions, or lower split.min_patients",
                rejected=rejected,
            )


def _manifest_rows(name: str, key: bytes, records, resolved, split_of, pseudonyms) -> tuple[list, list]:
    rows, sources = [], []
    with_site = any(r.get("site") for r in resolved.values())
    for i, r in resolved.items():
        rec = records[i]
        record_id = pseudonym(key, f"{name}|{rec.key}", name)
        rows.append({
            "record_id": record_id,
            "patient_id": pseudonyms[r["patient"]],
            "split": split_of[r["patient"]],
            "sex": r["sex"],
            "age": float(r["age"]),  # whole years (NaN when unknown and allowed)
            "age_group": r["age_group"],
            **{f"label_{k}": v for k, v in r["labels"].items()},
            "source_path": rec.row,  # where the record is listed; the real path stays private
            **({"site": site_pseudonym(key, r["site"]) if r.get("site") else None} if with_site else {}),
            **rec.extra,  # whitelisted values only (see CBIS_WHITELIST)
        })
        sources.append({
            "record_id": record_id,
            "image_path": str(rec.image_path.resolve()),
            "mask_path": str(rec.mask_path.resolve()) if rec.mask_path else "",
        })
    return rows, sources


def ingest_dataset(name: str, cfg: dict, *, key: bytes, on_bad_record: str = "error", workers: int = 1) -> IngestResult:
    """Build the manifest of one dataset. See the module docstring for the contract.

    Raises
    ------
    ConfigError: a table is missing or lacks a required column.
    DataError: a table is empty or unreadable; with ``on_bad_record: skip`` every record was
        rejected; a split gets fewer than ``split.min_patients`` patients. ``err.rejected`` then
        holds the rejected records so far.
    BadRecordError: with ``on_bad_record: error``, the first bad record (table line, file, reason).
    """
    records = ADAPTERS[cfg["adapter"]](cfg)
    errors: dict[int, BadRecordError] = {}
    _duplicate_files(records, errors)
    todo = [i for i in range(len(records)) if i not in errors]
    facts: dict[int, dict] = {}
    identifiers: list[str] = [ident for rec in records for ident in rec.identifiers]
    for i, (ok, payload) in zip(todo, _inspect_all(records, todo, cfg["kind"], workers)):
        if ok:
            facts[i] = payload
            identifiers.extend(payload["identifiers"])
        else:
            errors[i] = payload
    _duplicate_content(records, facts, errors)
    resolved: dict[int, dict] = {}
    for i in sorted(set(facts) - set(errors)):
        try:
            resolved[i] = _resolve(records[i], facts[i], cfg)
        except ValueError as err:
            errors[i] = BadRecordError("table or header", records[i].row, str(err))

    # Redact with everything known about every record: a bad record's own header may be unreadable.
    patient_ids = {r["patient"] for r in resolved.values()} | {rec.patient for rec in records if rec.patient}
    patient_ids |= {f["patient"] for f in facts.values() if f.get("patient")}
    pseudonyms = {pid: pseudonym(key, pid, "P") for pid in patient_ids}
    redact = Redactor(pseudonyms, identifiers)

    edges = _assign_age_groups(records, resolved, errors, cfg)
    _check_given_splits(records, resolved, errors, pseudonyms)
    _check_one_site(records, resolved, errors, pseudonyms)
    if errors and on_bad_record == "error":
        _stop_on_first(errors, redact)
    rejected = _rejected_table(errors, redact)
    if not resolved:
        raise DataError(
            f"dataset {name}: all {len(records)} records were rejected (on_bad_record: skip); "
            "rejected.csv lists the reason for each",
            rejected=rejected,
        )
    split_of = _split_of_patients(resolved, cfg)
    _check_split_sizes(name, split_of, resolved, cfg, rejected)

    rows, sources = _manifest_rows(name, key, records, resolved, split_of, pseudonyms)
    manifest = pd.DataFrame(rows).sort_values("record_id", ignore_index=True)
    if manifest["record_id"].duplicated().any():  # would mean a hash collision: never silently merge
        raise RuntimeError(f"dataset {name}: record id collision")
    manifest.attrs["age_group_edges"] = edges
    return IngestResult(
        manifest=manifest,
        sources=pd.DataFrame(sources).sort_values("record_id", ignore_index=True),
        rejected=rejected,
    )


def _check_given_splits(records, resolved, errors, pseudonyms) -> None:
    """A patient whose records were given different splits is a bad record (every such row)."""
    splits: dict[str, set] = {}
    for i, r in resolved.items():
        if r["split"]:
            splits.setdefault(r["patient"], set()).add(r["split"])
    for patient, seen in splits.items():
        if len(seen) > 1:
            rows = [i for i, r in resolved.items() if r["patient"] == patient]
            where = ", ".join(records[i].row for i in rows)
            reason = (
                f"patient {pseudonyms[patient]} appears in splits {', '.join(sorted(seen))} "
                f"({where}); a patient must stay in one split"
            )
            for i in rows:
                errors[i] = BadRecordError("table", records[i].row, reason)
                del resolved[i]


def _check_one_site(records, resolved, errors, pseudonyms) -> None:
    """A patient recorded at two sites is a bad record (every such row, naming the table lines):
    the federation's sites must be disjoint by patient. The reason names no site."""
    sites: dict[str, set] = {}
    for r in resolved.values():
        if r.get("site"):
            sites.setdefault(r["patient"], set()).add(r["site"])
    for patient, seen in sites.items():
        if len(seen) > 1:
            rows = [i for i, r in resolved.items() if r["patient"] == patient]
            where = ", ".join(records[i].row for i in rows)
            reason = (f"patient {pseudonyms[patient]} appears at {len(seen)} sites ({where}); a patient "
                      "must belong to one site (InstitutionName or the table's site column)")
            for i in rows:
                errors[i] = BadRecordError("table or header", records[i].row, reason)
                del resolved[i]
