"""dpmed.evaluation — bootstrapped subgroup metrics, fairness, comparisons, aggregation."""

from .bootstrap import bootstrap_indices, redraw_indices
from .metrics import (METRICS, OUTPUT_COLUMNS, EvaluationError, Replicates,
                      bootstrap_replicates, evaluate_model, summarise, youden_threshold)

__all__ = [
    "METRICS", "OUTPUT_COLUMNS", "EvaluationError", "Replicates", "bootstrap_indices",
    "bootstrap_replicates", "evaluate_model", "redraw_indices", "summarise", "youden_threshold",
]
