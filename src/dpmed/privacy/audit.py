"""Empirical privacy audit: lower bounds on ε from membership scores of canaries.

A DP card states an upper bound on what a model can leak. An audit checks it from the other
side: it inserts ``m`` *canaries* (records the auditor controls) into training, each included
independently with probability ½ (the *inclusion mask* ``member``), scores every canary
with the released model (``scores``: high = "looks like it was trained on"), and turns how
well the scores separate members from non-members into a **lower** bound on ε that holds
with confidence ``1 − alpha``. A correct mechanism never has a lower bound above its card's
ε except with probability ``alpha``; a non-private model, trained on canaries it can
memorise, gives a bound clearly above 0 (the audit has power).

Three bounds, all from the same ``(scores, member)``:

**One run** (Steinke, Nasr & Jagielski 2023, arXiv 2305.08846).
The auditor guesses "member" for the ``k+`` highest-scored canaries and "non-member" for the
``k−`` lowest, abstaining on the rest: ``r = k+ + k−`` guesses, ``v`` of them correct.
Because the inclusion bits are independent fair coins and the guesses are post-processing of
an ε-DP output, each guess is correct with probability at most ``q = e^ε / (1 + e^ε)`` given
everything before it (randomised response is the worst case), so ``v`` is stochastically
dominated by ``Binomial(r, q)`` (the paper's Theorem for pure DP). For (ε, δ)-DP the paper
adds a δ term, which we use as stated there::

    p(ε) = P[Bin(r, q) >= v] + 2 m δ · max_{1<=i<=v} P[v−i <= Bin(r, q) <= v−1] / i

``p(ε)`` is the p-value of "the mechanism is (ε, δ)-DP" after observing ``v``; it grows
with ε. The lower bound is the largest ε with ``p(ε) <= alpha`` (0 if even ε = 0 is not
rejected), found by bisection. With every guess right the bound is at most
``logit(alpha^(1/r))`` — the most ``r`` guesses can show (:func:`one_run_max_epsilon`).

**Clopper–Pearson at a threshold.** Call "member" when the score is among the ``k``
highest. For (ε, δ)-DP every such test satisfies ``TPR <= e^ε FPR + δ`` and
``1 − FPR <= e^ε (1 − TPR) + δ``, so ``ε >= max(log((TPR − δ)/FPR),
log((1 − FPR − δ)/(1 − TPR)))``. Both use the same two endpoints: the lower end of TPR's
and the upper end of FPR's exact two-sided ``1 − alpha`` Clopper–Pearson intervals
(each one-sided at ``alpha/2``, so both hold together with probability ``>= 1 − alpha``).

**Gaussian DP** (Nasr et al. 2023, arXiv 2302.07956). A μ-GDP mechanism's tests satisfy
``1 − TPR >= Φ(Φ⁻¹(1 − FPR) − μ)``, i.e. ``μ >= Φ⁻¹(1 − FPR) − Φ⁻¹(1 − TPR)``; with the
Clopper–Pearson endpoints above this is a ``1 − alpha`` lower bound ``μ_lo``, converted to ε
at the card's δ by solving ``δ = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)`` (Balle & Wang's exact
curve of the Gaussian mechanism). It assumes the mechanism's trade-off curve is Gaussian
(exact for the Gaussian mechanism, approximate — by the central limit theorem — for DP-SGD),
so it is a sharper but model-based bound: for a subsampled mechanism whose accountant's ε is
below the GDP-equivalent ε it may exceed the card's ε without the card being wrong.

**Choice of k (multiple testing).** Each bound is computed for every entry of a small grid
fixed in advance (:func:`guess_grid`: ``k+ = k− = round(f·m)`` per side for the
fractions :data:`DEFAULT_GUESS_FRACTIONS`) at level ``alpha / len(grid)`` (Bonferroni), and
the largest is reported: the maximum over the grid then holds at level ``alpha``.
Passing a single ``(k+, k−)`` tests at ``alpha`` itself.

Guesses break ties in the score by canary position (stable sort): the order of canaries is
fixed before training, so this uses nothing the mask decides.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

from dpmed.errors import PrivacyError

__all__ = [
    "AUDIT_SCHEMA_VERSION", "DEFAULT_ALPHA", "DEFAULT_GUESS_FRACTIONS", "AuditBound",
    "clopper_pearson", "clopper_pearson_audit", "gdp_audit", "gdp_delta", "gdp_epsilon",
    "gdp_mu_lower", "guess_grid", "guesses", "audit_findings", "mia_auroc", "one_run_audit",
    "one_run_epsilon_lower", "one_run_max_epsilon", "one_run_p_value", "audit_report",
    "write_audit_json", "read_audit_json",
]

AUDIT_SCHEMA_VERSION = 1
DEFAULT_ALPHA = 0.05
#: Guesses per side as fractions of the number of canaries (k+ = k− = round(f·m)).
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
_EPS_CEILING = 50.0  # e^50 ≈ 5e21: no finite audit of practical size reaches it


@dataclass(frozen=True)
class AuditBound:
    """One lower bound on ε and the counts it rests on.

    ``k_plus``/``k_minus``: guesses "member"/"non-member" of the chosen grid entry;
    ``correct``: correct guesses among them (one run); ``tpr``/``fpr`` and their CP
    endpoints at the chosen threshold (Clopper–Pearson and GDP); ``mu_lower`` (GDP only);
    ``alpha_per_test`` = alpha / number of grid entries tried.
    """
    method: str
    epsilon_lower: float
    confidence: float
    delta: float
    k_plus: int
    k_minus: int
    grid_size: int
    alpha_per_test: float
    correct: int | None = None
    tpr: float | None = None
    fpr: float | None = None
    tpr_lower: float | None = None
    fpr_upper: float | None = None
    mu_lower: float | None = None
    per_grid: list[dict[str, float]] = field(default_factory=list)


# ----------------------------------------------------------------------------- input checks
def _check(scores, member) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=float).reshape(-1)
    b = np.asarray(member)
    if b.dtype != bool:
        if not np.isin(b, (0, 1)).all():
            raise PrivacyError("audit: member must be 0/1 or boolean")
        b = b.astype(bool)
    b = b.reshape(-1)
    if s.size != b.size:
        raise PrivacyError(f"audit: {s.size} scores but {b.size} membership bits")
    if s.size == 0:
        raise PrivacyError("audit: no canaries")
    if not np.isfinite(s).all():
        raise PrivacyError(f"audit: score of canary {int(np.flatnonzero(~np.isfinite(s))[0])} "
                           "is not finite")
    return s, b


def _check_level(alpha: float, delta: float) -> None:
    if not 0 < alpha < 1:
        raise PrivacyError(f"audit: alpha must be in (0, 1), got {alpha}")
    if not 0 <= delta < 1:
        raise PrivacyError(f"audit: delta must be in [0, 1), got {delta}")


def guess_grid(m: int, fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS
               ) -> list[tuple[int, int]]:
    """``(k+, k−)`` pairs tried, fixed before looking at scores: ``k = max(1, round(f·m))``
    per side, duplicates removed, ``2k <= m``."""
    if m < 2:
        raise PrivacyError(f"audit: need at least 2 canaries, got {m}")
    ks = sorted({min(max(1, int(round(f * m))), m // 2) for f in fractions})
    return [(k, k) for k in ks]


def guesses(scores, k_plus: int, k_minus: int) -> np.ndarray:
    """+1 for the ``k_plus`` highest scores, −1 for the ``k_minus`` lowest, 0 otherwise."""
    s = np.asarray(scores, dtype=float)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > s.size:
        raise PrivacyError(f"audit: cannot make {k_plus}+{k_minus} guesses on {s.size} canaries")
    order = np.argsort(-s, kind="stable")
    g = np.zeros(s.size, dtype=np.int8)
    g[order[:k_plus]] = 1
    if k_minus:
        g[order[s.size - k_minus:]] = -1
    return g


# ---------------------------------------------------------------------------------- one run
def one_run_p_value(epsilon: float, n_guesses: int, n_correct: int, m: int,
                    delta: float = 0.0) -> float:
    """p-value of "(ε, δ)-DP" after ``n_correct`` of ``n_guesses`` guesses on ``m`` canaries.

    See the module docstring for the formula (Steinke et al. 2023, δ term as in the paper).
    """
    r, v = int(n_guesses), int(n_correct)
    if not 0 <= v <= r <= m:
        raise PrivacyError(f"audit: need 0 <= correct ({v}) <= guesses ({r}) <= m ({m})")
    if epsilon < 0:
        raise PrivacyError(f"audit: epsilon must be >= 0, got {epsilon}")
    q = special.expit(epsilon)
    tail = stats.binom.sf(v - 1, r, q)  # P[Bin(r, q) >= v]
    if delta == 0 or v == 0:
        return float(min(1.0, tail))
    # P[v - i <= Bin <= v - 1] for i = 1..v, divided by i; the paper's worst split of δ
    window = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    spread = float(np.max(window / np.arange(1, v + 1)))
    return float(min(1.0, tail + 2 * m * delta * spread))


def one_run_epsilon_lower(n_guesses: int, n_correct: int, m: int, delta: float = 0.0,
                          alpha: float = DEFAULT_ALPHA, tol: float = 1e-6) -> float:
    """Largest ε whose p-value (:func:`one_run_p_value`) is still ``<= alpha``; 0 if none."""
    _check_level(alpha, delta)

    def p(e):
        return one_run_p_value(e, n_guesses, n_correct, m, delta)

    if n_guesses == 0 or p(0.0) > alpha:
        return 0.0
    hi = 1.0
    while p(hi) <= alpha:
        hi *= 2
        if hi > _EPS_CEILING:
            return math.inf
    lo = 0.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p(mid) <= alpha else (lo, mid)
    return lo


def one_run_max_epsilon(n_guesses: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The largest one-run bound ``r`` guesses can give at δ = 0 (all of them correct):
    ``q^r = alpha`` → ``ε = logit(alpha^(1/r))``."""
    q = alpha ** (1.0 / n_guesses)
    return float(math.log(q / (1 - q)))


