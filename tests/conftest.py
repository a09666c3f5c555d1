"""Shared test set-up."""

import os

# Tests share two cores with each other and with Snakemake runs: keep BLAS/torch single-threaded
# so timings inside tests do not thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
