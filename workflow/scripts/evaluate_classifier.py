"""Bootstrapped subgroup metrics of one trained model."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.evaluation import evaluate_model  # noqa: E402
from dpmed.io.atomic import write_parquet  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
ev = sm.params.evaluation
predictions = pd.read_parquet(sm.input.predictions)
subgroups = {attr: sorted(predictions[attr].dropna().unique()) for attr in ev["subgroups"]}
metrics = evaluate_model(
    predictions, ev["labels"], subgroups, n_bootstrap=ev["n_bootstrap"], seed=ev["seed"], ci=ev["ci"]
)
write_parquet(metrics, sm.output[0])
log.info("%d metric rows", len(metrics))