def one_run_audit(scores, member, delta: float = 0.0, alpha: float = DEFAULT_ALPHA,
                  grid: Sequence[tuple[int, int]] | None = None) -> AuditBound:
    """One-run lower bound on ε (Steinke et al. 2023), best over ``grid`` with Bonferroni.

    Parameters
    ----------
    scores: membership score per canary (higher = more likely trained on).
    member: the inclusion mask (bool / 0-1), same length.
    delta: δ of the null hypothesis (the card's δ; 0 for pure DP).
    alpha: 1 − confidence.
    grid: ``(k+, k−)`` pairs; default :func:`guess_grid` of the number of canaries.

    Returns
    -------
    :class:`AuditBound` with ``method="one_run"``.
    """
    s, b = _check(scores, member)
    _check_level(alpha, delta)
    grid = list(grid) if grid is not None else guess_grid(s.size)
    a = alpha / len(grid)
    best, rows = None, []
    for kp, km in grid:
        g = guesses(s, kp, km)
        correct = int(np.sum((g == 1) & b) + np.sum((g == -1) & ~b))
        eps = one_run_epsilon_lower(kp + km, correct, s.size, delta, a)
        rows.append({"k_plus": kp, "k_minus": km, "correct": correct, "epsilon_lower": eps})
        if best is None or eps > best[0]:
            best = (eps, kp, km, correct)
    eps, kp, km, correct = best
    return AuditBound("one_run", eps, 1 - alpha, delta, kp, km, len(grid), a, correct=correct,
                      per_grid=rows)


