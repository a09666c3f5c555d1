"""Study C in the workflow: one job per (dataset, ε, seed) — sites, bounds, every method, outputs.

:func:`federate_dataset` reads the manifest and the frozen-encoder embeddings, forms the sites
(manifest ``site`` column, or the Dirichlet label-skew split), scales features with bounds that
touch no private data, runs :func:`~dpmed.federated.study.run_study` and writes:

* ``per_site.csv`` — method, site (pseudonym), metrics, λ, W₂;
* ``subgroups.parquet`` — each site's bootstrapped subgroup evaluation per method;
* ``cards/`` — one privacy card per DP client (``{method}_client_{k}.json``, unit = record of
  that site) and one per method for what the federation releases (worst site's ε);
* the ``fed_cvae`` method in the classifiers layout (``predictions.parquet``, ``privacy.json``,
  ``history.csv``, ``model.pt``) so it is evaluated and compared like every other method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpmed.errors import ConfigError
from dpmed.federated.data import labels_of, read_embeddings, site_arrays
from dpmed.federated.guarantee import federation_guarantee
from dpmed.federated.rounds import aggregation_weights
from dpmed.federated.scaling import FeatureBounds, fixed_bounds, public_bounds
from dpmed.federated.sites import check_site, sites_from_column, sites_from_dirichlet
from dpmed.federated.study import FederatedSettings, StudyResult, run_study
from dpmed.federated.synthetic import LabelDistribution, public_labels, uniform_labels
from dpmed.io.atomic import atomic_path, write_csv, write_parquet


@dataclass(frozen=True)
class FederatedJob:
    """Everything one job depends on (from ``params``)."""

    dataset: str
    labels: tuple[str, ...]
    task: str                 # multilabel | multiclass
    epsilon: float
    seed: int
    sites: dict               # {"column": "site"} or {"dirichlet": {"n_clients": M, "alpha": a}}
    bounds: dict              # {"source": "public", "margin": m} or {"source": "fixed", "low": l, "high": h}
    synthetic_labels: str     # public | uniform
    public_dataset: str | None
    settings: FederatedSettings
    subgroups: tuple[str, ...]
    n_bootstrap: int
    evaluation_seed: int

    @classmethod
    def from_params(cls, p: dict) -> "FederatedJob":
        return cls(dataset=p["dataset"], labels=tuple(p["labels"]), task=p["task"], epsilon=float(p["epsilon"]),
                   seed=int(p["seed"]), sites=dict(p["sites"]), bounds=dict(p["bounds"]),
                   synthetic_labels=p["synthetic_labels"], public_dataset=p.get("public_dataset"),
                   settings=FederatedSettings.from_config(p["settings"]), subgroups=tuple(p["subgroups"]),
                   n_bootstrap=int(p["n_bootstrap"]), evaluation_seed=int(p["evaluation_seed"]))


def make_sites(manifest: pd.DataFrame, job: FederatedJob) -> dict:
    if "dirichlet" in job.sites:
        d = job.sites["dirichlet"]
        return sites_from_dirichlet(manifest, [f"label_{n}" for n in job.labels], int(d["n_clients"]),
                                    float(d["alpha"]), job.seed)
    column = job.sites.get("column", "site")
    if column not in manifest.columns:
        raise ConfigError(f"dataset {job.dataset}: the manifest has no {column!r} column (DICOM InstitutionName or a "
                          "'site' table column); use federated.sites: {dirichlet: ...} for a dataset without sites")
    return sites_from_column(manifest, column)


def make_bounds(job: FederatedJob, dim: int, public_embeddings: str | None) -> FeatureBounds:
    if job.bounds["source"] == "fixed":
        return fixed_bounds(dim, float(job.bounds["low"]), float(job.bounds["high"]))
    if public_embeddings is None:
        raise ConfigError("federated.bounds source 'public' needs federated.public_dataset")
    _, emb = read_embeddings(public_embeddings)
    return public_bounds(emb, job.public_dataset, float(job.bounds.get("margin", 0.05)))


def make_labels(job: FederatedJob, public_manifest: str | None) -> LabelDistribution:
    if job.synthetic_labels == "uniform":
        return uniform_labels(len(job.labels))
    if public_manifest is None:
        raise ConfigError("federated.synthetic_labels 'public' needs federated.public_dataset")
    y = labels_of(pd.read_parquet(public_manifest), job.labels, job.task)
    return public_labels(y, job.task, len(job.labels), job.public_dataset)


def load_sites(job: FederatedJob, manifest_path: str, embeddings_path: str, public_embeddings: str | None):
    """``(sites {pseudonym: {split: (x, y)}}, record ids per site and split, bounds)``; every
    site checked (too few records, a missing class / label without positives) before training."""
    manifest = pd.read_parquet(manifest_path)
    ids, emb = read_embeddings(embeddings_path)
    bounds = make_bounds(job, emb.shape[1], public_embeddings)
    records = make_sites(manifest, job)
    sites, rec_ids = {}, {}
    for name, rec in records.items():
        arrays = site_arrays(rec, ids, emb, manifest, job.labels, job.task, bounds)
        check_site(name, {s: arrays[s][1] for s in arrays}, list(job.labels), job.task, job.settings.batch_size,
                   allow_missing_classes="dirichlet" in job.sites)
        sites[name] = arrays
        rec_ids[name] = {s: list(rec.split(s)) for s in ("val", "test")}
    return sites, rec_ids, bounds, manifest


def predictions_table(result: StudyResult, method: str, rec_ids: dict, manifest: pd.DataFrame,
                      labels: tuple[str, ...], task: str) -> pd.DataFrame:
    """Val/test predictions of one method, every site's records scored by that site's model."""
    man = manifest.set_index("record_id")
    parts = []
    for site, by_split in result.predictions[method].items():
        for split, p in by_split.items():
            ids = rec_ids[site][split]
            rows = man.loc[ids]
            df = pd.DataFrame({"record_id": ids, "split": split, "site": site, "sex": rows["sex"].to_numpy(),
                               "age": rows["age"].to_numpy(), "age_group": rows["age_group"].to_numpy()})
            y = labels_of(rows.reset_index(), labels, task)
            for j, lb in enumerate(labels):
                df[f"y_{lb}"] = (y[:, j] if task == "multilabel" else (y == j)).astype(int)
                df[f"score_{lb}"] = np.asarray(p)[:, j]
            parts.append(df)
    return pd.concat(parts, ignore_index=True).sort_values("record_id", ignore_index=True)


def subgroup_evaluation(result: StudyResult, rec_ids, manifest, job: FederatedJob) -> pd.DataFrame:
    """Each site's bootstrapped subgroup metrics per method (:func:`dpmed.evaluation.evaluate_model`)."""
    from dpmed.evaluation import evaluate_model

    out = []
    for method in result.predictions:
        table = predictions_table(result, method, rec_ids, manifest, job.labels, job.task)
        for site, part in table.groupby("site", sort=True):
            groups = {a: sorted(part.loc[part["split"] == "test", a].dropna().unique()) for a in job.subgroups}
            m = evaluate_model(part.drop(columns="site"), list(job.labels), groups, n_bootstrap=job.n_bootstrap,
                               seed=job.evaluation_seed)
            m.insert(0, "site", site)
            m.insert(0, "method", method)
            out.append(m)
    return pd.concat(out, ignore_index=True)


