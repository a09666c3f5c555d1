"""Which site (federated client) each record belongs to, and each site's train/val/test.

Two sources of sites:

* a ``site`` column in the manifest (ingestion writes it from DICOM ``InstitutionName``,
  pseudonymised with the same keyed HMAC as patient ids: a hospital's name is an identifier
  too) — :func:`sites_from_column`;
* for datasets without sites, the Dirichlet label-skew split of methods.md C: per class,
  client shares w ~ Dirichlet(α·1_M) and counts ~ Multinomial(n_c, w) —
  :func:`sites_from_dirichlet`. It assigns whole patients (a patient is treated at one
  hospital), with the patient's class taken from its first record.

Either way a site keeps the dataset's patient-wise ``split`` (train/val/test): a patient is in
the same split whatever the site assignment. The Dirichlet draw uses the config seed: it builds
the simulated federation, it is not a privacy mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from dpmed.errors import DpmedError, SiteError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SiteRecords:
    """The record ids of one site, per split (sorted)."""

    site: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def split(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)


def _require(manifest: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise DpmedError(f"manifest: no column {missing} (needed for {what})")


def _by_site(manifest: pd.DataFrame, site_of: pd.Series) -> dict[str, SiteRecords]:
    bad = ~manifest["split"].isin(SPLITS)
    if bad.any():
        raise DpmedError(f"manifest: {int(bad.sum())} records have a split other than {SPLITS}")
    out = {}
    for site in sorted(site_of.unique()):
        rows = manifest[site_of.to_numpy() == site]
        ids = {s: tuple(sorted(rows.loc[rows["split"] == s, "record_id"].astype(str))) for s in SPLITS}
        out[str(site)] = SiteRecords(str(site), **ids)
    return out


def sites_from_column(manifest: pd.DataFrame, column: str = "site") -> dict[str, SiteRecords]:
    """Sites from a manifest column (pseudonymised site names).

    Raises
    ------
    DpmedError: the column (or ``record_id``/``split``) is missing.
    SiteError: records without a site, or a patient recorded at two sites (a patient's
        records must stay at one site, else the sites' data would not be disjoint by patient).
    """
    _require(manifest, ["record_id", "split", column], f"sites from column {column!r}")
    site = manifest[column]
    if site.isna().any() or (site.astype(str).str.strip() == "").any():
        n = int((site.isna() | (site.astype(str).str.strip() == "")).sum())
        raise SiteError(f"manifest column {column!r}: {n} records have no site")
    if "patient_id" in manifest.columns:
        per_patient = manifest.groupby("patient_id")[column].nunique()
        if (per_patient > 1).any():
            raise SiteError(f"manifest column {column!r}: {int((per_patient > 1).sum())} patients "
                            "have records at more than one site")
    return _by_site(manifest, site.astype(str))


def dirichlet_label_skew(strata: np.ndarray, n_clients: int, alpha: float, seed: int) -> np.ndarray:
    """Client index of each unit under the label-skew rule of methods.md C.

    Parameters
    ----------
    strata: ``(n,)`` class (any hashable values) of each unit (patient).
    n_clients: M.
    alpha: Dirichlet concentration (0.3 in the paper; small = strong skew).
    seed: the config seed.

    Returns
    -------
    ``(n,)`` int array in ``0..M-1``: per class c, w ~ Dirichlet(α·1_M), counts ~
    Multinomial(n_c, w), and the class's units (in a seeded random order) are dealt out in
    client order by those counts.
    """
    if n_clients < 1 or not alpha > 0:
        raise SiteError(f"Dirichlet split needs n_clients >= 1 and alpha > 0 "
                        f"(got {n_clients}, {alpha})")
    strata = np.asarray(strata)
    rng = np.random.default_rng([int(seed), 0xD1C])
    out = np.empty(len(strata), dtype=np.int64)
    for c in sorted(set(strata.tolist()), key=str):
        idx = np.flatnonzero(strata == c)
        w = rng.dirichlet(np.full(n_clients, float(alpha)))
        counts = rng.multinomial(len(idx), w)
        out[rng.permutation(idx)] = np.repeat(np.arange(n_clients), counts)
    return out


def _patient_strata(manifest: pd.DataFrame, label_columns: list[str]) -> pd.Series:
    first = manifest.sort_values("record_id").groupby("patient_id", sort=True).first()
    labels = first[label_columns].to_numpy()
    # one stratum per label pattern: the class for one-column (multi-class/binary) labels,
    # the multi-hot pattern for multi-label ones
    keys = ["".join(map(str, row)) if len(label_columns) > 1 else str(row[0]) for row in labels.astype(int)]
    return pd.Series(keys, index=first.index)


def sites_from_dirichlet(manifest: pd.DataFrame, label_columns: list[str], n_clients: int,
                         alpha: float, seed: int) -> dict[str, SiteRecords]:
    """Split a dataset without sites into ``n_clients`` label-skewed clients (whole patients).

    Clients are named ``client_00``, ``client_01``, ...; a client that gets no patient is left
    out (it would have nothing to train on), so fewer than ``n_clients`` may come back.
    """
    _require(manifest, ["record_id", "patient_id", "split", *label_columns], "the Dirichlet split")
    strata = _patient_strata(manifest, list(label_columns))
    client = dirichlet_label_skew(strata.to_numpy(), n_clients, alpha, seed)
    of_patient = dict(zip(strata.index, client))
    site_of = manifest["patient_id"].map(lambda p: f"client_{of_patient[p]:02d}")
    return _by_site(manifest, site_of)


def check_site(site: str, y: dict[str, np.ndarray], class_names: list[str], kind: str,
               batch_size: int, allow_missing_classes: bool = False) -> None:
    """Refuse a site whose data cannot give a meaningful private model or metric.

    Parameters
    ----------
    site: the site's pseudonym (for the message).
    y: labels per split (``"train"``, ``"val"``, ``"test"``): ``(n,)`` class indices
        (``kind="multiclass"``) or ``(n, C)`` 0/1 (``kind="multilabel"``).
    class_names: the C class / label names.
    batch_size: the expected batch size of local training.
    allow_missing_classes: multi-class only: accept classes a site has no record of (the
        Dirichlet split creates them on purpose); real hospital sites default to refusing them,
        as a class a hospital never saw usually means a wrong label map or site mapping.

    Raises
    ------
    SiteError: fewer training records than the batch size (Poisson sampling at rate B/n would
        exceed 1: no subsampling, and the batch could not be filled); an empty split; a class
        missing at the site (multi-class); a label with no positive or no negative record in
        the validation or test split (multi-label: its AUROC, which chooses λ and is reported,
        is undefined).
    """
    n_train = len(y["train"])
    if n_train < batch_size:
        raise SiteError(f"site {site}: {n_train} training records, fewer than the batch size "
                        f"{batch_size}; lower the batch size or leave the site out")
    for s in SPLITS:
        if len(y[s]) == 0:
            raise SiteError(f"site {site}: no record in the {s} split")
    if kind == "multiclass":
        seen = set(np.concatenate([np.asarray(y[s]).ravel() for s in SPLITS]).astype(int).tolist())
        missing = [class_names[c] for c in range(len(class_names)) if c not in seen]
        if missing and not allow_missing_classes:
            raise SiteError(f"site {site}: no record of class {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return
    for s in ("val", "test"):
        ys = np.asarray(y[s])
        for j, name in enumerate(class_names):
            for value, word in ((1, "positive"), (0, "negative")):
                if not (ys[:, j] == value).any():
                    raise SiteError(f"site {site}: label {name!r} has no {word} record in the "
                                    f"{s} split, so its AUROC is undefined there")