# ------------------------------------------------------------------ Clopper–Pearson and GDP
def clopper_pearson(k: int, n: int, alpha: float = DEFAULT_ALPHA) -> tuple[float, float]:
    """Exact two-sided ``1 − alpha`` interval of a binomial proportion ``k / n``."""
    if n <= 0 or not 0 <= k <= n:
        raise PrivacyError(f"audit: Clopper–Pearson needs 0 <= k ({k}) <= n ({n}), n > 0")
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def _threshold_rates(s: np.ndarray, b: np.ndarray, k: int, alpha: float) -> dict[str, float]:
    """TPR/FPR of "member iff among the k highest scores" and their CP endpoints."""
    if b.all() or not b.any():
        raise PrivacyError("audit: need both members and non-members among the canaries")
    called = guesses(s, k, 0) == 1
    tp, fp = int(np.sum(called & b)), int(np.sum(called & ~b))
    n1, n0 = int(b.sum()), int((~b).sum())
    tpr_lo = clopper_pearson(tp, n1, alpha)[0]
    fpr_hi = clopper_pearson(fp, n0, alpha)[1]
    return {"k": k, "tpr": tp / n1, "fpr": fp / n0, "tpr_lower": tpr_lo, "fpr_upper": fpr_hi}


def _log_ratio(num: float, den: float) -> float:
    if num <= 0:
        return 0.0
    return math.inf if den <= 0 else max(0.0, math.log(num / den))


