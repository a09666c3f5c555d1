"""Every mechanism of one dataset on one page: utility, fairness and guarantee against ε.

Input: the stacked metrics table of one dataset (as for :mod:`dpmed.reporting.plots`:
``method, epsilon, seed, label, subgroup, metric, estimate, mean, std``) and the privacy
card (``privacy.json``) of every model, keyed by ``(method, epsilon, seed)``. The methods are
whatever the workflow's registry trained (DP-SGD, synthetic-data modes, federated, CADP, …):
nothing here knows them by name; what a model promises is read from its card.

Per model (label "mean": the mean over labels) it takes the full-test-set point estimates
(column ``estimate``) of

* AUROC (and AUPRC where the dataset's study used it),
* the **worst-group AUROC**: the lowest AUROC over the subgroups (sex, age group, …),
* the **largest parity difference**: the largest magnitude |PD| over the subgroups of the
  parity difference (accuracy of a group minus the rest of its attribute); the group and
  the sign (− = the group is disadvantaged) are named beside it,

and averages seeds (error bars of AUROC/AUPRC: ``spread`` as in Table 1 — the mean bootstrap
std, or the std over seeds).

Strength of guarantees (what "at least as strong" means in :func:`best_by_epsilon`)
-----------------------------------------------------------------------------------
A card's ``kind`` decides its *class*:

* **central** — ``central`` (DP-SGD), ``derived`` (post-processing of a central guarantee,
  e.g. a classifier trained on DP-synthetic data) and ``composed`` (several central
  releases composed into one bound): each bounds, for the released model, how much one
  training unit (record, patient or site) can change what is released. Their ε are on one
  scale, so within the class a guarantee (ε', δ') is at least as strong as (ε, δ) iff
  ε' ≤ ε and δ' ≤ δ (a patient- or site-level guarantee is at least as strong as a
  record-level one at the same (ε, δ), and is treated so).
* **local** — each image is privatised before anyone else sees it (content-aware DP): no
  trusted curator is needed, but ε then bounds what one *released image* reveals about its
  original, not whether a record was in a training set. The two ε are not on one scale, so
  local and central guarantees are never ranked against each other; local models are
  compared among themselves (ε' ≤ ε, δ' ≤ δ).
* **none** — no guarantee is never "at least as strong" as any ε.

Outputs of :func:`write_comparison`: ``comparison.csv``/``.md`` (one row per method and ε),
``best_by_epsilon.csv``/``.md`` (the privacy–utility–fairness summary) and ``comparison.png``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..evaluation.aggregate import render_markdown
from ..io.atomic import write_csv, write_text
from .plots import SPREAD_WORDS, SPREADS, ReportingError, prepare

#: Kind of guarantee → class of :func:`best_by_epsilon` (None: never qualifies).
STRENGTH_CLASS = {"central": "central", "derived": "central", "composed": "central",
                  "local": "local", "none": None}
COMPARISON_METRICS = ("auroc", "auprc")
METRIC_NAMES = {"auroc": "AUROC", "auprc": "AUPRC"}
COMPARISON_COLUMNS = [
    "method", "epsilon", "n_seeds", "kind", "protection", "unit", "card_epsilon", "card_delta", "guarantee",
    "auroc", "auroc_err", "auprc", "auprc_err", "worst_group_auroc", "worst_group",
    "largest_parity_difference", "largest_parity_group",
]
BEST_COLUMNS = [
    "epsilon", "class", "method", "model_epsilon", "card_epsilon", "kind", "auroc",
    "worst_group_auroc", "largest_parity_difference", "largest_parity_group",
    "reference_method", "reference_auroc", "auroc_cost", "worst_group_auroc_cost",
    "parity_cost",
]


# ------------------------------------------------------------------------------ guarantees
@dataclass(frozen=True)
class CardGuarantee:
    """What a model's card promises: kind, unit, ε (∞ without guarantee) and δ."""

    kind: str
    unit: str
    epsilon: float
    delta: float
    #: what the guarantee protects underneath a derived/composed kind: "local" for a model
    #: trained on privatised images (its card's ``guarantee_type``), else "central"
    protection: str = "central"

    @property
    def strength_class(self) -> str | None:
        if self.kind in ("derived", "composed") and self.protection == "local":
            return "local"  # post-processing of a per-image guarantee is still a per-image guarantee
        return STRENGTH_CLASS[self.kind]

    def words(self) -> str:
        """Legend text, e.g. "central DP per record" or "no guarantee"."""
        if self.kind == "none":
            return "no guarantee"
        local = self.strength_class == "local"
        per = "image" if local and self.unit == "record" else self.unit
        if self.kind == "derived" and local:
            return f"derived local DP per {per} (post-processing)"
        return {"central": f"central DP per {per}", "local": f"local DP per {per}",
                "derived": f"derived DP per {per} (post-processing)",
                "composed": f"composed DP per {per}"}[self.kind]


