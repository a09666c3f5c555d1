"""Tests of dpmed.evaluation: fast bootstrap metrics vs scikit-learn, fairness, DeLong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from dpmed.evaluation import (OUTPUT_COLUMNS, EvaluationError, bootstrap_indices,
                              bootstrap_replicates, compare_models, correlations, delong_test,
                              evaluate_model, paired_bootstrap_p, render_markdown, table1,
                              table1_markdown, youden_threshold)

SPEC = {"sex": ["F", "M"], "age_group": ["Q1", "Q2", "Q3"]}


def random_table(seed: int, n: int = 400, labels=("a", "b"), decimals: int | None = 2,
                 prevalence=(0.2, 0.05)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "record_id": [f"r{i:05d}" for i in rng.permutation(n)],
        "split": np.where(rng.random(n) < 0.3, "val", "test"),
        "sex": rng.choice(["F", "M"], n),
        "age": rng.uniform(20, 90, n),
    })
    df["age_group"] = pd.qcut(df["age"], 3, labels=["Q1", "Q2", "Q3"]).astype(str)
    for lb, prev in zip(labels, prevalence):
        y = (rng.random(n) < prev).astype(np.int64)
        s = 1 / (1 + np.exp(-(1.5 * y + rng.normal(size=n))))
        df[f"y_{lb}"] = y
        df[f"score_{lb}"] = np.round(s, decimals) if decimals is not None else s
    return df


def sorted_test(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["split"] == "test"].sort_values("record_id").reset_index(drop=True)


# ------------------------------------------------------------------ equality with sklearn
@pytest.mark.parametrize("seed,decimals", [(0, 1), (1, 2), (2, 3), (3, None)])
def test_auroc_auprc_equal_sklearn_on_same_redraws(seed, decimals):
    labels = ["a", "b"]
    df = random_table(seed, decimals=decimals)
    B = 25
    rep = bootstrap_replicates(df, labels, SPEC, n_bootstrap=B, seed=seed)
    test = sorted_test(df)
    idx = bootstrap_indices(len(test), B, seed)
    checked = 0
    for lb in labels:
        y_all = test[f"y_{lb}"].to_numpy()
        s_all = test[f"score_{lb}"].to_numpy()
        for si, sg in enumerate(rep.subgroups):
            mask = rep.masks[si]
            auroc = rep.get(lb, sg, "auroc")
            auprc = rep.get(lb, sg, "auprc")
            for b in range(B):
                ii = idx[b][mask[idx[b]]]
                y, s = y_all[ii], s_all[ii]
                if 0 < y.sum() < y.size:
                    assert abs(auroc[b] - roc_auc_score(y, s)) < 1e-12
                    assert abs(auprc[b] - average_precision_score(y, s)) < 1e-12
                    checked += 1
                else:
                    assert np.isnan(auroc[b])
            # point estimate on the full (sub)set
            y, s = y_all[mask], s_all[mask]
            li, si_, mi = rep.labels.index(lb), si, rep.metrics.index("auroc")
            assert abs(rep.estimate[li, si_, mi] - roc_auc_score(y, s)) < 1e-12
            mi = rep.metrics.index("auprc")
            assert abs(rep.estimate[li, si_, mi] - average_precision_score(y, s)) < 1e-12
    assert checked > 100


def test_thresholded_metrics_equal_direct_counts():
    df = random_table(5, decimals=2)
    rep = bootstrap_replicates(df, ["a"], SPEC, n_bootstrap=10, seed=1)
    test = sorted_test(df)
    idx = bootstrap_indices(len(test), 10, 1)
    thr = rep.thresholds["a"]
    for si, sg in enumerate(rep.subgroups):
        for b in range(10):
            ii = idx[b][rep.masks[si][idx[b]]]
            y = test["y_a"].to_numpy()[ii]
            pred = test["score_a"].to_numpy()[ii] >= thr
            assert rep.get("a", sg, "accuracy")[b] == pytest.approx(np.mean(pred == y), abs=1e-12)
            if y.sum():
                sens = np.mean(pred[y == 1])
                assert rep.get("a", sg, "sensitivity")[b] == pytest.approx(sens, abs=1e-12)
                assert rep.get("a", sg, "underdiagnosis_rate")[b] == pytest.approx(1 - sens, abs=1e-12)
            if (1 - y).sum():
                spec = np.mean(~pred[y == 0])
                assert rep.get("a", sg, "specificity")[b] == pytest.approx(spec, abs=1e-12)
            assert rep.get("a", sg, "n")[b] == y.size
            assert rep.get("a", sg, "n_positive")[b] == y.sum()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_threshold_is_argmax_of_roc_curve_on_val(seed):
    df = random_table(seed, decimals=2)
    val = df[df["split"] == "val"]
    y, s = val["y_a"].to_numpy(), val["score_a"].to_numpy()
    for drop in (True, False):
        fpr, tpr, thr = roc_curve(y, s, drop_intermediate=drop)
        assert youden_threshold(y, s) == thr[np.argmax(tpr - fpr)]
    out = evaluate_model(df, ["a"], SPEC, n_bootstrap=5)
    row = out[(out.label == "a") & (out.metric == "threshold")]
    assert len(row) == 1 and row["estimate"].iloc[0] == youden_threshold(y, s)
    # ties in J -> first maximum = highest threshold: an uninformative score gives the
    # "inf" point (J = 0 there and at 0.3), i.e. everything is called negative.
    assert youden_threshold(np.array([0, 1]), np.array([0.3, 0.3])) == np.inf
    assert youden_threshold(np.array([0, 1, 1]), np.array([0.2, 0.4, 0.8])) == 0.4
    assert np.isnan(youden_threshold(np.array([0, 0]), np.array([0.1, 0.2])))


# ------------------------------------------------------------------ hand-computed fairness
def hand_table() -> pd.DataFrame:
    # val: y = 0,0,1,1 with scores .1,.2,.5,.9 -> Youden threshold 0.5 (TPR 1, FPR 0);
    # a record is called positive iff score >= 0.5.
    val = pd.DataFrame({"record_id": ["v1", "v2", "v3", "v4"], "split": "val",
                        "sex": ["F", "M", "F", "M"], "age_group": ["A", "B", "C", "A"],
                        "y_x": [0, 0, 1, 1], "score_x": [0.1, 0.2, 0.5, 0.9]})
    # test (outcome at threshold 0.5):
    #   t01 F A y1 .80 TP | t02 F A y1 .30 FN | t03 F B y0 .20 TN | t04 F B y0 .60 FP
    #   t05 M A y1 .90 TP | t06 M B y1 .70 TP | t07 M B y1 .10 FN
    #   t08 M C y0 .40 TN | t09 M C y0 .30 TN | t10 M C y0 .45 TN
    test = pd.DataFrame({
        "record_id": [f"t{i:02d}" for i in range(1, 11)], "split": "test",
        "sex": list("FFFFMMMMMM"), "age_group": list("AABBABBCCC"),
        "y_x": [1, 1, 0, 0, 1, 1, 1, 0, 0, 0],
        "score_x": [0.8, 0.3, 0.2, 0.6, 0.9, 0.7, 0.1, 0.4, 0.3, 0.45]})
    return pd.concat([val, test], ignore_index=True)


def test_parity_difference_and_underdiagnosis_hand_computed():
    # Accuracy: F = {TP, FN, TN, FP} = 2/4 = 1/2; M = {TP, TP, FN, TN, TN, TN} = 5/6.
    #   PD(sex=F) = 1/2 - 5/6 = -1/3;  PD(sex=M) = +1/3.
    # Age: A = {t01 TP, t02 FN, t05 TP} acc 2/3; B = {t03 TN, t04 FP, t06 TP, t07 FN} acc 1/2;
    #   C = {t08, t09, t10 all TN} acc 1.
    #   PD(A) = 2/3 - (4 * 1/2 + 3 * 1) / 7 = 2/3 - 5/7 = -1/21
    #   PD(B) = 1/2 - (3 * 2/3 + 3 * 1) / 6 = 1/2 - 5/6 = -1/3
    #   PD(C) = 1   - (3 * 2/3 + 4 * 1/2) / 7 = 1 - 4/7 = 3/7
    # Underdiagnosis (FN / positives): all 2/5 (t02, t07 of t01,t02,t05,t06,t07);
    #   F 1/2; M 1/3; A 1/3; B 1/2; C has no positives -> NaN.
    spec = {"sex": ["F", "M"], "age_group": ["A", "B", "C"]}
    out = evaluate_model(hand_table(), ["x"], spec, n_bootstrap=20, seed=3)
    est = out[out.label == "x"].set_index(["subgroup", "metric"])["estimate"]
    assert est["all", "threshold"] == 0.5
    expected_pd = {"sex=F": -1 / 3, "sex=M": 1 / 3, "age_group=A": -1 / 21,
                   "age_group=B": -1 / 3, "age_group=C": 3 / 7}
    for sg, v in expected_pd.items():
        assert est[sg, "parity_difference"] == pytest.approx(v, abs=1e-12)
    expected_ud = {"all": 2 / 5, "sex=F": 1 / 2, "sex=M": 1 / 3, "age_group=A": 1 / 3,
                   "age_group=B": 1 / 2}
    for sg, v in expected_ud.items():
        assert est[sg, "underdiagnosis_rate"] == pytest.approx(v, abs=1e-12)
    assert est["sex=F", "accuracy"] == pytest.approx(0.5)
    assert est["all", "n"] == 10 and est["all", "n_positive"] == 5
    assert "parity_difference" not in est.loc["all"].index
    # Subgroup C has no positives: NaN and every redraw counted as missing, no exception.
    c = out[(out.label == "x") & (out.subgroup == "age_group=C")].set_index("metric")
    for m in ("auroc", "auprc", "sensitivity", "underdiagnosis_rate", "balanced_accuracy"):
        assert np.isnan(c.loc[m, "estimate"]) and np.isnan(c.loc[m, "mean"])
        assert c.loc[m, "n_missing"] == 20
    assert c.loc["specificity", "estimate"] == 1.0  # negatives exist: specificity is defined
    assert list(out.columns) == OUTPUT_COLUMNS


def test_zero_positive_redraws_are_nan_and_counted():
    # label "rare" has 3 positives in the test split: many redraws of small subgroups have none
    df = random_table(7, n=300, labels=("common", "rare"), prevalence=(0.3, 0.0))
    test_ids = df.index[df["split"] == "test"][:3]
    df.loc[test_ids, "y_rare"] = 1
    df.loc[df.index[df["split"] == "val"][:3], "y_rare"] = 1
    B = 60
    rep = bootstrap_replicates(df, ["common", "rare"], SPEC, n_bootstrap=B, seed=0)
    out = evaluate_model(df, ["common", "rare"], SPEC, n_bootstrap=B, seed=0)
    r = out[(out.label == "rare") & (out.metric == "auroc")].set_index("subgroup")
    assert (r["n_missing"] > 0).all()
    assert r["n_missing"].max() <= B
    miss = np.isnan(rep.get("rare", "all", "auroc"))
    assert miss.sum() == r.loc["all", "n_missing"] and 0 < miss.sum() < B
    # label mean averages the defined labels only
    common = rep.get("common", "all", "auroc")
    rare = rep.get("rare", "all", "auroc")
    mean = rep.get("mean", "all", "auroc")
    np.testing.assert_allclose(mean[miss], common[miss])
    np.testing.assert_allclose(mean[~miss], (common[~miss] + rare[~miss]) / 2)
    # a subgroup whose members are all negative: every redraw missing, estimate NaN
    df2 = df.copy()
    df2.loc[df2["sex"] == "F", "y_common"] = 0
    out2 = evaluate_model(df2, ["common"], SPEC, n_bootstrap=10)
    f = out2[(out2.label == "common") & (out2.subgroup == "sex=F") & (out2.metric == "auroc")]
    assert np.isnan(f["estimate"].iloc[0]) and f["n_missing"].iloc[0] == 10


# ------------------------------------------------------------------ pairing of redraws
def test_same_seed_same_records_give_identical_redraws():
    df1 = random_table(11, decimals=2)
    rng = np.random.default_rng(0)
    df2 = df1.sample(frac=1.0, random_state=4).reset_index(drop=True)  # other row order
    df2["score_a"] = rng.random(len(df2))  # another model: other scores
    df2["score_b"] = rng.random(len(df2))
    r1 = bootstrap_replicates(df1, ["a", "b"], SPEC, n_bootstrap=30, seed=9)
    r2 = bootstrap_replicates(df2, ["a", "b"], SPEC, n_bootstrap=30, seed=9)
    assert np.array_equal(r1.record_ids, r2.record_ids)
    for sg in r1.subgroups:  # same multiset of records per redraw -> same N and positives
        for m in ("n", "n_positive"):
            np.testing.assert_array_equal(r1.get("a", sg, m), r2.get("a", sg, m))
    # indices depend only on (seed, n), not on chunking
    full = bootstrap_indices(50, 10, seed=2)
    np.testing.assert_array_equal(full[4:7], bootstrap_indices(50, 10, seed=2, start=4, stop=7))
    assert not np.array_equal(full, bootstrap_indices(50, 10, seed=3))
    r3 = bootstrap_replicates(df1, ["a", "b"], SPEC, n_bootstrap=30, seed=9, memory_budget=1)
    np.testing.assert_array_equal(r1.values, r3.values)


# ------------------------------------------------------------------ DeLong & paired bootstrap
def delong_reference(y, s1, s2):
    """Plain O(n^2) DeLong from the structural components (DeLong et al. 1988)."""
    y = np.asarray(y).astype(bool)
    comps10, comps01, aucs = [], [], []
    for s in (s1, s2):
        x, z = s[y], s[~y]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        aucs.append(psi.mean())
        comps10.append(psi.mean(axis=1))  # one per positive
        comps01.append(psi.mean(axis=0))  # one per negative
    m, n = y.sum(), (~y).sum()
    s10 = np.cov(np.array(comps10))
    s01 = np.cov(np.array(comps01))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    zstat = (aucs[0] - aucs[1]) / np.sqrt(var)
    from scipy.stats import norm
    return aucs[0], aucs[1], 2 * norm.sf(abs(zstat))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_quadratic_reference(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.random(n) < 0.3
    s1 = np.round(y * 1.0 + rng.normal(size=n), 1)  # ties
    s2 = np.round(s1 * 0.5 + rng.normal(size=n), 1)
    a1, a2, p = delong_reference(y, s1, s2)
    res = delong_test(y, s1, s2)
    assert res.auc1 == pytest.approx(a1, abs=1e-12)
    assert res.auc1 == pytest.approx(roc_auc_score(y, s1), abs=1e-12)
    assert res.auc2 == pytest.approx(a2, abs=1e-12)
    assert res.p_value == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert delong_test(y, s1, s1).p_value == 1.0
    assert np.isnan(delong_test(np.zeros(5), s1[:5], s2[:5]).p_value)


def test_paired_bootstrap_p_and_compare_models():
    assert paired_bootstrap_p([0.7, 0.8, np.nan, 0.9], [0.8, 0.7, 0.5, 0.9]) == (2 / 3, 3)
    df = random_table(21, n=600, decimals=2)
    worse = df.copy()
    rng = np.random.default_rng(1)
    worse["score_a"] = np.round(worse["score_a"] + rng.normal(0, 0.3, len(df)), 2)
    cmp = compare_models(worse, df, ["a", "b"], SPEC, n_bootstrap=50, seed=0)
    row = cmp[(cmp.label == "a") & (cmp.subgroup == "all")].iloc[0]
    assert row.auroc_difference < 0 and row.bootstrap_p_private_worse < 0.05 and row.n_paired == 50
    assert row.delong_p_two_sided < 0.05 and row.delong_p_private_worse < 0.025
    same = cmp[(cmp.label == "b")]  # unchanged label: private == non-private on every redraw
    assert (same.bootstrap_p_private_worse[same.n_paired > 0] == 1.0).all()
    other = random_table(22, n=600)
    with pytest.raises(EvaluationError):
        compare_models(other, df, ["a"], SPEC, n_bootstrap=5)


# ------------------------------------------------------------------ aggregation
def test_table1_correlations_and_markdown():
    base = random_table(30, n=500, labels=("a", "b", "c"), prevalence=(0.3, 0.2, 0.1))
    rng = np.random.default_rng(0)
    frames = []
    for eps, noise in [(1.0, 1.5), (4.0, 0.8), (8.0, 0.4), (np.inf, 0.1)]:
        d = base.copy()
        for lb in "abc":
            d[f"score_{lb}"] = np.round(d[f"y_{lb}"] + rng.normal(0, noise, len(d)), 2)
        o = evaluate_model(d, ["a", "b", "c"], SPEC, n_bootstrap=20)
        o["epsilon"], o["dataset"] = eps, "toy"
        frames.append(o)
    m = pd.concat(frames, ignore_index=True)
    t = table1(m)
    assert list(t.index) == [1.0, 4.0, 8.0, np.inf]
    assert ("total", "AUROC μ") in t.columns and ("sex=F", "PD σ") in t.columns
    assert t[("total", "AUROC μ")].is_monotonic_increasing
    assert t.loc[np.inf, ("total", "N")] == (base.split == "test").sum()
    md = table1_markdown(t)
    assert md.startswith("| ε | total AUROC |") and "| ∞ |" in md
    assert render_markdown(pd.DataFrame({"x": [1.5, np.nan]})).splitlines()[2] == "| 0 | 1.5 |"
    c = correlations(m)
    assert set(c.analysis) >= {"auroc_vs_n_positive", "auroc_drop_vs_n_positive",
                               "auroc_drop_vs_nonprivate_auroc", "parity_difference_vs_epsilon"}
    drop = c[c.analysis == "auroc_drop_vs_n_positive"].iloc[0]
    assert drop.n_points == 9 and -1 <= drop.r <= 1