def _non_private_inputs(bounds: FeatureBounds, labels: LabelDistribution, settings: FederatedSettings, n_sites: int):
    _, weights_input = aggregation_weights(n_sites, settings.aggregation, [1] * n_sites)
    return [x for x in (bounds.non_private_input(), labels.non_private_input(), weights_input) if x is not None]


def write_cards(result: StudyResult, folder: Path, npi, max_records_per_patient: int) -> dict:
    """One card per DP client and one per method for the federation's release; returns the latter."""
    from dpmed.privacy.card import render_guarantee, write_privacy_card

    folder.mkdir(parents=True, exist_ok=True)
    released = {}
    for method, gs in result.guarantees.items():
        for k, g in enumerate(gs):
            write_privacy_card(folder / f"{method}_client_{k}.json",
                               render_guarantee(g, max_records_per_patient=max_records_per_patient))
        what = ("the global decoder and every site's synthetic embeddings and classifier" if method != "fedavg"
                and method != "fedprox" else "every site's federated linear classifier")
        fed = federation_guarantee(gs, released=what, non_private_inputs=npi)
        released[method] = fed
        write_privacy_card(folder / f"{method}_federation.json",
                           render_guarantee(fed, max_records_per_patient=max_records_per_patient))
    return released


def write_method_outputs(result: StudyResult, method: str, folder: Path, rec_ids, manifest, job: FederatedJob,
                         guarantee, max_records_per_patient: int) -> None:
    """A federated method in the classifiers layout: predictions, card, per-site summary, weights note."""
    from dpmed.privacy.card import render_guarantee, write_privacy_card
    from dpmed.privacy.guarantee import no_guarantee

    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(predictions_table(result, method, rec_ids, manifest, job.labels, job.task),
                  folder / "predictions.parquet")
    if guarantee is None:
        guarantee = no_guarantee("record", reason="trained without differential privacy (ε = inf)",
                                 released="every site's classifier")
    write_privacy_card(folder / "privacy.json", render_guarantee(guarantee, max_records_per_patient=max_records_per_patient))
    rows = result.per_site[result.per_site["method"] == method]
    write_csv(rows.reset_index(drop=True), folder / "history.csv")
    with atomic_path(folder / "model.pt") as tmp:  # per-site λ; the decoders stay in the job (not released)
        torch.save({"method": method, "lambda": dict(zip(rows["site"], rows["lambda"]))}, tmp)


def max_records_per_patient(manifest: pd.DataFrame) -> int:
    return int(manifest[manifest["split"] == "train"].groupby("patient_id").size().max())


def federate_dataset(job: FederatedJob, *, manifest: str, embeddings: str, public_embeddings: str | None,
                     public_manifest: str | None, out_dir: str, method_dir: str | None, log=None) -> StudyResult:
    """The job: sites, bounds, labels, :func:`run_study`, every output (see the module docstring)."""
    torch.set_num_threads(1)
    sites, rec_ids, bounds, man = load_sites(job, manifest, embeddings, public_embeddings)
    labels = make_labels(job, public_manifest)
    if log:
        log.info("%d sites, training records per site %s; epsilon %s", len(sites),
                 [len(d["train"][0]) for d in sites.values()], job.epsilon)
    result = run_study(sites, job.task, list(job.labels), job.epsilon, job.seed, job.settings, labels)
    out = Path(out_dir)
    k = max_records_per_patient(man)
    released = write_cards(result, out / "cards", _non_private_inputs(bounds, labels, job.settings, len(sites)), k)
    per_site = result.per_site.assign(epsilon=job.epsilon, seed=job.seed)
    write_csv(per_site, out / "per_site.csv")
    write_parquet(subgroup_evaluation(result, rec_ids, man, job), out / "subgroups.parquet")
    if method_dir is not None and "fed_cvae" in result.predictions:
        write_method_outputs(result, "fed_cvae", Path(method_dir), rec_ids, man, job, released.get("fed_cvae"), k)
    return result
