"""The audit section of a dataset: every model's audited lower bounds beside its card's ε.

Input: the contents of ``audit.json`` files (:func:`dpmed.privacy.audit.audit_report`), each
with the keys that identify its model (dataset, method, ε, seed). Output: one row per model
(:data:`AUDIT_COLUMNS`) as CSV and Markdown.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..evaluation.aggregate import render_markdown
from ..io.atomic import write_csv, write_text
from .plots import ReportingError

AUDIT_COLUMNS = [
    "dataset", "method", "epsilon", "seed", "mechanism", "card_epsilon", "delta", "m",
    "n_member", "confidence", "one_run", "clopper_pearson", "gdp", "epsilon_lower", "holds",
    "mia_auroc", "mia_auroc_max", "mia_auroc_max_subgroup",
]


def audit_row(report: Mapping[str, Any], **keys) -> dict[str, Any]:
    """One row of :data:`AUDIT_COLUMNS` from an audit report and its model's keys.

    ``mia_auroc_max`` is the largest membership-inference AUROC over the subgroups
    (not "all"): the group on which privacy risk falls hardest.
    """
    miss = [k for k in ("bounds", "mia_auroc", "m") if k not in report]
    if miss:
        raise ReportingError(f"audit report lacks {miss}")
    bounds = report["bounds"]
    mia = pd.DataFrame(report["mia_auroc"])
    sub = mia[(mia["subgroup"] != "all") & mia["auroc"].notna()]
    top = sub.loc[sub["auroc"].idxmax()] if not sub.empty else None
    overall = mia.loc[mia["subgroup"] == "all", "auroc"]

    def bound(name):
        return float(bounds[name]["epsilon_lower"]) if name in bounds else math.nan

    row = {k: keys.get(k) for k in ("dataset", "method", "epsilon", "seed")}
    row.update({
        "mechanism": report.get("mechanism"), "card_epsilon": report.get("card_epsilon"),
        "delta": report.get("delta"), "m": report["m"], "n_member": report.get("n_member"),
        "confidence": report.get("confidence"), "one_run": bound("one_run"),
        "clopper_pearson": bound("clopper_pearson"), "gdp": bound("gdp"),
        "epsilon_lower": report.get("epsilon_lower"), "holds": report.get("holds"),
        "mia_auroc": float(overall.iloc[0]) if len(overall) else math.nan,
        "mia_auroc_max": float(top["auroc"]) if top is not None else math.nan,
        "mia_auroc_max_subgroup": top["subgroup"] if top is not None else "",
    })
    return row


def audit_table(reports: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> pd.DataFrame:
    """Rows ``(keys, report)`` → DataFrame :data:`AUDIT_COLUMNS`, sorted by method, ε
    (∞ last), seed."""
    rows = [audit_row(rep, **keys) for keys, rep in reports]
    df = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    if df.empty:
        return df
    df["epsilon"] = df["epsilon"].astype(float)
    return df.sort_values(["method", "epsilon", "seed"], kind="mergesort").reset_index(drop=True)


def audit_markdown(table: pd.DataFrame) -> str:
    """Markdown of :func:`audit_table`: ε of the card, the three lower bounds, whether the
    headline (one-run) bound stays below the card, and the MIA AUROC (overall; highest
    subgroup)."""
    def num(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        return "∞" if math.isinf(v) else f"{v:.2f}"

    view = pd.DataFrame({
        "method": table["method"], "ε": [num(e) for e in table["epsilon"]],
        "seed": table["seed"], "card ε": [num(e) for e in table["card_epsilon"]],
        "one-run ε ≥": [num(e) for e in table["one_run"]],
        "CP ε ≥": [num(e) for e in table["clopper_pearson"]],
        "GDP ε ≥": [num(e) for e in table["gdp"]],
        "card holds": ["yes" if h else ("NO" if h is not None else "") for h in table["holds"]],
        "MIA AUROC": [num(a) for a in table["mia_auroc"]],
        "MIA AUROC, highest group": [f"{num(a)} ({g})" if g else "" for a, g in
                                     zip(table["mia_auroc_max"], table["mia_auroc_max_subgroup"])],
    })
    return render_markdown(view, index=False)


def write_audit_summary(reports, out_dir: str | Path) -> list[Path]:
    """``audit.csv`` (full precision) and ``audit.md`` in ``out_dir``."""
    out_dir = Path(out_dir)
    table = audit_table(reports)
    csv, md = out_dir / "audit.csv", out_dir / "audit.md"
    write_csv(table, csv)
    write_text(audit_markdown(table), md)
    return [csv, md]


SUBGROUP_COLUMNS = [
    "dataset", "method", "epsilon", "seed", "subgroup", "n_canaries", "n_member", "mia_auroc",
    "mia_auroc_std", "model_auroc", "model_parity_difference",
]


def audit_subgroup_rows(report: Mapping[str, Any], metrics: pd.DataFrame | None, label: str = "mean",
                        **keys) -> list[dict[str, Any]]:
    """Privacy risk next to the fairness of accuracy, per subgroup of one audited model.

    ``mia_auroc``: membership-inference AUROC of the canaries of the group (audit report);
    ``model_auroc`` and ``model_parity_difference``: the production model's full-test-set
    AUROC and accuracy parity difference of the same group (its evaluation ``metrics``, label
    ``label``; NaN where the evaluation has no such group, e.g. "all" has no parity).
    """
    mia = pd.DataFrame(report["mia_auroc"])
    est = {}
    if metrics is not None:
        m = metrics[metrics["label"] == label]
        est = {(r.subgroup, r.metric): r.estimate for r in m.itertuples(index=False)}
    rows = []
    for r in mia.itertuples(index=False):
        rows.append({**{k: keys.get(k) for k in ("dataset", "method", "epsilon", "seed")},
                     "subgroup": r.subgroup, "n_canaries": r.n, "n_member": r.n_member,
                     "mia_auroc": r.auroc, "mia_auroc_std": r.std,
                     "model_auroc": est.get((r.subgroup, "auroc"), math.nan),
                     "model_parity_difference": est.get((r.subgroup, "parity_difference"), math.nan)})
    return rows


def audit_subgroup_markdown(table: pd.DataFrame) -> str:
    """Markdown of the subgroup rows: MIA AUROC ± bootstrap std beside the model's AUROC and
    parity difference (in %)."""
    def pct(v):
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"

    view = pd.DataFrame({
        "method": table["method"], "ε": ["∞" if math.isinf(e) else f"{e:g}" for e in table["epsilon"]],
        "seed": table["seed"], "subgroup": table["subgroup"],
        "canaries (members)": [f"{n} ({k})" for n, k in zip(table["n_canaries"], table["n_member"])],
        "MIA AUROC": [f"{a:.2f} ± {s:.2f}" if np.isfinite(s) else (f"{a:.2f}" if np.isfinite(a) else "")
                      for a, s in zip(table["mia_auroc"], table["mia_auroc_std"])],
        "model AUROC (%)": [pct(v) for v in table["model_auroc"]],
        "parity difference (%)": [pct(v) for v in table["model_parity_difference"]],
    })
    return render_markdown(view, index=False)


def write_audit_subgroups(entries, out_dir: str | Path) -> list[Path]:
    """``audit_subgroups.csv``/``.md`` from ``(keys, report, metrics)`` triples."""
    rows = [row for keys, rep, met in entries for row in audit_subgroup_rows(rep, met, **keys)]
    table = pd.DataFrame(rows, columns=SUBGROUP_COLUMNS)
    if len(table):
        table["epsilon"] = table["epsilon"].astype(float)
        table = table.sort_values(["method", "epsilon", "seed"], kind="mergesort").reset_index(drop=True)
    out_dir = Path(out_dir)
    csv, md = out_dir / "audit_subgroups.csv", out_dir / "audit_subgroups.md"
    write_csv(table, csv)
    write_text(audit_subgroup_markdown(table) if len(table) else "No audited model.\n", md)
    return [csv, md]


def memorisation_markdown(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """The generators' memorisation checks (``{name: MemorisationReport dict}``) as Markdown;
    a sentence when the run has no generator that writes one."""
    if not reports:
        return ("No generator of this dataset wrote a memorisation check in this run "
                "(synthetic-data methods not configured).\n")
    rows = [{"generator": name, "synthetic": r.get("n_synthetic"), "reference (each)": r.get("n_reference"),
             "median NN distance to train": r.get("median_to_train"),
             "median NN distance to held-out": r.get("median_to_heldout"),
             "closer to train": r.get("fraction_closer_to_train"), "p (one-sided)": r.get("p_value"),
             "exact copies": r.get("exact_copies"), "flagged": "YES" if r.get("flagged") else "no"}
            for name, r in sorted(reports.items())]
    return render_markdown(pd.DataFrame(rows), index=False)
