"""Shared test set-up."""

import os

# Tests share two cores with each other and with Snakemake runs: keep BLAS/torch single-threaded
# so timings inside tests do not thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest

# 64 hex characters; only ever used for the generated demo cohorts
TEST_PSEUDONYM_KEY = "5e" * 32


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole workflow on config/tiny.yaml, run once per test session (the slow part)."""
    from workflow_helpers import load_tiny, snakemake, write_config

    workdir = tmp_path_factory.mktemp("tiny")
    config = load_tiny()
    configfile = write_config(workdir, config)
    # A fixed pseudonymisation key: the key decides the patient-level splits, so with a fresh
    # random key per clone (what a user gets) every CI run would train and test on other records.
    key = workdir / config["private_dir"] / "pseudonym.key"
    key.parent.mkdir(parents=True)
    key.write_text(TEST_PSEUDONYM_KEY + "\n")
    snakemake(workdir, configfile, "--cores", "2")
    return workdir, configfile, config
