"""Config validation: defaults filled, unknown keys named, semantic checks."""

import pytest

from dpmed.config import load_config, validate_config
from dpmed.errors import ConfigError


def _minimal(**ds):
    return {"datasets": {"cxr": {"kind": "radiograph", "adapter": "dicom_folder", "labels": ["a"], "table": "t.csv", **ds}}}


@pytest.mark.parametrize("path", ["config/config.yaml", "config/tiny.yaml"])
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg["on_bad_record"] == "error"
    assert {"cxr", "cxr_public", "ct", "mammography"} <= set(cfg["datasets"])


def test_defaults_filled():
    cfg = validate_config(_minimal())
    ds = cfg["datasets"]["cxr"]
    assert ds["preprocess"] == {"size": 512}
    assert ds["grades"] == {"min": 0, "max": 4, "positive_from": 2}
    assert ds["split"]["seed"] == 0 and ds["role"] == "private"
    assert ds["age_groups"] == [0, 30, 60, 70, 80, 100]
    assert cfg["private_dir"] == "private" and cfg["demo"]["cxr"]["n_patients"] == 600


@pytest.mark.parametrize(
    "cfg, message",
    [
        (_minimal(preprocess={"sise": 3}), "unknown config key datasets.cxr.preprocess.sise"),
        ({**_minimal(), "on_bad_recrod": "skip"}, "unknown config key on_bad_recrod"),
        ({**_minimal(), "on_bad_record": "ignore"}, "config key on_bad_record"),
        (_minimal(split={"train": 0.5, "val": 0.1, "test": 0.1}), "train \\+ val \\+ test must be 1"),
        (_minimal(grades={"min": 0, "max": 4, "positive_from": 5}), "positive_from"),
        (_minimal(age_groups=[0, 50, 40]), "bin edges must increase"),
        ({"datasets": {"ct": {"kind": "ct", "adapter": "nifti_clinical", "labels": ["p"], "table": "t",
                              "preprocess": {"window": [250, -150]}}}}, "need low < high"),
        ({"datasets": {"m": {"kind": "mammography", "adapter": "cbis_ddsm", "labels": ["malignant"]}}}, "config key datasets.m"),
    ],
)
def test_bad_configs_name_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)
