"""Tables of one dataset and the one-call summary (all tables and figures).

The numbers come from :mod:`dpmed.evaluation.aggregate` (Table 1, correlations); this
module only writes them (atomically) under fixed file names.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..evaluation import aggregate
from ..io.atomic import write_csv, write_text
from . import plots

#: File names written by :func:`write_summary`, in order.
SUMMARY_FILES = (
    "table1.csv", "table1.md", "correlations.csv",
    "auroc_vs_epsilon.png", "auroc_vs_epsilon_by_age.png", "auroc_vs_epsilon_by_sex.png",
    "label_auroc_vs_epsilon.png", "auroc_vs_positives.png", "parity_vs_epsilon.png",
)


def table1_flat(metrics: pd.DataFrame, label: str = "mean", spread: str = "bootstrap"
                ) -> pd.DataFrame:
    """:func:`aggregate.table1` with flat column names ``"<subgroup> <stat>"`` and ε as a
    column (``inf`` for the non-private model) — one CSV header row, easy to read back.
    The column ``"σ kind"`` says which spread the σ columns of each row are."""
    t = aggregate.table1(plots.prepare(metrics), label=label, spread=spread)
    flat = t.copy()
    flat.columns = [f"{s} {stat}" for s, stat in t.columns]
    return flat.reset_index()


def write_table1(metrics: pd.DataFrame, out_dir: str | Path, label: str = "mean",
                 spread: str = "bootstrap") -> list[Path]:
    """``table1.csv`` (flat, full precision) and ``table1.md`` (μ ± σ in %); ``spread``:
    "bootstrap" or "seeds" (see :func:`aggregate.table1`)."""
    out_dir = Path(out_dir)
    df = plots.prepare(metrics)
    table = aggregate.table1(df, label=label, spread=spread)
    csv, md = out_dir / "table1.csv", out_dir / "table1.md"
    write_csv(table1_flat(df, label, spread), csv)
    write_text(aggregate.table1_markdown(table), md)
    return [csv, md]


def write_correlations(metrics: pd.DataFrame, out_dir: str | Path, train_positives=None
                       ) -> Path:
    """``correlations.csv``: :func:`aggregate.correlations` of the point estimates (with the
    training-positive analyses when ``train_positives`` is given)."""
    path = Path(out_dir) / "correlations.csv"
    write_csv(aggregate.correlations(plots.prepare(metrics), train_positives=train_positives),
              path)
    return path


def write_summary(metrics: pd.DataFrame, out_dir: str | Path, train_positives=None,
                  spread: str = "bootstrap", table_method: str | None = None) -> list[Path]:
    """Write every table and figure of one dataset into ``out_dir`` (:data:`SUMMARY_FILES`).

    Parameters
    ----------
    train_positives: positive training records per label
        (:func:`dpmed.evaluation.aggregate.positives_per_label` of the manifest, or
        ``{label: n}``): AUROC vs positives then uses them, as the study does; without them
        it falls back to test positives (the figure says which).
    spread: Table 1's σ and the figures' error bars — "bootstrap" (CXR in the study) or
        "seeds" (CT: std over independent trainings).
    table_method: the method Table 1 and the correlations are of, when ``metrics`` holds
        several (the figures draw one line per method); ``None``: ``metrics`` has one method.

    Returns the paths in the order of :data:`SUMMARY_FILES`.  Figures whose subgroups are
    missing from the table (e.g. no ``age_group``) are still written, with a note.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    df = plots.prepare(metrics)
    one = df if table_method is None else df[df["method"] == table_method]
    if one.empty:
        raise ValueError(f"no models of method {table_method!r} in the metrics")
    paths = write_table1(one, out_dir, spread=spread)
    paths.append(write_correlations(one, out_dir, train_positives))
    figures = [
        ("auroc_vs_epsilon.png", lambda p: plots.plot_metrics_vs_epsilon(df, p, spread=spread)),
        ("auroc_vs_epsilon_by_age.png",
         lambda p: plots.plot_metrics_vs_epsilon(df, p, "age_group", spread)),
        ("auroc_vs_epsilon_by_sex.png",
         lambda p: plots.plot_metrics_vs_epsilon(df, p, "sex", spread)),
        ("label_auroc_vs_epsilon.png",
         lambda p: plots.plot_label_auroc_vs_epsilon(df, p, spread)),
        ("auroc_vs_positives.png",
         lambda p: plots.plot_auroc_vs_positives(one, p, train_positives)),  # with Table 1's r
        ("parity_vs_epsilon.png", lambda p: plots.plot_parity_vs_epsilon(df, p, spread)),
    ]
    for name, draw in figures:
        draw(out_dir / name)
        paths.append(out_dir / name)
    assert [p.name for p in paths] == list(SUMMARY_FILES)
    return paths
