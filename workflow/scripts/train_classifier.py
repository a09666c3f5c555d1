"""Train one classifier (non-private, DP-SGD, or non-private pretraining on a public cohort)."""

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dpmed.training.classifier import train_classifier  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = sm.params.training
epsilon = float(p.get("epsilon", math.inf))
labels = p["labels"]
# The trainer records normalisation, initial weights and loss weights itself; this adds where
# the latter two came from.
non_private_inputs = []

pos_weight = None
if math.isfinite(epsilon):
    if "weights_manifest" in sm.input.keys():
        # Class weights from a public cohort's training labels: the private labels stay inside DP.
        public = pd.read_parquet(sm.input.weights_manifest)
        public = public[public["split"] == "train"]
        positives = np.array([public[f"label_{label}"].sum() for label in labels], dtype=float)
        pos_weight = ((len(public) - positives) / np.maximum(positives, 1.0)).tolist()
        non_private_inputs.append(
            {"what": "BCE class weights", "source": "training labels of the public cohort (no private data)"}
        )
elif not p["settings"].get("weighted_loss", True):
    pos_weight = [1.0] * len(labels)

init_weights = sm.input.get("pretrained") if "pretrained" in sm.input.keys() else None
if init_weights:
    non_private_inputs.append(
        {"what": "initial weights", "source": f"non-private pretraining on public cohort {p['pretrain']['dataset']}"}
    )

# Keys this script consumes itself; the rest are the trainer's hyperparameters.
settings = {k: v for k, v in p["settings"].items() if k not in ("class_weights_from", "weighted_loss")}
result = train_classifier(
    train_h5=sm.input.train,
    val_h5=sm.input.val,
    test_h5=sm.input.test,
    manifest=sm.input.manifest,
    labels=labels,
    out_dir=Path(sm.output.model).parent,
    epsilon=epsilon,
    settings=settings,
    model_cfg=p["model"],
    seed=p["seed"],
    device=sm.params.device,
    threads=sm.threads,
    init_weights=init_weights,
    pos_weight=pos_weight,
    non_private_inputs=non_private_inputs,
)
log.info("trained: %s", {k: v for k, v in result.items() if isinstance(v, (int, float, str))})
