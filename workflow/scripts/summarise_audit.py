"""A dataset's audit tables: bounds vs card per model, privacy risk per subgroup beside the
fairness of accuracy, and the generators' memorisation checks (where a generator wrote one)."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import pandas as pd  # noqa: E402

from dpmed.io.atomic import write_text  # noqa: E402
from dpmed.privacy.audit import read_audit_json  # noqa: E402
from dpmed.reporting.audit import memorisation_markdown, write_audit_subgroups, write_audit_summary  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
dataset = sm.wildcards.dataset
out_dir = Path(sm.output.audit_csv).parent
entries = []
for run in sm.params.runs:  # every run names its own files
    keys = {"dataset": dataset, "method": run["method"], "epsilon": float(run["eps"]), "seed": run["seed"]}
    entries.append((keys, read_audit_json(run["audit"]), pd.read_parquet(run["metrics"])))
write_audit_summary([(k, r) for k, r, _ in entries], out_dir)
write_audit_subgroups(entries, out_dir)
memo = {name: json.loads(Path(path).read_text(encoding="utf-8")) for name, path in sm.params.memorisation.items()}
write_text(memorisation_markdown(memo), sm.output.memorisation)
log.info("audit summary of %d models, %d memorisation checks", len(entries), len(memo))
