"""The guarantee of what a federation releases after the last round (global decoder, synthetic data).

Each site's DP-SGD run is (ε_m, δ_m)-DP w.r.t. one record *of that site* (its card). A record
belongs to exactly one site, so adding or removing it changes one client's mechanism only; the
averaged decoder, every later round and every site's synthetic data are post-processing of the
clients' outputs. Hence the released artefacts are (max ε_m, max δ_m)-DP per record (parallel
composition over disjoint sites). Nothing is said about a whole site joining or leaving (unit
``site``): that would need client-level DP.
"""

from __future__ import annotations

from typing import Sequence

from dpmed.errors import PrivacyError
from dpmed.privacy.guarantee import Guarantee, NonPrivateInput, no_guarantee


def federation_guarantee(client_guarantees: Sequence[Guarantee], *, released: str,
                         non_private_inputs: Sequence[NonPrivateInput] = ()) -> Guarantee:
    """The per-record guarantee of an artefact computed from every client's DP output.

    Parameters
    ----------
    client_guarantees: one per site (the engine's card of that client), all with the same unit.
    released: what is released (e.g. "global CVAE decoder and site h3's synthetic embeddings").
    non_private_inputs: feature bounds, synthetic label distribution, aggregation weights
        treated as public (:meth:`FeatureBounds.non_private_input` ...).

    Raises
    ------
    PrivacyError: no client guarantee, or clients with different units.
    """
    if not client_guarantees:
        raise PrivacyError("a federation guarantee needs the guarantee of every client")
    units = {g.unit for g in client_guarantees}
    if len(units) > 1:
        raise PrivacyError(f"client guarantees have different units {sorted(units)}")
    unit = units.pop()
    npi = tuple(non_private_inputs)
    if not all(g.holds for g in client_guarantees):
        return no_guarantee(unit, reason="at least one site trained without a DP guarantee",
                            released=released, non_private_inputs=npi,
                            derived_from=tuple(client_guarantees))
    return Guarantee(
        kind="derived", unit=unit,
        epsilon=max(float(g.epsilon) for g in client_guarantees),
        delta=max(float(g.delta or 0.0) for g in client_guarantees),
        mechanism="post-processing of per-site dp-sgd (parallel composition over disjoint sites)",
        released=released,
        not_guaranteed=tuple(dict.fromkeys(
            ("a whole site's participation (unit 'site') is not protected",
             *(s for g in client_guarantees for s in g.not_guaranteed)))),
        non_private_inputs=tuple(dict.fromkeys(
            npi + tuple(x for g in client_guarantees for x in g.non_private_inputs))),
        derived_from=tuple(client_guarantees))