def card_guarantee(card: Mapping[str, Any], source: str = "privacy card") -> CardGuarantee:
    """The :class:`CardGuarantee` of a ``privacy.json`` mapping.

    ``kind`` comes from the card (or its ``typed_guarantee``); a card without one but with
    ``mechanism: none`` has no guarantee. ε is ``epsilon_spent`` (∞ for kind none).

    Raises
    ------
    ReportingError: the card names no kind, an unknown kind, or a guarantee without ε.
    """
    typed = card.get("typed_guarantee") or {}
    kind = card.get("kind") or typed.get("kind")
    if kind is None and card.get("mechanism") == "none":
        kind = "none"
    if kind not in STRENGTH_CLASS:
        raise ReportingError(f"{source}: kind of guarantee {kind!r} is not one of {sorted(STRENGTH_CLASS)}")
    unit = str(card.get("unit") or typed.get("unit") or "record")
    if kind == "none":
        return CardGuarantee("none", unit, math.inf, 1.0)
    eps = card.get("epsilon_spent", typed.get("epsilon"))
    if eps is None:
        raise ReportingError(f"{source}: a {kind} guarantee without epsilon_spent")
    eps = math.inf if eps in ("inf", "Infinity") else float(eps)
    delta = card.get("delta", typed.get("delta"))
    protection = "local" if card.get("guarantee_type") == "local" else "central"
    return CardGuarantee(kind, unit, eps, float(delta or 0.0), protection)


def read_card_guarantee(path: str | Path) -> CardGuarantee:
    """:func:`card_guarantee` of a ``privacy.json`` file (named in errors)."""
    try:
        card = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportingError(f"{path}: cannot read the privacy card ({e})") from None
    return card_guarantee(card, str(path))


def at_least_as_strong(g: CardGuarantee, epsilon: float, delta: float, cls: str = "central",
                       rel_tol: float = 1e-9) -> bool:
    """Whether ``g`` is at least as strong as an (ε, δ) guarantee of class ``cls`` (see the
    module docstring): same class, ε' ≤ ε and δ' ≤ δ."""
    if g.strength_class is None or g.strength_class != cls:
        return False
    return g.epsilon <= epsilon * (1 + rel_tol) and g.delta <= delta * (1 + rel_tol)


def method_guarantees(cards: Mapping[tuple[str, float, Any], CardGuarantee]) -> pd.DataFrame:
    """Per (method, ε): kind, unit, the largest card ε and δ over seeds and legend words.

    Raises :class:`ReportingError` if the seeds of one (method, ε) have different kinds.
    """
    rows: dict[tuple[str, float], list[CardGuarantee]] = {}
    for (method, eps, _seed), g in cards.items():
        rows.setdefault((str(method), float(eps)), []).append(g)
    out = []
    for (method, eps), gs in rows.items():
        kinds = {(g.kind, g.unit, g.protection) for g in gs}
        if len(kinds) > 1:
            raise ReportingError(f"method {method} at ε = {eps:g}: seeds' cards differ in kind {sorted(kinds)}")
        g = gs[0]
        out.append({"method": method, "epsilon": eps, "kind": g.kind, "protection": g.protection, "unit": g.unit,
                    "card_epsilon": max(x.epsilon for x in gs), "card_delta": max(x.delta for x in gs),
                    "guarantee": g.words()})
    return pd.DataFrame(out, columns=["method", "epsilon", "kind", "protection", "unit", "card_epsilon",
                                      "card_delta", "guarantee"])


def legend_kinds(guarantees: pd.DataFrame) -> dict[str, str]:
    """Per method the words of the guarantee its **private** (finite ε) models carry; a
    method trained only at ε = ∞ says "no guarantee". Several kinds are joined with " / "."""
    out = {}
    for method, g in guarantees.groupby("method", sort=False):
        fin = g[np.isfinite(g["epsilon"])]
        words = list(dict.fromkeys((fin if len(fin) else g)["guarantee"]))
        out[method] = " / ".join(words)
    return out


