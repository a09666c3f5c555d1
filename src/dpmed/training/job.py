"""One classifier training job as the workflow runs it (rules ``train_classifier`` and
``pretrain_classifier``, and the audit's canary run of the same method).

The job turns the rule's inputs and params into one :func:`dpmed.training.classifier.train_classifier`
call: the loss weights under DP from a public cohort, the initial weights from the public
pretraining, and the card entries saying so. Keeping this in one function is what lets the
audit (:mod:`dpmed.training.canary_run`) train "with exactly the production settings": it
calls this same function with the same inputs and params, only the training cache and the
manifest replaced by the canary training set.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from dpmed.training.classifier import ClassifierOutputs, public_class_weights, train_classifier

#: keys of a job's ``settings`` the job consumes itself (not the trainer's hyperparameters)
JOB_KEYS = ("class_weights_from", "weighted_loss")


def run_classifier_job(inputs: Mapping[str, Any], params: Mapping[str, Any], outputs: ClassifierOutputs, *,
                       device: str = "auto", threads: int = 1, train_h5=None, manifest=None) -> dict:
    """Train one classifier from a training rule's ``inputs`` and ``params['training']``.

    Parameters
    ----------
    inputs: ``train``, ``val``, ``test`` (caches), ``manifest``; optional ``pretrained``
        (initial weights), for finite ε ``weights_manifest`` (public cohort for the BCE
        ``pos_weight``), ``synthetic`` (study B: a synthetic set whose guarantee the model composes
        with or derives from), ``release`` (content-aware DP: the card of the privatised caches the
        model is trained on), ``external``/``external_manifest`` (a test-only cohort of another site).
    params: ``epsilon`` (absent: non-private), ``labels``, ``settings``, ``model``, ``seed``,
        ``checkpoint``, ``pretrain`` (its ``dataset`` names the public cohort on the card),
        optional ``subgroups`` (manifest columns copied into the predictions) and
        ``synthetic_only`` (the training split holds generated records only).
    outputs: where model, history, card (and predictions) go.
    device, threads: as :func:`train_classifier`.
    train_h5, manifest: replace ``inputs['train']`` / ``inputs['manifest']`` (the audit's
        canary training set; a manifest may be a DataFrame).

    Returns
    -------
    :func:`train_classifier`'s result.
    """
    epsilon = float(params.get("epsilon", math.inf))
    labels = list(params["labels"])
    settings = dict(params["settings"])
    non_private_inputs = []  # the trainer records normalisation, init and loss weights; this adds their sources
    pos_weight = None
    if math.isfinite(epsilon):
        if inputs.get("weights_manifest"):
            pos_weight, entry = public_class_weights(inputs["weights_manifest"], labels, settings["class_weights_from"])
            non_private_inputs.append(entry)
    elif not settings.get("weighted_loss", True):
        pos_weight = [1.0] * len(labels)
    init_weights = inputs.get("pretrained") or None
    if init_weights and params.get("pretrain"):
        non_private_inputs.append({"what": "initial weights",
                                   "source": f"non-private pretraining on public cohort {params['pretrain']['dataset']}"})
    return train_classifier(
        train_h5=train_h5 if train_h5 is not None else inputs["train"], val_h5=inputs["val"],
        test_h5=inputs["test"], manifest=manifest if manifest is not None else inputs["manifest"],
        labels=labels, outputs=outputs, checkpoint=params["checkpoint"], epsilon=epsilon,
        settings={k: v for k, v in settings.items() if k not in JOB_KEYS},
        model_cfg=params["model"], seed=params["seed"], device=device, threads=threads,
        init_weights=init_weights, pos_weight=pos_weight,
        non_private_inputs=non_private_inputs,
        external=(inputs["external"], inputs["external_manifest"]) if inputs.get("external") else None,
        subgroup_columns=params.get("subgroups", ()), **_data_guarantee(inputs, params),
    )


def _data_guarantee(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
    """Generated or privatised training data carry the guarantee of the mechanism that made them
    from the same records: study B's synthetic set, or CADP's privatised images (whose model is
    their post-processing: the caches hold privatised images only)."""
    if inputs.get("release"):
        from dpmed.privacy.card import read_privacy_card

        return {"data_guarantee": read_privacy_card(inputs["release"])["typed_guarantee"], "synthetic_only": True}
    if inputs.get("synthetic"):
        from dpmed.io.cache import read_cache

        return {"data_guarantee": read_cache(inputs["synthetic"])[2]["guarantee"],
                "synthetic_only": bool(params.get("synthetic_only", False))}
    return {"data_guarantee": None, "synthetic_only": bool(params.get("synthetic_only", False))}
