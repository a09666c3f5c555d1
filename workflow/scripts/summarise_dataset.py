"""Per-dataset tables and figures over every (method, epsilon, seed), plus private-vs-non-private tests."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.evaluation import compare_models  # noqa: E402
from dpmed.evaluation.aggregate import positives_per_label  # noqa: E402
from dpmed.io.atomic import write_csv  # noqa: E402
from dpmed.reporting.tables import write_summary  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
ev = sm.params.evaluation
dataset = sm.wildcards.dataset
# every run names its own files: nothing depends on the order of the inputs
runs = {(r["method"], r["eps"], r["seed"]): r for r in sm.params.runs}
frames, predictions = [], {}
for (method, eps, seed), run in runs.items():
    metrics = pd.read_parquet(run["metrics"])
    frames.append(metrics.assign(dataset=dataset, method=method, epsilon=float(eps), seed=seed))
    predictions[(method, eps, seed)] = pd.read_parquet(run["predictions"])
metrics = pd.concat(frames, ignore_index=True)
out_dir = Path(sm.output.table1_csv).parent
# the study's definitions: AUROC against the positives each label had in TRAINING, and the
# spread the study reports (std over independent trainings for CT, bootstrap std for CXR)
train_positives = positives_per_label(pd.read_parquet(sm.input.manifest), ev["labels"], "train")
# Table 1 and the correlations are the study's, of one method (the dataset's first); the
# figures draw every method; the comparison page sets all methods side by side
write_summary(metrics, out_dir, train_positives=train_positives, spread=sm.params.spread,
              table_method=sm.params.table_method)

comparisons = []
for (method, eps, seed), pred in predictions.items():
    if eps == "inf":
        continue
    subgroups = {attr: sorted(pred[attr].dropna().unique()) for attr in ev["subgroups"]}
    reference = predictions[(method, "inf", seed)]  # the same method's non-private model
    table = compare_models(pred, reference, ev["labels"], subgroups, n_bootstrap=ev["n_bootstrap"], seed=ev["seed"])
    comparisons.append(table.assign(dataset=dataset, method=method, epsilon=float(eps), seed=seed))
columns = ["dataset", "method", "epsilon", "seed"]
comparison = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame(columns=columns)
write_csv(comparison[columns + [c for c in comparison.columns if c not in columns]], sm.output.comparisons_csv)
log.info("summary of %d models written to %s (Table 1: method %s)", len(runs), out_dir, sm.params.table_method)
