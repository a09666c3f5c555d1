"""Tests of the empirical privacy audit (dpmed.privacy.audit) and the canaries (.canary).

Known answers: hand-computed binomial tails, the most a given number of canaries can show,
a Gaussian mechanism calibrated by dp-accounting that must never be caught exceeding its ε,
the same mechanism with too little noise that must be caught, exact intervals and AUROC
against scipy / scikit-learn.
"""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pandas as pd
import pytest
from dp_accounting import pld
from scipy import stats
from sklearn.metrics import roc_auc_score

from dpmed.errors import PrivacyError
from dpmed.privacy import audit as A
from dpmed.privacy import canary as C

EPS, DELTA = 2.0, 1e-5


@pytest.fixture(scope="module")
def sigma() -> float:
    """σ of a sensitivity-1 Gaussian mechanism that is exactly (EPS, DELTA)-DP (dp-accounting)."""
    return float(dpa.calibrate_dp_mechanism(pld.PLDAccountant, dpa.GaussianDpEvent, EPS, DELTA))


def gaussian_canaries(seed: int, m: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a Gaussian mechanism on each canary's inclusion bit: member + N(0, noise²)."""
    rng = np.random.default_rng(seed)
    member = rng.random(m) < 0.5
    return member + noise * rng.normal(size=m), member


# ------------------------------------------------------------------------------- one run
def test_one_run_p_value_is_the_binomial_tail_by_hand():
    r, v, m, eps = 30, 24, 100, 0.7
    q = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(v, r + 1))
    assert A.one_run_p_value(eps, r, v, m) == pytest.approx(tail, rel=1e-10)
    # δ term: 2 m δ max_i P[v - i <= Bin <= v - 1] / i, by a plain loop
    pmf = [math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    spread = max(sum(pmf[v - i:v]) / i for i in range(1, v + 1))
    assert A.one_run_p_value(eps, r, v, m, 1e-4) == pytest.approx(tail + 2 * m * 1e-4 * spread,
                                                                  rel=1e-10)


def test_one_run_bound_is_where_the_p_value_crosses_alpha():
    lo = A.one_run_epsilon_lower(200, 150, 1000, alpha=0.05)
    assert A.one_run_p_value(lo, 200, 150, 1000) <= 0.05 < A.one_run_p_value(lo + 1e-4, 200, 150, 1000)
    assert A.one_run_epsilon_lower(200, 100, 1000) == 0.0  # chance level: no evidence


def test_planted_leakage_reaches_the_most_m_canaries_can_show():
    """σ = 0: score = membership. With a balanced mask every one of the m guesses of the
    largest grid entry is right, and the bound is the hand-computed maximum
    logit((α/G)^(1/m)) for m = 1000, G = 6 grid entries: 5.3394."""
    m = 1000
    member = np.arange(m) % 2 == 0
    bound = A.one_run_audit(member.astype(float), member)
    q = (0.05 / 6) ** (1 / m)
    assert bound.grid_size == 6 and bound.k_plus == bound.k_minus == 500
    assert bound.correct == 1000
    assert bound.epsilon_lower == pytest.approx(math.log(q / (1 - q)), abs=1e-5)
    assert bound.epsilon_lower == pytest.approx(5.3394, abs=1e-4)
    # random (Bernoulli ½) mask, here 493 members: k = 500 per side must make 7 errors, so the
    # best entry is k = 200 per side, 400 guesses all right: logit((α/6)^(1/400)) = 4.4195
    rng = np.random.default_rng(1)
    member = rng.random(m) < 0.5
    assert min(member.sum(), m - member.sum()) < 500
    bound = A.one_run_audit(member.astype(float), member)
    assert (bound.k_plus, bound.correct) == (200, 400)
    assert bound.epsilon_lower == pytest.approx(A.one_run_max_epsilon(400, 0.05 / 6), abs=1e-5)
    assert bound.epsilon_lower == pytest.approx(4.4195, abs=1e-4)
    assert A.clopper_pearson_audit(member.astype(float), member, DELTA).epsilon_lower > 3


def test_a_correct_gaussian_mechanism_is_never_caught(sigma):
    """200 seeded trials, m = 1000. Theory allows the 95 % bounds to exceed ε in up to 5 %
    of trials; we assert 0 exceedances for every bound because they are conservative
    (Bonferroni over the grid, exact intervals): observed maxima are ~1.1 / 0.8 / 1.7 of
    ε = 2, and a regression that made them sharper but wrong would show up here."""
    worst = np.zeros(3)
    for seed in range(200):
        s, b = gaussian_canaries(seed, 1000, sigma)
        bounds = [A.one_run_audit(s, b, DELTA), A.clopper_pearson_audit(s, b, DELTA),
                  A.gdp_audit(s, b, DELTA)]
        worst = np.maximum(worst, [x.epsilon_lower for x in bounds])
    assert (worst <= EPS).all(), worst
    assert worst[0] > 0.5  # and the audit is not vacuous on a mechanism with ε = 2


def test_too_little_noise_is_caught(sigma):
    """σ calibrated for ε = 2 but a quarter of it applied (as if for far fewer steps)."""
    for seed in range(10):
        s, b = gaussian_canaries(seed, 1000, sigma / 4)
        assert A.one_run_audit(s, b, DELTA).epsilon_lower > EPS
        assert A.clopper_pearson_audit(s, b, DELTA).epsilon_lower > EPS
        assert A.gdp_audit(s, b, DELTA).epsilon_lower > EPS


# ----------------------------------------------------------------------- CP and Gaussian DP
@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (137, 500)])
def test_clopper_pearson_matches_scipy(k, n):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    assert A.clopper_pearson(k, n, alpha=0.1) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_clopper_pearson_bound_by_hand():
    member = np.array([1] * 50 + [0] * 50, dtype=bool)
    scores = np.r_[np.arange(50) + 100.0, np.arange(50)]  # members all on top
    scores[0], scores[50] = -1.0, 1000.0                  # one miss each way
    b = A.clopper_pearson_audit(scores, member, 0.0, 0.05, grid=[(25, 25)])
    # top 25: the planted non-member + 24 members
    t_lo = stats.beta.ppf(0.025, 24, 50 - 24 + 1)
    f_hi = stats.beta.ppf(0.975, 2, 50 - 1)
    assert (b.tpr, b.fpr) == (24 / 50, 1 / 50)
    assert b.epsilon_lower == pytest.approx(max(math.log(t_lo / f_hi), math.log((1 - f_hi) / (1 - t_lo))))


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_gdp_epsilon_matches_dp_accounting(mu):
    acc = pld.PLDAccountant(value_discretization_interval=1e-4)
    acc.compose(dpa.GaussianDpEvent(1 / mu))
    assert A.gdp_epsilon(mu, 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=2e-3)
    assert A.gdp_delta(A.gdp_epsilon(mu, 1e-5), mu) == pytest.approx(1e-5, rel=1e-6)