# ------------------------------------------------------------------------------ model points
def _per_model(metrics: pd.DataFrame, label: str = "mean") -> pd.DataFrame:
    """One row per (method, ε, seed): point estimates and bootstrap stds of the summary metrics."""
    df = metrics[metrics["label"] == label]
    if df.empty:
        raise ReportingError(f"comparison: no rows for label {label!r}")
    rows = []
    for (method, eps, seed), d in df.groupby(["method", "epsilon", "seed"], sort=False):
        overall = d[d["subgroup"] == "all"].set_index("metric")
        groups = d[d["subgroup"] != "all"]
        row = {"method": method, "epsilon": eps, "seed": seed}
        for m in COMPARISON_METRICS:
            row[m] = float(overall.at[m, "estimate"]) if m in overall.index else math.nan
            row[f"{m}_std"] = float(overall.at[m, "std"]) if m in overall.index else math.nan
        au = groups[(groups["metric"] == "auroc") & groups["estimate"].notna()]
        pdiff = groups[(groups["metric"] == "parity_difference") & groups["estimate"].notna()]
        w = au.loc[au["estimate"].idxmin()] if len(au) else None
        p = pdiff.loc[pdiff["estimate"].abs().idxmax()] if len(pdiff) else None
        row.update({"worst_group_auroc": float(w["estimate"]) if w is not None else math.nan,
                    "worst_group": w["subgroup"] if w is not None else "",
                    "largest_parity_difference": abs(float(p["estimate"])) if p is not None else math.nan,
                    "largest_parity_group": (f"{p['subgroup']} ({'−' if p['estimate'] < 0 else '+'})"
                                             if p is not None else "")})
        rows.append(row)
    return pd.DataFrame(rows)


def _mode(values: pd.Series) -> str:
    v = values[values != ""]
    return str(v.mode().iloc[0]) if len(v) else ""


def model_points(metrics: pd.DataFrame, spread: str = "bootstrap", label: str = "mean") -> pd.DataFrame:
    """Seeds averaged per (method, ε): every point estimate's mean over seeds; ``<m>_err``
    is the mean bootstrap std (``spread="bootstrap"``) or the std over seeds (``"seeds"``,
    NaN for one seed); ``worst_group``/``largest_parity_group``: the group most often the
    worst / the largest over the seeds."""
    if spread not in SPREADS:
        raise ReportingError(f"spread must be one of {SPREADS}, got {spread!r}")
    per = _per_model(prepare(metrics), label)
    out = []
    for (method, eps), d in per.groupby(["method", "epsilon"], sort=False):
        row = {"method": method, "epsilon": eps, "n_seeds": len(d)}
        for m in COMPARISON_METRICS:
            row[m] = d[m].mean()
            row[f"{m}_err"] = d[f"{m}_std"].mean() if spread == "bootstrap" else d[m].std(ddof=1)
        for c in ("worst_group_auroc", "largest_parity_difference"):
            row[c] = d[c].mean()
        row["worst_group"] = _mode(d["worst_group"])
        row["largest_parity_group"] = _mode(d["largest_parity_group"])
        out.append(row)
    return pd.DataFrame(out)


def comparison_table(metrics: pd.DataFrame, cards: Mapping, spread: str = "bootstrap") -> pd.DataFrame:
    """:data:`COMPARISON_COLUMNS`, one row per (method, ε), sorted by method then ε (∞ last).

    ``cards``: ``{(method, epsilon, seed): CardGuarantee or card mapping}`` for every model
    of ``metrics``. Raises :class:`ReportingError` for a model without a card.
    """
    gs = {(str(m), float(e), s): (c if isinstance(c, CardGuarantee) else card_guarantee(c, f"{m} ε={e} seed {s}"))
          for (m, e, s), c in cards.items()}
    points = model_points(metrics, spread)
    guar = method_guarantees(gs)
    table = points.merge(guar, on=["method", "epsilon"], how="left")
    missing = table[table["kind"].isna()]
    if len(missing):
        r = missing.iloc[0]
        raise ReportingError(f"comparison: no privacy card for method {r['method']} at ε = {r['epsilon']:g}")
    table = table.sort_values(["method", "epsilon"], kind="mergesort").reset_index(drop=True)
    return table[COMPARISON_COLUMNS]


