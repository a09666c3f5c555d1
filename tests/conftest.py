"""Shared test set-up."""

import os

# Tests share two cores with each other and with Snakemake runs: keep BLAS/torch single-threaded
# so timings inside tests do not thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole workflow on config/tiny.yaml, run once per test session (the slow part)."""
    from workflow_helpers import load_tiny, snakemake, write_config

    workdir = tmp_path_factory.mktemp("tiny")
    config = load_tiny()
    configfile = write_config(workdir, config)
    snakemake(workdir, configfile, "--cores", "2")
    return workdir, configfile, config
