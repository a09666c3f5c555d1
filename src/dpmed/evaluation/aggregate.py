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
SPREADS = ("bootstrap", "seeds")
#: Column of :func:`table1` saying which spread the σ cells of that row are.
SPREAD_COLUMN = ("σ", "kind")


def _spread_kind(spread: str, n_seeds: int) -> str:
    if spread == "seeds" and n_seeds >= 2:
        return f"std over {n_seeds} seeds"
    if n_seeds > 1:
        return f"bootstrap std (mean over {n_seeds} seeds)"
    return "bootstrap std"


def _one_method(df: pd.DataFrame, what: str) -> None:
    """Refuse models of several methods: Table 1 and the correlations are the study's, per
    method; pooling, say, DP-SGD and CADP at one ε would average two different mechanisms."""
    if "method" in df.columns:
        methods = sorted(df["method"].dropna().astype(str).unique())
        if len(methods) > 1:
            raise EvaluationError(f"{what}: models of several methods {methods}; select one method first")


def table1(metrics_by_model: pd.DataFrame, label: str = "mean", dataset: str | None = None,
           spread: str = "bootstrap") -> pd.DataFrame:
    """Study Table 1: rows ε (ascending, ∞ last), columns (subgroup, stat).

    Subgroups are "total" (= "all") and every other subgroup in order of appearance; stats
    are :data:`TABLE1_STATS`: N (test records of the subgroup), AUROC μ and σ, parity
    difference μ and σ ("total" has no PD → NaN), of ``label`` (default the label mean).
    The last column :data:`SPREAD_COLUMN` says, per row, which spread σ is:

    * ``spread="bootstrap"`` (methods A for CXR): μ and σ are the bootstrap mean and std of
      the test-set redraws; several models at one ε (seeds) → the mean of their bootstrap
      means and of their bootstrap stds (test-set uncertainty only).
    * ``spread="seeds"`` (methods A for CT: mean ± std over independent trainings): μ is the
      mean over seeds of the full-test-set point estimates, σ their std (ddof = 1); a row
      with a single seed falls back to the bootstrap (and says so).

    Raises
    ------
    EvaluationError: missing columns, no rows for ``label``, several datasets without
        ``dataset=``, several methods (their models would be averaged into one row), an
        unknown ``spread``.
    """
    if spread not in SPREADS:
        raise EvaluationError(f"table1: spread must be one of {SPREADS}, got {spread!r}")
    df = metrics_by_model
    _require(df, ["epsilon", "label", "subgroup", "metric", "estimate", "mean", "std"])
    if "dataset" in df.columns:
        if dataset is None:
            ds = df["dataset"].unique()
            if len(ds) > 1:
                raise EvaluationError(f"table1: several datasets {list(ds)}; pass dataset=")
        else:
            df = df[df["dataset"] == dataset]
    _one_method(df, "table1")
    df = df[df["label"] == label]
    if df.empty:
        raise EvaluationError(f"table1: no rows for label {label!r}")
    if "seed" not in df.columns:
        df = df.assign(seed=0)
    subgroups = list(dict.fromkeys(df["subgroup"]))
    eps = sorted(df["epsilon"].astype(float).unique(), key=lambda e: (math.isinf(e), e))
    g = df.groupby(["epsilon", "subgroup", "metric"])[["estimate", "mean", "std"]].mean()
    over_seeds = df.groupby(["epsilon", "subgroup", "metric"])["estimate"].agg(["mean", "std"])
    n_seeds = df.groupby("epsilon")["seed"].nunique()
    cols = pd.MultiIndex.from_product([[_subgroup_title(s) for s in subgroups], TABLE1_STATS],
                                      names=["subgroup", "stat"])
    out = pd.DataFrame(np.nan, index=pd.Index(eps, name="epsilon"), columns=cols)
    out[SPREAD_COLUMN] = ""

    def get(table, e, s, m, c):
        try:
            return float(table.loc[(e, s, m), c])
        except KeyError:
            return np.nan

    for e in eps:
        seeds = spread == "seeds" and n_seeds.loc[e] >= 2
        src, mu, sd = (over_seeds, "mean", "std") if seeds else (g, "mean", "std")
        out.loc[e, SPREAD_COLUMN] = _spread_kind(spread, int(n_seeds.loc[e]))
        for s in subgroups:
            t = _subgroup_title(s)
            out.loc[e, (t, "N")] = get(g, e, s, "n", "estimate")
            out.loc[e, (t, "AUROC μ")] = get(src, e, s, "auroc", mu)
            out.loc[e, (t, "AUROC σ")] = get(src, e, s, "auroc", sd)
            out.loc[e, (t, "PD μ")] = get(src, e, s, "parity_difference", mu)
            out.loc[e, (t, "PD σ")] = get(src, e, s, "parity_difference", sd)
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
    "μ ± σ" (in % if ``percent``), a first row with N per subgroup and a last column
    "± is" naming the spread of each row."""
    scale = 100.0 if percent else 1.0
    subgroups = [s for s in dict.fromkeys(table.columns.get_level_values(0))
                 if s != SPREAD_COLUMN[0]]

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
    if SPREAD_COLUMN in table.columns:  # which spread "±" is, per row
        cols["± is"] = list(table[SPREAD_COLUMN])
        n_row["± is"] = ""
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


def positives_per_label(manifest: pd.DataFrame, labels: list[str], split: str = "train"
                        ) -> pd.DataFrame:
    """Positive records per label in one split of a manifest (``split``, ``label_<name>``).

    Returns a DataFrame ``label, n_train_positive`` (the column name is fixed so that
    :func:`correlations` can take it as is, whatever ``split`` was counted). These are exact
    counts of the private training split: descriptive statistics released without DP.
    """
    need = ["split"] + [f"label_{lb}" for lb in labels]
    miss = [c for c in need if c not in manifest.columns]
    if miss:
        raise EvaluationError(f"manifest: missing columns {miss}")
    part = manifest[manifest["split"] == split]
    if part.empty:
        raise EvaluationError(f"manifest: no records in split {split!r}")
    counts = [int(pd.to_numeric(part[f"label_{lb}"]).sum()) for lb in labels]
    return pd.DataFrame({"label": list(labels), "n_train_positive": counts})


def _train_positive_table(train_positives) -> pd.DataFrame | None:
    """``dataset, label, n_train_positive`` from a DataFrame or a ``{label: n}`` mapping;
    dataset "" applies to every dataset."""
    if train_positives is None:
        return None
    if isinstance(train_positives, pd.DataFrame):
        tp = train_positives.copy()
    else:
        tp = pd.DataFrame({"label": list(train_positives),
                           "n_train_positive": list(train_positives.values())})
    _require(tp, ["label", "n_train_positive"])
    if "dataset" not in tp.columns:
        tp["dataset"] = ""
    return tp[["dataset", "label", "n_train_positive"]]


def correlations(metrics_by_model: pd.DataFrame, value: str = "estimate",
                 train_positives: pd.DataFrame | dict | None = None) -> pd.DataFrame:
    """Pearson correlations of methods A, as a tidy table (:data:`CORRELATION_COLUMNS`).

    Points use the column ``value`` (default the full-test-set ``estimate``); fewer than
    three points or a constant variable → NaN.  Per dataset:

    * ``auroc_vs_n_train_positive`` — the study's relation (only when ``train_positives``
      is given): one point per (model, label), subgroup "all": x = number of positive
      **training** records of the label, y = AUROC; groups "non_private" (ε = ∞) and
      "private" (all finite ε pooled).
    * ``auroc_vs_n_positive`` — the same with x = positive **test** records
      (``x = "n_test_positive"``), kept for comparison.
    * ``auroc_drop_vs_n_train_positive`` (with ``train_positives``) and
      ``auroc_drop_vs_n_positive`` (test positives) — one point per (private model, label),
      subgroup "all": y = AUROC(non-private) − AUROC(private), the non-private model of the
      same dataset and seed.
    * ``auroc_drop_vs_nonprivate_auroc`` — same points, x = non-private AUROC.
    * ``auroc_drop_vs_subgroup_n`` — one point per (private model, subgroup ≠ "all"),
      label mean: x = subgroup size, y = drop of the label-mean AUROC.
    * ``parity_difference_vs_epsilon`` — label mean, finite ε only: x = ε, y = PD; one
      group per subgroup, and "pooled" over subgroups.

    ``train_positives``: :func:`positives_per_label` output (optionally with a ``dataset``
    column) or ``{label: count}``; labels missing from it give no point.
    """
    df = metrics_by_model.copy()
    _require(df, ["epsilon", "label", "subgroup", "metric", value])
    _one_method(df, "correlations")
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
    tp = _train_positive_table(train_positives)
    rows = []

    def add(analysis, ds, group, xname, yname, x, y):
        k, r, p = _pearson(x, y)
        rows.append({"analysis": analysis, "dataset": ds, "group": group, "x": xname,
                     "y": yname, "n_points": k, "r": r, "p_value": p})

    for ds, w in wide.groupby("dataset", sort=False):
        w = _with_train_positives(w, tp, ds)
        private = np.isfinite(w["epsilon"])
        lab = (w["label"] != "mean") & (w["subgroup"] == "all")
        for grp, sel in (("non_private", ~private), ("private", private)):
            d = w[lab & sel]
            if tp is not None:
                add("auroc_vs_n_train_positive", ds, grp, "n_train_positive", "auroc",
                    d["n_train_positive"], d["auroc"])
            add("auroc_vs_n_positive", ds, grp, "n_test_positive", "auroc", d["n_positive"],
                d["auroc"])
        ref = w[~private].drop(columns=["epsilon"])
        pair = w[private].merge(ref, on=["dataset", "seed", "label", "subgroup"],
                                suffixes=("", "_np"))
        pair["drop"] = pair["auroc_np"] - pair["auroc"]
        d = pair[(pair["label"] != "mean") & (pair["subgroup"] == "all")]
        if tp is not None:
            add("auroc_drop_vs_n_train_positive", ds, "private", "n_train_positive",
                "auroc_drop", d["n_train_positive"], d["drop"])
        add("auroc_drop_vs_n_positive", ds, "private", "n_test_positive", "auroc_drop",
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


def _with_train_positives(w: pd.DataFrame, tp: pd.DataFrame | None, ds: str) -> pd.DataFrame:
    """``w`` with a column ``n_train_positive`` (NaN where unknown)."""
    w = w.copy()
    if tp is None:
        w["n_train_positive"] = np.nan
        return w
    own = tp[tp["dataset"].isin([ds, ""])]
    own = own.iloc[np.argsort((own["dataset"] == "").to_numpy(), kind="stable")]  # own first
    own = own.drop_duplicates("label", keep="first")
    counts = dict(zip(own["label"], own["n_train_positive"].astype(float)))
    w["n_train_positive"] = w["label"].map(counts).astype(float)
    return w
