"""Ingestion: adapters, validation of every bad-input kind under both policies, pseudonyms, splits."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from dpmed.config import validate_config
from dicom_factory import write_dx
from dpmed.errors import BadRecordError, ConfigError, DataError
from dpmed.io.identifiers import Redactor, pseudonym
from dpmed.io.ingest import assign_splits, ingest_dataset, parse_age, parse_sex

KEY = bytes(range(32))
LABELS = ["effusion", "cardiomegaly"]


def dataset_cfg(table: Path, **extra) -> dict:
    cfg = {
        "datasets": {
            "cxr": {
                "kind": "radiograph",
                "adapter": "dicom_folder",
                "table": str(table),
                "labels": LABELS,
                "split": {"train": 0.5, "val": 0.25, "test": 0.25, "seed": 3},
                **extra,
            }
        }
    }
    return validate_config(cfg)["datasets"]["cxr"]


@pytest.fixture()
def cxr_folder(tmp_path) -> Path:
    """8 patients × 2 images, IDs in the folder names as real archives do."""
    rows = []
    for p in range(8):
        pid = f"HOSP{p:04d}"
        for k in range(2):
            rel = f"images/{pid}/study{k}.dcm"
            write_dx(tmp_path / rel, patient_id=pid, sex="MF"[p % 2], age=25 + 8 * p, name=f"Person^{pid}")
            rows.append({"path": rel, "effusion": (p + k) % 5, "cardiomegaly": p % 3})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path


def test_manifest_contract(cxr_folder):
    result = ingest_dataset("cxr", dataset_cfg(cxr_folder / "labels.csv"), key=KEY, workers=1)
    m = result.manifest
    assert list(m.columns[:6]) == ["record_id", "patient_id", "split", "sex", "age", "age_group"]
    assert len(m) == 16 and result.rejected.empty
    # Grades 0..4 binarised at >= 2 (methods.md A).
    table = pd.read_csv(cxr_folder / "labels.csv")
    assert sorted(m["label_effusion"]) == sorted((table["effusion"] >= 2).astype(int))
    # Pseudonym is the keyed hash of the header PatientID; the original never appears.
    assert set(m["patient_id"]) == {pseudonym(KEY, f"HOSP{p:04d}", "P") for p in range(8)}
    text = m.to_csv()
    assert "HOSP" not in text and "Person" not in text and "2020" not in text
    # source_path locates the record by table line; the real path stays in the private index.
    assert sorted(m["source_path"]) == sorted(f"labels.csv line {i}" for i in range(2, 18))
    # Age from "025Y"-style header strings, groups from the paper's bins.
    assert sorted(m["age"].unique()) == [25 + 8 * p for p in range(8)]
    assert set(m.loc[m["age"] == 25, "age_group"]) == {"[0,30)"}
    assert set(m.loc[m["age"] == 65, "age_group"]) == {"[60,70)"}
    # Patient-wise: every patient in exactly one split; sources privately keep the real path.
    assert (m.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(m["split"]) == {"train", "val", "test"}
    assert all(Path(p).exists() and "HOSP" in p for p in result.sources["image_path"])


def test_record_ids_stable_and_key_dependent(cxr_folder):
    cfg = dataset_cfg(cxr_folder / "labels.csv")
    a = ingest_dataset("cxr", cfg, key=KEY).manifest
    b = ingest_dataset("cxr", cfg, key=KEY, workers=2).manifest
    pd.testing.assert_frame_equal(a, b)
    c = ingest_dataset("cxr", cfg, key=bytes(32)).manifest
    assert set(a["record_id"]).isdisjoint(c["record_id"])
    # The split does not depend on the key (only on the data and the seed).
    assert sorted(a.groupby("split").size()) == sorted(c.groupby("split").size())


def test_split_is_stratified_and_seeded():
    patients = pd.DataFrame({"patient": [f"p{i}" for i in range(100)], "stratum": [i % 2 for i in range(100)]})
    s1 = assign_splits(patients, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    s2 = assign_splits(patients, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    s3 = assign_splits(patients, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=2)
    assert s1 == s2 and s1 != s3
    df = patients.assign(split=patients["patient"].map(s1))
    counts = df.groupby(["stratum", "split"]).size().unstack()
    assert counts.loc[0].to_dict() == {"test": 10, "train": 30, "val": 10}
    assert counts.loc[1].to_dict() == {"test": 10, "train": 30, "val": 10}


@pytest.mark.parametrize(
    "value, expected", [("067Y", 67.0), ("006M", 0.5), ("52", 52.0), (" 80.5 ", 80.5), ("002W", 14 / 365.25)]
)
def test_parse_age(value, expected):
    assert parse_age(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["", "abc", "-3", "200Y", "67 years", None])
def test_parse_age_refuses(value):
    with pytest.raises(ValueError):
        parse_age(value)


def test_parse_sex():
    assert [parse_sex(v) for v in ["m", "F", "female", "MALE"]] == ["M", "F", "F", "M"]
    for bad in ["O", "", "x", None]:
        with pytest.raises(ValueError):
            parse_sex(bad)


# ---------------------------------------------------------------- every bad input, both policies


def _break(kind: str, folder: Path) -> tuple[str, str]:
    """Damage the record on labels.csv line 2 (patient HOSP0000) in one way; return (reason part, extra)."""
    table = pd.read_csv(folder / "labels.csv")
    target = folder / table.loc[0, "path"]
    if kind == "missing file":
        target.unlink()
        return "file not found", ""
    if kind == "unreadable":
        target.write_bytes(b"this is not a DICOM file at all" * 10)
        return "", ""
    if kind == "non-image":
        shutil.copy(get_testdata_file("rtplan.dcm"), target)
        return "", ""
    if kind == "no pixel data":
        write_dx(target, patient_id="HOSP0000", pixels=False)
        return "", ""
    if kind == "bad age":
        write_dx(target, patient_id="HOSP0000", age=40)
        import pydicom

        ds = pydicom.dcmread(target)
        ds.PatientAge = "forty"
        ds.PatientBirthDate = ""
        ds.save_as(target)
        return "unparsable age", ""
    if kind == "bad sex":
        table["sex"] = ["Q"] + ["M"] * (len(table) - 1)
    if kind == "grade out of range":
        table.loc[0, "effusion"] = 7
    table.to_csv(folder / "labels.csv", index=False)
    return {"bad sex": "unparsable sex", "grade out of range": "outside its range"}.get(kind, ""), ""


BAD_KINDS = ["missing file", "unreadable", "non-image", "no pixel data", "bad age", "bad sex", "grade out of range"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_record_stops_with_file_record_reason(cxr_folder, kind):
    reason, _ = _break(kind, cxr_folder)
    with pytest.raises(BadRecordError) as info:
        ingest_dataset("cxr", dataset_cfg(cxr_folder / "labels.csv"), key=KEY)
    err = info.value
    assert err.record == "labels.csv line 2"
    assert err.source in ("image file", "table or header") and err.reason
    assert reason in err.reason
    # Built from the table line and dpmed's own words: no path, no ID, no header value.
    assert "HOSP0000" not in str(err) and "study0" not in str(err) and "forty" not in str(err)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_record_skipped_and_reported(cxr_folder, kind):
    reason, _ = _break(kind, cxr_folder)
    result = ingest_dataset("cxr", dataset_cfg(cxr_folder / "labels.csv"), key=KEY, on_bad_record="skip")
    assert len(result.manifest) == 15
    assert result.rejected["record"].tolist() == ["labels.csv line 2"]
    assert reason in result.rejected["reason"].iloc[0]
    assert "HOSP0000" not in result.rejected.to_csv()


def test_missing_file_of_unknown_patient_is_still_redacted(cxr_folder):
    """A missing file's own header cannot be read; its ID is known from the patient's other image."""
    _break("missing file", cxr_folder)
    result = ingest_dataset("cxr", dataset_cfg(cxr_folder / "labels.csv"), key=KEY, on_bad_record="skip")
    assert "HOSP0000" not in result.rejected.to_csv()


def test_error_counts_further_bad_records(cxr_folder):
    table = pd.read_csv(cxr_folder / "labels.csv")
    table.loc[[0, 5], "effusion"] = 9
    table.to_csv(cxr_folder / "labels.csv", index=False)
    with pytest.raises(BadRecordError, match="1 more bad record"):
        ingest_dataset("cxr", dataset_cfg(cxr_folder / "labels.csv"), key=KEY)


def test_given_split_honoured_and_patient_in_two_splits(cxr_folder):
    table = pd.read_csv(cxr_folder / "labels.csv")
    table["fold"] = ["train", "train", "val", "val"] + ["test"] * 12
    table.to_csv(cxr_folder / "labels.csv", index=False)
    cfg = dataset_cfg(cxr_folder / "labels.csv", split={"column": "fold"})
    m = ingest_dataset("cxr", cfg, key=KEY).manifest
    assert m.groupby("split").size().to_dict() == {"test": 12, "train": 2, "val": 2}

    table.loc[1, "fold"] = "test"  # HOSP0000's second image
    table.to_csv(cxr_folder / "labels.csv", index=False)
    with pytest.raises(BadRecordError, match="appears in splits test, train"):
        ingest_dataset("cxr", cfg, key=KEY)
    # Skipping HOSP0000 (the only train patient) leaves the train split empty: an error, not an empty split.
    with pytest.raises(DataError, match="split train gets 0 patient"):
        ingest_dataset("cxr", cfg, key=KEY, on_bad_record="skip")
    cfg["split"]["min_patients"] = 0
    skipped = ingest_dataset("cxr", cfg, key=KEY, on_bad_record="skip")
    assert skipped.rejected["record"].tolist() == ["labels.csv line 2", "labels.csv line 3"]
    assert len(skipped.manifest) == 14


def test_missing_label_column_is_a_config_error(cxr_folder):
    table = pd.read_csv(cxr_folder / "labels.csv").drop(columns=["cardiomegaly"])
    table.to_csv(cxr_folder / "labels.csv", index=False)
    with pytest.raises(ConfigError, match="missing column.*cardiomegaly"):
        ingest_dataset("cxr", dataset_cfg(cxr_folder / "labels.csv"), key=KEY)


# ---------------------------------------------------------------- NIfTI + clinical CSV


def _ct_folder(tmp_path: Path, bad: str | None = None) -> dict:
    rows = []
    rng = np.random.default_rng(5)
    for p in range(8):
        vol = np.full((6, 6, 4), -1000.0, dtype=np.float32)  # air around a body of soft tissue
        vol[1:5, 1:5] = 40.0 + rng.normal(0, 10, (4, 4, 4))
        if bad == "nan" and p == 3:
            vol[1, 2, 3] = np.nan
            vol[0, 0, 0] = np.inf
        nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])), tmp_path / f"v{p}.nii.gz")
        rows.append({"patient_id": f"CT{p}", "sex": "MF"[p % 2], "age": 40 + 5 * p, "pdac": p % 2, "path": f"v{p}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "clinical.csv", index=False)
    cfg = {"datasets": {"ct": {"kind": "ct", "adapter": "nifti_clinical", "table": str(tmp_path / "clinical.csv"),
                               "labels": ["pdac"], "grades": {"min": 0, "max": 1, "positive_from": 1},
                               "age_groups": "quartiles"}}}
    return validate_config(cfg)["datasets"]["ct"]


def test_nifti_clinical_quartiles(tmp_path):
    m = ingest_dataset("ct", _ct_folder(tmp_path), key=KEY).manifest
    assert len(m) == 8 and set(m["label_pdac"]) == {0, 1}
    # ages 40..75 step 5: quartiles at 48.75, 57.5, 66.25 -> two patients per group
    assert m["age_group"].value_counts().tolist() == [2, 2, 2, 2]
    assert m.loc[m["age"] == 40, "age_group"].item().startswith("Q1")
    assert m.attrs["age_group_edges"][1:4] == [48.8, 57.5, 66.2]


def test_nifti_nan_refused_and_skipped(tmp_path):
    cfg = _ct_folder(tmp_path, bad="nan")
    with pytest.raises(BadRecordError, match=r"clinical.csv line 5.*(NaN|nan)"):
        ingest_dataset("ct", cfg, key=KEY)
    result = ingest_dataset("ct", cfg, key=KEY, on_bad_record="skip")
    assert len(result.manifest) == 7 and len(result.rejected) == 1


# ---------------------------------------------------------------- CBIS-DDSM layout


def test_cbis_ddsm_adapter_and_empty_mask(tmp_path):
    from dpmed.demo import generate_mammography_cohort

    root = tmp_path / "mammo"
    generate_mammography_cohort(root, n_patients=8, image_size=(256, 192), seed=1, test_fraction=0.25)
    cfg = validate_config({"datasets": {"mg": {
        "kind": "mammography", "adapter": "cbis_ddsm", "root": str(root), "labels": ["malignant"],
        "grades": {"min": 0, "max": 1, "positive_from": 1},
        "split": {"train": 0.75, "val": 0.25, "test": 0.0},
        "description_csvs": {"train": [str(root / "mass_case_description_train_set.csv")],
                             "test": [str(root / "mass_case_description_test_set.csv")]}}}})["datasets"]["mg"]
    result = ingest_dataset("mg", cfg, key=KEY)
    m = result.manifest
    train = pd.read_csv(root / "mass_case_description_train_set.csv")
    test = pd.read_csv(root / "mass_case_description_test_set.csv")
    assert len(m) == len(train) + len(test)
    assert (m["split"] == "test").sum() == len(test)
    assert set(m["sex"]) == {"F"}
    assert m["label_malignant"].sum() == (pd.concat([train, test])["pathology"] == "MALIGNANT").sum()
    # CBIS folder names carry the patient ID; the manifest must not.
    assert "P_0" not in m.to_csv()

    # Empty ROI mask: refused, or skipped and reported.
    import pydicom

    mask_path = root / train.loc[0, "ROI mask file path"]
    ds = pydicom.dcmread(mask_path)
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype=ds.pixel_array.dtype).tobytes()
    ds.save_as(mask_path)
    with pytest.raises(BadRecordError, match="ROI mask is empty"):
        ingest_dataset("mg", cfg, key=KEY)
    skipped = ingest_dataset("mg", cfg, key=KEY, on_bad_record="skip")
    assert skipped.rejected["reason"].tolist() == ["ROI mask is empty"]
    assert "P_0" not in skipped.rejected.to_csv()


def test_redactor_longest_first_and_case_insensitive():
    redact = Redactor({"P_00001": "P-aaaa"}, identifiers=["Doe", "Doe^Jane", "20200101", "ab"])
    assert redact("Mass_p_00001_Doe^Jane_20200101_ab.dcm") == "Mass_P-aaaa_<redacted>_<redacted>_ab.dcm"