def _threshold_audit(method: str, s, b, delta, alpha, grid, bound_of) -> AuditBound:
    """Best over the thresholds of ``grid`` (k = k+ of each entry) of ``bound_of(rates)``."""
    grid = list(grid) if grid is not None else guess_grid(s.size)
    a = alpha / len(grid)
    best, rows = None, []
    for kp, _ in grid:
        rates = _threshold_rates(s, b, kp, a)
        eps, extra = bound_of(rates)
        rows.append({**rates, **extra, "epsilon_lower": eps})
        if best is None or eps > best[0]:
            best = (eps, rates, extra)
    eps, rates, extra = best
    return AuditBound(method, eps, 1 - alpha, delta, rates["k"], 0, len(grid), a,
                      tpr=rates["tpr"], fpr=rates["fpr"], tpr_lower=rates["tpr_lower"],
                      fpr_upper=rates["fpr_upper"], mu_lower=extra.get("mu_lower"),
                      per_grid=rows)


def clopper_pearson_audit(scores, member, delta: float = 0.0, alpha: float = DEFAULT_ALPHA,
                          grid: Sequence[tuple[int, int]] | None = None) -> AuditBound:
    """ε ≥ max(log((TPR_lo − δ)/FPR_hi), log((1 − FPR_hi − δ)/(1 − TPR_lo))) at the best
    threshold of ``grid`` (Bonferroni); ``method="clopper_pearson"``."""
    s, b = _check(scores, member)
    _check_level(alpha, delta)

    def bound(r):
        t, f = r["tpr_lower"], r["fpr_upper"]
        return max(_log_ratio(t - delta, f), _log_ratio(1 - f - delta, 1 - t)), {}

    return _threshold_audit("clopper_pearson", s, b, delta, alpha, grid, bound)


def gdp_mu_lower(tpr_lower: float, fpr_upper: float) -> float:
    """μ_lo = Φ⁻¹(1 − FPR_hi) − Φ⁻¹(1 − TPR_lo), floored at 0 (inf if FPR_hi = 0, TPR_lo = 1)."""
    mu = stats.norm.isf(fpr_upper) - stats.norm.isf(tpr_lower)
    return float(max(0.0, mu)) if not np.isnan(mu) else math.inf


