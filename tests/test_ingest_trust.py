"""Ingestion you can trust with a real PACS export (issue 13): identifiers in headers and paths in
every spelling, the same image twice, all-bad cohorts, unreadable tables, and honest refusals —
each under both bad-record policies where a policy applies."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import shutil
import unicodedata
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicom_factory import write_dx, write_pacs_dx
from dpmed.config import validate_config
from dpmed.errors import BadRecordError, DataError
from dpmed.io.identifiers import Redactor, pseudonym
from dpmed.io.ingest import ingest_dataset

KEY = bytes(range(32))
POLICIES = ["error", "skip"]
SURNAMES = ["Müller", "Åström", "Núñez", "Çelik", "Dvořák", "Grönberg", "Söderholm", "Bérénger", "Kühnert", "Ibáñez"]
GIVEN = ["Jürgen", "Zoë", "José", "Émilie", "Renée", "Ingrid", "Anaïs", "Hélène", "Jörg", "Inés"]
# The tags a de-identification profile (PS3.15 Annex E) treats as identifying; chosen here, not
# imported, so the test notices when the package forgets one.
SCANNED_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "ContentDate",
                "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "InstitutionName")


def _cfg(table: Path, kind: str = "radiograph", adapter: str = "dicom_folder", **extra) -> dict:
    ds = {"kind": kind, "adapter": adapter, "table": str(table), "labels": ["finding"],
          "grades": {"min": 0, "max": 1, "positive_from": 1}, **extra}
    if kind == "ct":
        ds.setdefault("age_groups", "quartiles")
    return validate_config({"datasets": {"d": ds}})["datasets"]["d"]


def _skeleton(text: str) -> str:
    """Spelling-independent form for scanning: no accents, no case, letters and digits only."""
    folded = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", "", folded.casefold())


def _folder_spelling(p: int, surname: str, given: str, pid: str, birth: dt.date, study: dt.date) -> str:
    names = [
        f"{surname}_{given}".upper(),  # upper case, '_' for '^'
        unicodedata.normalize("NFD", f"{surname} {given}"),  # as macOS writes it
        surname.translate(str.maketrans({"ü": "ue", "ö": "oe", "ä": "ae"})).upper(),  # one part, transliterated
        unicodedata.normalize("NFD", given),  # the other part alone
    ]
    dates = [birth.strftime("%Y-%m-%d"), birth.strftime("%d.%m.%Y"), study.strftime("%Y_%m_%d")]
    return f"{names[p % 4]}_{pid.replace('-', '')}/{dates[p % 3]}"


def _pacs_export(root: Path) -> tuple[Path, set[str]]:
    """10 patients × 2 images under PACS-style paths, plus 3 bad records. Returns table and identifiers."""
    rows, idents = [], set()
    for p in range(10):
        pid, name = f"HOSP-47-{p:03d}", f"{SURNAMES[p]}^{GIVEN[p]}"
        birth, study = dt.date(1950 + p, 3, 17 + p), dt.date(2020, 3, 4 + p)
        study_uid = f"1.2.826.0.1.3680043.8.498.{4711 + p}"
        for k in range(2):
            series_uid, sop_uid = f"{study_uid}.{k + 1}", f"{study_uid}.{k + 1}.{900 + k}"
            rel = f"{_folder_spelling(p, SURNAMES[p], GIVEN[p], pid, birth, study)}/{study_uid}/{series_uid}/{sop_uid}.dcm"
            write_pacs_dx(root / rel, patient_id=pid, name=name, birth=birth, study=study, study_uid=study_uid,
                          series_uid=series_uid, sop_uid=sop_uid, accession=f"ACC{p:04d}{k}")
            rows.append({"path": rel, "finding": p % 2})
    # Bad records: a malformed birth date, a path whose only identifier is in its folder name, an unparsable age.
    bad = "BADDATE_Quigley/1.2.826.0.1.3680043.8.498.999/img.dcm"
    write_pacs_dx(root / bad, patient_id="HOSP-47-999", name="Quigley^Wilhelmina", birth=dt.date(1960, 1, 1),
                  study=dt.date(2021, 1, 1), study_uid="1.2.826.0.1.3680043.8.498.999", series_uid="1.2.826.0.1.3680043.8.498.999.1",
                  sop_uid="1.2.826.0.1.3680043.8.498.999.1.1", accession="ACC9999")
    ds = pydicom.dcmread(root / bad)
    ds.PatientBirthDate = "19601345"  # month 13: quoted verbatim by a careless message
    ds.save_as(root / bad)
    unreadable = "GEHEIMNAME_Ottokar/broken.dcm"
    (root / unreadable).parent.mkdir(parents=True)
    (root / unreadable).write_bytes(b"not a DICOM file " * 20)
    rows += [{"path": bad, "finding": 0}, {"path": unreadable, "finding": 1}, {"path": rows[0]["path"], "finding": "seventeen"}]
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)

    for path in root.rglob("*.dcm"):
        rel = path.relative_to(root)
        idents |= {part for comp in rel.parts for part in [comp, *re.split(r"[_ ]", comp)]}
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        for tag in SCANNED_TAGS:
            value = str(header.get(tag, "") or "")
            idents |= {value, *re.split(r"[\^ ]", value)}
    idents.discard("img.dcm")
    idents.discard("broken.dcm")
    return root / "labels.csv", {i for i in idents if len(_skeleton(i)) >= 4}


def _leaks(text: str, identifiers: set[str]) -> list[str]:
    skeleton = _skeleton(text)
    return sorted(i for i in identifiers if _skeleton(i) in skeleton)


@pytest.mark.parametrize("policy", POLICIES)
def test_pacs_export_leaves_no_identifier_in_outputs(tmp_path, policy):
    table, identifiers = _pacs_export(tmp_path)
    assert {"HOSP-47-003", "1955-03-22", "MÜLLER_JÜRGEN_HOSP47000", "GEHEIMNAME_Ottokar", "19601345"} & identifiers
    assert len(identifiers) > 100
    cfg = _cfg(table)
    if policy == "error":
        with pytest.raises(BadRecordError) as info:
            ingest_dataset("d", cfg, key=KEY, on_bad_record=policy)
        assert info.value.record == "labels.csv line 22"
        assert not _leaks(str(info.value), identifiers), _leaks(str(info.value), identifiers)
        return
    result = ingest_dataset("d", cfg, key=KEY, on_bad_record=policy)
    m, rejected = result.manifest, result.rejected
    assert len(m) == 20 and m["patient_id"].nunique() == 10
    assert rejected["record"].tolist() == ["labels.csv line 22", "labels.csv line 23", "labels.csv line 24"]
    reasons = rejected["reason"].tolist()
    assert "PatientBirthDate is not a DICOM date" in reasons[0]
    assert "not a DICOM file" in reasons[1]
    assert "the same file as labels.csv line 2" in reasons[2]
    for text in (m.to_csv(), rejected.to_csv()):
        assert not _leaks(text, identifiers), _leaks(text, identifiers)
    # Ages in whole years from the two dates (born 17+p March 1950+p, studied 4+p March 2020:
    # the birthday has not come yet, so 69 - p full years), never to the day.
    expected = {pseudonym(KEY, f"HOSP-47-{p:03d}", "P"): 69 - p for p in range(10)}
    assert m.set_index("patient_id")["age"].groupby(level=0).first().to_dict() == expected
    # The real paths are kept, privately.
    assert all(Path(p).exists() for p in result.sources["image_path"])


def test_redactor_matches_every_spelling():
    redact = Redactor({"HOSP-47-003": "P-x"}, ["Müller^Jürgen", "19550317", "1.2.826.0.1.3680043.8.498.4711"])
    nfd = unicodedata.normalize("NFD", "müller jürgen")
    for text in ["HOSP47003", "hosp_47_003", "MÜLLER_JÜRGEN", nfd, "MUELLER", "Jurgen", "1955-03-17", "17.03.1955",
                 "03/17/1955", "ST19550317", "1.2.826.0.1.3680043.8.498.4711", "1.2.826.0.1.3680043.8.498.4711.dcm"]:
        out = redact(f"a/{text}/b")
        assert _skeleton(text.replace(".dcm", "")) not in _skeleton(out), (text, out)
    assert redact("HOSP-47-003/x") == "P-x/x"
    assert redact("Does this mention Muller?").startswith("Does this mention <redacted>")


# ---------------------------------------------------------------- the same image twice


def _folder(tmp_path: Path, n: int = 10) -> Path:
    rows = []
    for p in range(n):
        write_dx(tmp_path / "good" / f"g{p}.dcm", patient_id=f"PAT{p:03d}")
        rows.append({"path": f"good/g{p}.dcm", "finding": p % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("spelling", ["./good/g0.dcm", "good/../good/g0.dcm", "good//g0.dcm", "link/g0.dcm"])
def test_same_file_under_two_spellings_is_one_record(tmp_path, policy, spelling):
    table = _folder(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "good")
    frame = pd.read_csv(table)
    # Listed again with another patient id: before, it became two patients in two splits.
    frame = pd.concat([frame, pd.DataFrame([{"path": spelling, "finding": 0, "patient_id": "OTHER"}])], ignore_index=True)
    frame.to_csv(table, index=False)
    if policy == "error":
        with pytest.raises(BadRecordError, match="labels.csv line 12: the same file as labels.csv line 2"):
            ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
        return
    result = ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
    assert len(result.manifest) == 10 and result.rejected["record"].tolist() == ["labels.csv line 12"]
    assert result.sources["image_path"].is_unique


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("copy", ["byte copy", "RLE re-encoded"])
def test_same_pixels_under_two_records_refused(tmp_path, policy, copy):
    table = _folder(tmp_path)
    ds = pydicom.dcmread(tmp_path / "good/g3.dcm")
    ds.PatientID = "SOMEONE-ELSE"
    if copy == "RLE re-encoded":
        ds.compress(pydicom.uid.RLELossless)
    ds.save_as(tmp_path / "good/copy.dcm")
    frame = pd.read_csv(table)
    pd.concat([frame, pd.DataFrame([{"path": "good/copy.dcm", "finding": 1}])]).to_csv(table, index=False)
    if policy == "error":
        with pytest.raises(BadRecordError, match="labels.csv line 12: the same pixel content as labels.csv line 5"):
            ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
        return
    result = ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
    assert len(result.manifest) == 10
    assert "same pixel content as labels.csv line 5" in result.rejected["reason"].item()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_record_bad(tmp_path, policy):
    table = _folder(tmp_path, n=4)
    frame = pd.read_csv(table)
    frame["finding"] = 5
    frame.to_csv(table, index=False)
    if policy == "error":
        with pytest.raises(BadRecordError, match="grade outside its range.*3 more bad record"):
            ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
        return
    with pytest.raises(DataError, match="dataset d: all 4 records were rejected") as info:
        ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
    assert info.value.rejected["record"].tolist() == [f"labels.csv line {i}" for i in range(2, 6)]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the table is empty"),
        (b"path,finding\n", "the table has a header but lists no records"),
        ("path,finding\ngood/g0.dcm,1\nM\xfcller.dcm,0\n".encode("latin-1"), r"not UTF-8 text \(byte 0xfc"),
    ],
)
def test_unreadable_table_names_the_file(tmp_path, policy, content, message):
    table = tmp_path / "labels.csv"
    table.write_bytes(content)
    with pytest.raises(DataError, match=f"{re.escape(str(table))}: {message}"):
        ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)


def test_utf8_table_with_bom_is_read(tmp_path):
    table = _folder(tmp_path)
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    assert len(ingest_dataset("d", _cfg(table), key=KEY).manifest) == 10


# ---------------------------------------------------------------- refuse, don't guess


def _seg_from(source: Path, target: Path) -> None:
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.66.4")
    ds.Modality = "SEG"
    ds.save_as(target)


def _constant(source: Path, target: Path) -> None:
    ds = pydicom.dcmread(source)
    ds.PixelData = np.full((ds.Rows, ds.Columns), 1000, np.uint16).tobytes()
    ds.save_as(target)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "kind, reason",
    [
        ("seg", "is a Segmentation object"),
        ("rtdose", "is a RT Dose object"),
        ("mr", "modality 'MR' does not fit a radiograph dataset"),
        ("ct slice", "modality 'CT' does not fit a radiograph dataset"),
        ("constant", "the image is constant"),
    ],
)
def test_radiograph_dataset_refuses_what_is_not_a_radiograph(tmp_path, policy, kind, reason):
    table = _folder(tmp_path)
    target = tmp_path / "good/g0.dcm"
    if kind == "seg":
        _seg_from(target, target)
    elif kind == "rtdose":
        shutil.copy(get_testdata_file("rtdose.dcm"), target)
    elif kind == "mr":
        shutil.copy(get_testdata_file("MR_small.dcm"), target)
    elif kind == "ct slice":
        shutil.copy(get_testdata_file("CT_small.dcm"), target)
    else:
        _constant(target, target)
    if policy == "error":
        with pytest.raises(BadRecordError, match=f"labels.csv line 2: .*{reason}") as info:
            ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
        assert "multi-frame" not in str(info.value)  # RT dose: not "split the frames"
        return
    result = ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
    assert len(result.manifest) == 9 and reason in result.rejected["reason"].item()


def _series(folder: Path, source: str, n: int = 4, modality: str | None = None) -> None:
    folder.mkdir(parents=True)
    for k in range(n):
        ds = pydicom.dcmread(get_testdata_file(source))
        ds.ImagePositionPatient = [-158.1, -179.0, -75.7 + 5.0 * k]
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{k}"
        ds.InstanceNumber = k + 1
        if modality:
            ds.Modality = modality
        ds.save_as(folder / f"1.2.826.0.1.3680043.8.498.77.{k}.dcm")


def _ct_table(root: Path, paths: list[str]) -> Path:
    rows = [{"patient_id": f"CT{i}", "sex": "MF"[i % 2], "age": 50 + i, "finding": i % 2, "path": p} for i, p in enumerate(paths)]
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    return root / "clinical.csv"


def _ct_cohort(root: Path, n: int = 5) -> list[str]:
    """n real CT series (pydicom's CT_small slices), each a little different."""
    paths = []
    for i in range(n):
        _series(root / f"ct{i}", "CT_small.dcm")
        for f in (root / f"ct{i}").iterdir():
            ds = pydicom.dcmread(f)
            ds.RescaleIntercept = float(ds.RescaleIntercept) + i  # distinct content per patient
            ds.save_as(f)
        paths.append(f"ct{i}")
    return paths


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("bad", ["mr series", "mr nifti", "ct without intercept"])
def test_ct_dataset_refuses_what_is_not_in_hounsfield_units(tmp_path, policy, bad):
    paths = _ct_cohort(tmp_path)
    if bad == "mr series":
        shutil.rmtree(tmp_path / "ct0")
        _series(tmp_path / "ct0", "MR_small.dcm")
        reason = "modality 'MR' does not fit a ct dataset"
    elif bad == "mr nifti":
        shutil.copy(Path(nibabel.testing.data_path) / "anatomical.nii", tmp_path / "anatomical.nii")
        paths[0] = "anatomical.nii"
        reason = "values do not look like Hounsfield units"
    else:
        for f in (tmp_path / "ct0").iterdir():
            ds = pydicom.dcmread(f)
            ds.RescaleIntercept = 1024  # air stored as 0 read as +1024: no air, no fat
            ds.save_as(f)
        reason = "values do not look like Hounsfield units"
    cfg = _cfg(_ct_table(tmp_path, paths), kind="ct", adapter="nifti_clinical", split={"train": 0.6, "val": 0.2, "test": 0.2, "min_patients": 0})
    if policy == "error":
        with pytest.raises(BadRecordError, match=f"clinical.csv line 2: {reason}"):
            ingest_dataset("ct", cfg, key=KEY, on_bad_record=policy)
        return
    result = ingest_dataset("ct", cfg, key=KEY, on_bad_record=policy)
    assert len(result.manifest) == 4 and reason in result.rejected["reason"].item()


@pytest.mark.parametrize("policy", POLICIES)
def test_series_folder_skips_index_files_and_names_the_bad_slice(tmp_path, policy):
    paths = _ct_cohort(tmp_path)
    shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "ct1" / "DICOMDIR")
    (tmp_path / "ct1" / "Thumbs.db").write_bytes(b"\x00" * 64)
    (tmp_path / "ct1" / ".DS_Store").write_bytes(b"\x00" * 64)
    slices = sorted((tmp_path / "ct2").iterdir())
    slices[2].write_bytes(slices[2].read_bytes()[:2000])  # truncated third slice
    cfg = _cfg(_ct_table(tmp_path, paths), kind="ct", adapter="nifti_clinical", split={"train": 0.6, "val": 0.2, "test": 0.2, "min_patients": 0})
    expected = r"series file 3 of 4 \(in name order\): clinical.csv line 4: .*truncated"
    if policy == "error":
        with pytest.raises(BadRecordError, match=expected):
            ingest_dataset("ct", cfg, key=KEY, on_bad_record=policy)
        return
    result = ingest_dataset("ct", cfg, key=KEY, on_bad_record=policy)
    assert len(result.manifest) == 4  # ct1 with its DICOMDIR and Thumbs.db is in
    row = result.rejected.iloc[0]
    assert re.match(expected, f"{row['source']}: {row['record']}: {row['reason']}")
    assert "77" not in row.to_string()  # the slice's UID file name is not quoted


