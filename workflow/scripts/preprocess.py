"""Preprocess one split of one dataset into its HDF5 cache."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.preprocessing.pipeline import preprocess_split  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
with _log.reported(log):
    n = preprocess_split(
        pd.read_parquet(sm.input.manifest),
        pd.read_parquet(sm.input.sources),
        dataset=sm.wildcards.dataset,
        split=sm.wildcards.split,
        kind=sm.params.kind,
        params=sm.params.preprocess,
        out_path=sm.output[0],
        workers=sm.threads,
    )
log.info("%s/%s: %d samples preprocessed", sm.wildcards.dataset, sm.wildcards.split, n)
