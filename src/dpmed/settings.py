"""Typed settings from config mappings, and lazily imported package exports.

Every stage reads its block of the YAML config into a frozen dataclass. The rules are the
same everywhere, so they live here once: unknown keys are errors that name them and list the
allowed ones, required keys must be present, values are converted to the field's type, and a
dataclass' own ``__post_init__`` checks ranges.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from dpmed.errors import ConfigError


def settings_from_mapping(cls, mapping: Mapping[str, Any] | None, what: str, *, required: tuple[str, ...] = (),
                          convert: Mapping[str, Callable[[Any], Any]] | None = None, drop_none: bool = False):
    """Build the settings dataclass ``cls`` from a config mapping.

    ``what`` names the block in error messages. ``required`` keys must be given (not None);
    ``convert[key]`` turns a given value into the field's type (e.g. ``int`` for a YAML
    ``2.0``); ``drop_none`` leaves keys given as ``null`` at their defaults.

    Raises :class:`ConfigError` for a non-mapping, unknown or missing keys, and values that
    cannot be converted; range errors of ``cls.__post_init__`` propagate as they are.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what} settings must be a mapping, got {type(mapping).__name__}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(mapping) - known)
    if unknown:
        raise ConfigError(f"unknown {what} setting(s) {unknown}; allowed: {sorted(known)}")
    missing = [k for k in required if mapping.get(k) is None]
    if missing:
        raise ConfigError(f"{what} settings need {missing}")
    kw = {k: v for k, v in mapping.items() if not (drop_none and v is None)}
    try:
        for key, to_type in (convert or {}).items():
            if kw.get(key) is not None:
                kw[key] = to_type(kw[key])
        return cls(**kw)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {what} settings {dict(mapping)!r}: {e}") from None


def pair_of_floats(value) -> tuple[float, float]:
    """A two-element config list as a tuple of floats (ranges such as ``[0.7, 1.2]``)."""
    out = tuple(float(v) for v in value)
    if len(out) != 2:
        raise ValueError(f"expected two values, got {list(value)!r}")
    return out


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]):
    """``(__getattr__, __dir__, __all__)`` for a package whose names are imported on first use.

    ``exports`` maps each submodule to the names it provides. A process that needs one name
    (a Flower ClientApp started once per round, say) then imports one submodule, not all.
    """
    module_of = {name: mod for mod, names in exports.items() for name in names}
    names = sorted(module_of)

    def __getattr__(name: str):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)

    def __dir__():
        return names

    return __getattr__, __dir__, names