def test_gdp_recovers_mu_of_a_simulated_mechanism():
    """Scores of a μ-GDP mechanism (μ = 1): the lower bound holds and is close; the point
    estimate at the chosen threshold is within sampling error of μ."""
    lows = []
    for seed in range(20):
        s, b = gaussian_canaries(seed, 20000, 1.0)
        g = A.gdp_audit(s, b, DELTA)
        point = stats.norm.isf(g.fpr) - stats.norm.isf(g.tpr)
        assert abs(point - 1.0) < 0.15
        lows.append(g.mu_lower)
    lows = np.array(lows)
    assert (lows <= 1.0).all() and lows.min() > 0.8


def test_mia_auroc_per_subgroup_matches_sklearn():
    rng = np.random.default_rng(3)
    n = 600
    attrs = pd.DataFrame({"sex": rng.choice(["F", "M"], n),
                          "density": rng.choice(["A", "B", "C"], n)})
    member = rng.random(n) < 0.5
    scores = np.round(member * (attrs["sex"] == "F") * 0.8 + rng.normal(size=n), 1)  # ties
    out = A.mia_auroc(scores, member, attrs, n_bootstrap=20).set_index("subgroup")
    assert out.loc["all", "auroc"] == pytest.approx(roc_auc_score(member, scores), abs=1e-12)
    for col in attrs:
        for v in attrs[col].unique():
            sel = (attrs[col] == v).to_numpy()
            assert out.loc[f"{col}={v}", "auroc"] == pytest.approx(
                roc_auc_score(member[sel], scores[sel]), abs=1e-12)
            assert out.loc[f"{col}={v}", "n"] == sel.sum()
    assert out.loc["sex=F", "auroc"] > out.loc["sex=M", "auroc"] + 0.1  # leakage where planted


