"""A privacy guarantee as a typed value: what a mechanism promises, computed by the mechanism.

Every artefact dpmed releases (a model, a generator, a synthetic or privatised dataset) carries
one :class:`Guarantee`. The mechanism that produced the artefact builds it from what it actually
ran; the card (``privacy.json``) only renders it (:func:`dpmed.privacy.card.render_guarantee`).

Kinds
-----
``central``  (ε, δ)-DP of a training mechanism (DP-SGD) w.r.t. adding/removing one ``unit``
             of its training set, as seen through everything it releases.
``local``    ε-DP of a per-record perturbation (content-aware DP): each record's privatised
             output on its own; not comparable with a central (ε, δ) without saying so.
``derived``  post-processing of the guarantees in ``derived_from`` (a classifier trained only
             on DP-synthetic or privatised data): the same guarantee, nothing added.
``composed`` several mechanisms on the same records (DP-SGD on real data plus a DP generator
             trained on them): ε and δ are their composition, stated in ``parameters``.
``none``     no formal guarantee (non-private training, or a non-private input on the records).

Units: ``record`` (one image / lesion patch), ``patient``, ``site`` (a federated client).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from dpmed.errors import PrivacyError

KINDS = ("central", "local", "derived", "composed", "none")
UNITS = ("record", "patient", "site")


@dataclass(frozen=True)
class NonPrivateInput:
    """Something that touched data outside the mechanism, and where it came from."""

    what: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"what": self.what, "source": self.source}


@dataclass(frozen=True)
class Guarantee:
    """What one released artefact promises.

    Attributes
    ----------
    kind: one of :data:`KINDS`.
    unit: one of :data:`UNITS`: what differs between neighbouring datasets.
    epsilon: the ε that holds for the released artefact (``inf`` when ``kind == "none"``);
        for DP-SGD the accountant's ε for the steps actually run, never a target.
    delta: δ (0 for pure DP, ``None`` when ``kind == "none"``).
    mechanism: short name of the mechanism (``"dp-sgd"``, ``"cadp-laplace"``, ``"none"`` ...).
    parameters: the mechanism's own numbers, enough to recompute ε (for DP-SGD:
        ``noise_multiplier``, ``sample_rate``, ``steps``, ``max_grad_norm``, ``accountant``).
    released: what the guarantee covers being published.
    not_guaranteed: what it does not cover, in plain sentences.
    non_private_inputs: everything computed from data outside the mechanism.
    derived_from: the guarantees this one inherits (``derived``) or composes (``composed``).
    noise_source: where the randomness the guarantee rests on came from.
    epsilon_target: the target a calibration aimed at (informative; ``epsilon`` is what holds).
    """

    kind: str
    unit: str
    epsilon: float
    delta: float | None
    mechanism: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    released: str = ""
    not_guaranteed: tuple[str, ...] = ()
    non_private_inputs: tuple[NonPrivateInput, ...] = ()
    derived_from: tuple["Guarantee", ...] = ()
    noise_source: str | None = None
    epsilon_target: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise PrivacyError(f"guarantee kind {self.kind!r} is not one of {KINDS}")
        if self.unit not in UNITS:
            raise PrivacyError(f"guarantee unit {self.unit!r} is not one of {UNITS}")
        eps = float(self.epsilon)
        if math.isnan(eps) or eps < 0:
            raise PrivacyError(f"guarantee epsilon must be >= 0 (or inf), got {self.epsilon!r}")
        if self.kind == "none" and not math.isinf(eps):
            raise PrivacyError("a guarantee of kind 'none' has epsilon = inf")
        if self.kind != "none" and math.isinf(eps):
            raise PrivacyError(f"a {self.kind} guarantee needs a finite epsilon (use kind 'none')")
        if self.delta is not None and not (0.0 <= float(self.delta) < 1.0):
            raise PrivacyError(f"guarantee delta must be in [0, 1), got {self.delta!r}")
        if self.kind in ("derived", "composed") and not self.derived_from:
            raise PrivacyError(f"a {self.kind} guarantee names the guarantees it comes from (derived_from)")

    @property
    def holds(self) -> bool:
        """Whether a formal DP guarantee holds at all."""
        return self.kind != "none"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (nested guarantees included) for the card; ``inf`` stays a float."""
        return {
            "kind": self.kind,
            "unit": self.unit,
            "epsilon": float(self.epsilon),
            "delta": None if self.delta is None else float(self.delta),
            "epsilon_target": None if self.epsilon_target is None else float(self.epsilon_target),
            "mechanism": self.mechanism,
            "parameters": dict(self.parameters),
            "noise_source": self.noise_source,
            "released": self.released,
            "not_guaranteed": list(self.not_guaranteed),
            "non_private_inputs": [npi.to_dict() for npi in self.non_private_inputs],
            "derived_from": [g.to_dict() for g in self.derived_from],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Guarantee":
        """Inverse of :meth:`to_dict` (e.g. a card read back to derive from it)."""
        return cls(
            kind=data["kind"],
            unit=data["unit"],
            epsilon=float(data["epsilon"]),
            delta=None if data.get("delta") is None else float(data["delta"]),
            mechanism=data["mechanism"],
            parameters=dict(data.get("parameters") or {}),
            released=data.get("released", ""),
            not_guaranteed=tuple(data.get("not_guaranteed") or ()),
            non_private_inputs=tuple(NonPrivateInput(**d) for d in data.get("non_private_inputs") or ()),
            derived_from=tuple(cls.from_dict(d) for d in data.get("derived_from") or ()),
            noise_source=data.get("noise_source"),
            epsilon_target=None if data.get("epsilon_target") is None else float(data["epsilon_target"]),
        )


def no_guarantee(unit: str = "record", *, reason: str, released: str = "",
                 non_private_inputs: tuple[NonPrivateInput, ...] = (),
                 derived_from: tuple[Guarantee, ...] = ()) -> Guarantee:
    """The guarantee of an artefact that has none, with the reason first among what is not covered."""
    return Guarantee(kind="none", unit=unit, epsilon=math.inf, delta=None, mechanism="none",
                     released=released, not_guaranteed=(reason,), non_private_inputs=non_private_inputs,
                     derived_from=derived_from)


def post_processing(source: Guarantee, *, released: str, not_guaranteed: tuple[str, ...] = (),
                    non_private_inputs: tuple[NonPrivateInput, ...] = ()) -> Guarantee:
    """An artefact computed only from ``source``'s released output (and public inputs).

    Post-processing keeps ε, δ, kind of protection and unit. If ``source`` holds no guarantee,
    neither does the result.
    """
    if not source.holds:
        return no_guarantee(source.unit, reason="computed from an artefact that has no DP guarantee: "
                            + (source.not_guaranteed[0] if source.not_guaranteed else "none"),
                            released=released, non_private_inputs=non_private_inputs, derived_from=(source,))
    return Guarantee(kind="derived", unit=source.unit, epsilon=source.epsilon, delta=source.delta,
                     mechanism=f"post-processing of {source.mechanism}", parameters={},
                     released=released, not_guaranteed=tuple(source.not_guaranteed) + tuple(not_guaranteed),
                     non_private_inputs=tuple(source.non_private_inputs) + tuple(non_private_inputs),
                     derived_from=(source,), noise_source=source.noise_source)


def compose(guarantees: tuple[Guarantee, ...] | list[Guarantee], *, delta: float, released: str,
            accountant: str = "prv", not_guaranteed: tuple[str, ...] = (),
            non_private_inputs: tuple[NonPrivateInput, ...] = ()) -> Guarantee:
    """Several central mechanisms run on the SAME records (e.g. DP-SGD on the real data plus a DP
    generator trained on them, or a client's rounds trained by separate engines): one guarantee.

    When every part is DP-SGD with its step history (``parameters["history"]``, segments
    ``(σ, q, steps)``), the histories are composed by one accountant at ``delta``
    (:func:`dpmed.privacy.accounting.epsilon_for_history`), which is tighter than adding the ε's.
    Otherwise basic composition: ε and δ add up (``delta`` is then ignored).

    Raises :class:`PrivacyError` for parts with different units or of a kind that does not compose
    with a central guarantee (``local``). A part without a guarantee gives none.
    """
    from dpmed.privacy.accounting import epsilon_for_history

    parts = tuple(guarantees)
    if not parts:
        raise PrivacyError("compose needs at least one guarantee")
    units = {g.unit for g in parts}
    if len(units) != 1:
        raise PrivacyError(f"cannot compose guarantees of different units {sorted(units)}")
    unit = units.pop()
    npi = tuple(x for g in parts for x in g.non_private_inputs) + tuple(non_private_inputs)
    if not all(g.holds for g in parts):
        return no_guarantee(unit, reason="composed with an artefact that has no DP guarantee", released=released,
                            non_private_inputs=npi, derived_from=parts)
    if any(g.kind == "local" for g in parts):
        raise PrivacyError("a local guarantee does not compose with central ones into one (ε, δ); report them apart")
    histories = [g.parameters.get("history") for g in parts]
    if all(histories):
        history = [tuple(seg) for h in histories for seg in h]
        eps, dlt = epsilon_for_history(history, delta, accountant), float(delta)
        params = {"composition": f"{accountant} accountant over the concatenated DP-SGD histories",
                  "history": [list(seg) for seg in history], "accountant": accountant}
    else:
        eps, dlt = sum(g.epsilon for g in parts), sum(float(g.delta or 0.0) for g in parts)
        params = {"composition": "basic: epsilons and deltas add up"}
    sources = sorted({g.noise_source for g in parts if g.noise_source})
    return Guarantee(kind="composed", unit=unit, epsilon=eps, delta=dlt, mechanism="composition of "
                     + " + ".join(g.mechanism for g in parts), parameters=params, released=released,
                     not_guaranteed=tuple(dict.fromkeys(x for g in parts for x in g.not_guaranteed)) + tuple(not_guaranteed),
                     non_private_inputs=npi, derived_from=parts, noise_source="; ".join(sources) or None)
