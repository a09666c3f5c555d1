"""Fidelity (FD, KID, precision/recall; real-vs-real and real-vs-synthetic per class) and the
memorisation check of every generator variant, plus the grid of real vs synthetic patches."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dpmed.evaluation.fidelity import encode_caches, fidelity_table, memorisation_check  # noqa: E402
from dpmed.io.atomic import write_csv  # noqa: E402
from dpmed.io.cache import read_cache  # noqa: E402
from dpmed.reporting.synthetic import real_vs_synthetic_grid  # noqa: E402
from dpmed.training.classifier import _resolve_device  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
fid = sm.params.fidelity
device = str(_resolve_device(sm.params.device))
label = f"label_{sm.params.label}"
manifest = pd.read_parquet(sm.input.manifest).set_index("record_id")


def features(path):
    ids, feats = encode_caches(sm.input.encoder, [path], device=device)
    return ids, feats


_, train = features(sm.input.train)
ho_ids, heldout = [], []
for split in ("val", "test"):  # held-out real patches: the reference of the fidelity table
    ids, f = features(getattr(sm.input, split))
    ho_ids += ids
    heldout.append(f)
heldout = np.concatenate(heldout)
ho_labels = manifest.loc[ho_ids, label].to_numpy()
tables, memo = [], []
for variant, cache, man in zip(sm.params.variants, sm.input.synthetic, sm.input.synthetic_manifests):
    ids, syn = features(cache)
    syn_labels = pd.read_parquet(man).set_index("record_id").loc[ids, label].to_numpy()
    table = fidelity_table(heldout, ho_labels, syn, syn_labels, k=fid["k"], kid_subsets=fid["kid_subsets"],
                           kid_subset_size=fid["kid_subset_size"], seed=fid["seed"])
    tables.append(table.assign(generator=variant))
    report = memorisation_check(syn, train, heldout, seed=fid["seed"])
    memo.append({"generator": variant, **report.to_dict()})
    log.info("%s: memorisation %s", variant, report)
fidelity = pd.concat(tables, ignore_index=True)
write_csv(fidelity[["generator"] + [c for c in fidelity.columns if c != "generator"]], sm.output.fidelity)
write_csv(pd.DataFrame(memo), sm.output.memorisation)

# the grid shows real TEST patches (released in the figure) next to samples of each generator
test_img, test_ids, _ = read_cache(sm.input.test)
test_labels = manifest.loc[test_ids, label].to_numpy()
synthetic = {}
for variant, cache, man in zip(sm.params.variants, sm.input.synthetic, sm.input.synthetic_manifests):
    img, ids, _ = read_cache(cache)
    synthetic[variant] = (img, pd.read_parquet(man).set_index("record_id").loc[ids, label].to_numpy())
real_vs_synthetic_grid(test_img, test_labels, synthetic, sm.output.grid, per_class=fid["grid_per_class"],
                       seed=fid["seed"], label=sm.params.label)
