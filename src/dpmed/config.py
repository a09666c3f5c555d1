"""Load and validate the workflow configuration.

The schema (``workflow/schemas/config.schema.yaml``) is the single source of truth for keys and
defaults. Validation fills defaults in place and refuses unknown keys with a message that names
the offending key by its dotted path, so a typo in a config file is an error, never a silent
fallback to a default.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dpmed.errors import ConfigError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(jsonschema.Draft202012Validator)


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    # For oneOf/anyOf/allOf the most specific sub-error is the useful one.
    best = jsonschema.exceptions.best_match([error])
    where = _dotted(best.absolute_path)
    if best.validator == "additionalProperties":
        allowed = sorted(best.schema.get("properties", {}))
        extra = sorted(set(best.instance) - set(allowed)) if isinstance(best.instance, dict) else []
        keys = ", ".join(f"{where}.{k}" if best.absolute_path else k for k in extra)
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown config key {keys}{hint}"
    hint = _hint(best)
    return f"config key {where}: {best.message}" + (f" ({hint.strip()})" if hint else "")


def _hint(error: jsonschema.ValidationError) -> str:
    """The ``x-hint`` a schema gives for the key (or array item) that failed."""
    return error.schema.get("x-hint", "") if isinstance(error.schema, dict) else ""


def _check_no_nan(value: Any, path: tuple = ()) -> None:
    """JSON schema compares NaN with nothing, so a ``.nan`` would pass every bound: refuse it here."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"config key {_dotted(path)}: NaN is not a valid value")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_no_nan(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_no_nan(v, (*path, i))


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place (filling defaults) and return it.

    Raises :class:`ConfigError` naming the first offending key.
    """
    schema = load_schema() if schema is None else schema
    _check_no_nan(config)
    validator = _DefaultFillingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(_describe(errors[0]))
    _check_semantics(config)
    _check_references(config)
    return config


def _check_semantics(config: dict) -> None:
    """Constraints JSON schema cannot express."""
    for name, ds in config["datasets"].items():
        split = ds["split"]
        total = split["train"] + split["val"] + split["test"]
        if split["column"] is None and not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ConfigError(f"config key datasets.{name}.split: train + val + test must be 1, got {total:g}")
        grades = ds["grades"]
        if not grades["min"] < grades["positive_from"] <= grades["max"]:
            raise ConfigError(
                f"config key datasets.{name}.grades: need min < positive_from <= max, got {grades}"
            )
        bins = ds.get("age_groups", "quartiles" if ds["kind"] == "ct" else [0, 30, 60, 70, 80, 100])
        ds["age_groups"] = bins
        if isinstance(bins, list) and any(b >= a for a, b in zip(bins[1:], bins[:-1])):
            raise ConfigError(f"config key datasets.{name}.age_groups: bin edges must increase, got {bins}")
        if ds["kind"] == "ct":
            low, high = ds["preprocess"]["window"]
            if not low < high:
                raise ConfigError(f"config key datasets.{name}.preprocess.window: need low < high, got {[low, high]}")


def _check_study_b(config: dict, name: str, ds: dict) -> None:
    """Study B's references: a test-only external cohort and the generators' encoder."""
    datasets = config["datasets"]
    if ds["role"] == "test" and ds.get("classifier"):
        raise ConfigError(f"config key datasets.{name}.classifier: a test-only cohort (role: test) is never trained on")
    ext = ds.get("external")
    if ext is not None:
        if ext not in datasets or datasets[ext]["role"] != "test":
            raise ConfigError(f"config key datasets.{name}.external: {ext!r} must be a dataset with role: test")
        if list(datasets[ext]["labels"]) != list(ds["labels"]):
            raise ConfigError(f"config key datasets.{name}.external: {ext!r} has other labels")
    syn = ds.get("synthetic")
    if syn is not None:
        if ds["kind"] != "mammography" or len(ds["labels"]) != 1:
            raise ConfigError(f"config key datasets.{name}.synthetic: MCGAN generates mammography patches of one label")
        if syn.get("encoder") not in config["embeddings"]["encoders"]:
            raise ConfigError(f"config key datasets.{name}.synthetic.encoder: {syn.get('encoder')!r} is not an "
                              "embeddings.encoders entry")
        if not math.isfinite(float(syn["dp"].get("epsilon", math.inf))) or syn["dp"].get("delta") is None:
            raise ConfigError(f"config key datasets.{name}.synthetic.dp: DP-MCGAN needs a finite epsilon and a delta")


def _check_references(config: dict) -> None:
    """Cross-references between datasets (public cohorts, encoders) must resolve."""
    datasets = config["datasets"]

    def public(name: str, where: str) -> dict:
        if name not in datasets:
            raise ConfigError(f"config key {where}: no dataset named {name!r}")
        if datasets[name]["role"] != "public":
            raise ConfigError(f"config key {where}: dataset {name!r} must have role: public (it is used without privacy)")
        return datasets[name]

    for name, ds in datasets.items():
        clf = ds.get("classifier")
        if not clf:
            continue
        if ds["role"] == "public":
            raise ConfigError(f"config key datasets.{name}.classifier: public cohorts only serve pretraining")
        if clf["pretrain"]:
            src = public(clf["pretrain"]["dataset"], f"datasets.{name}.classifier.pretrain.dataset")
            if src["kind"] != ds["kind"] and not (src["kind"] == "radiograph" and ds["kind"] == "ct"):
                raise ConfigError(f"config key datasets.{name}.classifier.pretrain.dataset: a {src['kind']} cohort cannot pretrain a {ds['kind']} model")
        weights_from = clf["dp"]["class_weights_from"]
        if weights_from:
            src = public(weights_from, f"datasets.{name}.classifier.dp.class_weights_from")
            if list(src["labels"]) != list(ds["labels"]):
                raise ConfigError(f"config key datasets.{name}.classifier.dp.class_weights_from: {weights_from!r} has other labels")
    for name, ds in datasets.items():
        _check_study_b(config, name, ds)
    for name in config["embeddings"]["datasets"]:
        if name not in datasets:
            raise ConfigError(f"config key embeddings.datasets: no dataset named {name!r}")
        if datasets[name]["kind"] == "ct":
            raise ConfigError("config key embeddings.datasets: embeddings are 2D-encoder features; CT volumes are not supported")
    for enc, spec in config["embeddings"]["encoders"].items():
        where = f"embeddings.encoders.{enc}"
        if "pretrained" in spec:
            ds = datasets.get(spec["pretrained"])
            if not ds or not (ds.get("classifier") or {}).get("pretrain"):
                raise ConfigError(f"config key {where}.pretrained: {spec['pretrained']!r} is not a dataset with classifier.pretrain")
        elif not {"module", "weights"} <= set(spec):
            raise ConfigError(f"config key {where}: give either pretrained: <dataset> or module + weights")


def read_yaml(path: str | Path) -> dict:
    """A YAML config file; a syntax error names the file, line and column."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path} line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None


def load_config(path: str | Path) -> dict:
    return validate_config(read_yaml(path))


def config_slice(config: dict, *keys: str) -> Any:
    """A deep copy of a nested config value (params must not alias the live config)."""
    value = config
    for key in keys:
        value = value[key]
    return copy.deepcopy(value)


def main(argv: list[str] | None = None) -> int:
    """``python -m dpmed.config my.yaml``: check a config file as the workflow will read it.

    Snakemake reports a YAML syntax error in a ``--configfile`` without file or line; this
    names both, then validates the keys. Prints one line; returns 0 when the config is valid.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m dpmed.config CONFIG.yaml", file=sys.stderr)
        return 2
    try:
        config = load_config(args[0])
    except (ConfigError, OSError) as err:
        print(f"{err}", file=sys.stderr)
        return 1
    print(f"{args[0]}: valid ({len(config['datasets'])} dataset(s): {', '.join(config['datasets'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