def test_audit_json_round_trip(tmp_path, sigma):
    s, b = gaussian_canaries(0, 400, sigma)
    card = {"mechanism": "dp-sgd", "epsilon_spent": EPS, "delta": DELTA}
    rep = A.audit_report(s, b, card)
    path = A.write_audit_json(tmp_path / "audit.json", rep)
    back = A.read_audit_json(path)
    assert back["m"] == 400 and back["n_member"] == int(b.sum())
    assert back["card_epsilon"] == EPS and back["delta"] == DELTA and back["holds"] is True
    assert set(back["bounds"]) == {"one_run", "clopper_pearson", "gdp"}
    assert back["epsilon_lower"] == back["bounds"]["one_run"]["epsilon_lower"]  # headline
    assert back["mia_auroc"][0]["subgroup"] == "all"
    assert not list(tmp_path.glob(".*"))  # no temporary left behind
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_non_private_memorisation_is_found_and_flagged(tmp_path):
    """A model that fits its training canaries' flipped labels: the audit finds leakage far
    above 0 and above the card's ε, and says the card does not hold."""
    rng = np.random.default_rng(5)
    m = 500
    y = rng.integers(0, 2, (m, 3))
    member = rng.random(m) < 0.5
    flipped = 1 - y
    # members: the model predicts their flipped labels; non-members: their true labels
    target = np.where(member[:, None], flipped, y)
    prob = np.clip(target * 0.9 + 0.05 + rng.normal(0, 0.02, y.shape), 0, 1)
    scores = C.membership_scores(prob, flipped)
    rep = A.audit_report(scores, member, {"mechanism": "dp-sgd", "epsilon_spent": 1.0,
                                          "delta": 1e-5})
    assert rep["epsilon_lower"] > 3 and rep["holds"] is False
    none = A.audit_report(scores, member, {"mechanism": "none", "epsilon_spent": math.inf})
    assert none["holds"] is True and none["delta"] == 0.0 and "gdp" not in none["bounds"]


