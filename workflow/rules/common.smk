# Shared set-up: config validation (defaults filled, unknown keys refused) and helpers.
import copy

from dpmed.config import load_schema, validate_config

validate_config(config, load_schema(workflow.source_path("../schemas/config.schema.yaml")))

DATASETS = list(config["datasets"])
SPLITS = ["train", "val", "test"]
PRIVATE = config["private_dir"]
DEMO_COHORTS = ["cxr", "cxr_public", "ct", "mammography"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    split="train|val|test",


def dataset_cfg(dataset):
    return config["datasets"][dataset]


def ingest_slice(dataset):
    """What ingestion depends on: the dataset's config without its preprocessing block."""
    cfg = copy.deepcopy(dataset_cfg(dataset))
    cfg.pop("preprocess", None)
    return cfg


def ingest_tables(wildcards):
    cfg = dataset_cfg(wildcards.dataset)
    if cfg["adapter"] == "cbis_ddsm":
        return [p for paths in cfg["description_csvs"].values() for p in paths]
    return [cfg["table"]]


def demo_params(cohort):
    """Each demo cohort gets its own seed offset: the public CXR cohort shares nothing with the private one."""
    return {
        "cohort": cohort,
        "seed": config["demo"]["seed"] + DEMO_COHORTS.index(cohort),
        **config["demo"][cohort],
    }
