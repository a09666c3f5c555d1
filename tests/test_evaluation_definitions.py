"""The evaluation as the studies define it, recomputed independently from predictions tables.

Each number dpmed writes is recomputed here with scikit-learn / scipy / numpy on the raw
predictions (redraws re-derived from their documented definition): the paired-bootstrap and
DeLong p-values (both one-sided "private worse", DeLong also two-sided), "p < 1/B", Table 1
with the spread over seeds (CT in the study) and over redraws (CXR), and AUROC vs the
number of *training* positives per label.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, pearsonr
from sklearn.metrics import roc_auc_score, roc_curve

from dpmed.evaluation import (compare_models, correlations, evaluate_model, format_bootstrap_p,
                              positives_per_label, table1, table1_markdown)
from dpmed.reporting import plots, write_summary

LABELS = ["a", "b"]
SPEC = {"sex": ["F", "M"]}


def cohort(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"record_id": [f"r{i:04d}" for i in rng.permutation(n)],
                       "split": np.where(np.arange(n) % 3 == 0, "val", "test"),
                       "sex": rng.choice(["F", "M"], n)})
    for lb, prev in zip(LABELS, (0.3, 0.15)):
        df[f"y_{lb}"] = (rng.random(n) < prev).astype(np.int64)
    return df


def model(base: pd.DataFrame, strength: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    d = base.copy()
    for lb in LABELS:
        d[f"score_{lb}"] = np.round(strength * d[f"y_{lb}"] + rng.normal(size=len(d)), 2)
    return d


def test_test_redraw(n: int, seed: int, b: int) -> np.ndarray:
    """Redraw b as documented in dpmed.evaluation.bootstrap: generator seeded (seed, b)."""
    return np.random.default_rng([seed, b]).integers(0, n, size=n)


test_test_redraw.__test__ = False  # a helper, not a test


def delong_quadratic(y, s1, s2) -> tuple[float, float]:
    """z and variance of AUC1 − AUC2 from the O(n²) structural components (DeLong 1988)."""
    y = np.asarray(y, dtype=bool)
    v10, v01, auc = [], [], []
    for s in (s1, s2):
        psi = (s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :])
        auc.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    c10, c01 = np.cov(np.array(v10)), np.cov(np.array(v01))
    var = (c10[0, 0] + c10[1, 1] - 2 * c10[0, 1]) / y.sum() \
        + (c01[0, 0] + c01[1, 1] - 2 * c01[0, 1]) / (~y).sum()
    return (auc[0] - auc[1]) / math.sqrt(var), var


def test_comparison_p_values_recomputed_from_predictions():
    base = cohort()
    private, nonprivate = model(base, 0.5, 1), model(base, 2.0, 2)
    B, seed = 120, 3
    cmp = compare_models(private, nonprivate, LABELS, SPEC, n_bootstrap=B, seed=seed)
    tp = private[private.split == "test"].sort_values("record_id").reset_index(drop=True)
    tn = nonprivate.set_index("record_id").loc[tp["record_id"]].reset_index()
    for lb in LABELS:
        for sg, mask in (("all", np.ones(len(tp), bool)), ("sex=F", (tp.sex == "F").to_numpy())):
            y = tp[f"y_{lb}"].to_numpy()
            a, r = tp[f"score_{lb}"].to_numpy(), tn[f"score_{lb}"].to_numpy()
            wins = []
            for b in range(B):
                ii = test_test_redraw(len(tp), seed, b)
                ii = ii[mask[ii]]
                if 0 < y[ii].sum() < ii.size:
                    wins.append(roc_auc_score(y[ii], a[ii]) >= roc_auc_score(y[ii], r[ii]))
            row = cmp[(cmp.label == lb) & (cmp.subgroup == sg)].iloc[0]
            assert row.n_paired == len(wins)
            assert row.bootstrap_p_private_worse == np.mean(wins)
            z, _ = delong_quadratic(y[mask], a[mask], r[mask])
            assert row.delong_z == pytest.approx(z, rel=1e-9)
            assert row.delong_p_private_worse == pytest.approx(norm.cdf(z), rel=1e-9)
            assert row.delong_p_two_sided == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
            assert row.auroc_difference == pytest.approx(
                roc_auc_score(y[mask], a[mask]) - roc_auc_score(y[mask], r[mask]), abs=1e-12)
    # same direction: the private model is worse → both one-sided p small, and p = 0 → "< 1/B"
    row = cmp[(cmp.label == "a") & (cmp.subgroup == "all")].iloc[0]
    assert row.delong_p_private_worse < 0.01 and row.bootstrap_p_private_worse == 0.0
    assert row.bootstrap_p_private_worse_text == f"< {1 / B:.3g}" == "< 0.00833"
    # swapped roles: the one-sided p of the (better) "private" model is near 1
    swapped = compare_models(nonprivate, private, LABELS, SPEC, n_bootstrap=B, seed=seed)
    row = swapped[(swapped.label == "a") & (swapped.subgroup == "all")].iloc[0]
    assert row.delong_p_private_worse > 0.99 and row.bootstrap_p_private_worse == 1.0


def test_format_bootstrap_p():
    assert format_bootstrap_p(0.0, 1000) == "< 0.001"
    assert format_bootstrap_p(0.0123, 1000) == "0.0123"
    assert format_bootstrap_p(float("nan"), 0) == ""


def label_mean_by_hand(pred: pd.DataFrame, sex: str | None = None) -> tuple[float, float]:
    """Label-mean AUROC and parity difference (F − M, Youden threshold on val) of one model."""
    val, test = pred[pred.split == "val"], pred[pred.split == "test"]
    aurocs, pds = [], []
    for lb in LABELS:
        fpr, tpr, thr = roc_curve(val[f"y_{lb}"], val[f"score_{lb}"])
        t = thr[np.argmax(tpr - fpr)]
        sel = test if sex is None else test[test.sex == sex]
        aurocs.append(roc_auc_score(sel[f"y_{lb}"], sel[f"score_{lb}"]))
        correct = (test[f"score_{lb}"] >= t).astype(int) == test[f"y_{lb}"]
        pds.append(correct[test.sex == "F"].mean() - correct[test.sex == "M"].mean())
    return float(np.mean(aurocs)), float(np.mean(pds))


@pytest.fixture(scope="module")
def seeds_table():
    base = cohort(seed=4)
    frames, hand = [], {}
    for eps, strength, seeds in ((1.0, 0.7, (0, 1, 2)), (math.inf, 1.5, (0,))):
        for s in seeds:
            pred = model(base, strength, 10 * s + int(strength * 10))
            m = evaluate_model(pred, LABELS, SPEC, n_bootstrap=40, seed=0)
            frames.append(m.assign(epsilon=eps, seed=s, dataset="ct", method="dpsgd"))
            hand[(eps, s)] = (label_mean_by_hand(pred), label_mean_by_hand(pred, "F"))
    return pd.concat(frames, ignore_index=True), hand


def test_table1_spread_over_seeds_recomputed(seeds_table):
    metrics, hand = seeds_table
    t = table1(metrics, spread="seeds")
    auroc = [hand[(1.0, s)][0][0] for s in range(3)]
    auroc_f = [hand[(1.0, s)][1][0] for s in range(3)]
    pd_f = [hand[(1.0, s)][0][1] for s in range(3)]
    assert t.loc[1.0, ("total", "AUROC μ")] == pytest.approx(np.mean(auroc), abs=1e-12)
    assert t.loc[1.0, ("total", "AUROC σ")] == pytest.approx(np.std(auroc, ddof=1), abs=1e-12)
    assert t.loc[1.0, ("sex=F", "AUROC μ")] == pytest.approx(np.mean(auroc_f), abs=1e-12)
    assert t.loc[1.0, ("sex=F", "PD μ")] == pytest.approx(np.mean(pd_f), abs=1e-12)
    assert t.loc[1.0, ("sex=F", "PD σ")] == pytest.approx(np.std(pd_f, ddof=1), abs=1e-12)
    # one seed at ε = ∞: the row falls back to the bootstrap and says so
    boot = metrics[(metrics.epsilon == math.inf) & (metrics.label == "mean")
                   & (metrics.subgroup == "all") & (metrics.metric == "auroc")].iloc[0]
    assert t.loc[math.inf, ("total", "AUROC σ")] == boot["std"]
    assert list(t[("σ", "kind")]) == ["std over 3 seeds", "bootstrap std"]
    md = table1_markdown(t)
    assert "± is" in md.splitlines()[0] and "std over 3 seeds" in md


def test_table1_bootstrap_spread_is_the_mean_of_bootstrap_stds(seeds_table):
    metrics, _ = seeds_table
    t = table1(metrics)  # default: the bootstrap, as before
    sel = metrics[(metrics.epsilon == 1.0) & (metrics.label == "mean")
                  & (metrics.subgroup == "all") & (metrics.metric == "auroc")]
    assert t.loc[1.0, ("total", "AUROC μ")] == pytest.approx(sel["mean"].mean(), abs=1e-15)
    assert t.loc[1.0, ("total", "AUROC σ")] == pytest.approx(sel["std"].mean(), abs=1e-15)
    assert t.loc[1.0, ("σ", "kind")] == "bootstrap std (mean over 3 seeds)"
    with pytest.raises(Exception, match="spread"):
        table1(metrics, spread="folds")


def test_auroc_vs_training_positives(seeds_table, tmp_path):
    metrics, hand = seeds_table
    rng = np.random.default_rng(0)
    manifest = pd.DataFrame({"split": rng.choice(["train", "val", "test"], 500),
                             "label_a": rng.integers(0, 2, 500),
                             "label_b": (rng.random(500) < 0.1).astype(int)})
    counts = positives_per_label(manifest, LABELS)
    train = manifest[manifest.split == "train"]
    assert counts["n_train_positive"].tolist() == [train.label_a.sum(), train.label_b.sum()]
    # a third label keeps r defined; one point per (model, label)
    tp = pd.DataFrame({"label": ["a", "b"], "n_train_positive": [40, 90]})
    c = correlations(metrics, train_positives=tp).set_index(["analysis", "group"])
    test = metrics[(metrics.label != "mean") & (metrics.subgroup == "all")]
    pts = test.pivot_table(index=["epsilon", "seed", "label"], columns="metric",
                           values="estimate").reset_index()
    priv = pts[np.isfinite(pts.epsilon)]
    x = priv.label.map({"a": 40, "b": 90}).to_numpy(float)
    assert c.loc[("auroc_vs_n_train_positive", "private"), "r"] == pytest.approx(
        pearsonr(x, priv.auroc).statistic, abs=1e-12)
    assert c.loc[("auroc_vs_n_train_positive", "private"), "x"] == "n_train_positive"
    assert c.loc[("auroc_vs_n_positive", "private"), "r"] == pytest.approx(
        pearsonr(priv.n_positive, priv.auroc).statistic, abs=1e-12)
    assert c.loc[("auroc_vs_n_positive", "private"), "x"] == "n_test_positive"
    data = plots.plot_auroc_vs_positives(metrics, tmp_path / "pos.png", train_positives=tp)
    assert data.attrs["x"] == "n_train_positive"
    assert sorted(set(data["x"])) == [40.0, 90.0]
    assert data.attrs["pearson_r"]["private"] == pytest.approx(
        c.loc[("auroc_vs_n_train_positive", "private"), "r"])
    # no counts: without training positives the analyses are absent, test counts are used
    assert "auroc_vs_n_train_positive" not in set(correlations(metrics)["analysis"])
    paths = write_summary(metrics, tmp_path / "s", train_positives={"a": 40, "b": 90},
                          spread="seeds")
    csv = pd.read_csv(tmp_path / "s" / "table1.csv")
    assert csv["σ kind"].tolist() == ["std over 3 seeds", "bootstrap std"]
    corr = pd.read_csv(tmp_path / "s" / "correlations.csv")
    assert "auroc_vs_n_train_positive" in set(corr["analysis"]) and len(paths) > 5


def test_figures_spread_over_seeds_recomputed(seeds_table, tmp_path):
    metrics, hand = seeds_table
    data = plots.plot_metrics_vs_epsilon(metrics, tmp_path / "f.png", spread="seeds")
    auroc = data[data.panel == "auroc"].set_index("epsilon")
    by_hand = [hand[(1.0, s)][0][0] for s in range(3)]
    assert auroc.loc[1.0, "y"] == pytest.approx(np.mean(by_hand), abs=1e-12)
    assert auroc.loc[1.0, "yerr"] == pytest.approx(np.std(by_hand, ddof=1), abs=1e-12)
    assert auroc.loc[math.inf, "y"] == pytest.approx(hand[(math.inf, 0)][0][0], abs=1e-12)
    assert np.isnan(auroc.loc[math.inf, "yerr"])  # one seed: no bar rather than a mixed one
    parity = plots.parity_data(metrics, spread="seeds")
    f = parity[(parity.series == "F") & (parity.epsilon == 1.0)].iloc[0]
    pd_f = [hand[(1.0, s)][0][1] for s in range(3)]
    assert (f.y, f.yerr) == pytest.approx((np.mean(pd_f), np.std(pd_f, ddof=1)), abs=1e-12)
    boot = plots.metrics_vs_epsilon_data(metrics)  # default unchanged: bootstrap
    sel = metrics[(metrics.epsilon == 1.0) & (metrics.label == "mean")
                  & (metrics.subgroup == "all") & (metrics.metric == "auroc")]
    row = boot[(boot.panel == "auroc") & (boot.epsilon == 1.0)].iloc[0]
    assert (row.y, row.yerr) == pytest.approx((sel["mean"].mean(), sel["std"].mean()))
