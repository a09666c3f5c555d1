"""Figures and the table of content-aware DP (study D): examples and CADP against DP-SGD.

:func:`comparison_table` puts the test metrics of the ``cadp`` classifiers and of a DP-SGD method
side by side at every ε of the shared grid, each row labelled with the KIND of its guarantee read
from the model's own card: CADP's ε is local (each training image perturbed on its own, pure,
δ = 0), DP-SGD's is central ((ε, δ) for one record's presence in the training set, seen through
the model). The same number means different things; :func:`plot_comparison` therefore draws them
in two panels with a shared y-axis, never as two lines on one ε axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .plots import _eps_axis, _save, plt

#: Columns of :func:`comparison_table`.
TABLE_COLUMNS = ["method", "epsilon", "guarantee", "epsilon_holding", "delta", "n_seeds", "auroc", "auroc_std",
                 "auroc_ci_low", "auroc_ci_high", "accuracy", "accuracy_std"]
KIND_WORDS = {"local": "local ε per image (pure, δ = 0)", "central": "central (ε, δ) per record",
              "none": "none (non-private reference)"}


def _kind(card: Mapping) -> str:
    """'local', 'central' or 'none' from a model card (derived cards carry their source's type)."""
    if card.get("kind") == "none" or math.isinf(float(card["epsilon_spent"])):
        return "none"
    return str(card["guarantee_type"])


def comparison_table(runs: Sequence[Mapping]) -> pd.DataFrame:
    """One row per (method, ε): test metrics (label mean, all patients) averaged over seeds.

    Parameters
    ----------
    runs: dicts with ``method``, ``eps`` (wildcard string, ``"inf"``), ``seed``, ``metrics`` (a
        metrics table, :func:`dpmed.evaluation.evaluate_model`) and ``card`` (the model's card).

    Returns
    -------
    DataFrame of :data:`TABLE_COLUMNS`: AUROC/accuracy = mean over seeds of the bootstrap means,
    ``*_std`` and the CI the mean of the seeds' bootstrap std and interval bounds; ``guarantee`` the
    kind of guarantee, ``epsilon_holding``/``delta`` what the cards say holds.
    """
    rows = []
    for r in runs:
        m = r["metrics"]
        m = m[(m["label"] == "mean") & (m["subgroup"] == "all")].set_index("metric")
        card = r["card"]
        rows.append({"method": r["method"], "epsilon": float(r["eps"]), "seed": r["seed"], "guarantee": _kind(card),
                     "epsilon_holding": float(card["epsilon_spent"]), "delta": card.get("delta"),
                     "auroc": m.loc["auroc", "mean"], "auroc_std": m.loc["auroc", "std"],
                     "auroc_ci_low": m.loc["auroc", "ci_low"], "auroc_ci_high": m.loc["auroc", "ci_high"],
                     "accuracy": m.loc["accuracy", "mean"], "accuracy_std": m.loc["accuracy", "std"]})
    df = pd.DataFrame(rows)
    agg = df.groupby(["method", "epsilon"], sort=True).agg(
        guarantee=("guarantee", "first"), epsilon_holding=("epsilon_holding", "max"), delta=("delta", "first"),
        n_seeds=("seed", "nunique"), **{c: (c, "mean") for c in TABLE_COLUMNS[6:]})
    kinds = df.groupby(["method", "epsilon"])["guarantee"].nunique()
    if (kinds > 1).any():
        raise ValueError(f"models of one (method, ε) carry different kinds of guarantee: {kinds[kinds > 1].index.tolist()}")
    return agg.reset_index()[TABLE_COLUMNS]


def plot_comparison(table: pd.DataFrame, out_png: str | Path, *, dataset: str, dpsgd: str) -> tuple[int, int]:
    """Test AUROC against ε: DP-SGD (``dpsgd``, central) left, CADP (local) right, shared y-axis.

    The non-private reference (ε = ∞; the same model for both methods) is a dashed line with its
    ± bootstrap std band in both panels. Returns the PNG's (width, height) in pixels.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8), sharey=True)
    for ax, method, colour in ((axes[0], dpsgd, "tab:blue"), (axes[1], "cadp", "tab:orange")):
        d = table[table["method"] == method]
        fin, ref = d[np.isfinite(d["epsilon"])], d[~np.isfinite(d["epsilon"])]
        kind = fin["guarantee"].iloc[0] if len(fin) else "none"
        ax.errorbar(fin["epsilon"], fin["auroc"], yerr=fin["auroc_std"], color=colour, marker="o", capsize=3,
                    label=f"{method}: {KIND_WORDS.get(kind, kind)}")
        for _, r in ref.iterrows():
            ax.axhline(r["auroc"], color="grey", ls="--", lw=1, label="non-private (ε = ∞)")
            ax.axhspan(r["auroc"] - r["auroc_std"], r["auroc"] + r["auroc_std"], color="grey", alpha=0.12, lw=0)
        _eps_axis(ax, fin["epsilon"].tolist())
        ax.set_xlabel("local ε per image (CADP)" if method == "cadp" else "central ε per record (DP-SGD, δ as on the card)")
        title = "CADP: privatised images, non-private classifier" if method == "cadp" else f"DP-SGD ({method})"
        ax.set_title(f"{title}\nguarantee: {KIND_WORDS.get(kind, kind)}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("test AUROC (mean over labels)")
    fig.suptitle(f"{dataset}: the two ε are different guarantees (local vs central)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def plot_examples(original: np.ndarray, privatised: Mapping[float, np.ndarray], out_png: str | Path, *,
                  source: str) -> tuple[int, int]:
    """One public image and its privatised copy at each ε (grey, [0, 1]), left to right.

    Parameters
    ----------
    original: (H, W) image in [0, 1] from the PUBLIC cohort ``source``.
    privatised: ε → (H, W) privatised copy (same mechanism as the private release).
    """
    eps = sorted(privatised)
    fig, axes = plt.subplots(1, len(eps) + 1, figsize=(1.6 * (len(eps) + 1), 2.0))
    axes = np.atleast_1d(axes)
    panels = [(f"original\n({source})", original)] + [(f"ε = {e:g}", privatised[e]) for e in eps]
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, out_png)
