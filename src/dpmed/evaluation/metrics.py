"""Bootstrapped per-label, per-subgroup classification metrics — fast.

How it is fast
--------------
A bootstrap redraw is a vector of multiplicities ``w`` (how often each test record was
drawn).  Every metric computed here depends on the redrawn data only through, for each
*distinct score value* ``g`` of a label inside a subgroup, the weighted number of positives
``P_g`` and negatives ``N_g`` holding that score.  For a chunk of ``c`` redraws these sums
are one sparse-matrix product ``S @ M``: ``M`` is the ``(n_records, c)`` multiplicity
matrix and ``S`` is a 0/1 matrix with one row per (subgroup, distinct score, class) of the
label and one non-zero per (subgroup member).  Subgroups are just other rows of ``S``, so all
subgroups share the redraws.  From ``P`` and ``N`` (distinct scores in descending order):

* AUROC (Mann–Whitney with ties counted ½)::

      sum_g P_g * (N_{<g} + N_g / 2) / (sum P * sum N)

  which is exactly what ``sklearn.metrics.roc_auc_score`` returns on the redrawn arrays
  (the trapezoidal ROC area equals the tie-corrected Mann–Whitney statistic).
* AUPRC = average precision as sklearn defines it (no interpolation)::

      sum_g (P_g / sum P) * TP_g / (TP_g + FP_g),   TP_g = sum_{h<=g} P_h, FP_g likewise

* Thresholded metrics: a record is called positive iff ``score >= threshold`` (the
  convention of ``sklearn.metrics.roc_curve``), so TP/FP are cumulative sums up to the last
  distinct score ``>= threshold``.

The whole test set (all multiplicities 1) is run through the same code path to give the
point estimate.

Definitions and conventions
---------------------------
* Threshold: Youden's J on the **validation** split: the ROC points are those of
  ``sklearn.metrics.roc_curve(y_val, score_val)``; the threshold is ``thresholds[argmax(tpr -
  fpr)]`` with ``np.argmax`` taking the first maximum, i.e. on ties the **highest** threshold
  (fewest positive calls) wins.  (Intermediate collinear points dropped by ``roc_curve`` can
  never be the first maximum, so ``drop_intermediate`` does not matter.)  If J is maximal
  at the ``inf`` point, every record is called negative.  A validation split without
  positives or without negatives gives a NaN threshold and NaN thresholded metrics.
* Undefined values are NaN and counted in ``n_missing`` — never an exception and never a
  default of 0.5.  A metric is undefined in a redraw when its denominator is empty:
  AUROC and balanced accuracy need positives *and* negatives; AUPRC, sensitivity and
  underdiagnosis rate need positives; specificity needs negatives; accuracy needs at least one
  record; parity difference needs records in the group and in the rest.
* Label mean ("mean"): for each redraw, the mean over the labels whose value is defined in
  that redraw (NaN if none is).  ``n`` of the label mean is the subgroup size;
  ``n_positive`` of the label mean is the mean number of positives over labels.
* Parity difference (methods A): accuracy(group) − accuracy(rest), "rest" = the records
  of all *other* values of the same attribute listed in the subgroup spec (records whose
  value is not listed are in neither).  For ``sex=F`` with spec ``["F", "M"]`` this is
  accuracy(F) − accuracy(M); ``sex=M`` gets the negation.  For an age group the pooled
  accuracy of the rest equals the sample-size-weighted mean accuracy of the other groups.
  It is computed inside each redraw with the redraw's subgroup sizes as weights.
* Spread: ``mean`` and ``std`` (ddof = 1) over the defined redraws, percentile interval
  ``ci_low``/``ci_high`` (numpy's default linear interpolation) over the defined redraws.
* ``threshold`` rows appear for subgroup "all" and the individual labels only; the threshold
  is fixed on validation data and so is constant over the test redraws (std 0).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import roc_curve

from ..errors import DpmedError
from .bootstrap import multiplicity_chunks

#: Metric names in the output, in order.
METRICS: tuple[str, ...] = (
    "auroc", "auprc", "accuracy", "sensitivity", "specificity", "balanced_accuracy",
    "underdiagnosis_rate", "parity_difference", "n", "n_positive", "threshold",
)
_REDRAWN = METRICS[:-1]  # everything except the (fixed) threshold
_M = {m: i for i, m in enumerate(_REDRAWN)}

OUTPUT_COLUMNS = ["label", "subgroup", "metric", "estimate", "mean", "std", "ci_low",
                  "ci_high", "n_missing"]

#: Memory budget (bytes) for one chunk's working arrays.
DEFAULT_MEMORY_BUDGET = 64 * 2**20


class EvaluationError(DpmedError, ValueError):
    """The predictions table cannot be evaluated (missing columns, bad values, ...)."""


# ---------------------------------------------------------------------------- input checks
def _check_predictions(pred: pd.DataFrame, labels: list[str], subgroups: dict) -> None:
    need = ["record_id", "split"] + [f"y_{lb}" for lb in labels] + [f"score_{lb}" for lb in labels]
    need += [a for a in subgroups]
    missing = [c for c in need if c not in pred.columns]
    if missing:
        raise EvaluationError(f"predictions: missing columns {missing}")
    if not labels:
        raise EvaluationError("no labels given")
    if len(set(labels)) != len(labels) or "mean" in labels:
        raise EvaluationError(f"labels must be unique and not 'mean': {labels}")
    for lb in labels:
        y = pd.to_numeric(pred[f"y_{lb}"], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise EvaluationError(
                f"predictions: y_{lb} must be 0/1; row {int(np.flatnonzero(bad)[0])} is not")
        s = pd.to_numeric(pred[f"score_{lb}"], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(s)
        if bad.any():
            raise EvaluationError(
                f"predictions: score_{lb} must be finite; row {int(np.flatnonzero(bad)[0])} is not")


def _test_table(pred: pd.DataFrame) -> pd.DataFrame:
    test = pred[pred["split"] == "test"]
    if len(test) == 0:
        raise EvaluationError("predictions: no rows with split == 'test'")
    if test["record_id"].duplicated().any():
        dup = test.loc[test["record_id"].duplicated(), "record_id"].iloc[0]
        raise EvaluationError(f"predictions: record_id {dup!r} occurs twice in the test split")
    return test.sort_values("record_id", kind="mergesort").reset_index(drop=True)


def subgroup_masks(test: pd.DataFrame, subgroups: dict) -> tuple[list[str], list[np.ndarray],
                                                                   list[str | None]]:
    """Names, boolean masks and attribute (None for "all") of every evaluated set."""
    names, masks, attrs = ["all"], [np.ones(len(test), dtype=bool)], [None]
    for attr, values in subgroups.items():
        col = test[attr].astype(str).to_numpy()
        for v in values:
            names.append(f"{attr}={v}")
            masks.append(col == str(v))
            attrs.append(attr)
    if len(set(names)) != len(names):
        raise EvaluationError(f"duplicate subgroups in spec: {names}")
    return names, masks, attrs


def mean_auroc(y: np.ndarray, s: np.ndarray) -> tuple[float, list[float]]:
    """Mean AUROC over the labels (columns) with both classes present (NaN if none), and per label.

    A plain point estimate for monitoring (e.g. validation AUROC per training epoch); the
    bootstrapped evaluation is :func:`evaluate_model`.
    """
    from sklearn.metrics import roc_auc_score

    per = []
    for j in range(y.shape[1]):
        yj = y[:, j]
        if len(yj) == 0 or yj.min() == yj.max():
            per.append(float("nan"))
        else:
            per.append(float(roc_auc_score(yj, s[:, j])))
    vals = [v for v in per if not np.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


def youden_threshold(y_val: np.ndarray, score_val: np.ndarray) -> float:
    """Youden threshold on validation data (see module docstring); NaN if undefined."""
    y_val = np.asarray(y_val)
    if y_val.size == 0 or y_val.min() == y_val.max():
        return float("nan")
    fpr, tpr, thr = roc_curve(y_val, score_val)
    return float(thr[int(np.argmax(tpr - fpr))])


# ------------------------------------------------------------------------------ the engine
@dataclass
class _LabelPlan:
    S: sp.csr_array          # (K, n) 0/1 float32
    offsets: list[int]       # per set: first row in S
    n_groups: list[int]      # per set: number of score blocks
    k_pred: list[int]        # per set: number of blocks with score >= threshold
    threshold: float


def _plan_label(y: np.ndarray, s: np.ndarray, masks: list[np.ndarray], thr: float) -> _LabelPlan:
    """Sparse aggregation matrix of one label.

    For each set, the members' distinct scores (descending) form groups; consecutive groups
    holding only negatives on the same side of the threshold are merged into one block
    (this changes none of the metrics: between two positives only the number of negatives
    matters).  Rows ``off .. off+G-1`` collect the negatives of blocks ``0..G-1``, rows
    ``off+G .. off+2G-1`` their positives.
    """
    rows, cols, offsets, n_groups, k_pred = [], [], [], [], []
    off = 0
    for m in masks:
        idx = np.flatnonzero(m)
        neg_unique, inv = np.unique(-s[idx], return_inverse=True)  # descending scores
        inv = inv.reshape(-1)
        yy = y[idx]
        g = neg_unique.size
        has_pos = np.bincount(inv, weights=yy, minlength=g) > 0
        above = -neg_unique >= thr  # all False for a NaN threshold
        new_block = np.ones(g, dtype=bool)
        if g > 1:
            new_block[1:] = has_pos[1:] | has_pos[:-1] | (above[1:] != above[:-1])
        block = np.cumsum(new_block) - 1
        gb = int(block[-1]) + 1 if g else 0
        rows.append(off + block[inv] + gb * yy)
        cols.append(idx)
        offsets.append(off)
        n_groups.append(gb)
        k_pred.append(int(np.count_nonzero(new_block & above)))
        off += 2 * gb
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    S = sp.csr_array((np.ones(r.size, dtype=np.float32), (r, c)), shape=(off, y.size))
    return _LabelPlan(S, offsets, n_groups, k_pred, thr)


def _set_metrics(P: np.ndarray, N: np.ndarray, k: int, thr_defined: bool, out: np.ndarray) -> tuple:
    """Fill ``out[metric, :]`` for one label and set from block sums ``P``, ``N``.

    ``P``, ``N``: (c, G) int64, blocks in descending score order.  Counts stay integers
    (exact) until the final divisions.
    """
    c = P.shape[0]
    cum_p = np.cumsum(P, axis=1)
    cum_n = np.cumsum(N, axis=1)
    if P.shape[1]:
        tot_p, tot_n = cum_p[:, -1], cum_n[:, -1]
    else:
        tot_p = tot_n = np.zeros(c, dtype=np.int64)
    has_p = tot_p > 0
    has_n = tot_n > 0
    both = has_p & has_n
    with np.errstate(invalid="ignore", divide="ignore"):
        # AUROC: a positive beats the negatives below it and ties (1/2) those at its score:
        # 2 * U = sum_g P_g * (2 * (N_tot - cum_N_g) + N_g), all in integers.
        u2 = (P * (2 * (tot_n[:, None] - cum_n) + N)).sum(axis=1)
        out[_M["auroc"]] = np.where(both, u2 / (2.0 * tot_p * tot_n), np.nan)
        # AUPRC (average precision): precision at each distinct threshold weighted by the
        # recall step P_g / P_tot.  Where TP+FP == 0 the step P_g is 0 too.
        denom = cum_p + cum_n
        prec = np.divide(cum_p, denom, out=np.zeros(denom.shape), where=denom > 0)
        out[_M["auprc"]] = np.where(has_p, (P * prec).sum(axis=1) / tot_p, np.nan)
        n = tot_p + tot_n
        if thr_defined:
            tp = cum_p[:, k - 1] if k > 0 else np.zeros(c, dtype=np.int64)
            fp = cum_n[:, k - 1] if k > 0 else np.zeros(c, dtype=np.int64)
            tn = tot_n - fp
            correct = tp + tn
            sens = np.where(has_p, tp / tot_p, np.nan)
            spec = np.where(has_n, tn / tot_n, np.nan)
            out[_M["accuracy"]] = np.where(n > 0, correct / n, np.nan)
            out[_M["sensitivity"]] = sens
            out[_M["specificity"]] = spec
            out[_M["balanced_accuracy"]] = (sens + spec) / 2
            out[_M["underdiagnosis_rate"]] = 1.0 - sens
        else:
            correct = np.full(c, np.nan)
            for m in ("accuracy", "sensitivity", "specificity", "balanced_accuracy",
                      "underdiagnosis_rate"):
                out[_M[m]] = np.nan
    out[_M["n"]] = n
    out[_M["n_positive"]] = tot_p
    return correct, n


def _process_chunk(plans: list[_LabelPlan], M: np.ndarray, attrs: list[str | None],
                   out: np.ndarray) -> None:
    """``M``: (n, c) float32 multiplicities; ``out``: (L, S, len(_REDRAWN), c)."""
    n_sets = len(attrs)
    for li, plan in enumerate(plans):
        # block sums of every set: one sparse product, then (c, K) int64 for fast cumsums
        R = (plan.S @ M).T.astype(np.int64, order="C")
        c = R.shape[0]
        correct = np.empty((n_sets, c))
        nn = np.empty((n_sets, c))
        thr_ok = not np.isnan(plan.threshold)
        for si in range(n_sets):
            g, off = plan.n_groups[si], plan.offsets[si]
            correct[si], nn[si] = _set_metrics(R[:, off + g:off + 2 * g], R[:, off:off + g],
                                               plan.k_pred[si], thr_ok, out[li, si])
        # parity difference: accuracy(group) - accuracy(rest of the same attribute)
        out[li, :, _M["parity_difference"]] = np.nan
        for si, a in enumerate(attrs):
            if a is None:
                continue
            others = [sj for sj, b in enumerate(attrs) if b == a and sj != si]
            if not others:
                continue
            rc = correct[others].sum(axis=0)
            rn = nn[others].sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                ok = (nn[si] > 0) & (rn > 0)
                out[li, si, _M["parity_difference"]] = np.where(
                    ok, correct[si] / nn[si] - rc / rn, np.nan)


def _chunk_size(n: int, plans: list[_LabelPlan], budget: int) -> int:
    k_max = max(p.S.shape[0] for p in plans)
    # float32 multiplicities + float32 and int64 block sums + ~6 float64 temporaries of
    # the largest set (at most half of the rows)
    per_redraw = 4 * n + 12 * k_max + 6 * 8 * k_max // 2
    return max(1, budget // per_redraw)


def _label_mean(vals: np.ndarray) -> np.ndarray:
    """Label mean over axis 0 ignoring undefined labels (see module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(vals, axis=0)
    mean[:, _M["n"]] = vals[0, :, _M["n"]]
    return mean


@dataclass
class Replicates:
    """Per-redraw values of every metric.

    ``values[label, subgroup, metric, redraw]`` and ``estimate[label, subgroup, metric]``
    with ``labels`` = the given labels + ``"mean"``, ``metrics`` = every metric except
    ``threshold`` (which is in ``thresholds``).
    """
    labels: list[str]
    subgroups: list[str]
    metrics: list[str]
    values: np.ndarray
    estimate: np.ndarray
    thresholds: dict[str, float]
    record_ids: np.ndarray
    y: dict[str, np.ndarray] = field(repr=False)
    scores: dict[str, np.ndarray] = field(repr=False)
    masks: list[np.ndarray] = field(repr=False)

    def get(self, label: str, subgroup: str, metric: str) -> np.ndarray:
        return self.values[self.labels.index(label), self.subgroups.index(subgroup),
                           self.metrics.index(metric)]


def bootstrap_replicates(predictions: pd.DataFrame, labels: list[str], subgroups: dict,
                         n_bootstrap: int = 1000, seed: int = 0,
                         memory_budget: int = DEFAULT_MEMORY_BUDGET) -> Replicates:
    """Compute every metric on every redraw (and on the full test set)."""
    labels = list(labels)
    subgroups = dict(subgroups or {})
    _check_predictions(predictions, labels, subgroups)
    if n_bootstrap < 0:
        raise EvaluationError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    test = _test_table(predictions)
    val = predictions[predictions["split"] == "val"]
    names, masks, attrs = subgroup_masks(test, subgroups)
    n = len(test)
    ys, ss, thresholds, plans = {}, {}, {}, []
    for lb in labels:
        y = test[f"y_{lb}"].to_numpy().astype(np.int64)
        s = test[f"score_{lb}"].to_numpy(dtype=np.float64)
        thr = youden_threshold(val[f"y_{lb}"].to_numpy().astype(np.int64),
                               val[f"score_{lb}"].to_numpy(dtype=np.float64))
        ys[lb], ss[lb], thresholds[lb] = y, s, thr
        plans.append(_plan_label(y, s, masks, thr))

    n_l, n_s, n_m = len(labels), len(names), len(_REDRAWN)
    values = np.empty((n_l, n_s, n_m, n_bootstrap))
    point = np.empty((n_l, n_s, n_m, 1))
    _process_chunk(plans, np.ones((n, 1), dtype=np.float32), attrs, point)
    if n_bootstrap:
        size = min(n_bootstrap, _chunk_size(n, plans, memory_budget))
        for start, M in multiplicity_chunks(n, n_bootstrap, seed, size):
            _process_chunk(plans, M, attrs, values[..., start:start + M.shape[1]])

    values = np.concatenate([values, _label_mean(values)[None]], axis=0)
    point = np.concatenate([point, _label_mean(point)[None]], axis=0)[..., 0]
    return Replicates(labels + ["mean"], names, list(_REDRAWN), values, point, thresholds,
                      test["record_id"].to_numpy(), ys, ss, masks)


def summarise(rep: Replicates, ci: float = 0.95) -> pd.DataFrame:
    """Long-format summary (columns ``OUTPUT_COLUMNS``) of bootstrap replicates."""
    if not 0 < ci < 1:
        raise EvaluationError(f"ci must be in (0, 1), got {ci}")
    v = rep.values
    missing = np.isnan(v).sum(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(v, axis=-1)
        std = np.nanstd(v, axis=-1, ddof=1)
        if v.shape[-1]:
            lo, hi = np.nanpercentile(v, [100 * (1 - ci) / 2, 100 * (1 + ci) / 2], axis=-1)
        else:
            lo = hi = np.full(v.shape[:-1], np.nan)
    n_l, n_s, n_m = v.shape[:3]
    li, si, mi = np.meshgrid(np.arange(n_l), np.arange(n_s), np.arange(n_m), indexing="ij")
    df = pd.DataFrame({
        "label": np.asarray(rep.labels, dtype=object)[li.ravel()],
        "subgroup": np.asarray(rep.subgroups, dtype=object)[si.ravel()],
        "metric": np.asarray(rep.metrics, dtype=object)[mi.ravel()],
        "estimate": rep.estimate.ravel(), "mean": mean.ravel(), "std": std.ravel(),
        "ci_low": lo.ravel(), "ci_high": hi.ravel(), "n_missing": missing.ravel().astype(np.int64),
    })
    df = df[~((df["metric"] == "parity_difference") & (df["subgroup"] == "all"))]
    thr_rows = []
    for lb in rep.labels[:-1]:
        t = rep.thresholds[lb]
        nb = v.shape[-1]
        thr_rows.append({"label": lb, "subgroup": "all", "metric": "threshold", "estimate": t,
                         "mean": t, "std": 0.0 if np.isfinite(t) and nb > 1 else np.nan,
                         "ci_low": t, "ci_high": t,
                         "n_missing": 0 if not np.isnan(t) else nb})
    df = pd.concat([df, pd.DataFrame(thr_rows)], ignore_index=True)
    # stable order: label, subgroup, metric as in METRICS
    order = {m: i for i, m in enumerate(METRICS)}
    df["_l"] = df["label"].map({lb: i for i, lb in enumerate(rep.labels)})
    df["_s"] = df["subgroup"].map({s: i for i, s in enumerate(rep.subgroups)})
    df["_m"] = df["metric"].map(order)
    df = df.sort_values(["_l", "_s", "_m"], kind="mergesort").drop(columns=["_l", "_s", "_m"])
    return df.reset_index(drop=True)[OUTPUT_COLUMNS]


def evaluate_model(predictions: pd.DataFrame, labels: list[str], subgroups: dict,
                   n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Bootstrapped metrics of one model, long format.

    Parameters
    ----------
    predictions: one row per val/test record: ``record_id``, ``split`` ("val"/"test"),
        the subgroup attribute columns, ``y_<label>`` (0/1) and ``score_<label>``.
    labels: label names (without the ``y_``/``score_`` prefix).
    subgroups: ``{attribute: [values...]}``, e.g. ``{"sex": ["F", "M"]}``; "all" is added.
    n_bootstrap, seed: redraws of the test set (records sorted by ``record_id``); the
        redraws depend only on ``seed`` and the number of test records.
    ci: coverage of the percentile interval.

    Returns
    -------
    DataFrame with columns ``label, subgroup, metric, estimate, mean, std, ci_low, ci_high,
    n_missing``; ``label`` includes "mean" (label average), ``subgroup`` is "all" or
    ``"<attribute>=<value>"``, ``metric`` one of :data:`METRICS`.
    """
    return summarise(bootstrap_replicates(predictions, labels, subgroups, n_bootstrap, seed), ci)
