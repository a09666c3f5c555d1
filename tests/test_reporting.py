"""Tests of dpmed.reporting: figures (valid PNGs, plotted numbers), tables, edge cases."""

from __future__ import annotations

import math

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from dpmed.evaluation import correlations, evaluate_model
from dpmed.reporting import (SUMMARY_FILES, ReportingError, plot_auroc_vs_positives,
                             plot_label_auroc_vs_epsilon, plot_metrics_vs_epsilon,
                             plot_parity_vs_epsilon, table1_flat, write_summary)
from dpmed.reporting import plots

LABELS = ["cardiomegaly", "congestion", "effusion"]
SPEC = {"sex": ["F", "M"], "age_group": ["[0,60)", "[60,80)", "[80,100)"]}
EPS = [0.5, 2.0, 8.0, math.inf]
STRENGTH = {0.5: 0.5, 2.0: 1.0, 8.0: 1.6, math.inf: 2.5}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cohort(labels=LABELS, n: int = 240, seed: int = 7) -> pd.DataFrame:
    """Fixed val/test records with labels; every model scores the same records."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "record_id": [f"r{i:04d}" for i in range(n)],
        "split": np.where(np.arange(n) % 3 == 0, "val", "test"),
        "sex": rng.choice(SPEC["sex"], n),
        "age_group": rng.choice(SPEC["age_group"], n),
    })
    for k, lb in enumerate(labels):
        df[f"y_{lb}"] = (rng.random(n) < 0.15 + 0.1 * k).astype(np.int64)
    return df


def model_predictions(base: pd.DataFrame, labels, strength: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = base.copy()
    for lb in labels:
        z = strength * df[f"y_{lb}"] + rng.normal(size=len(df))
        df[f"score_{lb}"] = np.round(1 / (1 + np.exp(-z)), 3)
    return df


def stacked(labels=LABELS, eps=EPS, seeds=(0, 1), dataset="cxr", n_bootstrap=30,
            spec=SPEC) -> pd.DataFrame:
    base = cohort(labels)
    parts = []
    for seed in seeds:
        for i, e in enumerate(eps):
            pred = model_predictions(base, labels, STRENGTH[e], 100 * seed + i)
            m = evaluate_model(pred, list(labels), spec, n_bootstrap=n_bootstrap, seed=0)
            m["dataset"], m["method"], m["epsilon"], m["seed"] = dataset, "dpsgd", e, seed
            parts.append(m)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def metrics() -> pd.DataFrame:
    return stacked()


def check_png(path, size_px=None) -> np.ndarray:
    assert path.exists() and path.stat().st_size > 1000, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    if size_px is not None:
        assert (img.shape[1], img.shape[0]) == tuple(size_px)
    return img


# ----------------------------------------------------------------------- write_summary
@pytest.fixture(scope="module")
def summary(metrics, tmp_path_factory):
    out = tmp_path_factory.mktemp("summary")
    return out, write_summary(metrics, out)


def test_write_summary_writes_every_file(summary):
    out, paths = summary
    assert [p.name for p in paths] == list(SUMMARY_FILES)
    assert all(p.parent == out for p in paths)
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
        if p.suffix == ".png":
            check_png(p)
    # written atomically: no temporary files left behind
    assert sorted(q.name for q in out.iterdir()) == sorted(SUMMARY_FILES)
    img = mpimg.imread(out / "auroc_vs_epsilon.png")
    assert img.shape[:2] == (1200, 1500)  # 10 x 8 inches at 150 dpi


def test_table1_md_one_row_per_epsilon_ascending(summary):
    out, _ = summary
    lines = (out / "table1.md").read_text().strip().splitlines()
    first = [ln.split("|")[1].strip() for ln in lines[2:]]
    assert first == ["N", "0.5", "2", "8", "∞"]
    csv = pd.read_csv(out / "table1.csv")
    assert list(csv["epsilon"]) == [0.5, 2.0, 8.0, math.inf]
    assert "total AUROC μ" in csv.columns and "sex=F PD μ" in csv.columns


def test_table1_csv_matches_seed_mean(metrics, summary):
    out, _ = summary
    csv = pd.read_csv(out / "table1.csv").set_index("epsilon")
    sel = metrics[(metrics["label"] == "mean") & (metrics["subgroup"] == "sex=F")
                  & (metrics["metric"] == "auroc")]
    want = sel.groupby("epsilon")["mean"].mean()
    np.testing.assert_allclose(csv.loc[want.index, "sex=F AUROC μ"], want.to_numpy())


def test_correlations_csv_equals_aggregate(metrics, summary):
    out, _ = summary
    got = pd.read_csv(out / "correlations.csv")
    want = correlations(metrics)
    np.testing.assert_allclose(got["r"], want["r"], equal_nan=True)
    assert list(got["analysis"]) == list(want["analysis"])


# -------------------------------------------------------------------- plotted numbers
@pytest.fixture
def captured(monkeypatch):
    """Record the Line2D artists of every figure right before it is saved."""
    seen = []
    orig = plots._save

    def spy(fig, out_png):
        seen.append({ax.get_title(): [(ln.get_xdata(), ln.get_ydata(), ln.get_linestyle(),
                                       ln.get_marker()) for ln in ax.lines]
                     for ax in fig.axes})
        return orig(fig, out_png)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def test_metrics_vs_epsilon_plots_seed_means(metrics, tmp_path, captured):
    png = tmp_path / "overall.png"
    data = plot_metrics_vs_epsilon(metrics, png)
    check_png(png, data.attrs["size_px"])
    assert data.attrs["size_px"] == (1500, 1200)
    assert set(data["panel"]) == {"auroc", "accuracy", "sensitivity", "specificity"}
    sel = metrics[(metrics["label"] == "mean") & (metrics["subgroup"] == "all")]
    for m in ("auroc", "sensitivity"):
        g = sel[sel["metric"] == m].groupby("epsilon")[["mean", "std"]].mean()
        d = data[data["panel"] == m].set_index("epsilon")
        np.testing.assert_allclose(d.loc[g.index, "y"], g["mean"])
        np.testing.assert_allclose(d.loc[g.index, "yerr"], g["std"])
        assert d.loc[math.inf, "kind"] == "non_private"
    # the drawn artists: private line at finite ε, dashed line at the non-private mean
    g = sel[sel["metric"] == "auroc"].groupby("epsilon")["mean"].mean()
    lines = captured[0]["AUROC"]
    solid = [ln for ln in lines if ln[3] == "o"]
    dashed = [ln for ln in lines if ln[2] == "--"]
    assert len(solid) == 1 and len(dashed) == 1
    np.testing.assert_allclose(solid[0][0], [0.5, 2.0, 8.0])
    np.testing.assert_allclose(solid[0][1], g.loc[[0.5, 2.0, 8.0]].to_numpy())
    np.testing.assert_allclose(dashed[0][1], [g.loc[math.inf]] * 2)


def test_metrics_vs_epsilon_by_subgroup(metrics, tmp_path, captured):
    data = plot_metrics_vs_epsilon(metrics, tmp_path / "age.png", subgroup_attr="age_group")
    assert list(dict.fromkeys(data["series"])) == ["[0,60)", "[60,80)", "[80,100)"]
    sel = metrics[(metrics["label"] == "mean") & (metrics["subgroup"] == "age_group=[60,80)")
                  & (metrics["metric"] == "specificity")]
    want = sel.groupby("epsilon")["mean"].mean()
    d = data[(data["panel"] == "specificity") & (data["series"] == "[60,80)")]
    np.testing.assert_allclose(d.set_index("epsilon").loc[want.index, "y"], want)
    lines = captured[0]["AUROC"]
    assert sum(ln[3] == "o" for ln in lines) == 3  # one private line per age group
    assert sum(ln[2] == "--" for ln in lines) == 3  # one non-private line per age group
    data = plot_metrics_vs_epsilon(metrics, tmp_path / "sex.png", subgroup_attr="sex")
    assert set(data["series"]) == {"F", "M"}
    check_png(tmp_path / "sex.png", (1500, 1200))


def test_label_auroc_and_parity(metrics, tmp_path):
    data = plot_label_auroc_vs_epsilon(metrics, tmp_path / "labels.png")
    check_png(tmp_path / "labels.png", data.attrs["size_px"])
    assert list(dict.fromkeys(data["panel"])) == LABELS
    sel = metrics[(metrics["label"] == "congestion") & (metrics["subgroup"] == "all")
                  & (metrics["metric"] == "auroc")]
    want = sel.groupby("epsilon")["mean"].mean()
    got = data[data["panel"] == "congestion"].set_index("epsilon")["y"]
    np.testing.assert_allclose(got.loc[want.index], want)

    data = plot_parity_vs_epsilon(metrics, tmp_path / "pd.png")
    check_png(tmp_path / "pd.png", data.attrs["size_px"])
    assert list(dict.fromkeys(data["panel"])) == ["sex", "age_group"]
    f = data[data["series"] == "F"].set_index("epsilon")["y"]
    m = data[data["series"] == "M"].set_index("epsilon")["y"]
    np.testing.assert_allclose(f, -m.loc[f.index], atol=1e-12)  # F − M = −(M − F)


def test_auroc_vs_positives_points_and_r(metrics, tmp_path):
    data = plot_auroc_vs_positives(metrics, tmp_path / "pos.png")
    check_png(tmp_path / "pos.png", data.attrs["size_px"])
    # one point per (model, label): 2 seeds x 4 ε x 3 labels
    assert len(data) == 2 * 4 * 3
    assert (data["kind"] == "non_private").sum() == 2 * 3
    corr = correlations(metrics)
    corr = corr[corr["analysis"] == "auroc_vs_n_positive"].set_index("group")["r"]
    assert data.attrs["pearson_r"]["private"] == pytest.approx(corr["private"])
    assert data.attrs["pearson_r"]["non_private"] == pytest.approx(corr["non_private"])


# ------------------------------------------------------------------------ edge cases
def test_single_label_dataset(tmp_path):
    spec = {"sex": ["F", "M"], "age_group": ["[0,60)", "[60,80)", "[80,100)"]}
    m = stacked(labels=["pdac"], seeds=(0,), dataset="ct", n_bootstrap=20, spec=spec)
    paths = write_summary(m, tmp_path)
    for p in paths:
        assert p.exists()
        if p.suffix == ".png":
            check_png(p)
    data = plots.label_auroc_data(m)  # the numbers only; the PNG was written above
    assert set(data["panel"]) == {"pdac"} and len(data) == 4
    check_png(tmp_path / "label_auroc_vs_epsilon.png", (900, 660))  # 6.0 x 4.4 in, 150 dpi
    corr = pd.read_csv(tmp_path / "correlations.csv")
    r = corr.loc[(corr["analysis"] == "auroc_vs_n_positive") & (corr["group"] == "private"), "r"]
    assert r.isna().all()  # one label: a single x value, r undefined


def test_only_non_private_model(tmp_path):
    m = stacked(eps=[math.inf], seeds=(0,), n_bootstrap=20)
    paths = write_summary(m, tmp_path)
    for p in paths:
        assert p.exists() and p.stat().st_size > 0
        if p.suffix == ".png":
            check_png(p)
    lines = (tmp_path / "table1.md").read_text().strip().splitlines()
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["N", "∞"]
    data = plots.metrics_vs_epsilon_data(m)
    assert set(data["kind"]) == {"non_private"} and len(data) == 4


def test_missing_attribute_still_writes_figure(tmp_path):
    m = stacked(seeds=(0,), n_bootstrap=10, spec={"sex": ["F", "M"]})
    data = plot_metrics_vs_epsilon(m, tmp_path / "age.png", subgroup_attr="age_group")
    assert data.empty
    check_png(tmp_path / "age.png", (1500, 1200))


def test_several_private_methods_and_bad_input(metrics, tmp_path):
    other = metrics[np.isfinite(metrics["epsilon"])].copy()
    other["method"] = "dpsgd_pretrained"
    both = pd.concat([metrics, other], ignore_index=True)
    data = plot_metrics_vs_epsilon(both, tmp_path / "methods.png")
    assert set(data.loc[data["kind"] == "private", "method"]) == {"dpsgd", "dpsgd_pretrained"}
    check_png(tmp_path / "methods.png", (1500, 1200))

    two = pd.concat([metrics, metrics.assign(dataset="ct")], ignore_index=True)
    with pytest.raises(ReportingError, match="several datasets"):
        plot_metrics_vs_epsilon(two, tmp_path / "x.png")
    with pytest.raises(ReportingError, match="missing columns"):
        table1_flat(metrics.drop(columns=["epsilon"]))
    assert not (tmp_path / "x.png").exists()


def test_table1_refuses_to_pool_methods_and_summary_selects_one(metrics, tmp_path):
    """Two methods at one ε must not be averaged into one Table 1 row (DP-SGD and CADP are
    different mechanisms): table1 refuses, write_summary tabulates the chosen method only."""
    from dpmed.evaluation import aggregate
    from dpmed.evaluation.metrics import EvaluationError
    from dpmed.reporting.tables import write_summary

    other = metrics.assign(method="cadp", estimate=metrics["estimate"] - 0.2, mean=metrics["mean"] - 0.2)
    both = pd.concat([metrics.assign(method="dpsgd"), other], ignore_index=True)
    with pytest.raises(EvaluationError, match="several methods"):
        aggregate.table1(both)
    with pytest.raises(EvaluationError, match="several methods"):
        aggregate.correlations(both)
    write_summary(both, tmp_path / "both", table_method="dpsgd")
    write_summary(metrics.assign(method="dpsgd"), tmp_path / "one")
    a = pd.read_csv(tmp_path / "both" / "table1.csv")
    b = pd.read_csv(tmp_path / "one" / "table1.csv")
    pd.testing.assert_frame_equal(a, b)
