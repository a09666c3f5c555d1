"""Group privacy and the machine-readable privacy card."""

from __future__ import annotations

import json
import math

import pytest

from dpmed.errors import PrivacyError
from dpmed.privacy.accounting import DPSGDAccountant, epsilon_spent
from dpmed.privacy.card import (
    build_cadp_card,
    build_privacy_card,
    group_privacy,
    read_privacy_card,
    write_privacy_card,
)

REQUIRED = {
    "mechanism",
    "accountant",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "epochs",
    "max_grad_norm",
    "delta",
    "epsilon_target",
    "epsilon_spent",
    "unit",
    "max_records_per_patient",
    "per_patient_guarantee",
    "non_private_inputs",
    "guarantee",
    "not_guaranteed",
}


# ----------------------------------------------------------------------------- group privacy
def test_group_privacy_hand_computed():
    # k = 3, ε = 1, δ = 1e-5:  (3, 3·e²·1e-5) = (3, 2.2167168e-4)
    e, d = group_privacy(1.0, 1e-5, 3)
    assert e == 3.0
    assert d == pytest.approx(3 * math.e**2 * 1e-5, rel=1e-12)
    assert d == pytest.approx(2.2167168e-4, rel=1e-7)
    # k = 2, ε = 0.5, δ = 6e-6: (1.0, 2·1.6487213·6e-6 = 1.9784655e-5)
    e, d = group_privacy(0.5, 6e-6, 2)
    assert e == 1.0 and d == pytest.approx(1.9784655e-5, rel=1e-7)


def test_group_privacy_edge_cases():
    assert group_privacy(1.3, 1e-5, 1) == (1.3, 1e-5)
    assert group_privacy(math.inf, 1e-5, 1) == (math.inf, 1e-5)
    assert group_privacy(math.inf, 1e-5, 4) == (math.inf, 1.0)
    assert group_privacy(2.0, 0.0, 5) == (10.0, 0.0)  # pure DP
    assert group_privacy(7.89, 6e-6, 20)[1] == 1.0  # vacuous δ capped, no overflow
    assert group_privacy(7.89, 6e-6, 1000)[1] == 1.0
    for bad in (0, -1, 1.5, True):
        with pytest.raises(PrivacyError):
            group_privacy(1.0, 1e-5, bad)
    with pytest.raises(PrivacyError):
        group_privacy(-1.0, 1e-5, 2)
    with pytest.raises(PrivacyError):
        group_privacy(1.0, 2.0, 2)


# ----------------------------------------------------------------------------- DP-SGD card
def _dp_card(**over):
    kw = dict(
        mechanism="dp-sgd",
        accountant="prv",
        noise_multiplier=1.0,
        sample_rate=0.01,
        steps=1000,
        epochs=10,
        max_grad_norm=1.5,
        delta=1e-5,
        epsilon_target=2.0,
        max_records_per_patient=3,
        non_private_inputs=[
            {"what": "pretrained weights", "source": "public cohort (MIMIC-CXR)"},
            {"what": "normalisation statistics", "source": "fixed [0, 255] range, data-independent"},
        ],
    )
    kw.update(over)
    return build_privacy_card(**kw)


def test_dpsgd_card_fields_complete():
    card = _dp_card()
    assert REQUIRED <= set(card)
    assert card["mechanism"] == "dp-sgd" and card["unit"] == "record"
    assert card["guarantee_type"] == "central"
    assert card["epsilon_spent"] == epsilon_spent(1.0, 0.01, 1000, 1e-5)
    pp = card["per_patient_guarantee"]
    assert pp["k"] == 3
    assert (pp["epsilon"], pp["delta"]) == group_privacy(card["epsilon_spent"], 1e-5, 3)
    assert len(card["non_private_inputs"]) == 2
    text = " ".join(card["not_guaranteed"])
    assert "test set" in text and "Hyperparameter" in text and "Per-patient" in text
    assert "Central" in card["guarantee"] and "one record" in card["guarantee"]


def test_card_from_accountant_history():
    acc = DPSGDAccountant(noise_multiplier=1.0, sample_rate=0.01)
    acc.step(700)  # training stopped early: only 700 of 1000 planned steps
    card = build_privacy_card(
        dp_accountant=acc.state_dict(),
        epochs=7,
        max_grad_norm=1.0,
        delta=1e-5,
        epsilon_target=2.0,
    )
    assert card["steps"] == 700
    assert card["noise_multiplier"] == 1.0 and card["sample_rate"] == 0.01
    assert card["epsilon_spent"] == acc.epsilon(1e-5)
    assert card["history"] == [[1.0, 0.01, 700]]
    assert card["per_patient_guarantee"]["epsilon"] is None
    assert "not applicable" in card["per_patient_guarantee"]["statement"]
    with pytest.raises(PrivacyError, match="recorded 700"):
        build_privacy_card(dp_accountant=acc, steps=1000, max_grad_norm=1.0, delta=1e-5, epsilon_target=2.0)


def test_card_warns_when_target_exceeded():
    card = _dp_card(epsilon_spent=2.5)
    assert "exceeds" in card["warning"]


def test_nonprivate_card_and_json_round_trip_with_inf(tmp_path):
    card = build_privacy_card(mechanism="none", sample_rate=None, steps=1000, epochs=10)
    assert REQUIRED <= set(card)
    assert card["epsilon_spent"] == math.inf and card["epsilon_target"] == math.inf
    path = write_privacy_card(tmp_path / "m" / "privacy.json", card)
    raw = path.read_text()
    assert '"epsilon_spent": "inf"' in raw
    json.loads(raw)  # strict JSON (no Infinity token)
    assert "Infinity" not in raw
    assert read_privacy_card(path) == card
    assert [p.name for p in path.parent.iterdir()] == ["privacy.json"]  # no temp file left


def test_dpsgd_card_round_trip_and_zero_noise(tmp_path):
    card = _dp_card(noise_multiplier=0.0, epsilon_target=math.inf)
    assert card["epsilon_spent"] == math.inf
    assert card["per_patient_guarantee"]["epsilon"] == math.inf
    assert card["guarantee"].startswith("None")
    write_privacy_card(tmp_path / "privacy.json", card)
    assert read_privacy_card(tmp_path / "privacy.json") == card
    card2 = _dp_card()
    write_privacy_card(tmp_path / "privacy.json", card2)  # overwrite atomically
    assert read_privacy_card(tmp_path / "privacy.json") == card2


def test_card_refuses_bad_input():
    with pytest.raises(PrivacyError):
        _dp_card(mechanism="magic")
    with pytest.raises(PrivacyError):
        _dp_card(delta=0.0)
    with pytest.raises(PrivacyError):
        _dp_card(max_grad_norm=None)
    with pytest.raises(PrivacyError, match="what"):
        _dp_card(non_private_inputs=[{"what": "stats"}])
    with pytest.raises(PrivacyError, match="NaN"):
        write_privacy_card("/tmp/never.json", {"x": float("nan")})


def test_generator_card():
    card = _dp_card(mechanism="dp-cvae", epsilon_target=1.0, noise_multiplier=2.0, delta=1e-4)
    assert card["mechanism"] == "dp-cvae"
    assert "synthetic" in card["released"]
    assert any("Only the components" in s for s in card["not_guaranteed"])
    assert card["epsilon_spent"] == epsilon_spent(2.0, 0.01, 1000, 1e-4)


def test_patient_unit_card():
    card = _dp_card(unit="patient", max_records_per_patient=None)
    assert card["per_patient_guarantee"]["epsilon"] == card["epsilon_spent"]
    assert not any(s.startswith("Per-patient") for s in card["not_guaranteed"])


# ----------------------------------------------------------------------------- CADP card
def test_cadp_card_local_and_not_comparable(tmp_path):
    eps = 2.0
    s = min(eps / 2, 4)
    card = build_cadp_card(
        epsilon_target=eps,
        sensitivity=s,
        laplace_scale=2 * s / eps,  # scale that really gives local ε = 2
        inn_training_data="public OCT cohort",
        max_records_per_patient=2,
    )
    assert REQUIRED <= set(card)
    assert card["mechanism"] == "cadp-laplace" and card["guarantee_type"] == "local"
    assert card["delta"] is None
    assert card["epsilon_spent"] == pytest.approx(2.0)
    assert "warning" not in card
    assert "not comparable" in card["guarantee"]
    assert card["per_patient_guarantee"]["epsilon"] == pytest.approx(4.0)
    assert card["per_patient_guarantee"]["delta"] is None
    assert card["non_private_inputs"][0]["source"] == "public OCT cohort"
    write_privacy_card(tmp_path / "privacy.json", card)
    assert read_privacy_card(tmp_path / "privacy.json") == card


def test_cadp_card_reports_true_local_epsilon():
    # published setting: Laplace scale s/ε — two clipped latents differ by up to 2s in L1
    card = build_cadp_card(epsilon_target=1.0, sensitivity=0.5, laplace_scale=0.5, inn_training_data="private train split")
    assert card["epsilon_spent"] == pytest.approx(2.0)
    assert "exceeds" in card["warning"]


# ----------------------------------------------------------------------------- typed guarantees
def _dpsgd_guarantee(sigma, q, steps, delta=1e-5):
    from dpmed.privacy.guarantee import Guarantee

    return Guarantee(kind="central", unit="record", epsilon=epsilon_spent(sigma, q, steps, delta, "rdp"), delta=delta,
                     mechanism="dp-sgd", parameters={"history": [[sigma, q, steps]]}, released="w",
                     noise_source="OS entropy")


def test_compose_dpsgd_guarantees_with_one_accountant(tmp_path):
    from dpmed.privacy.accounting import epsilon_for_history
    from dpmed.privacy.card import render_guarantee
    from dpmed.privacy.guarantee import compose, no_guarantee

    a, b = _dpsgd_guarantee(1.0, 0.01, 1000), _dpsgd_guarantee(2.0, 0.02, 500)
    c = compose([a, b], delta=1e-5, released="classifier and generator", accountant="rdp")
    expected = epsilon_for_history([(1.0, 0.01, 1000), (2.0, 0.02, 500)], 1e-5, "rdp")
    assert c.kind == "composed" and c.epsilon == expected and c.delta == 1e-5
    assert max(a.epsilon, b.epsilon) < c.epsilon < a.epsilon + b.epsilon  # tighter than adding
    assert c.derived_from == (a, b)
    card = read_privacy_card(write_privacy_card(tmp_path / "c.json", render_guarantee(c)))
    assert card["kind"] == "composed" and card["epsilon_spent"] == pytest.approx(expected)
    assert [d["mechanism"] for d in card["typed_guarantee"]["derived_from"]] == ["dp-sgd", "dp-sgd"]
    # a part without a guarantee voids the composition; units must agree
    assert not compose([a, no_guarantee(reason="x")], delta=1e-5, released="w").holds
    with pytest.raises(PrivacyError, match="units"):
        compose([a, no_guarantee("patient", reason="x")], delta=1e-5, released="w")
