"""Private vs non-private: paired bootstrap and DeLong's test for AUROC differences.

Both tests are reported **one-sided in the same direction**, alternative "the private model
is worse" (AUROC_private < AUROC_non-private), in columns named for it; DeLong's two-sided
p-value is reported beside them under its own name. A small one-sided p means the private
model is worse; a large one (near 1) means it is not, possibly better.

Paired bootstrap p-value (one-sided, "private worse")
----------------------------------------------------
Both models are evaluated on the *same* redraws (same seed, same test record ids).  With
``a_b`` / ``r_b`` the AUROC of the private / non-private model on redraw ``b``::

    p = #{b : a_b >= r_b} / B,   B = #{b : a_b and r_b both defined}

This is the fraction of redraws in which the private model is *not worse* — methods A's
"fraction of redraws where AUROC1 <= AUROC2" with AUROC1 = non-private, AUROC2 = private.
No +1 correction: when no redraw has the private model at least as good, ``p = 0`` means
``p < 1/B``, and the text column (:func:`format_bootstrap_p`) says so ("< 0.001" for B = 1000).

DeLong's test
-------------
AUROC difference of two correlated ROC curves (same records, two score vectors), with the
structural components computed from midranks (Sun & Xu 2014, O(n log n))::

    V10_i = (midrank of positive i among all - midrank among positives) / n_neg
    V01_j = 1 - (midrank of negative j among all - midrank among negatives) / n_pos
    Var(AUC1 - AUC2) = c' (S10 / n_pos + S01 / n_neg) c,   c = (1, -1)

``S10``/``S01`` are the 2x2 sample covariances (ddof 1) of the components;
``z = (AUC1 - AUC2) / sqrt(Var)``; two-sided ``p = 2 * (1 - Phi(|z|))``, one-sided
(alternative AUC1 < AUC2) ``p = Phi(z)``.  With AUC1 = private, ``Phi(z)`` is the
"private worse" p-value.  If the variance is 0 (e.g. identical scores) then both p are 1
when the AUROCs are equal; otherwise 0 or 1 by the sign.  Fewer than two positives or two
negatives → NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from .metrics import EvaluationError, Replicates, bootstrap_replicates

COMPARISON_COLUMNS = ["label", "subgroup", "auroc_private", "auroc_nonprivate",
                      "auroc_difference", "bootstrap_p_private_worse",
                      "bootstrap_p_private_worse_text", "n_paired", "delong_z",
                      "delong_p_private_worse", "delong_p_two_sided"]


@dataclass(frozen=True)
class DeLongResult:
    auc1: float
    auc2: float
    difference: float
    variance: float
    z: float
    p_value: float                    # two-sided
    p_value_less: float = float("nan")  # one-sided, alternative AUC1 < AUC2


def delong_test(y_true, score1, score2) -> DeLongResult:
    """DeLong's test for AUROC(score1) - AUROC(score2) on the same records."""
    y = np.asarray(y_true).astype(bool)
    s = np.vstack([np.asarray(score1, dtype=float), np.asarray(score2, dtype=float)])
    if s.shape[1] != y.size:
        raise EvaluationError("delong_test: y_true and scores differ in length")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        nan = float("nan")
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan)
    pos, neg = s[:, y], s[:, ~y]
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    auc = np.empty(2)
    for k in range(2):
        tx = rankdata(pos[k])
        ty = rankdata(neg[k])
        tz = rankdata(np.concatenate([pos[k], neg[k]]))
        auc[k] = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[k] = (tz[:m] - tx) / n
        v01[k] = 1.0 - (tz[m:] - ty) / m
    cov = np.cov(v10) / m + np.cov(v01) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    if var <= 0:
        z = 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
        p = 1.0 if diff == 0 else 0.0
        p_less = 1.0 if diff >= 0 else 0.0
    else:
        z = diff / np.sqrt(var)
        p = float(2 * norm.sf(abs(z)))
        p_less = float(norm.cdf(z))
    return DeLongResult(float(auc[0]), float(auc[1]), diff, var, float(z), p, p_less)


def paired_bootstrap_p(auroc_private: np.ndarray, auroc_nonprivate: np.ndarray
                       ) -> tuple[float, int]:
    """One-sided paired bootstrap p-value (see module docstring) and the number of pairs."""
    a = np.asarray(auroc_private, dtype=float)
    r = np.asarray(auroc_nonprivate, dtype=float)
    ok = np.isfinite(a) & np.isfinite(r)
    k = int(ok.sum())
    if k == 0:
        return float("nan"), 0
    return float(np.mean(a[ok] >= r[ok])), k


def format_bootstrap_p(p: float, n_paired: int) -> str:
    """The bootstrap p-value as reported: ``"< 1/B"`` (e.g. ``"< 0.001"``) when no redraw
    favoured the private model, else three significant digits; ``""`` when undefined."""
    if n_paired == 0 or not np.isfinite(p):
        return ""
    return f"< {1 / n_paired:.3g}" if p == 0 else f"{p:.3g}"


def compare_replicates(private: Replicates, nonprivate: Replicates) -> pd.DataFrame:
    """Compare two models' replicates (same labels, subgroups, test records and redraws)."""
    if (private.labels != nonprivate.labels or private.subgroups != nonprivate.subgroups
            or private.values.shape != nonprivate.values.shape):
        raise EvaluationError("compare: the two models differ in labels, subgroups or redraws")
    if not np.array_equal(private.record_ids, nonprivate.record_ids):
        raise EvaluationError("compare: the two models were evaluated on different test records")
    for lb in private.labels[:-1]:
        if not np.array_equal(private.y[lb], nonprivate.y[lb]):
            raise EvaluationError(f"compare: y_{lb} differs between the two models")
    mi = private.metrics.index("auroc")
    rows = []
    for li, lb in enumerate(private.labels):
        for si, sg in enumerate(private.subgroups):
            a, r = private.values[li, si, mi], nonprivate.values[li, si, mi]
            p, k = paired_bootstrap_p(a, r)
            ea, er = private.estimate[li, si, mi], nonprivate.estimate[li, si, mi]
            if lb == "mean":  # DeLong is defined per label, not for the label mean
                dz = dp_less = dp = float("nan")
            else:
                m = private.masks[si]
                d = delong_test(private.y[lb][m], private.scores[lb][m], nonprivate.scores[lb][m])
                dz, dp_less, dp = d.z, d.p_value_less, d.p_value
            rows.append({"label": lb, "subgroup": sg, "auroc_private": ea,
                         "auroc_nonprivate": er, "auroc_difference": ea - er,
                         "bootstrap_p_private_worse": p,
                         "bootstrap_p_private_worse_text": format_bootstrap_p(p, k),
                         "n_paired": k, "delong_z": dz, "delong_p_private_worse": dp_less,
                         "delong_p_two_sided": dp})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def compare_models(private: pd.DataFrame, nonprivate: pd.DataFrame, labels: list[str],
                   subgroups: dict, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Private vs non-private model of the same dataset and seed.

    Returns one row per (label incl. "mean", subgroup) with columns
    :data:`COMPARISON_COLUMNS`: point AUROCs on the full test set, their difference
    (private − non-private), the one-sided ("private worse") paired bootstrap p-value, as a
    number and as reported text ("< 1/B" when 0), the number of redraws where both are
    defined, and DeLong's z with its one-sided ("private worse") and two-sided p (NaN for
    "mean").
    """
    rp = bootstrap_replicates(private, labels, subgroups, n_bootstrap, seed)
    rn = bootstrap_replicates(nonprivate, labels, subgroups, n_bootstrap, seed)
    return compare_replicates(rp, rn)
