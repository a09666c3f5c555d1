"""Aggregation over models: Table 1, correlations, a small Markdown renderer.

Input: ``metrics_by_model`` — the concatenation of :func:`evaluate_model` outputs, one
per model, with identifying columns added: ``epsilon`` (float, ``inf`` for the
non-private model; required), and optionally ``dataset`` and ``seed`` (non-private and
private models are paired within the same dataset and seed).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import pearsonr

from .metrics import EvaluationError

CORRELATION_COLUMNS = ["analysis", "dataset", "group", "x", "y", "n_points", "r", "p_value"]
TABLE1_STATS = ["N", "AUROC μ", "AUROC σ", "PD μ", "PD σ"]


def _require(df: pd.DataFrame, cols: list[str]) -> None:
    miss = [c for c in cols if c not in df.columns]
    if miss:
        raise EvaluationError(f"metrics table: missing columns {miss}")


def _subgroup_title(s: str) -> str:
    return "total" if s == "all" else s


# ---------------------------------------------------------------------------------- Table 1
def table1(metrics_by_model: pd.DataFrame, label: str = "mean", dataset: str | None = None
           ) -> pd.DataFrame:
    """Study Table 1: rows ε (ascending, ∞ last), columns (subgroup, stat).

    Subgroups are "total" (= "all") and every other subgroup in order of appearance; stats
    are :data:`TABLE1_STATS`: N (test records of the subgroup), AUROC bootstrap mean and
    std, parity difference bootstrap mean and std ("total" has no PD → NaN), of ``label``
    (default the label mean).  Several models at the same ε (e.g. seeds) are averaged:
    μ and σ are the means of their bootstrap means and stds.
    """
    df = metrics_by_model
    _require(df, ["epsilon", "label", "subgroup", "metric", "estimate", "mean", "std"])
    if "dataset" in df.columns:
        if dataset is None:
            ds = df["dataset"].unique()
            if len(ds) > 1:
                raise EvaluationError(f"table1: several datasets {list(ds)}; pass dataset=")
        else:
            df = df[df["dataset"] == dataset]
    df = df[df["label"] == label]
    if df.empty:
        raise EvaluationError(f"table1: no rows for label {label!r}")
    subgroups = list(dict.fromkeys(df["subgroup"]))
    eps = sorted(df["epsilon"].astype(float).unique(), key=lambda e: (math.isinf(e), e))
    g = df.groupby(["epsilon", "subgroup", "metric"])[["estimate", "mean", "std"]].mean()
    cols = pd.MultiIndex.from_product([[_subgroup_title(s) for s in subgroups], TABLE1_STATS],
                                      names=["subgroup", "stat"])
    out = pd.DataFrame(np.nan, index=pd.Index(eps, name="epsilon"), columns=cols)

    def get(e, s, m, c):
        try:
            return float(g.loc[(e, s, m), c])
        except KeyError:
            return np.nan

    for e in eps:
        for s in subgroups:
            t = _subgroup_title(s)
            out.loc[e, (t, "N")] = get(e, s, "n", "estimate")
            out.loc[e, (t, "AUROC μ")] = get(e, s, "auroc", "mean")
            out.loc[e, (t, "AUROC σ")] = get(e, s, "auroc", "std")
            out.loc[e, (t, "PD μ")] = get(e, s, "parity_difference", "mean")
            out.loc[e, (t, "PD σ")] = get(e, s, "parity_difference", "std")
    return out


def render_markdown(df: pd.DataFrame, float_format: str = "{:.4g}", index: bool = True) -> str:
    """GitHub-flavoured Markdown table of ``df`` (MultiIndex columns joined with a space)."""
    def fmt(v) -> str:
        if isinstance(v, (float, np.floating)):
            if np.isnan(v):
                return ""
            if np.isinf(v):
                return "∞" if v > 0 else "-∞"
            return float_format.format(v)
        return str(v).replace("|", "\\|")

    headers = [" ".join(str(p) for p in c) if isinstance(c, tuple) else str(c) for c in df.columns]
    rows = [[fmt(v) for v in r] for r in df.itertuples(index=False, name=None)]
    if index:
        name = df.index.name if df.index.name is not None else ""
        headers = [str(name)] + headers
        rows = [[fmt(i)] + r for i, r in zip(df.index, rows)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] * len(headers)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def table1_markdown(table: pd.DataFrame, percent: bool = True) -> str:
    """Compact Markdown of :func:`table1`: per subgroup an "AUROC" and a "PD" column with
    "μ ± σ" (in % if ``percent``), and a first row with N per subgroup."""
    scale = 100.0 if percent else 1.0
    subgroups = list(dict.fromkeys(table.columns.get_level_values(0)))

    def pm(mu, sd):
        if np.isnan(mu):
            return ""
        return f"{mu * scale:.2f} ± {sd * scale:.2f}" if np.isfinite(sd) else f"{mu * scale:.2f}"

    cols = {}
    n_row = {}
    for s in subgroups:
        cols[f"{s} AUROC"] = [pm(table.loc[e, (s, "AUROC μ")], table.loc[e, (s, "AUROC σ")])
                              for e in table.index]
        n = table[(s, "N")].dropna()
        n_row[f"{s} AUROC"] = f"N = {int(n.iloc[0]):,}" if len(n) else ""
        if table[(s, "PD μ")].notna().any():
            cols[f"{s} PD"] = [pm(table.loc[e, (s, "PD μ")], table.loc[e, (s, "PD σ")])
                               for e in table.index]
            n_row[f"{s} PD"] = ""
    body = pd.DataFrame(cols, index=pd.Index(list(table.index), name="ε"))
    header = pd.DataFrame([n_row], index=pd.Index(["N"], name="ε"))
    return render_markdown(pd.concat([header, body]), index=True)


# ------------------------------------------------------------------------------ correlations
def _pearson(x, y) -> tuple[int, float, float]:
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return int(x.size), float("nan"), float("nan")
    res = pearsonr(x, y)
    return int(x.size), float(res.statistic), float(res.pvalue)


def correlations(metrics_by_model: pd.DataFrame, value: str = "estimate") -> pd.DataFrame:
    """Pearson correlations of methods A, as a tidy table (:data:`CORRELATION_COLUMNS`).

    Points use the column ``value`` (default the full-test-set ``estimate``); fewer than
    three points or a constant variable → NaN.  Per dataset:

    * ``auroc_vs_n_positive`` — one point per (model, label), subgroup "all":
      x = number of positive test records of the label, y = AUROC; groups "non_private"
      (ε = ∞) and "private" (all finite ε pooled).
    * ``auroc_drop_vs_n_positive`` — one point per (private model, label), subgroup "all":
      x = positives of the label, y = AUROC(non-private) − AUROC(private), the non-private
      model of the same dataset and seed.
    * ``auroc_drop_vs_nonprivate_auroc`` — same points, x = non-private AUROC.
    * ``auroc_drop_vs_subgroup_n`` — one point per (private model, subgroup ≠ "all"),
      label mean: x = subgroup size, y = drop of the label-mean AUROC.
    * ``parity_difference_vs_epsilon`` — label mean, finite ε only: x = ε, y = PD; one
      group per subgroup, and "pooled" over subgroups.
    """
    df = metrics_by_model.copy()
    _require(df, ["epsilon", "label", "subgroup", "metric", value])
    if "dataset" not in df.columns:
        df["dataset"] = ""
    if "seed" not in df.columns:
        df["seed"] = 0
    df["epsilon"] = df["epsilon"].astype(float)
    keys = ["dataset", "seed", "epsilon", "label", "subgroup"]
    wide = df.pivot_table(index=keys, columns="metric", values=value, aggfunc="mean").reset_index()
    for m in ("auroc", "n", "n_positive", "parity_difference"):
        if m not in wide.columns:
            wide[m] = np.nan
    rows = []

    def add(analysis, ds, group, xname, yname, x, y):
        k, r, p = _pearson(x, y)
        rows.append({"analysis": analysis, "dataset": ds, "group": group, "x": xname,
                     "y": yname, "n_points": k, "r": r, "p_value": p})

    for ds, w in wide.groupby("dataset", sort=False):
        private = np.isfinite(w["epsilon"])
        lab = (w["label"] != "mean") & (w["subgroup"] == "all")
        for grp, sel in (("non_private", ~private), ("private", private)):
            d = w[lab & sel]
            add("auroc_vs_n_positive", ds, grp, "n_positive", "auroc", d["n_positive"], d["auroc"])
        ref = w[~private].drop(columns=["epsilon"])
        pair = w[private].merge(ref, on=["dataset", "seed", "label", "subgroup"],
                                suffixes=("", "_np"))
        pair["drop"] = pair["auroc_np"] - pair["auroc"]
        d = pair[(pair["label"] != "mean") & (pair["subgroup"] == "all")]
        add("auroc_drop_vs_n_positive", ds, "private", "n_positive", "auroc_drop",
            d["n_positive"], d["drop"])
        add("auroc_drop_vs_nonprivate_auroc", ds, "private", "auroc_nonprivate", "auroc_drop",
            d["auroc_np"], d["drop"])
        d = pair[(pair["label"] == "mean") & (pair["subgroup"] != "all")]
        add("auroc_drop_vs_subgroup_n", ds, "private", "n", "auroc_drop", d["n"], d["drop"])
        pdm = w[private & (w["label"] == "mean") & (w["subgroup"] != "all")]
        for sg, d in pdm.groupby("subgroup", sort=False):
            add("parity_difference_vs_epsilon", ds, sg, "epsilon", "parity_difference",
                d["epsilon"], d["parity_difference"])
        add("parity_difference_vs_epsilon", ds, "pooled", "epsilon", "parity_difference",
            pdm["epsilon"], pdm["parity_difference"])
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
