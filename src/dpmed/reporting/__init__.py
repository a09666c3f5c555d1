"""dpmed.reporting — figures and tables of one dataset from its stacked metrics table.

:mod:`.plots` draws accuracy / fairness against ε (PNG, matplotlib Agg); :mod:`.tables`
writes Table 1 and the correlations (numbers from :mod:`dpmed.evaluation.aggregate`) and
:func:`write_summary` produces everything under fixed file names.
"""

from .plots import (DPI, PLOT_COLUMNS, ReportingError, plot_auroc_vs_positives,
                    plot_label_auroc_vs_epsilon, plot_metrics_vs_epsilon,
                    plot_parity_vs_epsilon, prepare)
from .tables import (SUMMARY_FILES, table1_flat, write_correlations, write_summary,
                     write_table1)

__all__ = [
    "DPI", "PLOT_COLUMNS", "ReportingError", "SUMMARY_FILES", "plot_auroc_vs_positives",
    "plot_label_auroc_vs_epsilon", "plot_metrics_vs_epsilon", "plot_parity_vs_epsilon",
    "prepare", "table1_flat", "write_correlations", "write_summary", "write_table1",
]
