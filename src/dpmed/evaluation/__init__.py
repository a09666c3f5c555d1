"""dpmed.evaluation — bootstrapped subgroup metrics, fairness, comparisons, aggregation.

See :mod:`dpmed.evaluation.metrics` for the definitions (Youden threshold on validation,
undefined values, label mean, parity difference), :mod:`.compare` for the paired bootstrap
p-value and DeLong's test, and :mod:`.aggregate` for Table 1 and the correlations.
"""

from . import aggregate
from .aggregate import (correlations, positives_per_label, render_markdown, table1,
                        table1_markdown)
from .bootstrap import bootstrap_indices, redraw_indices
from .compare import (COMPARISON_COLUMNS, DeLongResult, compare_models, compare_replicates,
                      delong_test, format_bootstrap_p, paired_bootstrap_p)
from .metrics import (METRICS, OUTPUT_COLUMNS, EvaluationError, Replicates,
                      bootstrap_replicates, evaluate_model, mean_auroc, summarise, youden_threshold)

__all__ = [
    "COMPARISON_COLUMNS", "METRICS", "OUTPUT_COLUMNS", "DeLongResult", "EvaluationError",
    "Replicates", "aggregate", "bootstrap_indices", "bootstrap_replicates", "compare_models",
    "compare_replicates", "correlations", "delong_test", "evaluate_model",
    "format_bootstrap_p", "mean_auroc", "paired_bootstrap_p", "positives_per_label", "redraw_indices",
    "render_markdown", "summarise", "table1", "table1_markdown", "youden_threshold",
]
