"""Ingestion: one canonical manifest per dataset, whatever the source format.

Adapters turn a data source into :class:`SourceRecord` s:

* ``dicom_folder``   a labels CSV (column ``path`` relative to the CSV's folder, one column per
  label, optional ``patient_id``/``sex``/``age`` and split columns) + the DICOM files it names.
  Whatever the table lacks (patient, sex, age) is read from the DICOM header.
* ``nifti_clinical`` a clinical CSV (``patient_id, sex, age, path`` + labels) + NIfTI volumes
  (a ``path`` that is a folder is read as a DICOM series).
* ``cbis_ddsm``      CBIS-DDSM mass description CSVs + their image and ROI-mask DICOMs.

Every record is then opened and decoded once (in parallel) so the manifest only lists records
that preprocessing can use. Bad records either stop the run with one message naming file, record
and reason, or — with ``on_bad_record: skip`` — are left out and listed in ``rejected.csv``.

The manifest holds pseudonyms only; real file paths go to a private index outside results/.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as dt
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from dpmed.errors import BadRecordError, ConfigError
from dpmed.io.identifiers import Redactor, header_identifiers, pseudonym

SPLITS = ("train", "val", "test")
TRAIN_POOL = "train+val"  # a given split that leaves train vs val to the seeded splitter

CBIS_COLUMNS = (
    "patient_id",
    "breast_density",
    "left or right breast",
    "image view",
    "abnormality id",
    "abnormality type",
    "mass shape",
    "mass margins",
    "assessment",
    "pathology",
    "subtlety",
    "image file path",
    "cropped image file path",
    "ROI mask file path",
)
CBIS_REQUIRED = ("patient_id", "abnormality id", "pathology", "image file path", "ROI mask file path")
CBIS_MALIGNANT = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}


@dataclasses.dataclass
class SourceRecord:
    """One record as an adapter found it; nothing here is validated yet."""

    row: str  # locates the record without identifying anyone, e.g. "labels.csv line 17"
    rel_path: str  # image path relative to the data folder (redacted before it is shown)
    image_path: Path
    key: str  # unique within the dataset; hashed into the record id
    mask_path: Path | None = None
    patient: str | None = None
    sex: Any = None
    age: Any = None
    grades: dict[str, Any] = dataclasses.field(default_factory=dict)
    split: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    identifiers: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class IngestResult:
    manifest: pd.DataFrame  # shareable: pseudonyms and redacted paths only
    sources: pd.DataFrame  # private: record_id -> real file paths
    rejected: pd.DataFrame  # shareable: every skipped record with its reason


# --------------------------------------------------------------------------- parsing helpers

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
    raise ValueError(f"unparsable sex {str(value)!r} (expected M/F/male/female)")


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
            raise ValueError(f"unparsable age {text!r} (expected years or a DICOM age like 067Y)") from None
    if not (math.isfinite(age) and 0 <= age < 130):
        raise ValueError(f"implausible age {text!r}")
    return age


def _age_from_dates(birth: str, study: str) -> float:
    b = dt.datetime.strptime(birth[:8], "%Y%m%d").date()
    s = dt.datetime.strptime(study[:8], "%Y%m%d").date()
    years = (s - b).days / 365.25
    if years < 0:
        raise ValueError("birth date after study date")
    return years


def parse_grade(value: Any, label: str, lo: int, hi: int) -> int:
    if _is_missing(value):
        raise ValueError(f"label {label} is missing")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError(f"label {label} value {str(value)!r} is not a number") from None
    if not number.is_integer():
        raise ValueError(f"label {label} value {str(value)!r} is not an integer grade")
    grade = int(number)
    if not lo <= grade <= hi:
        raise ValueError(f"label {label} grade {grade} outside its range [{lo}, {hi}]")
    return grade


# --------------------------------------------------------------------------- adapters


def _read_table(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise ConfigError(f"{path}: table not found (check the dataset's table/description_csvs in the config)")
    # Everything as text: parsing (and its error messages) is ours, not pandas' guesswork.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _require_columns(table: pd.DataFrame, path: Path, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(table.columns)}")


def _line(path: Path, index: int) -> str:
    return f"{path.name} line {index + 2}"  # +1 for the header, +1 for 1-based lines


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
                rel_path=rel,
                image_path=(base / rel),
                key=rel,
                patient=row.get("patient_id") or None,
                sex=row.get("sex"),
                age=row.get("age"),
                grades={label: row[label] for label in cfg["labels"]},
                split=row[split_col] if split_col else None,
            )
        )
    return records


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
                rel = str(row["image file path"]).strip()
                mask_rel = str(row["ROI mask file path"]).strip()
                pathology = str(row["pathology"]).strip().upper()
                grade = CBIS_MALIGNANT.get(pathology, f"unknown pathology {row['pathology']!r}")
                records.append(
                    SourceRecord(
                        row=_line(csv, i),
                        rel_path=rel,
                        image_path=root / rel,
                        mask_path=root / mask_rel,
                        key=f"{rel}|{row['abnormality id']}",
                        patient=row["patient_id"] or None,
                        grades={"malignant": grade},
                        # Training-set patients are split into train/val later; a patient in both
                        # CSVs is caught as "a patient in two splits".
                        split="test" if given_split == "test" else TRAIN_POOL,
                        extra={
                            "laterality": row.get("left or right breast", ""),
                            "view": row.get("image view", ""),
                            "breast_density": row.get("breast_density", ""),
                            "abnormality_id": row.get("abnormality id", ""),
                        },
                        identifiers=[mask_rel],
                    )
                )
    return records


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
    }


def inspect_record(record: SourceRecord, kind: str) -> dict:
    """Open and decode a record's files; return header facts. Raises BadRecordError."""
    from dpmed.io.dicom import read_dicom_image

    path = record.image_path
    if not path.exists():
        raise BadRecordError(record.rel_path, record.row, "file not found")
    if kind == "ct":
        from dpmed.io.nifti import read_nifti_volume

        if path.is_dir():
            from dpmed.io.dicom import read_dicom_series

            slices = sorted(p for p in path.iterdir() if p.is_file())
            if not slices:
                raise BadRecordError(record.rel_path, record.row, "DICOM series folder is empty")
            read_dicom_series(slices)
            return _header_facts(slices[0])
        read_nifti_volume(path)
        return {"patient": None, "sex": None, "age": None, "dates": None, "identifiers": []}

    image = read_dicom_image(path)
    facts = _header_facts(path)
    if kind == "mammography":
        mask_path = record.mask_path
        if mask_path is None or not mask_path.exists():
            raise BadRecordError(record.rel_path, record.row, "ROI mask file not found")
        mask = read_dicom_image(mask_path)
        if mask.pixels.shape != image.pixels.shape:
            raise BadRecordError(
                record.rel_path,
                record.row,
                f"ROI mask shape {mask.pixels.shape} differs from image shape {image.pixels.shape}",
            )
        if not np.any(mask.pixels > 0):
            raise BadRecordError(record.rel_path, record.row, "ROI mask is empty")
    return facts


