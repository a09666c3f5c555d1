"""Study B's Table 1 (mode x ε, AUROC/AUPRC within-domain and external, mean ± std over seeds)
and AUPRC vs ε per mode."""

import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.privacy.guarantee import Guarantee  # noqa: E402
from dpmed.reporting.synthetic import auprc_vs_epsilon_figure, mode_metrics, study_b_table, write_study_b_table  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
ev = sm.params.evaluation
rows = []
for run in sm.params.runs:
    pred = pd.read_parquet(run["predictions"])
    with open(run["predictions"].replace("predictions.parquet", "privacy.json")) as fh:
        card = json.load(fh)
    guarantee = Guarantee.from_dict(card["typed_guarantee"])
    rows.append({"method": run["method"], "epsilon": float(run["eps"]), "seed": run["seed"],
                 "card_epsilon": guarantee.epsilon if guarantee.holds else math.inf, "card_kind": guarantee.kind,
                 **mode_metrics(pred, ev["labels"], n_bootstrap=ev["n_bootstrap"], seed=ev["seed"], ci=ev["ci"])})
table = study_b_table(pd.DataFrame(rows))
write_study_b_table(table, sm.output.table_csv, sm.output.table_md)
auprc_vs_epsilon_figure(table, sm.output.figure)
log.info("study B table: %d rows from %d models", len(table), len(rows))
