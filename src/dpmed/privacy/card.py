"""The privacy card: a machine-readable statement of what privacy a trained artefact has.

Written next to each model as ``privacy.json``. Three kinds of card:

* :func:`build_privacy_card` — DP-SGD training (``mechanism="dp-sgd"``), non-private
  training (``"none"``) and DP generators trained with DP-SGD (``"dp-cvae"``,
  ``"dp-generator"``): a *central* (ε, δ) guarantee for one record under add/remove.
* :func:`build_cadp_card` — content-aware DP (``"cadp-laplace"``): a *local* ε per record
  (each record is perturbed on its own), pure DP, no δ. Not comparable with a central
  (ε, δ): the card says so.

JSON has no infinity: ``float('inf')`` is written as the string ``"inf"`` (``"-inf"``
likewise) and :func:`read_privacy_card` turns it back into a float. NaN is refused.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from dpmed.errors import PrivacyError

__all__ = [
    "CARD_SCHEMA_VERSION",
    "DPSGD_MECHANISMS",
    "group_privacy",
    "build_privacy_card",
    "build_cadp_card",
    "write_privacy_card",
    "read_privacy_card",
    "card_to_json",
    "render_guarantee",
]

CARD_SCHEMA_VERSION = 1
DPSGD_MECHANISMS = ("dp-sgd", "dp-cvae", "dp-generator")

LOCAL_VS_CENTRAL = (
    "This ε is a LOCAL guarantee: each record is perturbed on its own before anything else "
    "sees it, so it holds against anyone who sees that record's privatised output. It is not "
    "comparable with the CENTRAL (ε, δ) of DP-SGD, which protects one record's presence in the "
    "training set as seen through the released model; do not plot or rank them on one ε axis "
    "without saying so."
)


# ----------------------------------------------------------------------------- group privacy
def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(ε, δ)-DP for one record → (kε, k·e^{(k−1)ε}·δ)-DP for a group of k records.

    Standard group privacy (Dwork & Roth, Thm 2.2 / Vadhan Lemma 2.2 form). δ' is capped at
    1.0 (a δ ≥ 1 is vacuous), computed in log space so large kε does not overflow.
    ε = inf → (inf, δ) for k = 1, (inf, 1.0) otherwise (no guarantee). δ = 0 (pure DP) → (kε, 0).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise PrivacyError(f"group size k must be an integer ≥ 1, got {k!r}")
    eps, dlt = float(epsilon), float(delta)
    if math.isnan(eps) or eps < 0:
        raise PrivacyError(f"epsilon must be ≥ 0, got {epsilon!r}")
    if math.isnan(dlt) or not (0 <= dlt <= 1):
        raise PrivacyError(f"delta must be in [0, 1], got {delta!r}")
    k = int(k)
    if k == 1:
        return eps, dlt
    if math.isinf(eps):
        return math.inf, 1.0
    if dlt == 0:
        return k * eps, 0.0
    log_d = math.log(k) + (k - 1) * eps + math.log(dlt)
    return k * eps, (1.0 if log_d >= 0 else math.exp(log_d))


# ----------------------------------------------------------------------------- helpers
def _num(name: str, value, *, allow_none=False, allow_inf=False, positive=False) -> float | None:
    if value is None:
        if allow_none:
            return None
        raise PrivacyError(f"privacy card: {name} is required")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise PrivacyError(f"privacy card: {name} must be a number, got {value!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or v < 0 or (positive and v == 0):
        raise PrivacyError(f"privacy card: invalid {name} = {value!r}")
    return v


def _non_private_inputs(items: Iterable[Mapping[str, str]] | None) -> list[dict[str, str]]:
    out = []
    for item in items or ():
        if not isinstance(item, Mapping) or not item.get("what") or not item.get("source"):
            raise PrivacyError(f"non_private_inputs entries need 'what' and 'source', got {item!r}")
        out.append({"what": str(item["what"]), "source": str(item["source"])})
    return out


def _per_patient(eps: float, delta: float | None, unit: str, k: int | None) -> dict[str, Any]:
    if unit == "site":
        return {"epsilon": eps, "delta": delta,
                "method": "the privacy unit is a whole site: each patient is covered as part of their site"}
    if unit == "patient":
        return {
            "epsilon": eps,
            "delta": delta,
            "method": "the privacy unit is the patient (sampling/clipping per patient)",
        }
    if k is None:
        return {
            "epsilon": None,
            "delta": None,
            "statement": "not applicable: the maximum number of records per patient is unknown, "
            "so no per-patient guarantee is claimed (only the per-record one).",
        }
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise PrivacyError(f"max_records_per_patient must be an integer ≥ 1, got {k!r}")
    if math.isinf(eps):
        return {"epsilon": math.inf, "delta": None, "statement": "no guarantee (ε = inf)."}
    ge, gd = group_privacy(eps, 0.0 if delta is None else delta, int(k))
    out = {
        "epsilon": ge,
        "delta": None if delta is None else gd,
        "k": int(k),
        "method": f"group privacy over at most {int(k)} records per patient"
        + (" (one record per patient: the per-record guarantee is per patient)" if k == 1 else ""),
    }
    if delta is not None and gd >= 1.0:
        out["statement"] = "vacuous: the group-privacy δ reaches 1, so no meaningful per-patient guarantee follows."
    return out


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4g}"


# ----------------------------------------------------------------------------- DP-SGD card
def build_privacy_card(
    *,
    mechanism: str = "dp-sgd",
    accountant: str | None = "prv",
    noise_multiplier: float | None = None,
    sample_rate: float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    max_grad_norm: float | None = None,
    delta: float | None = None,
    epsilon_target: float | None = None,
    epsilon_spent: float | None = None,
    dp_accountant=None,
    unit: str = "record",
    max_records_per_patient: int | None = None,
    non_private_inputs: Iterable[Mapping[str, str]] | None = None,
    released: str | None = None,
    extra_not_guaranteed: Iterable[str] = (),
) -> dict[str, Any]:
    """Card for DP-SGD training / a DP-SGD-trained generator / non-private training.

    ``epsilon_spent`` should come from the accountant after training. Pass either the
    number, or ``dp_accountant`` (a :class:`~dpmed.privacy.accounting.DPSGDAccountant` or its
    ``state_dict()``) and it is computed from the steps actually run (``steps`` then also
    comes from it). With neither, ε is computed for ``steps`` steps of (σ, q) — only
    correct if exactly those steps ran.

    ``mechanism="none"``: non-private training; ε = inf, no guarantee.
    ``released``: what the guarantee covers (default: the model weights; for generators the
    generator and its synthetic data).
    """
    from dpmed.privacy.accounting import DPSGDAccountant, epsilon_for_history

    if mechanism == "cadp-laplace":
        raise PrivacyError("use build_cadp_card() for the local CADP mechanism")
    if mechanism not in DPSGD_MECHANISMS + ("none",):
        raise PrivacyError(f"unknown mechanism {mechanism!r}; choose one of {', '.join(DPSGD_MECHANISMS + ('none',))}")
    if unit not in ("record", "patient", "site"):
        raise PrivacyError(f"unit must be 'record', 'patient' or 'site', got {unit!r}")
    npi = _non_private_inputs(non_private_inputs)
    generator = mechanism in ("dp-cvae", "dp-generator")
    released = released or (
        "the trained generator and all synthetic data sampled from it" if generator else "the trained model weights"
    )

    common_not = [
        "Evaluation on the test set (and any metric, threshold or figure computed from it) is "
        "not private: it uses held-out data outside the DP mechanism.",
        "Hyperparameter tuning, model selection and repeated runs on the private data are not accounted.",
        "Inputs listed in non_private_inputs touched data outside the mechanism; the guarantee "
        "holds only if they come from public data or are accounted separately.",
    ]

    if mechanism == "none":
        card = {
            "schema_version": CARD_SCHEMA_VERSION,
            "mechanism": "none",
            "guarantee_type": "none",
            "accountant": None,
            "noise_multiplier": 0.0,
            "sample_rate": None if sample_rate is None else _num("sample_rate", sample_rate),
            "steps": None if steps is None else int(steps),
            "epochs": None if epochs is None else _num("epochs", epochs),
            "max_grad_norm": None,
            "delta": None,
            "epsilon_target": math.inf,
            "epsilon_spent": math.inf,
            "unit": unit,
            "max_records_per_patient": max_records_per_patient,
            "per_patient_guarantee": {"epsilon": math.inf, "delta": None, "statement": "no guarantee (non-private training)."},
            "non_private_inputs": npi,
            "released": released,
            "guarantee": "None: trained without differential privacy (ε = inf).",
            "not_guaranteed": [f"No privacy guarantee at all for {released}."] + list(extra_not_guaranteed),
        }
        return card

    # ---- DP-SGD-trained artefact
    acc_name = accountant or "prv"
    d = _num("delta", delta, positive=True)
    if not d < 1:
        raise PrivacyError(f"privacy card: delta must be < 1, got {delta!r}")
    C = _num("max_grad_norm", max_grad_norm, positive=True)
    tgt = _num("epsilon_target", epsilon_target, allow_inf=True, positive=True)

    history = None
    if dp_accountant is not None:
        acc_obj = dp_accountant if isinstance(dp_accountant, DPSGDAccountant) else DPSGDAccountant.from_state_dict(dp_accountant)
        history = acc_obj.history
        if steps is not None and int(steps) != acc_obj.steps:
            raise PrivacyError(f"privacy card: steps={steps} but the accountant recorded {acc_obj.steps} steps")
        steps = acc_obj.steps
        sigmas = {s for s, _, _ in history}
        rates = {q for _, q, _ in history}
        if noise_multiplier is None and len(sigmas) == 1:
            noise_multiplier = sigmas.pop()
        if sample_rate is None and len(rates) == 1:
            sample_rate = rates.pop()
    sigma = _num("noise_multiplier", noise_multiplier)
    q = _num("sample_rate", sample_rate, positive=True)
    if steps is None or isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise PrivacyError(f"privacy card: steps must be a non-negative integer, got {steps!r}")
    steps = int(steps)

    if epsilon_spent is not None:
        eps = _num("epsilon_spent", epsilon_spent, allow_inf=True)
        eps_source = "given by the caller (accountant after training)"
    elif history is not None:
        eps = epsilon_for_history(history, d, acc_name)
        eps_source = f"{acc_name} accountant over the recorded history of steps actually run"
    else:
        eps = epsilon_for_history([(sigma, q, steps)], d, acc_name)
        eps_source = f"{acc_name} accountant for {steps} steps of (noise_multiplier, sample_rate)"

    unit_words = {"record": "one record (image)", "patient": "one patient (all of their records)",
                  "site": "one site (all of its records)"}[unit]
    if math.isinf(eps):
        guarantee = f"None: ε = inf (noise multiplier {sigma:g}); {released} carry no DP guarantee."
    else:
        guarantee = (
            f"Central ({_fmt(eps)}, {d:g})-differential privacy for {released}, with respect to adding "
            f"or removing {unit_words} of the training set, by DP-SGD with Poisson sampling "
            f"(q = {q:.4g}), per-sample clipping to L2 norm {C:g} and Gaussian noise multiplier "
            f"{sigma:.4g} over {steps} steps; ε from the {acc_name.upper()} accountant "
            "(an upper bound). Anything computed from the released artefact keeps the guarantee "
            "(post-processing)."
        )
    not_guaranteed = []
    if unit == "record":
        not_guaranteed.append(
            "Per-patient privacy: the unit is one record; a patient with several records is "
            "protected only at the group-privacy level given in per_patient_guarantee."
        )
    not_guaranteed += common_not
    if generator:
        not_guaranteed.append(
            "Only the components trained with DP-SGD are covered (e.g. a discriminator or a shared "
            "decoder); any component trained or released without DP-SGD is outside the guarantee."
        )
    not_guaranteed.append(
        "Implementation-level leaks (floating-point effects, the sampler's randomness, timing) are not analysed."
    )
    not_guaranteed += list(extra_not_guaranteed)

    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "mechanism": mechanism,
        "guarantee_type": "central",
        "accountant": acc_name,
        "noise_multiplier": sigma,
        "sample_rate": q,
        "steps": steps,
        "epochs": None if epochs is None else _num("epochs", epochs),
        "max_grad_norm": C,
        "delta": d,
        "epsilon_target": tgt,
        "epsilon_spent": eps,
        "epsilon_spent_source": eps_source,
        "unit": unit,
        "max_records_per_patient": max_records_per_patient,
        "per_patient_guarantee": _per_patient(eps, d, unit, max_records_per_patient),
        "non_private_inputs": npi,
        "released": released,
        "guarantee": guarantee,
        "not_guaranteed": not_guaranteed,
    }
    if history is not None:
        card["history"] = [[s, r, n] for s, r, n in history]
    if tgt is not None and not math.isinf(eps) and eps > tgt * (1 + 1e-9):
        card["warning"] = f"epsilon_spent {eps:.6g} exceeds epsilon_target {tgt:.6g}"
    return card


# ----------------------------------------------------------------------------- from a Guarantee
def render_guarantee(g, *, max_records_per_patient: int | None = None, epochs: float | None = None,
                     extra_not_guaranteed: Iterable[str] = ()) -> dict[str, Any]:
    """The card of a typed :class:`~dpmed.privacy.guarantee.Guarantee` from the training engine.

    A central DP-SGD guarantee renders as :func:`build_privacy_card` does, with ε recomputed
    from the card's own ``history`` (the steps actually run), plus what the guarantee treats as
    public (N and the per-patient record count), where the noise came from, the numerics and a
    δ ≥ 1/N flag. Any other kind renders as a card without a guarantee, its reason first.
    ``g.to_dict()`` is kept whole under ``"typed_guarantee"``.
    """
    npi = [x.to_dict() for x in g.non_private_inputs]
    treated_public = []
    if max_records_per_patient is not None:
        treated_public.append(f"max_records_per_patient = {max_records_per_patient}: computed from the training "
                              "records and treated as public (it only scales the per-patient statement)")
    if g.kind in ("derived", "composed", "local"):
        return _render_generic(g, treated_public, max_records_per_patient, extra_not_guaranteed)
    if g.kind != "central":
        card = build_privacy_card(mechanism="none", epochs=epochs, unit=g.unit,
                                  max_records_per_patient=max_records_per_patient, non_private_inputs=npi,
                                  released=g.released or None,
                                  extra_not_guaranteed=list(g.not_guaranteed) + list(extra_not_guaranteed))
        card["guarantee"] = "None: " + (g.not_guaranteed[0] if g.not_guaranteed else "no DP guarantee")
    else:
        p = g.parameters
        card = build_privacy_card(
            mechanism=g.mechanism, accountant=p["accountant"], noise_multiplier=p["noise_multiplier"],
            sample_rate=p["sample_rate"], dp_accountant={
                "version": 1, "noise_multiplier": p["noise_multiplier"], "sample_rate": p["sample_rate"],
                "history": p["history"]},
            epochs=epochs, max_grad_norm=p["max_grad_norm"], delta=g.delta, epsilon_target=g.epsilon_target,
            unit=g.unit, max_records_per_patient=max_records_per_patient, non_private_inputs=npi,
            released=g.released or None, extra_not_guaranteed=list(g.not_guaranteed) + list(extra_not_guaranteed))
        card["n_records"] = p["n_records"]
        card["batch_size"] = p["batch_size"]
        card["adjacency"] = p["adjacency"]
        card["weak_delta"] = bool(p["delta_times_n"] >= 1)
        card["delta_times_n"] = p["delta_times_n"]
        card["numerics"] = p["numerics"]
        card["grad_sample_mode"] = p["grad_sample_mode"]
        treated_public.insert(0, f"N = {p['n_records']} training records (q = batch_size / N, the steps and σ "
                                 "depend on it; add/remove-one adjacency with the dataset size public)")
    card["kind"] = g.kind
    card["noise_source"] = g.noise_source
    card["treated_as_public"] = treated_public
    card["typed_guarantee"] = g.to_dict()
    return card


def _render_generic(g, treated_public, k, extra_not_guaranteed) -> dict[str, Any]:
    """Card of a derived (post-processing), composed or local guarantee: its ε, δ and sources."""
    how = {"derived": "inherited by post-processing from", "composed": "composed from",
           "local": "a local guarantee"}[g.kind]
    text = (f"{g.kind.capitalize()} ({_fmt(g.epsilon)}, {g.delta if g.delta is not None else 0:g})-differential "
            f"privacy for {g.released}, per {g.unit}, {how}"
            + (" " + ", ".join(d.mechanism for d in g.derived_from) if g.derived_from else "") + ".")
    protection = _protection(g)
    card = {
        "schema_version": CARD_SCHEMA_VERSION, "kind": g.kind, "mechanism": g.mechanism,
        "guarantee_type": protection, "epsilon_spent": float(g.epsilon),
        "epsilon_target": g.epsilon_target, "delta": g.delta, "unit": g.unit,
        "max_records_per_patient": k,
        "per_patient_guarantee": _per_patient(float(g.epsilon), g.delta, g.unit, k),
        "parameters": dict(g.parameters), "non_private_inputs": [x.to_dict() for x in g.non_private_inputs],
        "released": g.released, "guarantee": text, "noise_source": g.noise_source,
        "not_guaranteed": list(g.not_guaranteed) + list(extra_not_guaranteed),
        "treated_as_public": treated_public, "typed_guarantee": g.to_dict(),
    }
    if protection == "local":
        card["local_vs_central"] = LOCAL_VS_CENTRAL
    return card


def _protection(g) -> str:
    """``local`` for a local guarantee or one derived only from local ones (a classifier trained on
    privatised images inherits a per-image input perturbation, not a central (ε, δ)); else ``central``."""
    if g.kind == "local":
        return "local"
    if g.kind == "derived" and g.derived_from and all(_protection(d) == "local" for d in g.derived_from):
        return "local"
    return "central"


# ----------------------------------------------------------------------------- CADP card
def build_cadp_card(
    *,
    epsilon_target: float,
    sensitivity: float,
    laplace_scale: float,
    clip_norm: str = "L1",
    inn_training_data: str,
    max_records_per_patient: int | None = None,
    non_private_inputs: Iterable[Mapping[str, str]] | None = None,
    extra_not_guaranteed: Iterable[str] = (),
) -> dict[str, Any]:
    """Card for content-aware DP (methods.md D): per-record latent clipping + Laplace noise.

    The guaranteed *local* ε is computed from what the mechanism does, not taken from its
    name: every latent is clipped to the L1 ball of radius ``sensitivity`` = s, so any two
    clipped latents differ by at most 2s in L1 (the ball's diameter), and i.i.d.
    Laplace(b) noise then gives ε_local = 2s / b (pure DP, δ = 0). With the published
    setting b = s/ε this is 2ε — the card reports both ``epsilon_target`` and that value.
    ``inn_training_data`` says what the invertible network f was trained on (it is applied
    to every record outside the mechanism, so it is listed as a non-private input).
    """
    if clip_norm != "L1":
        raise PrivacyError("the Laplace mechanism needs an L1 clip (clip_norm='L1')")
    s = _num("sensitivity", sensitivity, positive=True)
    b = _num("laplace_scale", laplace_scale, positive=True)
    tgt = _num("epsilon_target", epsilon_target, positive=True, allow_inf=True)
    eps_local = 2.0 * s / b
    npi = [{"what": "invertible network f (encoder/decoder of the latent space)", "source": str(inn_training_data)}]
    npi += _non_private_inputs(non_private_inputs)
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "mechanism": "cadp-laplace",
        "guarantee_type": "local",
        "accountant": None,
        "noise_multiplier": None,
        "sample_rate": None,
        "steps": None,
        "epochs": None,
        "max_grad_norm": None,
        "sensitivity": s,
        "clip_norm": "L1",
        "laplace_scale": b,
        "delta": None,
        "epsilon_target": tgt,
        "epsilon_spent": eps_local,
        "epsilon_spent_source": "2·sensitivity / laplace_scale (L1 diameter of the clip ball over the Laplace scale)",
        "unit": "record",
        "max_records_per_patient": max_records_per_patient,
        "per_patient_guarantee": _per_patient(eps_local, None, "record", max_records_per_patient),
        "non_private_inputs": npi,
        "released": "each privatised record (image) and anything trained on the privatised records",
        "guarantee": (
            f"Local {_fmt(eps_local)}-differential privacy (pure, δ = 0) per record: each record's "
            f"latent code is clipped to L1 norm {s:g} and perturbed with Laplace noise of scale {b:g} "
            "independently of every other record. " + LOCAL_VS_CENTRAL
        ),
        "not_guaranteed": [
            "Comparability: " + LOCAL_VS_CENTRAL,
            "The class label used to condition the network is released unperturbed.",
            "The invertible network f is not privatised: if it was trained on the same private data, "
            "its weights leak information outside this guarantee (see non_private_inputs).",
            "Per-patient privacy only by group privacy over the patient's records (per_patient_guarantee).",
            "Test-set evaluation and hyperparameter tuning on private data are not covered.",
        ]
        + list(extra_not_guaranteed),
    }
    if tgt is not None and not math.isinf(tgt) and eps_local > tgt * (1 + 1e-9):
        card["warning"] = (
            f"the mechanism's local ε = 2s/b = {eps_local:.6g} exceeds the nominal target {tgt:.6g} "
            "(Laplace scale s/ε protects an L1 sensitivity of s, but two clipped latents can differ by 2s)"
        )
    return card


# ----------------------------------------------------------------------------- JSON I/O
def _encode(obj):
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        v = float(obj)
        if math.isnan(v):
            raise PrivacyError("privacy card contains NaN")
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(obj, Mapping):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    raise PrivacyError(f"privacy card: cannot serialise {type(obj).__name__}")


def _decode(obj):
    if obj == "inf":
        return math.inf
    if obj == "-inf":
        return -math.inf
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def card_to_json(card: Mapping[str, Any]) -> str:
    """Strict JSON text of the card (inf → "inf")."""
    return json.dumps(_encode(card), indent=2, sort_keys=False, allow_nan=False, ensure_ascii=False) + "\n"


def write_privacy_card(path: str | os.PathLike, card: Mapping[str, Any]) -> Path:
    """Write the card atomically (:func:`dpmed.io.atomic.write_text`)."""
    from dpmed.io.atomic import write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(card_to_json(card), path)
    return path


def read_privacy_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read a card written by :func:`write_privacy_card` ("inf" → float('inf'))."""
    with open(path, encoding="utf-8") as fh:
        return _decode(json.load(fh))