def _inspect_safely(args) -> tuple[bool, Any]:
    record, kind = args
    try:
        return True, inspect_record(record, kind)
    except BadRecordError as err:
        return False, BadRecordError(record.rel_path, record.row, err.reason)
    except Exception as err:  # an unreadable file must be reported as such, not crash the run
        return False, BadRecordError(record.rel_path, record.row, f"cannot read: {type(err).__name__}: {err}")


def _map(fn, items: list, workers: int) -> list:
    if workers <= 1 or len(items) < 2 * workers:
        return [fn(item) for item in items]
    with cf.ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (8 * workers))))


# --------------------------------------------------------------------------- resolution


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
        if optional and _is_missing(raw_sex):
            sex = "U"
        else:
            raise
    raw_age = record.age if not _is_missing(record.age) else facts.get("age")
    try:
        if _is_missing(raw_age) and facts.get("dates"):
            age = _age_from_dates(*facts["dates"])
        else:
            age = parse_age(raw_age)
    except ValueError:
        if optional and _is_missing(raw_age):
            age = float("nan")
        else:
            raise
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
            raise ValueError(f"split {record.split!r} is not one of train/val/test")
    else:
        split = None
    return {"patient": str(patient), "sex": sex, "age": age, "labels": labels, "split": split}


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
        raise ValueError(f"age {age:g} outside the configured age groups [{edges[0]:g}, {edges[-1]:g})")
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


