"""The audit's canary run of a classifier method (see :mod:`dpmed.privacy.audit`).

One audit = one more training job of the *same method with the same settings* as the model it
audits (:func:`dpmed.training.job.run_classifier_job`, the function the production job calls),
on the production training set changed only by the canaries:

1. ``m`` canaries are drawn from the training split with the config seed
   (:func:`dpmed.privacy.canary.choose_canaries`);
2. each is included with probability ½ by the keyed hash of :func:`dpmed.privacy.canary.inclusion_mask`
   (key ``private_dir/audit.key``; the mask is written under ``private_dir`` only);
3. included canaries keep their image and get every label flipped; left-out canaries are
   removed from the training cache (a copy under ``private_dir``, deleted afterwards), so the
   run's N is its own and DP-SGD calibrates σ for it exactly as production does for its N;
4. the released canary model scores every canary: the log-likelihood of its flipped labels
   (:func:`dpmed.privacy.canary.canary_scores`) **minus** the same log-likelihood under a
   reference model — the production model of the same method, ε and seed, which was trained
   without the canaries' flips and does not depend on the mask. This *difficulty calibration*
   removes what makes a record's flipped labels likely whether or not it was trained on
   (measured on the tiny configuration's non-private CXR model with 100 canaries: MIA AUROC
   0.60 without it, 0.69 with a reference). It keeps the audit valid: the guesses are a
   function of the released canary model and of information independent of the inclusion
   mask, which is all the one-run theorem asks;
5. :func:`dpmed.privacy.audit.audit_report` turns scores and mask into lower bounds on ε,
   checked against the canary model's own card, with the membership-inference AUROC per
   subgroup (sex, age group, breast density where the manifest has them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd
import torch

from dpmed.errors import ConfigError
from dpmed.io.cache import CacheWriter, decode_attr
from dpmed.privacy import canary
from dpmed.privacy.audit import DEFAULT_ALPHA, audit_report, write_audit_json
from dpmed.training.classifier import ClassifierOutputs, load_model_file
from dpmed.training.data import CacheDataset, cache_record_ids, read_manifest
from dpmed.training.job import run_classifier_job

#: manifest columns the membership-inference AUROC is split by, where present
AUDIT_SUBGROUPS = ("sex", "age_group", "breast_density")


#: Canary label designs: the labels an included canary is trained with, from its true labels.
#: ``flip``: every label flipped; ``positive``: every label positive (a finding pattern no
#: real record has; under the weighted loss each positive counts pos_weight times, so one
#: record's labels are memorised far more readily than flipped ones).
CANARY_DESIGNS = {"flip": lambda y: 1 - y, "positive": lambda y: np.ones_like(y)}


@dataclass(frozen=True)
class AuditSettings:
    """``canaries``: m; ``seed``: which records are canaries (public); ``alpha``: 1 − confidence;
    ``design``: a key of :data:`CANARY_DESIGNS`."""

    canaries: int
    seed: int = 0
    alpha: float = DEFAULT_ALPHA
    design: str = "positive"

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> "AuditSettings":
        unknown = sorted(set(cfg) - {"canaries", "seed", "alpha", "design"})
        if unknown:
            raise ConfigError(f"unknown audit settings {unknown}")
        s = cls(int(cfg["canaries"]), int(cfg.get("seed", 0)), float(cfg.get("alpha", DEFAULT_ALPHA)),
                str(cfg.get("design", "positive")))
        if s.canaries < 2 or not 0 < s.alpha < 1 or s.design not in CANARY_DESIGNS:
            raise ConfigError(f"audit: need canaries >= 2, 0 < alpha < 1 and design in {sorted(CANARY_DESIGNS)}, got {s}")
        return s


@dataclass(frozen=True)
class AuditOutputs:
    """``audit``: audit.json; ``card``/``history``: the canary model's; ``model``/``mask``:
    under ``private_dir`` (the model was trained on the secret mask); ``work``: a private
    folder for the canary training cache."""

    audit: Path
    card: Path
    history: Path
    model: Path
    mask: Path
    work: Path


def write_subset_cache(src: str | Path, keep: np.ndarray, dst: str | Path) -> Path:
    """Copy the records of cache ``src`` where ``keep`` is true (order and attributes kept)."""
    with h5py.File(src, "r") as fh:
        images = fh["images"]
        ids = [s.decode() if isinstance(s, bytes) else str(s) for s in fh["record_id"][()]]
        attrs = {k: decode_attr(v) for k, v in fh.attrs.items() if k != "dpmed_version"}
        idx = np.flatnonzero(keep)
        with CacheWriter(dst, len(idx), images.shape[1:], images.dtype, attrs) as out:
            for j, i in enumerate(idx):
                out.write(j, ids[i], images[i])
    return Path(dst)


def canary_manifest(manifest: pd.DataFrame, labels, canary_ids, member, design: str = "flip") -> pd.DataFrame:
    """The manifest with the labels of the *included* canaries replaced by their canary labels."""
    man = manifest.copy()
    rows = man["record_id"].astype(str).isin(set(np.asarray(canary_ids, dtype=str)[np.asarray(member, bool)]))
    cols = [f"label_{lb}" for lb in labels]
    man.loc[rows, cols] = CANARY_DESIGNS[design](man.loc[rows, cols].to_numpy(dtype=np.int64))
    return man


def score_canaries(model_path, train_h5, manifest: pd.DataFrame, labels, canary_ids,
                   design: str = "flip") -> np.ndarray:
    """Membership score of each canary under a model: the log-likelihood of its canary labels
    (``design`` applied to its true labels in ``manifest``)."""
    from dpmed.models import build_model

    obj = load_model_file(model_path)
    net = build_model(obj["model_cfg"])
    net.load_state_dict(obj["state_dict"])
    norm = obj["normalization"]
    ds = CacheDataset(train_h5, manifest, labels, channels=norm["channels"], mean=norm["mean"], std=norm["std"])
    pos = {r: i for i, r in enumerate(ds.record_ids)}
    ids = np.asarray(canary_ids, dtype=str)
    x = torch.stack([ds.image(pos[c]) for c in ids])
    net.eval()
    with torch.no_grad():
        p = torch.cat([torch.sigmoid(net(x[i:i + 64]).float()).cpu() for i in range(0, len(x), 64)])
    y = ds.targets.numpy()[[pos[c] for c in ids]]
    return canary.membership_scores(p.numpy().astype(float), CANARY_DESIGNS[design](y))


def run_canary_audit(inputs: Mapping[str, Any], params: Mapping[str, Any], settings: AuditSettings,
                     outputs: AuditOutputs, private_dir: str | Path, *, reference_model=None,
                     device: str = "auto", threads: int = 1) -> dict:
    """Canary run + audit of one (method, ε, seed); writes :class:`AuditOutputs` and returns
    the audit report. ``inputs``/``params``: the production job's (``params['checkpoint']``
    must be the audit's own); ``reference_model``: a ``model.pt`` independent of the mask
    whose scores are subtracted (None: raw scores)."""
    manifest = read_manifest(inputs["manifest"])
    labels = list(params["labels"])
    train_ids = cache_record_ids(inputs["train"])
    ids = canary.choose_canaries(train_ids, settings.canaries, settings.seed)
    member = canary.inclusion_mask(canary.audit_key(private_dir), ids, settings.seed)
    canary.write_mask(outputs.mask, ids, member)
    outputs.work.mkdir(parents=True, exist_ok=True)
    keep, _ = canary.canary_training_labels(train_ids, np.zeros((len(train_ids), 1)), ids, member)
    train_h5 = write_subset_cache(inputs["train"], keep, outputs.work / "train.h5")
    try:
        run_classifier_job(inputs, params, ClassifierOutputs(outputs.model, outputs.history, outputs.card),
                           device=device, threads=threads, train_h5=train_h5,
                           manifest=canary_manifest(manifest, labels, ids, member, settings.design))
    finally:
        train_h5.unlink(missing_ok=True)
    scores = score_canaries(outputs.model, inputs["train"], manifest, labels, ids, settings.design)
    if reference_model is not None:
        scores = scores - score_canaries(reference_model, inputs["train"], manifest, labels, ids, settings.design)
    attrs = manifest.set_index(manifest["record_id"].astype(str)).loc[ids]
    attrs = attrs[[c for c in AUDIT_SUBGROUPS if c in attrs.columns]].astype(str).reset_index(drop=True)
    card = json.loads(Path(outputs.card).read_text(encoding="utf-8"))
    report = audit_report(scores, member, card=card, alpha=settings.alpha, attributes=attrs)
    report["canary_run"] = {"n_train": int(keep.sum()), "n_train_production": len(train_ids),
                            "canaries": {"flip": "training records with every label flipped",
                                         "positive": "training records with every label positive"}[settings.design],
                            "score": "log-likelihood of the canary labels under the canary model"
                                     + (" minus under the production model (reference, independent of the mask)"
                                        if reference_model is not None else ""),
                            "seed": settings.seed}
    write_audit_json(outputs.audit, report)
    return report
