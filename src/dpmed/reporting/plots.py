"""Figures of one dataset: accuracy and fairness of private classifiers against ε.

Input of every function: the *stacked metrics table* of one dataset — the
:func:`dpmed.evaluation.evaluate_model` outputs of all trained models (columns ``label,
subgroup, metric, estimate, mean, std, ci_low, ci_high, n_missing``) with added columns
``epsilon`` (float, ``inf`` for the non-private model) and optionally ``dataset``,
``method`` (e.g. "dpsgd") and ``seed``.

Conventions shared by all figures
---------------------------------
* y-values are **bootstrap means** (column ``mean``) and error bars **± one bootstrap
  standard deviation** (column ``std``) of the test-set redraws — except
  :func:`plot_auroc_vs_positives`, which shows full-test-set point estimates (the points of
  the Pearson correlation).
* Several models at the same (method, ε) — e.g. seeds — are averaged: the plotted value is
  the mean of their bootstrap means, the error bar the mean of their bootstrap stds (the
  same rule as :func:`dpmed.evaluation.aggregate.table1`).  With ``spread="seeds"`` (the
  study's CT results: mean ± std over independent trainings) the value is the mean of the
  seeds' full-test-set estimates and the bar their std (ddof 1); a point with a single
  seed has no bar.  The legend says which.
* ε is on a **log axis**.  The non-private model (ε = ∞) cannot sit on it and is drawn as
  a **dashed horizontal line** (with a light ± std band) in the colour of its series.
* Every function writes one PNG atomically (temporary sibling + ``os.replace``) and returns
  the plotted numbers as a tidy DataFrame (:data:`PLOT_COLUMNS`) whose
  ``attrs["size_px"]`` is the ``(width, height)`` of the PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from ..evaluation import aggregate  # noqa: E402
from ..evaluation.metrics import EvaluationError  # noqa: E402
from ..io.atomic import atomic_path  # noqa: E402

DPI = 150
#: What the error bars of the ε figures show (see :func:`_seed_mean`).
SPREADS = ("bootstrap", "seeds")
SPREAD_WORDS = {"bootstrap": "bootstrap std", "seeds": "std over seeds"}
#: Columns of the DataFrame every plot function returns.
PLOT_COLUMNS = ["panel", "series", "method", "epsilon", "x", "y", "yerr", "kind"]
#: The four panels of :func:`plot_metrics_vs_epsilon`: metric → panel title.
EPSILON_PANELS = {"auroc": "AUROC", "accuracy": "Accuracy", "sensitivity": "Sensitivity",
                  "specificity": "Specificity"}
METRIC_TITLES = {**EPSILON_PANELS, "parity_difference": "Parity difference"}
ATTRIBUTE_TITLES = {"sex": "sex", "age_group": "age group"}
REQUIRED = ["label", "subgroup", "metric", "epsilon", "mean", "std", "estimate"]

_MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


class ReportingError(EvaluationError):
    """The metrics table cannot be plotted or tabulated."""


# ------------------------------------------------------------------------------- data prep
def prepare(metrics: pd.DataFrame) -> pd.DataFrame:
    """Check and normalise a stacked metrics table (copy): float ε, ``method``/``seed`` filled."""
    miss = [c for c in REQUIRED if c not in metrics.columns]
    if miss:
        raise ReportingError(f"metrics table: missing columns {miss}")
    if metrics.empty:
        raise ReportingError("metrics table is empty")
    df = metrics.copy()
    if "dataset" in df.columns and df["dataset"].nunique() > 1:
        raise ReportingError(
            f"metrics table holds several datasets {sorted(df['dataset'].unique())}; "
            "plot one dataset at a time")
    df["epsilon"] = pd.to_numeric(df["epsilon"], errors="raise").astype(float)
    if (df["epsilon"] <= 0).any() or df["epsilon"].isna().any():
        raise ReportingError("metrics table: epsilon must be > 0 (inf for non-private)")
    if "method" not in df.columns:
        df["method"] = ""
    df["method"] = df["method"].fillna("").astype(str)
    if "seed" not in df.columns:
        df["seed"] = 0
    return df


def _seed_mean(df: pd.DataFrame, by: list[str], spread: str = "bootstrap") -> pd.DataFrame:
    """Combine the models sharing ``by`` (seeds) into one point ``mean`` ± ``std``.

    ``spread="bootstrap"``: mean of their bootstrap means ± mean of their bootstrap stds.
    ``spread="seeds"``: mean ± std (ddof 1) of their full-test-set estimates over seeds;
    a point with one seed has no spread (NaN: drawn without a bar).
    """
    if spread not in SPREADS:
        raise ReportingError(f"spread must be one of {SPREADS}, got {spread!r}")
    g = df.groupby(by, sort=False, dropna=False)
    if spread == "bootstrap":
        return g[["mean", "std", "estimate"]].mean().reset_index()
    out = g["estimate"].agg(["mean", "std"]).reset_index()  # pandas std: ddof 1, NaN for n=1
    out["estimate"] = out["mean"]
    return out


def _private_methods(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df.loc[np.isfinite(df["epsilon"]), "method"]))


def _subgroup_value(sg: str) -> str:
    return sg.split("=", 1)[1] if "=" in sg else sg


def _curve_rows(df: pd.DataFrame, panel: str, series_col: str, series_name,
                spread: str = "bootstrap") -> list[dict]:
    """Rows of PLOT_COLUMNS for one panel: private lines (per series, method) and the
    non-private reference (per series, averaged over methods)."""
    rows = []
    methods = _private_methods(df)
    several = len(methods) > 1
    fin = df[np.isfinite(df["epsilon"])]
    g = _seed_mean(fin, [series_col, "method", "epsilon"], spread)
    for r in g.sort_values("epsilon", kind="mergesort").itertuples(index=False):
        s = series_name(getattr(r, series_col))
        rows.append({"panel": panel, "series": s, "method": r.method if several else "",
                     "epsilon": r.epsilon, "x": r.epsilon, "y": r.mean, "yerr": r.std,
                     "kind": "private"})
    ref = _seed_mean(df[~np.isfinite(df["epsilon"])], [series_col], spread)
    for r in ref.itertuples(index=False):
        rows.append({"panel": panel, "series": series_name(getattr(r, series_col)),
                     "method": "", "epsilon": math.inf, "x": math.inf, "y": r.mean,
                     "yerr": r.std, "kind": "non_private"})
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=PLOT_COLUMNS)


# ---------------------------------------------------------------------------- drawing
def _save(fig: Figure, out_png: str | Path) -> tuple[int, int]:
    w, h = (int(round(v * DPI)) for v in fig.get_size_inches())
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return w, h


def _eps_axis(ax, eps: list[float]) -> None:
    """Log ε axis with a tick at every trained ε (plain numbers)."""
    ax.set_xscale("log")
    if eps:
        lo, hi = min(eps), max(eps)
        ax.set_xlim(lo / 1.5, hi * 1.5)
        ticks = _thin_ticks(sorted(set(eps)))
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("privacy budget ε (log scale)")
    else:  # only the non-private model: no ε axis to speak of
        ax.set_xlim(0.1, 10)
        ax.xaxis.set_major_locator(NullLocator())
        ax.set_xlabel("no private model trained (only ε = ∞)")
    ax.xaxis.set_minor_locator(NullLocator())
    ax.grid(True, which="major", alpha=0.3)


def _thin_ticks(eps: list[float], min_ratio: float = 1.12) -> list[float]:
    """Drop ticks closer than ``min_ratio`` (multiplicatively) to the previous kept one, so
    labels like 7, 7.89, 8 do not overprint; the largest ε is always kept."""
    kept: list[float] = []
    for e in eps:
        if not kept or e / kept[-1] >= min_ratio:
            kept.append(e)
    if eps and kept[-1] != eps[-1]:
        kept[-1] = eps[-1]
    return kept


def _dodge(n_series: int, i: int, width: float = 0.025) -> float:
    """Multiplicative x offset of series ``i`` so error bars of series do not overlap."""
    if n_series <= 1:
        return 1.0
    return 10 ** (width * (i - (n_series - 1) / 2))


def _draw_panel(ax, data: pd.DataFrame, colours: dict[str, str], methods: list[str]) -> None:
    present = set(data["series"])
    series = [s for s in colours if s in present]  # dodge only among this panel's series
    for i, s in enumerate(series):
        col = colours[s]
        priv = data[(data["series"] == s) & (data["kind"] == "private")]
        for j, (m, d) in enumerate(priv.groupby("method", sort=False)):
            d = d.sort_values("x")
            k = i * max(len(methods), 1) + j
            x = d["x"].to_numpy() * _dodge(len(series) * max(len(methods), 1), k)
            ax.errorbar(x, d["y"].to_numpy(float), yerr=d["yerr"].fillna(0).to_numpy(float),
                        color=col,
                        marker=_MARKERS[methods.index(m) % len(_MARKERS)] if m in methods
                        else "o", ms=4.5, lw=1.5, capsize=2.5, elinewidth=1,
                        gid=f"private|{s}|{m}")
        ref = data[(data["series"] == s) & (data["kind"] == "non_private")]
        for r in ref.itertuples(index=False):
            ax.axhline(r.y, color=col, ls="--", lw=1.4, gid=f"non_private|{s}")
            if np.isfinite(r.yerr) and r.yerr > 0:
                ax.axhspan(r.y - r.yerr, r.y + r.yerr, color=col, alpha=0.10, lw=0)


def _legend(fig: Figure, colours: dict[str, str], methods: list[str], title: str | None,
            has_private: bool, has_reference: bool, spread: str = "bootstrap") -> None:
    """Figure legends outside the panels: line styles (private vs non-private) below,
    series colours (if several or titled) on the right."""
    styles = []
    if has_private:
        if len(methods) > 1:
            styles += [Line2D([], [], color="0.3", marker=_MARKERS[i % len(_MARKERS)],
                              lw=1.5, label=f"{m} (mean ± {SPREAD_WORDS[spread]})")
                       for i, m in enumerate(methods)]
        else:
            styles.append(Line2D([], [], color="0.3", marker="o", lw=1.5,
                                 label=f"private, finite ε (mean ± {SPREAD_WORDS[spread]})"))
    if has_reference:
        styles.append(Line2D([], [], color="0.3", ls="--", lw=1.4,
                             label=f"non-private, ε = ∞ (band: ± {SPREAD_WORDS[spread]})"))
    if styles:
        narrow = fig.get_size_inches()[0] < 9
        fig.legend(handles=styles, loc="outside lower center",
                   ncol=1 if narrow else min(len(styles), 3),
                   frameon=False, fontsize=9)
    if colours and (len(colours) > 1 or title):
        hs = [Line2D([], [], color=c, lw=2.5, label=s) for s, c in colours.items()]
        fig.legend(handles=hs, loc="outside right upper", title=title, frameon=False,
                   fontsize=9, title_fontsize=9)


def _colours(series: list[str]) -> dict[str, str]:
    cmap = plt.get_cmap("tab10")
    return {s: matplotlib.colors.to_hex(cmap(i % 10)) for i, s in enumerate(series)}


def _note_empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center",
            fontsize=10, color="0.35", wrap=True)


# ------------------------------------------------------------------------- the figures
def _epsilon_figure(data: pd.DataFrame, panels: dict[str, str], ylabel: str, title: str,
                    legend_title: str | None, ncols: int, figsize: tuple[float, float],
                    eps: list[float], methods: list[str], sharey: bool = True,
                    zero_line: bool = False, empty_note: str = "no data",
                    legend: bool = True, spread: str = "bootstrap") -> Figure:
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, sharex=True,
                             sharey=sharey, layout="constrained")
    series = list(dict.fromkeys(data["series"]))
    colours = _colours(series)
    for ax, (key, ptitle) in zip(axes.flat, panels.items()):
        d = data[data["panel"] == key]
        if zero_line:
            ax.axhline(0.0, color="black", lw=0.8, zorder=0)
        if d.empty or d["y"].isna().all():
            _note_empty(ax, empty_note)
        _draw_panel(ax, d, colours, methods)
        _eps_axis(ax, eps)
        ax.set_title(ptitle, fontsize=11)
        ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=12)
    if legend:
        _legend(fig, colours, methods, legend_title,
                has_private=bool((data["kind"] == "private").any()),
                has_reference=bool((data["kind"] == "non_private").any()), spread=spread)
    return fig


def _dataset_name(df: pd.DataFrame) -> str:
    if "dataset" in df.columns and df["dataset"].nunique() == 1:
        return f"{df['dataset'].iloc[0]}: "
    return ""


def metrics_vs_epsilon_data(metrics: pd.DataFrame, subgroup_attr: str | None = None,
                            spread: str = "bootstrap") -> pd.DataFrame:
    """Plotted numbers of :func:`plot_metrics_vs_epsilon` (no drawing)."""
    df = prepare(metrics)
    df = df[(df["label"] == "mean") & df["metric"].isin(list(EPSILON_PANELS))]
    if subgroup_attr is None:
        df = df[df["subgroup"] == "all"]
    else:
        df = df[df["subgroup"].str.startswith(f"{subgroup_attr}=")]
    rows = []
    for m in EPSILON_PANELS:
        rows += _curve_rows(df[df["metric"] == m], m, "subgroup",
                            (lambda s: "overall") if subgroup_attr is None else _subgroup_value,
                            spread)
    return _frame(rows)


def plot_metrics_vs_epsilon(metrics: pd.DataFrame, out_png: str | Path,
                            subgroup_attr: str | None = None, spread: str = "bootstrap"
                            ) -> pd.DataFrame:
    """AUROC, accuracy, sensitivity and specificity (mean over labels) against ε, 2×2 panels.

    ``subgroup_attr=None`` → the whole test set; ``"age_group"`` / ``"sex"`` (any attribute
    of the subgroup spec) → one line per value of the attribute.  An attribute absent from
    the table gives a figure with a note instead of an error (fixed file names downstream).
    """
    df = prepare(metrics)
    data = metrics_vs_epsilon_data(df, subgroup_attr, spread)
    eps = sorted(df.loc[np.isfinite(df["epsilon"]), "epsilon"].unique())
    who = "whole test set" if subgroup_attr is None else \
        f"by {ATTRIBUTE_TITLES.get(subgroup_attr, subgroup_attr)}"
    fig = _epsilon_figure(
        data, EPSILON_PANELS, "mean over labels", f"{_dataset_name(df)}metrics vs ε ({who})",
        None if subgroup_attr is None else ATTRIBUTE_TITLES.get(subgroup_attr, subgroup_attr),
        ncols=2, figsize=(10.0, 8.0), eps=eps, methods=_private_methods(df),
        empty_note=f"no subgroups '{subgroup_attr}' in this table", spread=spread)
    data.attrs["size_px"] = _save(fig, out_png)
    return data


def label_auroc_data(metrics: pd.DataFrame, spread: str = "bootstrap") -> pd.DataFrame:
    """Plotted numbers of :func:`plot_label_auroc_vs_epsilon`: one panel per label."""
    df = prepare(metrics)
    df = df[(df["label"] != "mean") & (df["subgroup"] == "all") & (df["metric"] == "auroc")]
    rows = []
    for lb in dict.fromkeys(df["label"]):
        rows += _curve_rows(df[df["label"] == lb], lb, "label", lambda s: "AUROC", spread)
    return _frame(rows)


def plot_label_auroc_vs_epsilon(metrics: pd.DataFrame, out_png: str | Path,
                                spread: str = "bootstrap") -> pd.DataFrame:
    """AUROC of every label (whole test set) against ε; one panel per label, shared y."""
    df = prepare(metrics)
    data = label_auroc_data(df, spread)
    labels = list(dict.fromkeys(data["panel"])) or ["(no labels)"]
    ncols = min(len(labels), 4)
    nrows = math.ceil(len(labels) / ncols)
    eps = sorted(df.loc[np.isfinite(df["epsilon"]), "epsilon"].unique())
    fig = _epsilon_figure(
        data, {lb: lb.replace("_", " ") for lb in labels}, "AUROC",
        f"{_dataset_name(df)}AUROC per label vs ε (whole test set)", None, ncols=ncols,
        figsize=(max(3.4 * ncols + 0.6, 6.0), 3.0 * nrows + 1.4), eps=eps,
        methods=_private_methods(df), spread=spread)
    data.attrs["size_px"] = _save(fig, out_png)
    return data


def parity_data(metrics: pd.DataFrame, spread: str = "bootstrap") -> pd.DataFrame:
    """Plotted numbers of :func:`plot_parity_vs_epsilon`: one panel per attribute."""
    df = prepare(metrics)
    df = df[(df["label"] == "mean") & (df["metric"] == "parity_difference")
            & (df["subgroup"] != "all")]
    df = df.assign(attr=df["subgroup"].str.split("=", n=1).str[0])
    rows = []
    for a in dict.fromkeys(df["attr"]):
        rows += _curve_rows(df[df["attr"] == a], a, "subgroup", _subgroup_value, spread)
    return _frame(rows)


def plot_parity_vs_epsilon(metrics: pd.DataFrame, out_png: str | Path,
                           spread: str = "bootstrap") -> pd.DataFrame:
    """Statistical parity difference (label mean) of every subgroup against ε.

    One panel per attribute (sex, age group, ...); the solid black line at 0 is parity.
    """
    df = prepare(metrics)
    data = parity_data(df, spread)
    attrs = list(dict.fromkeys(data["panel"]))
    panels = {a: ATTRIBUTE_TITLES.get(a, a) for a in attrs} or {"none": "no subgroups"}
    eps = sorted(df.loc[np.isfinite(df["epsilon"]), "epsilon"].unique())
    ncols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / ncols)
    fig = _epsilon_figure(
        data, panels, "parity difference\n(accuracy of group − rest)",
        f"{_dataset_name(df)}parity difference vs ε (mean over labels; 0 = parity)", None,
        ncols=ncols, figsize=(5.5 * ncols, 4.2 * nrows + 1.4), eps=eps,
        methods=_private_methods(df), sharey=True, zero_line=True,
        empty_note="no subgroups in this table", legend=False)
    # one legend per panel: colours of different attributes mean different things
    for ax, a in zip(fig.axes, attrs):
        vals = list(dict.fromkeys(data.loc[data["panel"] == a, "series"]))
        cols = _colours(list(dict.fromkeys(data["series"])))
        hs = [Line2D([], [], color=cols[v], lw=2.5, label=v) for v in vals]
        ax.legend(handles=hs, title=ATTRIBUTE_TITLES.get(a, a), fontsize=8,
                  title_fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  frameon=False)
    _legend(fig, {}, _private_methods(df), None,
            has_private=bool((data["kind"] == "private").any()),
            has_reference=bool((data["kind"] == "non_private").any()), spread=spread)
    data.attrs["size_px"] = _save(fig, out_png)
    return data


def positives_data(metrics: pd.DataFrame, train_positives=None
                   ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Points of :func:`plot_auroc_vs_positives` and Pearson r per group.

    One point per (model, label) on the whole test set: y = AUROC point estimate, x = the
    label's positive **training** records when ``train_positives`` is given (the study's
    relation; :func:`dpmed.evaluation.aggregate.positives_per_label` output or
    ``{label: n}``), else its positive **test** records.  ``data.attrs["x"]`` names which
    ("n_train_positive" / "n_test_positive").  r is that of the matching correlation of
    :func:`dpmed.evaluation.aggregate.correlations` (``{"private": r, "non_private": r}``,
    NaN if undefined).
    """
    df = prepare(metrics)
    sel = df[(df["label"] != "mean") & (df["subgroup"] == "all")]
    keys = ["method", "seed", "epsilon", "label"]
    w = sel.pivot_table(index=keys, columns="metric", values="estimate", aggfunc="mean",
                        sort=False).reset_index()
    for m in ("auroc", "n_positive"):
        if m not in w.columns:
            w[m] = np.nan
    tp = aggregate._train_positive_table(train_positives)
    if tp is not None:
        ds = df["dataset"].iloc[0] if "dataset" in df.columns else ""
        w["x"] = aggregate._with_train_positives(w.assign(dataset=ds), tp, ds)["n_train_positive"]
        analysis, xname = "auroc_vs_n_train_positive", "n_train_positive"
    else:
        w["x"] = w["n_positive"]
        analysis, xname = "auroc_vs_n_positive", "n_test_positive"
    rows = [{"panel": "auroc_vs_positives", "series": r.label, "method": r.method,
             "epsilon": r.epsilon, "x": r.x, "y": r.auroc, "yerr": np.nan,
             "kind": "private" if np.isfinite(r.epsilon) else "non_private"}
            for r in w.itertuples(index=False)]
    corr = aggregate.correlations(df, train_positives=train_positives)
    corr = corr[corr["analysis"] == analysis]
    r = {g: float(corr.loc[corr["group"] == g, "r"].iloc[0]) if (corr["group"] == g).any()
         else math.nan for g in ("private", "non_private")}
    data = _frame(rows)
    data.attrs["x"] = xname
    return data, r