@pytest.mark.parametrize("policy", POLICIES)
def test_too_few_patients_for_a_split_is_an_error(tmp_path, policy):
    table = _folder(tmp_path, n=4)
    with pytest.raises(DataError, match=r"dataset d: split (val|test) gets 0 patient\(s\), fewer than split.min_patients = 1"):
        ingest_dataset("d", _cfg(table), key=KEY, on_bad_record=policy)
    cfg = _cfg(table, split={"train": 0.6, "val": 0.2, "test": 0.2, "min_patients": 3})
    with pytest.raises(DataError, match="fewer than split.min_patients = 3"):
        ingest_dataset("d", cfg, key=KEY, on_bad_record=policy)
    # A split with fraction 0 may be empty (a public pretraining cohort has no test split).
    cfg = _cfg(table, split={"train": 0.5, "val": 0.5, "test": 0.0})
    assert set(ingest_dataset("d", cfg, key=KEY, on_bad_record=policy).manifest["split"]) == {"train", "val"}


def test_ages_are_whole_years(tmp_path):
    table = _folder(tmp_path, n=10)
    frame = pd.read_csv(table)
    frame["age"] = ["006M", "067Y", "80.9", "3W", "41", "52.5", "002D", "099Y", "30.01", "61"]
    frame.to_csv(table, index=False)
    m = ingest_dataset("d", _cfg(table), key=KEY).manifest
    by_line = dict(zip(m["source_path"], m["age"]))
    assert [by_line[f"labels.csv line {i}"] for i in range(2, 12)] == [0, 67, 80, 0, 41, 52, 0, 99, 30, 61]
    assert all(math.isfinite(a) and a == int(a) for a in m["age"])


def test_private_dir_is_the_owners_only(tmp_path):
    from dpmed.io.identifiers import load_or_create_key, restrict_private

    private = tmp_path / "private"
    load_or_create_key(private / "pseudonym.key")
    (private / "cxr").mkdir(mode=0o755)
    (private / "cxr" / "sources.parquet").write_text("x")
    os.chmod(private / "cxr" / "sources.parquet", 0o644)
    os.chmod(private / "pseudonym.key", 0o444)  # as Snakemake's protected() leaves it
    restrict_private(private)
    modes = {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in [private, *private.rglob("*")]}
    assert modes == {"private": "0o700", "private/cxr": "0o700", "private/cxr/sources.parquet": "0o600",
                     "private/pseudonym.key": "0o400"}