# ------------------------------------------------------------------- the summary per ε
def best_by_epsilon(table: pd.DataFrame, epsilons: Sequence[float], delta: float) -> pd.DataFrame:
    """For each ε and class of guarantee: the model with the best AUROC among those whose
    guarantee is at least as strong as (ε, δ) (:func:`at_least_as_strong`), and what it costs
    against the non-private reference.

    The reference is the non-private model (kind none, ε = ∞) with the best AUROC. Costs
    (positive = worse than the reference): ``auroc_cost`` = AUROC_ref − AUROC,
    ``worst_group_auroc_cost`` likewise, ``parity_cost`` = largest |PD| − the reference's
    largest |PD|. A class with no qualifying model at some ε gets no row there; classes
    appear in the order central, local.
    """
    ref = table[(table["kind"] == "none") & ~np.isfinite(table["epsilon"])]
    ref = ref.loc[ref["auroc"].idxmax()] if len(ref) and ref["auroc"].notna().any() else None
    rows = []
    for eps in sorted(float(e) for e in epsilons if math.isfinite(float(e))):
        for cls in ("central", "local"):
            ok = [i for i, r in table.iterrows() if not np.isnan(r["auroc"]) and at_least_as_strong(
                CardGuarantee(r["kind"], r["unit"], r["card_epsilon"], r["card_delta"],
                              r.get("protection", "central")), eps, delta, cls)]
            if not ok:
                continue
            best = table.loc[ok].sort_values(["auroc", "card_epsilon"], ascending=[False, True],
                                             kind="mergesort").iloc[0]
            row = {"epsilon": eps, "class": cls, "method": best["method"], "model_epsilon": best["epsilon"],
                   "card_epsilon": best["card_epsilon"], "kind": best["kind"], "auroc": best["auroc"],
                   "worst_group_auroc": best["worst_group_auroc"],
                   "largest_parity_difference": best["largest_parity_difference"],
                   "largest_parity_group": best["largest_parity_group"]}
            if ref is not None:
                row.update({
                    "reference_method": ref["method"], "reference_auroc": ref["auroc"],
                    "auroc_cost": ref["auroc"] - best["auroc"],
                    "worst_group_auroc_cost": ref["worst_group_auroc"] - best["worst_group_auroc"],
                    "parity_cost": best["largest_parity_difference"] - ref["largest_parity_difference"],
                })
            rows.append(row)
    return pd.DataFrame(rows, columns=BEST_COLUMNS)


