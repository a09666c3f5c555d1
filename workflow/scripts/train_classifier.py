"""Train one classifier (non-private, DP-SGD, non-private on privatised images, or non-private pretraining on a public cohort)."""

import math
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.training.classifier import ClassifierOutputs, public_class_weights, train_classifier  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = sm.params.training
epsilon = float(p.get("epsilon", math.inf))
labels = p["labels"]
settings = p["settings"]
# The trainer records normalisation, initial weights and loss weights itself; this adds where
# the latter two came from.
non_private_inputs = []

pos_weight = None
if math.isfinite(epsilon):
    if "weights_manifest" in sm.input.keys():
        pos_weight, entry = public_class_weights(sm.input.weights_manifest, labels, settings["class_weights_from"])
        non_private_inputs.append(entry)
elif not settings.get("weighted_loss", True):
    pos_weight = [1.0] * len(labels)


init_weights = sm.input.get("pretrained") if "pretrained" in sm.input.keys() else None
if init_weights and p.get("pretrain"):
    non_private_inputs.append(
        {"what": "initial weights", "source": f"non-private pretraining on public cohort {p['pretrain']['dataset']}"}
    )

# Generated or privatised training data carry the guarantee of the mechanism that made them from the
# same records: study B's synthetic set, or CADP's privatised images (whose model is their post-processing).
data_guarantee = None
synthetic_only = p.get("synthetic_only", False)
if "synthetic" in sm.input.keys():
    from dpmed.io.cache import read_cache

    data_guarantee = read_cache(sm.input.synthetic)[2]["guarantee"]
if "release" in sm.input.keys():
    from dpmed.privacy.card import read_privacy_card

    data_guarantee = read_privacy_card(sm.input.release)["typed_guarantee"]
    synthetic_only = True  # the caches hold privatised images only
external = (sm.input.external, sm.input.external_manifest) if "external" in sm.input.keys() else None

result = train_classifier(
    train_h5=sm.input.train,
    val_h5=sm.input.val,
    test_h5=sm.input.test,
    manifest=sm.input.manifest,
    labels=labels,
    outputs=ClassifierOutputs(
        model=Path(sm.output.model),
        history=Path(sm.output.history),
        privacy=Path(sm.output.privacy),
        predictions=Path(sm.output.predictions) if "predictions" in sm.output.keys() else None,
    ),
    checkpoint=p["checkpoint"],
    epsilon=epsilon,
    # keys the script consumes itself are not the trainer's hyperparameters
    settings={k: v for k, v in settings.items() if k not in ("class_weights_from", "weighted_loss")},
    model_cfg=p["model"],
    seed=p["seed"],
    device=sm.params.device,
    threads=sm.threads,
    init_weights=init_weights,
    pos_weight=pos_weight,
    non_private_inputs=non_private_inputs,
    external=external,
    subgroup_columns=p.get("subgroups", ()),
    data_guarantee=data_guarantee,
    synthetic_only=synthetic_only,
)
log.info("trained: %s", {k: v for k, v in result.items() if isinstance(v, (int, float, str))})
