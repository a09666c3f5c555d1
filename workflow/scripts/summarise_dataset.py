"""Per-dataset tables and figures over the whole epsilon grid, plus private-vs-non-private tests."""

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.evaluation import compare_models  # noqa: E402
from dpmed.io.atomic import write_csv  # noqa: E402
from dpmed.reporting.tables import write_summary  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
ev = sm.params.evaluation
dataset = sm.wildcards.dataset
combos = [(eps, seed) for eps in sm.params.epsilons for seed in sm.params.seeds]
frames, predictions = [], {}
for (eps, seed), metrics_path, pred_path in zip(combos, sm.input.metrics, sm.input.predictions):
    frames.append(pd.read_parquet(metrics_path).assign(dataset=dataset, method="dpsgd", epsilon=float(eps), seed=seed))
    predictions[(eps, seed)] = pd.read_parquet(pred_path)
metrics = pd.concat(frames, ignore_index=True)
out_dir = Path(sm.output.table1_csv).parent
write_summary(metrics, out_dir)

comparisons = []
for (eps, seed), pred in predictions.items():
    if eps == "inf":
        continue
    subgroups = {attr: sorted(pred[attr].dropna().unique()) for attr in ev["subgroups"]}
    table = compare_models(
        pred, predictions[("inf", seed)], ev["labels"], subgroups, n_bootstrap=ev["n_bootstrap"], seed=ev["seed"]
    )
    comparisons.append(table.assign(dataset=dataset, epsilon=float(eps), seed=seed))
columns = ["dataset", "epsilon", "seed"]
comparison = pd.concat(comparisons, ignore_index=True) if comparisons else pd.DataFrame(columns=columns)
write_csv(comparison[columns + [c for c in comparison.columns if c not in columns]], sm.output.comparisons_csv)
log.info("summary of %d models written to %s", len(combos), out_dir)