def _fmt_r(r: float) -> str:
    return "r n/a" if not np.isfinite(r) else f"r = {r:.2f}"


def plot_auroc_vs_positives(metrics: pd.DataFrame, out_png: str | Path,
                            train_positives=None) -> pd.DataFrame:
    """AUROC against the number of positive records per label, one point per (model, label).

    x = positive **training** records when ``train_positives`` is given (the study's
    relation), else positive test records; the axis label and title say which.  Private
    models: circles coloured by ε; non-private: black stars.  Pearson r (from
    :func:`dpmed.evaluation.aggregate.correlations`) of each group is in the legend.
    """
    df = prepare(metrics)
    data, r = positives_data(df, train_positives)
    which = "training" if data.attrs["x"] == "n_train_positive" else "test"
    fig, ax = plt.subplots(figsize=(8.0, 5.5), layout="constrained")
    priv = data[data["kind"] == "private"]
    nonp = data[data["kind"] == "non_private"]
    handles = []
    if not priv.empty:
        eps = np.sort(priv["epsilon"].unique())
        cmap = plt.get_cmap("viridis")
        norm = matplotlib.colors.LogNorm(vmin=eps.min(), vmax=eps.max() * (1.0001 if
                                         eps.min() == eps.max() else 1.0))
        sc = ax.scatter(priv["x"], priv["y"], c=priv["epsilon"], cmap=cmap, norm=norm,
                        marker="o", s=36, edgecolors="0.2", linewidths=0.5, alpha=0.9,
                        gid="private")
        cb = fig.colorbar(sc, ax=ax, pad=0.01)
        cb.set_label("ε of private models (log scale)")
        cb.set_ticks(_thin_ticks(list(eps)))
        cb.ax.minorticks_off()
        cb.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        handles.append(Line2D([], [], ls="", marker="o", color="0.5", mec="0.2",
                              label=f"private, finite ε ({_fmt_r(r['private'])}, "
                                    f"{len(priv)} points)"))
    if not nonp.empty:
        ax.scatter(nonp["x"], nonp["y"], marker="*", s=140, color="black", zorder=3,
                   gid="non_private")
        handles.append(Line2D([], [], ls="", marker="*", ms=11, color="black",
                              label=f"non-private, ε = ∞ ({_fmt_r(r['non_private'])}, "
                                    f"{len(nonp)} points)"))
    if data.empty:
        _note_empty(ax, "no per-label AUROC in this table")
    ax.set_xlabel(f"positive records of the label in the {which} split")
    ax.set_ylabel("AUROC (whole test set)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{_dataset_name(df)}AUROC vs number of positive {which} records per label",
                 fontsize=12)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=1, frameon=False,
                   fontsize=9, title="Pearson r of AUROC vs positives")
    data.attrs["size_px"] = _save(fig, out_png)
    data.attrs["pearson_r"] = r
    return data