def test_bad_input_is_refused():
    with pytest.raises(PrivacyError, match="3 scores but 2"):
        A.one_run_audit([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(PrivacyError, match="not finite"):
        A.one_run_audit([0.1, np.nan], [1, 0])
    with pytest.raises(PrivacyError, match="members and non-members"):
        A.clopper_pearson_audit([0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1])


# ----------------------------------------------------------------------------- canaries
def test_canaries_are_seeded_by_the_config_seed():
    ids = [f"R{i:04d}" for i in range(300)]
    a = C.choose_canaries(ids, 40, seed=7)
    assert np.array_equal(a, C.choose_canaries(ids[::-1], 40, seed=7))  # order-free
    assert not np.array_equal(a, C.choose_canaries(ids, 40, seed=8))
    assert len(set(a)) == 40 and set(a) <= set(ids)
    with pytest.raises(PrivacyError, match="m = 301"):
        C.choose_canaries(ids, 301, seed=0)


def test_inclusion_mask_needs_the_private_key(tmp_path):
    ids = C.choose_canaries([f"R{i:05d}" for i in range(5000)], 2000, seed=0)
    key = C.audit_key(tmp_path / "private")
    assert (tmp_path / "private" / "audit.key").stat().st_mode & 0o077 == 0
    mask = C.inclusion_mask(key, ids, seed=0)
    assert np.array_equal(mask, C.inclusion_mask(C.audit_key(tmp_path / "private"), ids, 0))
    # fair coins: a two-sided binomial test at 1e-3 and no relation to position
    assert stats.binomtest(int(mask.sum()), mask.size).pvalue > 1e-3
    assert abs(np.corrcoef(mask, np.arange(mask.size))[0, 1]) < 0.1
    # not derivable from the public seed: another key gives an unrelated mask
    other = C.inclusion_mask(C.audit_key(tmp_path / "elsewhere"), ids, seed=0)
    assert 0.45 < np.mean(mask == other) < 0.55
    path = C.write_mask(tmp_path / "private" / "audit" / "mask.parquet", ids, mask)
    back_ids, back_mask = C.read_mask(path)
    assert np.array_equal(back_ids, ids) and np.array_equal(back_mask, mask)


def test_canary_training_labels_flip_members_and_drop_the_rest():
    rid = np.array(["a", "b", "c", "d", "e"])
    y = np.array([[0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    keep, y2 = C.canary_training_labels(rid, y, ["b", "d", "e"], [True, False, True])
    assert keep.tolist() == [True, True, True, False, True]
    assert y2.tolist() == [[0, 1], [0, 0], [0, 0], [1, 0], [1, 0]]
    assert y.tolist()[1] == [1, 1]  # input untouched
    with pytest.raises(PrivacyError, match="record z"):
        C.canary_training_labels(rid, y, ["z"], [True])


def test_membership_score_is_minus_the_cross_entropy():
    p = np.array([[0.9, 0.2], [0.5, 0.5], [1.0, 0.0]])
    yf = np.array([[1, 0], [0, 1], [0, 1]])
    expect = [math.log(0.9) + math.log(0.8), 2 * math.log(0.5), 2 * math.log(1e-7)]
    assert C.membership_scores(p, yf) == pytest.approx(expect, rel=1e-6)


def test_one_run_p_value_grows_with_epsilon():
    """The bisection of one_run_epsilon_lower assumes it (the δ term is not obviously so)."""
    eps = np.linspace(0, 8, 161)
    for m, r, v, delta in [(1000, 100, 80, 1e-5), (1000, 1000, 700, 1e-3), (100, 50, 50, 1e-2),
                           (5000, 500, 300, 1e-5)]:
        p = [A.one_run_p_value(e, r, v, m, delta) for e in eps]
        assert (np.diff(p) >= -1e-15).all()


def test_end_to_end_memorising_model_is_caught(tmp_path):
    """Real canaries through a real learner: an over-parameterised, barely regularised
    logistic regression (2,000 features, 600 records) memorises the flipped labels of the
    canaries it was trained on; the audit of its predictions finds leakage far above 0."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(11)
    n, d = 600, 2000
    ids = np.array([f"R{i:04d}" for i in range(n)])
    x = rng.normal(size=(n, d))
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)[:, None]
    canaries = C.choose_canaries(ids, 200, seed=0)
    member = C.inclusion_mask(C.audit_key(tmp_path / "private"), canaries, seed=0)
    keep, y_train = C.canary_training_labels(ids, y, canaries, member)
    clf = LogisticRegression(C=1e4, max_iter=2000).fit(x[keep], y_train[keep, 0])
    pred = pd.DataFrame({"record_id": ids, "y_finding": y[:, 0],
                         "score_finding": clf.predict_proba(x)[:, 1]})
    scores = C.canary_scores(pred, ["finding"], canaries)
    rep = A.audit_report(scores, member, {"mechanism": "none", "epsilon_spent": math.inf})
    assert rep["mia_auroc"][0]["auroc"] > 0.95
    assert rep["epsilon_lower"] > 2.0 and rep["holds"] is True  # ε = ∞ is never contradicted
    with pytest.raises(PrivacyError, match="not scored"):
        C.canary_scores(pred.iloc[1:], ["finding"], ids[:3])


def test_audit_summary_table(tmp_path, sigma):
    from dpmed.reporting.audit import AUDIT_COLUMNS, write_audit_summary

    rng = np.random.default_rng(2)
    attrs = pd.DataFrame({"sex": rng.choice(["F", "M"], 400)})
    reports = []
    for eps, noise in ((EPS, sigma), (math.inf, 0.05)):
        s, b = gaussian_canaries(int(eps if math.isfinite(eps) else 9), 400, noise)
        card = {"mechanism": "dp-sgd" if math.isfinite(eps) else "none", "epsilon_spent": eps,
                "delta": DELTA if math.isfinite(eps) else None}
        rep = A.read_audit_json(A.write_audit_json(
            tmp_path / f"{eps}.json", A.audit_report(s, b, card, attributes=attrs)))
        reports.append(({"dataset": "cxr", "method": "dpsgd", "epsilon": eps, "seed": 0}, rep))
    csv, md = write_audit_summary(reports[::-1], tmp_path)
    table = pd.read_csv(csv)
    assert list(table.columns) == AUDIT_COLUMNS and list(table["epsilon"]) == [EPS, math.inf]
    assert table["holds"].tolist() == [True, True]
    private, nonprivate = table.iloc[0], table.iloc[1]
    assert private["one_run"] == reports[0][1]["bounds"]["one_run"]["epsilon_lower"]
    assert nonprivate["epsilon_lower"] > 3 > private["epsilon_lower"]
    mia = pd.DataFrame(reports[0][1]["mia_auroc"]).set_index("subgroup")["auroc"]
    assert private["mia_auroc_max"] == mia.drop("all").max()
    assert private["mia_auroc_max_subgroup"] == mia.drop("all").idxmax()
    text = md.read_text()
    assert text.startswith("| method | ε |") and "| ∞ |" in text and "yes" in text


def test_audit_findings_flag_broken_cards_and_powerless_audits(sigma):
    s, b = gaussian_canaries(0, 1000, sigma / 4)  # too little noise for ε = 2
    broken = A.audit_report(s, b, {"mechanism": "dp-sgd", "epsilon_spent": EPS, "delta": DELTA})
    assert broken["holds"] is False
    assert broken["epsilon_lower_method"] == "one_run"
    assert "exceeds the card's ε = 2" in A.audit_findings(broken)[0]
    s, b = gaussian_canaries(0, 1000, sigma)
    assert A.audit_findings(A.audit_report(s, b, {"epsilon_spent": EPS, "delta": DELTA})) == []
    s, b = gaussian_canaries(0, 1000, 100.0)  # a "non-private" model that memorised nothing
    weak = A.audit_report(s, b, {"mechanism": "none", "epsilon_spent": math.inf})
    assert "no power" in A.audit_findings(weak)[0]


def test_audit_report_takes_a_guarantee(sigma):
    from dpmed.privacy.guarantee import Guarantee

    fields = Guarantee.__dataclass_fields__
    kw = {"kind": "central", "unit": "record", "epsilon": EPS, "delta": DELTA,
          "mechanism": "dp-sgd"}
    g = Guarantee(**{k: v for k, v in kw.items() if k in fields})
    s, b = gaussian_canaries(1, 400, sigma)
    rep = A.audit_report(s, b, g)
    assert (rep["card_epsilon"], rep["delta"], rep["kind"], rep["unit"]) == (EPS, DELTA, "central", "record")
