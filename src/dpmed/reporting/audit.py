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