def gdp_delta(epsilon: float, mu: float) -> float:
    """δ(ε) of μ-GDP: Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (computed in log space)."""
    if mu <= 0:
        return 0.0
    a = stats.norm.logcdf(-epsilon / mu + mu / 2)
    b = epsilon + stats.norm.logcdf(-epsilon / mu - mu / 2)
    return float(np.exp(a) * -np.expm1(b - a)) if b < a else 0.0


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest ε with δ(ε) <= δ for μ-GDP (0 if already δ(0) <= δ)."""
    if not 0 < delta < 1:
        raise PrivacyError(f"audit: GDP → ε needs 0 < delta < 1, got {delta}")
    if math.isinf(mu):
        return math.inf
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while gdp_delta(hi, mu) > delta:
        hi *= 2
    return float(optimize.brentq(lambda e: gdp_delta(e, mu) - delta, 0.0, hi, xtol=1e-10))


def gdp_audit(scores, member, delta: float, alpha: float = DEFAULT_ALPHA,
              grid: Sequence[tuple[int, int]] | None = None) -> AuditBound:
    """μ-GDP lower bound from TPR/FPR (CP endpoints) at the best threshold of ``grid``
    (Bonferroni), converted to ε at ``delta``; ``method="gdp"`` (assumes a Gaussian
    trade-off curve, see module docstring)."""
    s, b = _check(scores, member)
    _check_level(alpha, delta)

    def bound(r):
        mu = gdp_mu_lower(r["tpr_lower"], r["fpr_upper"])
        return gdp_epsilon(mu, delta), {"mu_lower": mu}

    return _threshold_audit("gdp", s, b, delta, alpha, grid, bound)


# ------------------------------------------------------------------- membership-inference AUROC
def mia_auroc(scores, member, attributes: pd.DataFrame | None = None,
              subgroups: Mapping[str, Sequence] | None = None, n_bootstrap: int = 200,
              seed: int = 0) -> pd.DataFrame:
    """AUROC of the membership scores, overall and per subgroup.

    Uses the project's bootstrap metric engine (:func:`dpmed.evaluation.bootstrap_replicates`)
    with label "member" (1 = included in training). 0.5 = no leakage.

    Parameters
    ----------
    attributes: one row per canary with the subgroup columns (e.g. ``sex``, ``age_group``,
        ``density``), aligned with ``scores``.
    subgroups: ``{column: [values]}``; default every value found in each column of
        ``attributes``.

    Returns
    -------
    DataFrame ``subgroup, n, n_member, auroc, std`` (bootstrap std over ``n_bootstrap``
    redraws, NaN when 0), subgroup "all" first.
    """
    from dpmed.evaluation.metrics import bootstrap_replicates

    s, b = _check(scores, member)
    attributes = pd.DataFrame(index=range(s.size)) if attributes is None else attributes
    if len(attributes) != s.size:
        raise PrivacyError(f"audit: {len(attributes)} attribute rows for {s.size} canaries")
    if subgroups is None:
        subgroups = {c: sorted(attributes[c].dropna().astype(str).unique())
                     for c in attributes.columns}
    table = attributes.reset_index(drop=True).copy()
    table["record_id"] = [f"c{i:08d}" for i in range(s.size)]
    table["split"] = "test"
    table["y_member"] = b.astype(np.int64)
    table["score_member"] = s
    rep = bootstrap_replicates(table, ["member"], dict(subgroups), n_bootstrap, seed)
    with warnings.catch_warnings():  # a subgroup without members has no AUROC: NaN, no noise
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(rep.values, axis=-1, ddof=1) if n_bootstrap > 1 else None
    li = rep.labels.index("member")
    rows = []
    for si, sg in enumerate(rep.subgroups):
        est = rep.estimate[li, si]
        rows.append({"subgroup": sg, "n": int(est[rep.metrics.index("n")]),
                     "n_member": int(est[rep.metrics.index("n_positive")]),
                     "auroc": float(est[rep.metrics.index("auroc")]),
                     "std": float(std[li, si, rep.metrics.index("auroc")]) if std is not None
                     else math.nan})
    return pd.DataFrame(rows, columns=["subgroup", "n", "n_member", "auroc", "std"])


# ---------------------------------------------------------------------------------- audit.json
def audit_report(scores, member, card=None, delta: float | None = None,
                 alpha: float = DEFAULT_ALPHA, grid: Sequence[tuple[int, int]] | None = None,
                 attributes: pd.DataFrame | None = None,
                 subgroups: Mapping[str, Sequence] | None = None) -> dict[str, Any]:
    """Every bound, the counts and the card's ε side by side (the content of ``audit.json``).

    ``card``: the model's ``privacy.json`` as a mapping (``epsilon_spent`` or ``epsilon``,
    ``delta``, ``mechanism``) or its :class:`~dpmed.privacy.guarantee.Guarantee`.
    ``delta`` defaults to the card's δ (0 if the card has none, e.g. a non-private model).
    The headline ``epsilon_lower`` is the one-run bound, chosen in advance: each bound holds
    at ``1 − alpha`` on its own, but the largest of several would not without a further
    correction. ``holds``: the headline bound is ≤ the card's ε. The Clopper–Pearson and GDP
    bounds (the latter assumes a Gaussian trade-off curve) are reported beside it.
    """
    s, b = _check(scores, member)
    card = _card_fields(card)
    if delta is None:
        delta = float(card.get("delta") or 0.0)
    grid = list(grid) if grid is not None else guess_grid(s.size)
    bounds = [one_run_audit(s, b, delta, alpha, grid), clopper_pearson_audit(s, b, delta, alpha, grid)]
    if delta > 0:
        bounds.append(gdp_audit(s, b, delta, alpha, grid))
    card_eps = card.get("epsilon_spent", card.get("epsilon"))
    card_eps = float(card_eps) if card_eps is not None else None
    headline = bounds[0].epsilon_lower  # one run, fixed in advance (see docstring)
    mia = mia_auroc(s, b, attributes, subgroups)
    return {
        "schema_version": AUDIT_SCHEMA_VERSION,
        "method": "one-run audit (Steinke, Nasr & Jagielski 2023) + Clopper–Pearson + GDP "
                  "(Nasr et al. 2023)",
        "m": int(s.size), "n_member": int(b.sum()), "confidence": 1 - alpha, "delta": delta,
        "grid": [list(g) for g in grid], "multiple_testing": "Bonferroni over grid",
        "mechanism": card.get("mechanism"), "kind": card.get("kind"), "unit": card.get("unit"),
        "card_epsilon": card_eps,
        "epsilon_lower": headline, "epsilon_lower_method": "one_run",
        "holds": None if card_eps is None else bool(headline <= card_eps),
        "bounds": {x.method: asdict(x) for x in bounds},
        "mia_auroc": mia.to_dict(orient="records"),
    }


def _card_fields(card) -> dict[str, Any]:
    """The fields the audit needs from a card (``privacy.json`` mapping) or a
    :class:`dpmed.privacy.guarantee.Guarantee`."""
    if card is None:
        return {}
    if isinstance(card, Mapping):
        return dict(card)
    return {"mechanism": card.mechanism, "kind": card.kind, "unit": card.unit,
            "epsilon": card.epsilon, "delta": card.delta}


def audit_findings(report: Mapping[str, Any], min_leakage: float = 0.5) -> list[str]:
    """What an audit report says is wrong (empty list: nothing).

    * a model with a finite card ε whose headline (one-run) lower bound exceeds it: the card
      does not hold (an implementation or accounting error, or a 5 % false alarm);
    * a model without guarantee (card ε = ∞ or no card ε) whose bound stays below
      ``min_leakage``: the audit had no power to detect leakage there, so its bounds on the
      private models say little.
    """
    eps_card, low = report.get("card_epsilon"), float(report["epsilon_lower"])
    if eps_card is not None and math.isfinite(eps_card):
        if low > eps_card:
            return [f"audited lower bound ε ≥ {low:.3g} ({report.get('epsilon_lower_method')}) "
                    f"exceeds the card's ε = {eps_card:.3g} at confidence "
                    f"{report.get('confidence')}: the guarantee does not hold as stated"]
        return []
    if low < min_leakage:
        return [f"no guarantee and the audit finds ε ≥ {low:.3g} only (< {min_leakage}): "
                "the canaries were not memorised, the audit has no power here"]
    return []


def write_audit_json(path: str | Path, report: Mapping[str, Any]) -> Path:
    """Write ``report`` atomically as strict JSON (±inf as ``"inf"``/``"-inf"``, NaN as null)."""
    from dpmed.io.atomic import write_text

    text = json.dumps(_jsonable(report), indent=2, allow_nan=False, ensure_ascii=False)
    write_text(text + "\n", path)
    return Path(path)


def read_audit_json(path: str | Path) -> dict[str, Any]:
    """Read an ``audit.json`` back (``"inf"`` → ``float('inf')``)."""
    return _from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def _jsonable(obj):
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return ("inf" if obj > 0 else "-inf") if math.isinf(obj) else obj
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _from_json(obj):
    if obj in ("inf", "-inf"):
        return math.inf if obj == "inf" else -math.inf
    if isinstance(obj, dict):
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj
