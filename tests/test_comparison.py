"""The per-dataset comparison of every mechanism: the best-method rule on hand-made inputs,
guarantee kinds read from cards, the files it writes."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from dpmed.reporting.comparison import (
    CardGuarantee, at_least_as_strong, best_by_epsilon, card_guarantee, comparison_table,
    legend_kinds, method_guarantees, write_comparison,
)
from dpmed.reporting.plots import ReportingError

DELTA = 1e-3


def _model_rows(method, eps, seed, auroc, f_auroc, m_auroc, pd_f, auprc=0.5, std=0.02):
    rows = []
    for sg, au in (("all", auroc), ("sex=F", f_auroc), ("sex=M", m_auroc)):
        rows.append(dict(label="mean", subgroup=sg, metric="auroc", estimate=au, mean=au, std=std))
        rows.append(dict(label="mean", subgroup=sg, metric="auprc", estimate=auprc, mean=auprc, std=std))
    rows.append(dict(label="mean", subgroup="sex=F", metric="parity_difference", estimate=pd_f, mean=pd_f, std=std))
    rows.append(dict(label="mean", subgroup="sex=M", metric="parity_difference", estimate=-pd_f, mean=-pd_f, std=std))
    return [dict(r, method=method, epsilon=eps, seed=seed) for r in rows]


def central(eps, delta=DELTA, unit="record"):
    return {"kind": "central", "mechanism": "dp-sgd", "epsilon_spent": eps, "delta": delta, "unit": unit}


NONE = {"kind": "none", "mechanism": "none", "unit": "record"}


@pytest.fixture
def inputs():
    """dpsgd (central), cadp (local), syn (derived, spends a bit more than its target),
    real (no guarantee at any ε), two seeds of dpsgd at ε = 1."""
    spec = [  # method, eps, seed, auroc, F, M, PD(F), card
        ("dpsgd", 1.0, 0, 0.70, 0.65, 0.72, -0.04, central(0.99)),
        ("dpsgd", 1.0, 1, 0.72, 0.67, 0.74, -0.06, central(0.995)),
        ("dpsgd", 8.0, 0, 0.78, 0.74, 0.80, -0.03, central(7.95)),
        ("dpsgd", math.inf, 0, 0.85, 0.83, 0.86, -0.02, NONE),
        ("syn", 1.0, 0, 0.90, 0.88, 0.91, 0.01, {"kind": "derived", "mechanism": "dp-sgd",
                                                 "epsilon_spent": 1.2, "delta": DELTA, "unit": "record"}),
        ("syn", math.inf, 0, 0.86, 0.80, 0.88, 0.05, NONE),
        ("cadp", 1.0, 0, 0.95, 0.90, 0.96, 0.10, {"kind": "local", "mechanism": "cadp",
                                                  "epsilon_spent": 1.0, "delta": 0.0, "unit": "record"}),
        ("real", 1.0, 0, 0.99, 0.99, 0.99, 0.0, NONE),
        ("loose", 8.0, 0, 0.97, 0.97, 0.97, 0.0, central(2.0, delta=0.05)),  # δ above the dataset's
    ]
    rows, cards = [], {}
    for method, eps, seed, au, f, m, pdf, card in spec:
        rows += _model_rows(method, eps, seed, au, f, m, pdf)
        cards[(method, eps, seed)] = card
    return pd.DataFrame(rows), cards


def test_card_kinds_and_legend_words():
    assert card_guarantee(central(1.0)).words() == "central DP per record"
    assert card_guarantee(central(1.0, unit="site")).words() == "central DP per site"
    assert card_guarantee({"kind": "local", "epsilon_spent": 3, "unit": "record"}).words() == "local DP per image"
    assert card_guarantee({"typed_guarantee": {"kind": "composed", "epsilon": 2, "delta": 1e-5,
                                               "unit": "patient"}}).words() == "composed DP per patient"
    g = card_guarantee({"mechanism": "none"})  # an older card without a kind
    assert (g.kind, g.epsilon, g.strength_class) == ("none", math.inf, None)
    with pytest.raises(ReportingError, match="kind of guarantee 'gaussian'"):
        card_guarantee({"kind": "gaussian"})
    with pytest.raises(ReportingError, match="without epsilon_spent"):
        card_guarantee({"kind": "central", "delta": 1e-5})


def test_model_on_privatised_images_ranks_with_local_guarantees():
    """A classifier trained on CADP's privatised images is post-processing of a per-image (local)
    guarantee: its card says kind derived, guarantee_type local; it is never ranked as central."""
    card = {"kind": "derived", "guarantee_type": "local", "epsilon_spent": 1.0, "delta": 0.0, "unit": "record"}
    g = card_guarantee(card)
    assert g.strength_class == "local" and g.words() == "derived local DP per image (post-processing)"
    assert card_guarantee({**card, "guarantee_type": "central", "delta": 1e-5}).strength_class == "central"


def test_strength_order():
    c = CardGuarantee("central", "record", 1.0, 1e-5)
    assert at_least_as_strong(c, 1.0, 1e-5) and at_least_as_strong(c, 8.0, 1e-3)
    assert not at_least_as_strong(c, 0.5, 1e-5)             # larger ε
    assert not at_least_as_strong(c, 1.0, 1e-6)             # larger δ
    assert at_least_as_strong(CardGuarantee("derived", "record", 1.0, 1e-5), 1.0, 1e-5)
    assert at_least_as_strong(CardGuarantee("composed", "patient", 1.0, 0.0), 1.0, 1e-5)
    local = CardGuarantee("local", "record", 0.1, 0.0)
    assert not at_least_as_strong(local, 8.0, 1e-3)         # local never ranks as central
    assert at_least_as_strong(local, 1.0, 1e-3, cls="local")
    assert not at_least_as_strong(c, 8.0, 1e-3, cls="local")
    assert not at_least_as_strong(CardGuarantee("none", "record", math.inf, 1.0), math.inf, 1.0)


def test_best_method_per_epsilon(inputs):
    metrics, cards = inputs
    table = comparison_table(metrics, cards)
    best = best_by_epsilon(table, [1.0, 8.0, math.inf], DELTA).set_index(["epsilon", "class"])
    # ε = 1: syn spent 1.2 > 1 and real has no guarantee; dpsgd (mean of its two seeds) wins
    r = best.loc[(1.0, "central")]
    assert r["method"] == "dpsgd" and r["model_epsilon"] == 1.0
    assert r["auroc"] == pytest.approx(0.71)
    assert r["card_epsilon"] == pytest.approx(0.995)        # the larger card ε over seeds
    # ε = 8: syn (1.2 <= 8) beats dpsgd at 8; 'loose' (δ 0.05 > 1e-3) never qualifies
    r = best.loc[(8.0, "central")]
    assert r["method"] == "syn" and r["model_epsilon"] == 1.0
    # the reference: the best non-private model (syn at ∞, 0.86), not real (it is at ε = 1)
    assert r["reference_method"] == "syn" and r["reference_auroc"] == pytest.approx(0.86)
    assert r["auroc_cost"] == pytest.approx(0.86 - 0.90)
    assert r["worst_group_auroc_cost"] == pytest.approx(0.80 - 0.88)
    assert r["parity_cost"] == pytest.approx(0.01 - 0.05)
    assert r["largest_parity_group"] in ("sex=F (+)", "sex=M (−)")
    # local: its own row, at each ε with a qualifying local model
    assert best.loc[(1.0, "local"), "method"] == "cadp" and best.loc[(8.0, "local"), "method"] == "cadp"
    assert "real" not in set(best["method"]) and "loose" not in set(best["method"])
    assert not any(np.isinf(e) for e, _ in best.index)


def test_seeds_and_worst_group(inputs):
    metrics, cards = inputs
    t = comparison_table(metrics, cards, spread="seeds").set_index(["method", "epsilon"])
    r = t.loc[("dpsgd", 1.0)]
    assert r["n_seeds"] == 2
    assert r["auroc_err"] == pytest.approx(np.std([0.70, 0.72], ddof=1))
    assert r["worst_group_auroc"] == pytest.approx(0.66) and r["worst_group"] == "sex=F"
    assert r["largest_parity_difference"] == pytest.approx(0.05)   # |−0.04|, |−0.06| averaged
    tb = comparison_table(metrics, cards, spread="bootstrap").set_index(["method", "epsilon"])
    assert tb.loc[("dpsgd", 1.0), "auroc_err"] == pytest.approx(0.02)


def test_legend_kinds_from_cards(inputs):
    metrics, cards = inputs
    words = legend_kinds(comparison_table(metrics, cards))
    assert words == {"cadp": "local DP per image", "dpsgd": "central DP per record",
                     "loose": "central DP per record", "real": "no guarantee",
                     "syn": "derived DP per record (post-processing)"}
    mixed = {("x", 1.0, 0): card_guarantee(central(1.0)), ("x", 1.0, 1): card_guarantee(NONE)}
    with pytest.raises(ReportingError, match="differ in kind"):
        method_guarantees(mixed)


def test_missing_card_is_an_error(inputs):
    metrics, cards = inputs
    cards = dict(cards)
    del cards[("syn", math.inf, 0)]
    with pytest.raises(ReportingError, match="no privacy card for method syn at ε = inf"):
        comparison_table(metrics, cards)


def test_write_comparison_files(inputs, tmp_path):
    metrics, cards = inputs
    paths = write_comparison(metrics, cards, tmp_path, delta=DELTA, metrics_shown=["auroc", "auprc"],
                             spread="seeds", dataset="demo")
    back = pd.read_csv(paths["comparison.csv"])
    assert len(back) == 8 and set(back["kind"]) == {"central", "derived", "local", "none"}
    md = paths["comparison.md"].read_text()
    assert "AUPRC (± std over seeds)" in md and "local DP per image" in md
    assert "syn" in paths["best_by_epsilon.md"].read_text()
    assert paths["comparison.png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ReportingError, match="comparison metrics"):
        write_comparison(metrics, cards, tmp_path, delta=DELTA, metrics_shown=["f1"])
