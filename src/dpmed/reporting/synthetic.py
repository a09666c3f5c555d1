"""Study B outputs: the grid of real vs synthetic patches, the study's Table 1 (mode x ε,
AUROC/AUPRC within-domain and external, mean ± std over seeds) and AUPRC vs ε per mode.

Within-domain metrics are on the test split, external ones on the test-only cohort of another
site (predictions with split ``external``); both are bootstrapped by
:func:`dpmed.evaluation.evaluate_model` with the same seed and so the same redraws for every
model (the redraws depend only on the seed and the number of records).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ..evaluation import evaluate_model  # noqa: E402
from ..io.atomic import atomic_path, write_csv, write_text  # noqa: E402

__all__ = ["real_vs_synthetic_grid", "mode_metrics", "study_b_table", "table_markdown", "auprc_vs_epsilon_figure",
           "split_method"]

MODE_NAMES = {"real": "Real", "syn": "Syn", "realsyn": "Real+Syn", "synpre": "SynPre",
              "synprerealft": "SynPre+RealFT"}
VARIANT_NAMES = {"mcgan": "MCGAN (no DP)", "dpmcgan": "DP-MCGAN"}


def split_method(method: str) -> tuple[str, str]:
    """``realsyn_dpmcgan`` -> ("realsyn", "dpmcgan"); ``real`` -> ("real", "")."""
    mode, _, variant = method.partition("_")
    return mode, variant


def _save(fig, out_png) -> None:
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def real_vs_synthetic_grid(real: np.ndarray, real_labels: np.ndarray, synthetic: Mapping[str, tuple],
                           out_png, *, per_class: int = 6, seed: int = 0, label: str = "malignant") -> None:
    """One row per (source, class): ``per_class`` real patches, then the same number from each
    generator in ``synthetic`` (``{variant: (images, labels)}``), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls in (0, 1):
        sources = [("real (test)", real, real_labels)] + [(VARIANT_NAMES.get(v, v), *synthetic[v]) for v in synthetic]
        for name, img, lab in sources:
            idx = np.flatnonzero(np.asarray(lab) == cls)
            pick = rng.choice(idx, min(per_class, len(idx)), replace=False) if len(idx) else []
            rows.append((f"{name}\n{label}={cls}", [img[i] for i in pick]))
    fig, axes = plt.subplots(len(rows), per_class, figsize=(1.3 * per_class, 1.35 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray", vmin=0, vmax=255)
            if c == 0:
                ax.set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    _save(fig, out_png)


def mode_metrics(predictions: pd.DataFrame, labels: Sequence[str], *, n_bootstrap: int, seed: int,
                 ci: float) -> dict:
    """AUROC and AUPRC (label mean, subgroup all) within-domain (test) and external."""
    out = {}
    domains = {"within": predictions[predictions["split"].isin(["val", "test"])]}
    if (predictions["split"] == "external").any():
        ext = predictions[predictions["split"] != "test"].copy()
        ext.loc[ext["split"] == "external", "split"] = "test"
        domains["external"] = ext
    for domain, pred in domains.items():
        m = evaluate_model(pred, list(labels), {}, n_bootstrap=n_bootstrap, seed=seed, ci=ci)
        m = m[(m["label"] == "mean") & (m["subgroup"] == "all")].set_index("metric")
        for metric in ("auroc", "auprc"):
            out[f"{metric}_{domain}"] = float(m.loc[metric, "estimate"])
    return out


def study_b_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 1: one row per (mode, generator, ε), mean ± std over seeds of every metric column.

    ``rows``: one row per model with ``method``, ``epsilon`` (float), ``seed``, ``card_epsilon``
    (the ε of the model's card: composed with the generator's, inf without a guarantee) and
    ``auroc_within``, ``auprc_within`` (and ``_external``)."""
    df = rows.copy()
    df[["mode", "generator"]] = df["method"].apply(lambda m: pd.Series(split_method(m)))
    metrics = [c for c in df.columns if c.startswith(("auroc_", "auprc_"))]
    g = df.groupby(["mode", "generator", "method", "epsilon"], sort=False)
    out = g[metrics].agg(["mean", "std"])
    out.columns = [f"{a}_{b}" for a, b in out.columns]
    out["card_epsilon"] = g["card_epsilon"].max()
    out["seeds"] = g["seed"].nunique()
    out = out.reset_index()
    order = {m: i for i, m in enumerate(MODE_NAMES)}
    out["_o"] = out["mode"].map(order)
    return out.sort_values(["_o", "generator", "epsilon"]).drop(columns="_o").reset_index(drop=True)


def _pm(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if math.isfinite(std) else f"{mean:.3f}"


def table_markdown(table: pd.DataFrame) -> str:
    metrics = [c[:-5] for c in table.columns if c.endswith("_mean")]
    head = ["Mode", "Generator", "ε (classifier)", "ε (card)"] + [m.replace("_", " ") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        eps = "∞" if math.isinf(r["epsilon"]) else f"{r['epsilon']:g}"
        card = "none" if math.isinf(r["card_epsilon"]) else f"{r['card_epsilon']:.3g}"
        cells = [MODE_NAMES.get(r["mode"], r["mode"]), VARIANT_NAMES.get(r["generator"], "–"), eps, card]
        cells += [_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_study_b_table(table: pd.DataFrame, csv_path, md_path) -> None:
    write_csv(table, csv_path)
    write_text(table_markdown(table), Path(md_path))


def auprc_vs_epsilon_figure(table: pd.DataFrame, out_png) -> None:
    """AUPRC (mean ± std over seeds) against the classifier's ε per mode and generator, within-domain
    and external panels; the non-private value (ε = ∞) of each series as a dashed line."""
    domains = [d for d in ("within", "external") if f"auprc_{d}_mean" in table.columns]
    fig, axes = plt.subplots(1, len(domains), figsize=(6 * len(domains), 4), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, domain in zip(axes[0], domains):
        for i, (method, df) in enumerate(table.groupby("method", sort=False)):
            mode, variant = split_method(method)
            name = MODE_NAMES.get(mode, mode) + (f" [{VARIANT_NAMES.get(variant, variant)}]" if variant else "")
            colour = cmap(i % 10)
            finite = df[np.isfinite(df["epsilon"])]
            inf = df[~np.isfinite(df["epsilon"])]
            if len(finite):
                ax.errorbar(finite["epsilon"], finite[f"auprc_{domain}_mean"], yerr=finite[f"auprc_{domain}_std"],
                            marker="o", capsize=2, color=colour, label=name)
            for _, r in inf.iterrows():
                ax.axhline(r[f"auprc_{domain}_mean"], ls="--", lw=1, color=colour,
                           label=f"{name} ε=∞" if len(finite) else f"{name} (no DP classifier)")
        ax.set_xscale("log")
        ax.set_xlabel("ε of the classifier's DP-SGD")
        ax.set_ylabel(f"AUPRC ({domain})")
        ax.set_title("within-domain test split" if domain == "within" else "external test cohort")
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    _save(fig, out_png)