# ------------------------------------------------------------------------------ writing
def _num(v, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{100 * v:.1f}" if pct else f"{v:.3g}"


def _pm(v, err) -> str:
    s = _num(v, True)
    return f"{s} ± {_num(err, True)}" if s and err is not None and np.isfinite(err) else s


def comparison_markdown(table: pd.DataFrame, metrics: Sequence[str], spread: str) -> str:
    """The comparison table in % with the guarantee of each row (``spread`` named in the header)."""
    view = {"method": table["method"], "ε": [_num(e) for e in table["epsilon"]],
            "seeds": table["n_seeds"], "guarantee": table["guarantee"],
            "card ε": [_num(e) for e in table["card_epsilon"]]}
    for m in metrics:
        view[f"{METRIC_NAMES[m]} (± {SPREAD_WORDS[spread]})"] = [
            _pm(v, e) for v, e in zip(table[m], table[f"{m}_err"])]
    view["worst-group AUROC"] = [f"{_num(v, True)} ({g})" if g else "" for v, g in
                                 zip(table["worst_group_auroc"], table["worst_group"])]
    view["largest abs(PD)"] = [f"{_num(v, True)} ({g})" if g else "" for v, g in
                            zip(table["largest_parity_difference"], table["largest_parity_group"])]
    return render_markdown(pd.DataFrame(view), index=False)


def best_markdown(best: pd.DataFrame) -> str:
    """The privacy–utility–fairness summary in % (costs: positive = worse than non-private)."""
    if best.empty:
        return "No model of this dataset carries a guarantee at any ε of the run.\n"
    view = pd.DataFrame({
        "ε": [_num(e) for e in best["epsilon"]], "class": best["class"], "best method": best["method"],
        "at ε (card)": [f"{_num(e)} ({_num(c)})" for e, c in zip(best["model_epsilon"], best["card_epsilon"])],
        "AUROC": [_num(v, True) for v in best["auroc"]],
        "AUROC cost": [_num(v, True) for v in best["auroc_cost"]],
        "worst-group AUROC cost": [_num(v, True) for v in best["worst_group_auroc_cost"]],
        "largest abs(PD)": [f"{_num(v, True)} ({g})" for v, g in
                         zip(best["largest_parity_difference"], best["largest_parity_group"])],
        "abs(PD) cost": [_num(v, True) for v in best["parity_cost"]],
    })
    return render_markdown(view, index=False)


def plot_comparison(table: pd.DataFrame, out_png: str | Path, metrics: Sequence[str] = ("auroc",),
                    spread: str = "bootstrap", title: str = "") -> pd.DataFrame:
    """One panel per utility metric, then worst-group AUROC and largest |PD| against ε (log
    axis); one colour per method, its non-private model dashed in that colour, the legend
    naming each method's kind of guarantee (:func:`legend_kinds`). Returns the plotted points
    (``panel, method, epsilon, y, yerr, kind``)."""
    from matplotlib.lines import Line2D

    from .plots import _colours, _eps_axis, _save, plt

    panels = {m: METRIC_NAMES[m] for m in metrics}
    panels.update({"worst_group_auroc": "Worst-group AUROC", "largest_parity_difference": "Largest |parity difference|"})
    methods = list(dict.fromkeys(table["method"]))
    colours = _colours(methods)
    words = legend_kinds(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 2.5, 4), squeeze=False,
                             sharex=True, layout="constrained")
    eps = sorted(e for e in table["epsilon"] if math.isfinite(e))
    rows = []
    for ax, (col, ptitle) in zip(axes.flat, panels.items()):
        for m in methods:
            d = table[table["method"] == m].sort_values("epsilon")
            fin, ref = d[np.isfinite(d["epsilon"])], d[~np.isfinite(d["epsilon"])]
            err = fin[f"{col}_err"].fillna(0).to_numpy(float) if f"{col}_err" in fin else None
            if len(fin):
                ax.errorbar(fin["epsilon"], fin[col], yerr=err, color=colours[m], marker="o", ms=4,
                            lw=1.5, capsize=2.5, gid=f"private|{m}")
            for r in ref.itertuples(index=False):
                ax.axhline(getattr(r, col), color=colours[m], ls="--", lw=1.3, gid=f"non_private|{m}")
            for r in d.itertuples(index=False):
                rows.append({"panel": col, "method": m, "epsilon": r.epsilon, "y": getattr(r, col),
                             "yerr": getattr(r, f"{col}_err", math.nan),
                             "kind": "private" if math.isfinite(r.epsilon) else "non_private"})
        ax.set_title(ptitle, fontsize=10)
        _eps_axis(ax, eps)
    handles = [Line2D([], [], color=colours[m], lw=2, marker="o", label=f"{m} — {words[m]}") for m in methods]
    handles.append(Line2D([], [], color="0.3", ls="--", lw=1.3, label="non-private (ε = ∞), dashed"))
    fig.legend(handles=handles, loc="outside right upper", title="method — guarantee", frameon=False,
               fontsize=8, title_fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, out_png)
    return pd.DataFrame(rows, columns=["panel", "method", "epsilon", "y", "yerr", "kind"])


def write_comparison(metrics: pd.DataFrame, cards: Mapping, out_dir: str | Path, *, delta: float,
                     metrics_shown: Sequence[str] = ("auroc",), spread: str = "bootstrap",
                     dataset: str = "") -> dict[str, Path]:
    """``comparison.csv/.md``, ``best_by_epsilon.csv/.md`` and ``comparison.png`` in ``out_dir``.

    ``delta``: the δ the summary holds guarantees to (the dataset's configured DP δ);
    ``metrics_shown``: utility metrics of the table and figure (subset of
    :data:`COMPARISON_METRICS`, AUROC first).
    """
    bad = [m for m in metrics_shown if m not in COMPARISON_METRICS]
    if bad or not metrics_shown:
        raise ReportingError(f"comparison metrics must be among {COMPARISON_METRICS}, got {list(metrics_shown)}")
    out = Path(out_dir)
    table = comparison_table(metrics, cards, spread)
    best = best_by_epsilon(table, table["epsilon"].unique(), delta)
    paths = {name: out / name for name in ("comparison.csv", "comparison.md", "best_by_epsilon.csv",
                                           "best_by_epsilon.md", "comparison.png")}
    write_csv(table, paths["comparison.csv"])
    write_text(comparison_markdown(table, metrics_shown, spread), paths["comparison.md"])
    write_csv(best, paths["best_by_epsilon.csv"])
    write_text(best_markdown(best), paths["best_by_epsilon.md"])
    plot_comparison(table, paths["comparison.png"], metrics_shown, spread, title=dataset)
    return paths
