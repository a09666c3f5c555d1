"""dpmed.privacy — accounting, σ calibration, model validation and the privacy card.

``validation`` imports torch; it is loaded lazily so that accounting/cards stay light.
"""

from dpmed.privacy.accounting import (  # noqa: F401
    ACCOUNTANTS,
    DPSGDAccountant,
    calibrate_noise_multiplier,
    epsilon_for_history,
    epsilon_spent,
)
from dpmed.privacy.card import (  # noqa: F401
    build_cadp_card,
    build_privacy_card,
    group_privacy,
    read_privacy_card,
    write_privacy_card,
)

__all__ = [
    "ACCOUNTANTS",
    "DPSGDAccountant",
    "calibrate_noise_multiplier",
    "epsilon_for_history",
    "epsilon_spent",
    "build_cadp_card",
    "build_privacy_card",
    "group_privacy",
    "read_privacy_card",
    "write_privacy_card",
    "assert_privatisable",
    "privatisation_problems",
]


def __getattr__(name):
    if name in ("assert_privatisable", "privatisation_problems"):
        from dpmed.privacy import validation

        return getattr(validation, name)
    raise AttributeError(name)
