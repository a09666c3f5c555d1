"""Ingestion records each record's site (issue 10): DICOM InstitutionName or a table column,
normalised, pseudonymised under its own HMAC domain; a patient at two sites is an error."""

from __future__ import annotations

import pandas as pd
import pytest

from dicom_factory import write_dx
from dpmed.errors import BadRecordError
from dpmed.io.identifiers import pseudonym
from dpmed.io.ingest import ingest_dataset, normalise_site, site_pseudonym
from test_ingest import KEY, dataset_cfg

# Spellings of the same two hospitals as PACS exports write them.
SPELLINGS = {0: ["St. Demo  Hospital", " ST. DEMO HOSPITAL"], 1: ["Nowhere Clinic", "nowhere   clinic "]}


def _folder(tmp_path, site_column=None):
    rows = []
    for p in range(8):
        pid = f"HOSP{p:04d}"
        for k in range(2):
            rel = f"images/{pid}/study{k}.dcm"
            write_dx(tmp_path / rel, patient_id=pid, sex="MF"[p % 2], age=30 + 5 * p,
                     institution=SPELLINGS[p % 2][k])
            row = {"path": rel, "effusion": (p + k) % 5, "cardiomegaly": p % 3}
            if site_column is not None:
                row["site"] = site_column(p, k)
            rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "labels.csv"


def test_normalise_site():
    assert normalise_site("  St. Demo   Hospital ") == normalise_site("ST. DEMO HOSPITAL") == "st. demo hospital"
    assert normalise_site("Straße Klinik") == normalise_site("STRASSE KLINIK")  # casefold, not lower
    assert normalise_site("  ") is None and normalise_site(None) is None and normalise_site(float("nan")) is None


def test_site_from_institution_name_pseudonymised(tmp_path):
    m = ingest_dataset("cxr", dataset_cfg(_folder(tmp_path)), key=KEY).manifest
    want = {site_pseudonym(KEY, "st. demo hospital"), site_pseudonym(KEY, "nowhere clinic")}
    assert set(m["site"]) == want  # spellings of one hospital are one site
    assert (m.groupby("patient_id")["site"].nunique() == 1).all()
    # the keyed hash under the "site:" domain: never equal to a patient pseudonym of the same text
    assert site_pseudonym(KEY, "hosp0001") != pseudonym(KEY, "hosp0001", "S")
    assert site_pseudonym(KEY, "x") == pseudonym(KEY, "site:x", "S")
    text = m.to_csv().casefold()
    assert "demo" not in text and "nowhere" not in text


def test_site_column_overrides_the_header(tmp_path):
    table = _folder(tmp_path, site_column=lambda p, k: f"Site {p % 3}")
    m = ingest_dataset("cxr", dataset_cfg(table), key=KEY).manifest
    assert set(m["site"]) == {site_pseudonym(KEY, f"site {i}") for i in range(3)}


def test_patient_at_two_sites_names_the_table_lines(tmp_path):
    table = _folder(tmp_path, site_column=lambda p, k: f"Ward {k}" if p == 3 else "Main Site")
    with pytest.raises(BadRecordError) as info:
        ingest_dataset("cxr", dataset_cfg(table), key=KEY)
    msg = str(info.value)
    assert "appears at 2 sites (labels.csv line 8, labels.csv line 9)" in msg
    assert "Ward" not in msg and "HOSP0003" not in msg  # neither the site nor the patient by name
    skipped = ingest_dataset("cxr", dataset_cfg(table), key=KEY, on_bad_record="skip")
    assert skipped.rejected["record"].tolist() == ["labels.csv line 8", "labels.csv line 9"]
    assert "Ward" not in skipped.rejected.to_csv()


def test_no_site_column_when_no_record_has_a_site(tmp_path):
    table = _folder(tmp_path)
    for p in range(8):  # headers without InstitutionName
        for k in range(2):
            write_dx(tmp_path / f"images/HOSP{p:04d}/study{k}.dcm", patient_id=f"HOSP{p:04d}",
                     sex="MF"[p % 2], age=30 + 5 * p, institution="")
    m = ingest_dataset("cxr", dataset_cfg(table), key=KEY).manifest
    assert "site" not in m.columns
