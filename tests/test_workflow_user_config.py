"""A config of one's own: only its datasets run (no demo), failures reach the console, private_dir is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd
import pytest

from dicom_factory import write_dx
from workflow_helpers import planned_jobs, snakemake, write_config

pytestmark = [pytest.mark.workflow]


def _own_data(workdir: Path, n_patients: int = 10) -> dict:
    rows = []
    for p in range(n_patients):
        write_dx(workdir / "data" / f"img{p}.dcm", patient_id=f"HOSP{p:03d}", age=30 + p)
        rows.append({"path": f"img{p}.dcm", "finding": p % 2})
    pd.DataFrame(rows).to_csv(workdir / "data" / "labels.csv", index=False)
    # What README shows as the minimal config for one's own data.
    return {"datasets": {"mine": {
        "kind": "radiograph", "adapter": "dicom_folder", "table": "data/labels.csv", "labels": ["finding"],
        "grades": {"min": 0, "max": 1, "positive_from": 1}, "preprocess": {"size": 8},
    }}}


def test_own_datasets_run_without_the_demo(tmp_path):
    config = write_config(tmp_path, _own_data(tmp_path), "my.yaml")
    jobs = planned_jobs(tmp_path, config)
    rules = sorted(rule for rule, _ in jobs)
    assert rules == ["ingest", "preprocess", "preprocess", "preprocess", "pseudonym_key"], rules  # + `all`
    assert not any("demo" in rule or "resources/demo" in out for rule, out in jobs)
    assert {out for _, out in jobs if out.startswith("results/")} == {
        "results/mine/manifest.parquet", *(f"results/mine/preprocessed/{s}.h5" for s in ("train", "val", "test"))}

    # Run it: the private folder and files are the owner's only.
    snakemake(tmp_path, config, "--cores", "2")
    for path in [tmp_path / "private", *(tmp_path / "private").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
    assert stat.S_IMODE((tmp_path / "private" / "mine").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "private" / "mine" / "sources.parquet").stat().st_mode) == 0o600
    manifest = pd.read_parquet(tmp_path / "results/mine/manifest.parquet")
    assert len(manifest) == 10 and (manifest["age"] == manifest["age"].round()).all()


def test_failed_job_reason_on_console_and_rejected_list_kept(tmp_path):
    cfg = _own_data(tmp_path, n_patients=4)
    cfg["on_bad_record"] = "skip"
    table = pd.read_csv(tmp_path / "data/labels.csv")
    table["finding"] = 7  # every record's label out of range
    table.to_csv(tmp_path / "data/labels.csv", index=False)
    config = write_config(tmp_path, cfg, "my.yaml")
    proc = snakemake(tmp_path, config, "--cores", "1", check=False)
    assert proc.returncode != 0
    console = proc.stdout + proc.stderr
    assert "dpmed DataError: dataset mine: all 4 records were rejected" in console
    rejected = pd.read_csv(tmp_path / "logs/mine/rejected.csv")
    assert rejected["record"].tolist() == [f"labels.csv line {i}" for i in range(2, 6)]
    assert rejected["reason"].str.contains("grade outside its range").all()
    assert "HOSP" not in (tmp_path / "logs/mine/ingest.log").read_text() + rejected.to_csv()


def test_yaml_syntax_error_in_the_default_config_names_file_and_line(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("datasets:\n  cxr:\n    kind: [radiograph\n    labels: x\n")
    from workflow_helpers import SNAKEMAKE

    import subprocess

    proc = subprocess.run([*SNAKEMAKE, "--directory", str(tmp_path), "--dry-run"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "config/config.yaml line 4, column 11: YAML syntax error" in proc.stdout + proc.stderr
