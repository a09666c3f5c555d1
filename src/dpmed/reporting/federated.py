"""Study C's summary: per-method metric (mean ± std over sites and seeds) per ε, W₂ per site.

Inputs are the ``per_site.csv`` files of every (ε, seed) federation job and their
``subgroups.parquet``; outputs a table (CSV + Markdown) and two figures (PNG, matplotlib Agg).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dpmed.io.atomic import atomic_path, write_csv
from dpmed.evaluation.aggregate import render_markdown

#: The plotted methods, in legend order.
ORDER = ("fed_cvae", "fed_cvae_synthetic", "fed_cgan", "fed_cgan_synthetic", "fedavg", "fedprox", "local")


def metric_of(per_site: pd.DataFrame) -> str:
    """AUROC for multi-label tasks, balanced accuracy for multi-class ones."""
    return "auroc" if "auroc" in per_site.columns else "balanced_accuracy"


def summary_table(per_site: pd.DataFrame) -> pd.DataFrame:
    """Per method and ε: mean and std (ddof 1) over every (site, seed) pair, W₂ the same way."""
    metric = metric_of(per_site)
    cols = [c for c in (metric, "accuracy", "w2", "lambda") if c in per_site.columns]
    g = per_site.groupby(["method", "epsilon"], sort=True)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std"))
    out["n_sites"] = per_site.groupby(["method", "epsilon"])["site"].nunique()
    out["n_seeds"] = per_site.groupby(["method", "epsilon"])["seed"].nunique()
    return out.reset_index()


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_metric_vs_epsilon(table: pd.DataFrame, metric: str, path: Path) -> None:
    from dpmed.reporting.plots import plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    finite = sorted(e for e in table["epsilon"].unique() if math.isfinite(e))
    xs = {e: i for i, e in enumerate(finite + [math.inf])}
    for k, method in enumerate(m for m in ORDER if m in set(table["method"])):
        t = table[table["method"] == method].sort_values("epsilon")
        ax.errorbar([xs[e] + 0.05 * (k - 3) for e in t["epsilon"]], t[f"{metric}_mean"], yerr=t[f"{metric}_std"],
                    marker="o", capsize=3, label=method)
    ax.set_xticks(list(xs.values()), [f"{e:g}" if math.isfinite(e) else "∞" for e in xs])
    ax.set_xlabel("ε per client (∞: no DP)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (mean ± std over sites and seeds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def plot_w2_per_site(per_site: pd.DataFrame, path: Path) -> None:
    from dpmed.reporting.plots import plt

    gens = [m for m in ("fed_cvae", "fed_cgan") if m in set(per_site["method"])]
    d = per_site[per_site["method"].isin(gens)].groupby(["epsilon", "site", "method"])["w2"].mean().unstack("method")
    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{s}\nε={e:g}" if math.isfinite(e) else f"{s}\nε=∞" for e, s in d.index]
    x = np.arange(len(d))
    for k, m in enumerate(gens):
        ax.bar(x + (k - 0.5) * 0.4, d[m].to_numpy(), width=0.4, label=m)
    ax.set_xticks(x, labels, fontsize=6, rotation=90)
    ax.set_ylabel("Sinkhorn W₂ (real vs synthetic, scaled features)")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def write_federated_summary(per_site_files: Sequence[str], subgroup_files: Sequence[str], out: dict) -> pd.DataFrame:
    """Read every job's per-site results and write table (csv, md), subgroups and the two figures."""
    per_site = pd.concat([pd.read_csv(f) for f in per_site_files], ignore_index=True)
    per_site["epsilon"] = per_site["epsilon"].astype(float)
    table = summary_table(per_site)
    write_csv(table, out["table_csv"])
    with atomic_path(out["table_md"]) as tmp:
        Path(tmp).write_text(render_markdown(table, index=False) + "\n")
    sub = pd.concat([pd.read_parquet(f).assign(job=i) for i, f in enumerate(subgroup_files)], ignore_index=True)
    sub = sub[(sub["label"] == "mean") & (sub["metric"] == "auroc")] if "auroc" in set(sub["metric"]) else sub
    write_csv(sub.groupby(["method", "site", "subgroup"], sort=True)["estimate"].agg(["mean", "std", "count"])
              .reset_index(), out["subgroups_csv"])
    plot_metric_vs_epsilon(table, metric_of(per_site), Path(out["metric_png"]))
    plot_w2_per_site(per_site, Path(out["w2_png"]))
    return table