def ingest_dataset(name: str, cfg: dict, *, key: bytes, on_bad_record: str = "error", workers: int = 1) -> IngestResult:
    """Build the manifest of one dataset. See the module docstring for the contract."""
    records = ADAPTERS[cfg["adapter"]](cfg)
    if not records:
        raise ConfigError(f"dataset {name}: the input table lists no records")

    errors: dict[int, BadRecordError] = {}
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        if rec.key in seen:
            errors[i] = BadRecordError(rec.rel_path, rec.row, f"duplicate of {records[seen[rec.key]].row}")
        else:
            seen[rec.key] = i

    todo = [i for i in range(len(records)) if i not in errors]
    results = _map(_inspect_safely, [(records[i], cfg["kind"]) for i in todo], workers)
    resolved: dict[int, dict] = {}
    identifiers: list[str] = []
    for i, (ok, payload) in zip(todo, results):
        identifiers.extend(records[i].identifiers)
        if not ok:
            errors[i] = payload
            continue
        identifiers.extend(payload.get("identifiers", []))
        try:
            resolved[i] = _resolve(records[i], payload, cfg)
        except ValueError as err:
            errors[i] = BadRecordError(records[i].rel_path, records[i].row, str(err))

    # Redact with everything known about every record: a bad record's own header may be unreadable.
    patient_ids = {r["patient"] for r in resolved.values()} | {rec.patient for rec in records if rec.patient}
    pseudonyms = {pid: pseudonym(key, pid, "P") for pid in patient_ids}
    redact = Redactor(pseudonyms, identifiers)

    # Age groups (quartile edges come from the records that passed).
    quartiles = cfg["age_groups"] == "quartiles"
    ages = np.array([r["age"] for r in resolved.values()], dtype=float)
    edges = age_group_edges(ages, cfg["age_groups"])
    group_labels = age_group_labels(edges, quartiles)
    for i in list(resolved):
        try:
            resolved[i]["age_group"] = assign_age_group(resolved[i]["age"], edges, group_labels)
        except ValueError as err:
            errors[i] = BadRecordError(records[i].rel_path, records[i].row, str(err))
            del resolved[i]

    _check_given_splits(records, resolved, errors, pseudonyms)

    if errors and on_bad_record == "error":
        first = min(errors)
        err = errors[first]
        more = f" ({len(errors) - 1} more bad record(s); set on_bad_record: skip to list them all)" if len(errors) > 1 else ""
        raise BadRecordError(redact(err.source), err.record, redact(err.reason) + more)

    # Splits for patients without a given split.
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
        fractions = dict(cfg["split"])
        split_of.update(assign_splits(free, fractions, cfg["split"]["seed"]))

    rows, sources = [], []
    for i, r in resolved.items():
        rec = records[i]
        record_id = pseudonym(key, f"{name}|{rec.key}", name)
        row = {
            "record_id": record_id,
            "patient_id": pseudonyms[r["patient"]],
            "split": split_of[r["patient"]],
            "sex": r["sex"],
            "age": float(r["age"]),
            "age_group": r["age_group"],
            **{f"label_{k}": v for k, v in r["labels"].items()},
            "source_path": redact(rec.rel_path),
        }
        row.update({k: redact(str(v)) for k, v in rec.extra.items()})
        rows.append(row)
        sources.append(
            {
                "record_id": record_id,
                "image_path": str(rec.image_path.resolve()),
                "mask_path": str(rec.mask_path.resolve()) if rec.mask_path else "",
            }
        )
    manifest = pd.DataFrame(rows).sort_values("record_id", ignore_index=True)
    if manifest["record_id"].duplicated().any():  # would mean a hash collision: never silently merge
        raise RuntimeError(f"dataset {name}: record id collision")
    manifest.attrs["age_group_edges"] = edges
    rejected = pd.DataFrame(
        [
            {"source": redact(e.source), "record": e.record, "reason": redact(e.reason)}
            for _, e in sorted(errors.items())
        ],
        columns=["source", "record", "reason"],
    )
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
                errors[i] = BadRecordError(records[i].rel_path, records[i].row, reason)
                del resolved[i]
