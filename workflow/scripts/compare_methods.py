"""Every method of a dataset on one page: tables, figure and the best model per epsilon."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.reporting.comparison import read_card_guarantee, write_comparison  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = sm.params.comparison
dataset = sm.wildcards.dataset
frames, cards = [], {}
for run in sm.params.runs:  # every run names its own files
    key = (run["method"], float(run["eps"]), run["seed"])
    frames.append(pd.read_parquet(run["metrics"]).assign(method=key[0], epsilon=key[1], seed=key[2]))
    cards[key] = read_card_guarantee(run["privacy"])
paths = write_comparison(pd.concat(frames, ignore_index=True), cards, Path(sm.output.comparison_csv).parent,
                         delta=p["delta"], metrics_shown=p["metrics"], spread=p["spread"], dataset=dataset)
log.info("comparison of %d models written: %s", len(cards), sorted(str(x) for x in paths.values()))
