"""CADP (local eps) against DP-SGD (central eps): the table and the side-by-side figure."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.io.atomic import write_csv  # noqa: E402
from dpmed.privacy.card import read_privacy_card  # noqa: E402
from dpmed.reporting.cadp import comparison_table, plot_comparison  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
runs = [{**r, "metrics": pd.read_parquet(r["metrics"]), "card": read_privacy_card(r["card"])} for r in sm.params.runs]
table = comparison_table(runs)
write_csv(table, sm.output.table)
dpsgd = next(m for m in table["method"].unique() if m != "cadp")
plot_comparison(table, sm.output.figure, dataset=sm.wildcards.dataset, dpsgd=dpsgd)
log.info("\n%s", table.to_string(index=False))
