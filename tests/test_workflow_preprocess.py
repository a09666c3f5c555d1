"""End to end: the tiny config through the real snakemake CLI — demo cohorts, manifests, caches.

One run per session (module-scoped); the assertions then inspect its outputs and what a
dry run would redo after config changes.
"""

from __future__ import annotations

import copy
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pydicom
import pytest

from workflow_helpers import planned_jobs, snakemake, write_config

pytestmark = [pytest.mark.workflow]

DATASETS = ["cxr", "cxr_public", "ct", "mammography"]
TARGETS = [f"results/{d}/preprocessed/{s}.h5" for d in DATASETS for s in ("train", "val", "test")]


def test_outputs_follow_the_contract(tiny_run):
    workdir, _, config = tiny_run
    for name in DATASETS:
        manifest = pd.read_parquet(workdir / f"results/{name}/manifest.parquet")
        labels = config["datasets"][name]["labels"]
        assert {"record_id", "patient_id", "split", "sex", "age", "age_group", "source_path"} <= set(manifest.columns)
        assert {f"label_{label}" for label in labels} <= set(manifest.columns)
        assert (manifest.groupby("patient_id")["split"].nunique() == 1).all()
        assert pd.read_csv(workdir / f"results/{name}/rejected.csv").empty
        for split in ("train", "val", "test"):
            with h5py.File(workdir / f"results/{name}/preprocessed/{split}.h5") as fh:
                ids = [s.decode() for s in fh["record_id"][()]]
                assert ids == sorted(manifest.loc[manifest["split"] == split, "record_id"])
                assert fh["images"].shape[0] == len(ids)
                params = config["datasets"][name]["preprocess"]
                if name == "ct":
                    assert fh["images"].shape[1:] == tuple(params["shape"])
                    assert fh["images"].dtype == np.float16
                else:
                    assert fh["images"].shape[1:] == (params["size"],) * 2
                    assert fh["images"].dtype == np.uint8
                if len(ids):
                    images = fh["images"][()].astype(np.float32)
                    assert images.std() > 0  # real content, not a constant fill
    ct = pd.read_parquet(workdir / "results/ct/manifest.parquet")
    assert ct["age_group"].str.startswith("Q").all()


def test_no_patient_identifier_in_results_or_logs(tiny_run):
    workdir, _, _ = tiny_run
    identifiers = set()
    for path in (workdir / "resources/demo").rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        identifiers |= {str(ds.PatientID), str(ds.PatientName), str(ds.PatientBirthDate),
                        str(ds.StudyDate), str(ds.AccessionNumber), str(ds.get("InstitutionName", ""))}
    for table in (workdir / "resources/demo").rglob("*.csv"):
        frame = pd.read_csv(table, dtype=str)
        if "patient_id" in frame:
            identifiers |= set(frame["patient_id"])
    identifiers = {i for i in identifiers if len(i) >= 4}
    assert len(identifiers) > 50
    # Whole tokens only: a date like 20201207 must not "match" the digits of a float score
    # (0.20201207...), while a leaked ID in a path (images/CXR000123/...) still does.
    alternatives = "|".join(re.escape(i) for i in sorted(identifiers, key=len, reverse=True))
    pattern = re.compile(rf"(?<![0-9A-Za-z.])(?:{alternatives})(?![0-9A-Za-z])")
    scanned = 0
    for folder in ("results", "logs"):
        for path in (workdir / folder).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if path.suffix == ".parquet":
                    data = pd.read_parquet(path).to_csv().encode()
                found = pattern.search(data.decode("latin-1"))
                assert found is None, f"{path}: contains identifier {found.group(0)!r}"
                scanned += 1
    assert scanned >= 20


def test_nothing_to_do_after_a_complete_run(tiny_run):
    workdir, configfile, _ = tiny_run
    assert planned_jobs(workdir, configfile) == set()


def test_ct_window_change_reruns_only_the_ct_caches(tiny_run, tmp_path):
    """Executed for real, in a copy of the finished run (the shared one stays untouched)."""
    source, _, config = tiny_run
    workdir = tmp_path / "copy"
    shutil.copytree(source, workdir, symlinks=True)  # copy2 keeps mtimes, so nothing looks stale
    changed = copy.deepcopy(config)
    changed["datasets"]["ct"]["preprocess"]["window"] = [-100, 200]
    configfile = write_config(workdir, changed, "ct_window.yaml")
    jobs = planned_jobs(workdir, configfile, *TARGETS)
    assert jobs == {("preprocess", f"results/ct/preprocessed/{s}.h5") for s in ("train", "val", "test")}
    before = {p: p.stat().st_mtime_ns for p in (workdir / "results").rglob("preprocessed/*.h5")}
    snakemake(workdir, configfile, "--cores", "2", *TARGETS)
    for path, mtime in before.items():
        changed_file = path.stat().st_mtime_ns != mtime
        assert changed_file == ("/ct/" in str(path)), path
    with h5py.File(workdir / "results/ct/preprocessed/train.h5") as fh:
        assert "-100" in fh.attrs["params"]
