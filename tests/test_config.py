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


@pytest.mark.parametrize("path", ["config/paper-cxr.yaml", "config/paper-ct.yaml", "config/paper-mammography.yaml"])
def test_paper_configs_validate_and_carry_the_studies_numbers(path):
    cfg = load_config(path)
    cadp_sources = {d["cadp"]["inn_from"] for d in cfg["datasets"].values() if d.get("cadp")}
    for name, ds in cfg["datasets"].items():
        if ds["kind"] == "radiograph":  # study D (content-aware DP) runs at its paper's 128 px
            assert ds["preprocess"]["size"] == (128 if ds.get("cadp") or name in cadp_sources else 512)
        if ds.get("cadp"):
            assert ds["cadp"]["inn"] == {"stages": 4, "blocks_per_stage": 4, "conv_width": 128, "fc_blocks": 4,
                                         "fc_width": 1024, "clamp": 1.5, "seed": 0}
            assert ds["classifier"]["epsilons"] == [0.2, 0.5, 1.0, 2.0, 3.0, 6.0, 10.0]
            assert (ds["cadp"]["training"]["lr"], ds["cadp"]["training"]["batch_size"]) == (3e-4, 64)
            assert ds["cadp"]["privatise"]["scale_rule"] == "two_s_over_eps"
        if ds["kind"] == "ct":
            assert ds["preprocess"] == {"window": [-150, 250], "shape": [224, 224, 128]}
            assert ds["classifier"]["dp"]["delta"] == 1e-3
        if ds["kind"] == "mammography":
            assert ds["preprocess"] == {"margin": 60, "min_side": 128, "size": 128}
    if "cxr" in cfg["datasets"]:
        clf = cfg["datasets"]["cxr"]["classifier"]
        assert clf["epsilons"] == [0.29, 0.54, 1.06, 2.04, 4.71, 7.89]
        assert (clf["dp"]["delta"], clf["dp"]["max_grad_norm"], clf["dp"]["epochs"]) == (6e-6, 1.5, 150)


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


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys):
    path = tmp_path / "my.yaml"
    path.write_text("datasets:\n  cxr:\n    kind: radiograph\n    labels: [a, b\n    table: t.csv\n")
    with pytest.raises(ConfigError, match=rf"{path} line 5, column \d+: YAML syntax error"):
        load_config(path)
    from dpmed.config import main

    assert main([str(path)]) == 1
    assert f"{path} line 5" in capsys.readouterr().err


@pytest.mark.parametrize(
    "classifier, message",
    [
        ({"dp": {"delta": 0.5}}, "dp.delta: 0.5 is greater than or equal to the maximum of 0.1 .*far below 1/N"),
        ({"dp": {"delta": 0.0}}, "dp.delta: 0.0 is less than or equal to the minimum of 0"),
        ({"epsilons": []}, "epsilons: \\[\\] should be non-empty .*non-private reference"),
        ({"epsilons": [float("inf")]}, "epsilons.0: inf is greater than the maximum .*finite budgets only"),
        ({"epsilons": [1.0, float("nan")]}, "epsilons.1: NaN is not a valid value"),
        ({"epsilons": [0.0]}, "epsilons.0: 0.0 is less than or equal to the minimum of 0"),
    ],
)
def test_privacy_settings_limits(classifier, message):
    with pytest.raises(ConfigError, match=f"config key datasets.cxr.classifier.{message}"):
        validate_config(_minimal(classifier=classifier))
    assert validate_config(_minimal(classifier={"epsilons": [0.5, 8], "dp": {"delta": 1e-5}}))


def test_split_min_patients_default_and_bounds():
    assert validate_config(_minimal())["datasets"]["cxr"]["split"]["min_patients"] == 1
    with pytest.raises(ConfigError, match="split.min_patients"):
        validate_config(_minimal(split={"min_patients": -1}))


@pytest.mark.parametrize("change, message", [
    (lambda c: c["datasets"]["mammography_external"].update(role="private"), "must be a dataset with role: test"),
    (lambda c: c["datasets"]["mammography"].update(external="cxr"), "must be a dataset with role: test"),
    (lambda c: c["datasets"]["mammography"]["synthetic"].update(encoder="nope"), "not an embeddings.encoders entry"),
    (lambda c: c["datasets"]["mammography"]["synthetic"]["dp"].pop("delta"), "finite epsilon and a delta"),
])
def test_study_b_references_are_checked(change, message):
    cfg = load_config("config/tiny.yaml")
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_every_gpu_rule_has_a_gpu_block_in_the_slurm_profile():
    """A rule that asks for `training.gpu` GPUs gets one on a cluster only through its block in
    profiles/slurm/config.yaml (the SLURM test runs a subset of the rules, so this checks all)."""
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    gpu_rules = set()
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            name = re.match(r"rule (\w+):", block)
            if name and re.search(r"^\s+gpu=config\[\"training\"\]\[\"gpu\"\]", block, flags=re.M):
                gpu_rules.add(name.group(1))
    assert {"train_classifier", "train_generator", "train_inn"} <= gpu_rules
    profile = (repo / "profiles" / "slurm" / "config.yaml").read_text()
    with_block = set(re.findall(r"^  (\w+): \?gpu_job\(", profile, flags=re.M))
    assert gpu_rules <= with_block, f"GPU rules without a block in profiles/slurm: {sorted(gpu_rules - with_block)}"
