# dpmed: what privacy costs in medical-imaging AI — accuracy and subgroup fairness.
# Stages: demo cohorts -> ingestion (manifests) -> preprocessing (HDF5 caches) -> classifiers at
# each epsilon (+ public pretraining, embeddings) -> bootstrapped subgroup evaluation -> summary.
# Run:  snakemake --cores all            (default config: built-in demo cohorts)
#       snakemake --configfile config/tiny.yaml --cores 2
#       snakemake --configfile my.yaml --cores all   (my.yaml names its own datasets: only those run)
import os

from snakemake.utils import min_version

min_version("9.0")


# The default config is the demo. A config of one's own that names `datasets` stands alone
# (keys it leaves out take the schema's defaults): Snakemake would otherwise merge the demo's
# datasets into it and run the whole demo along with the user's data.
if "datasets" not in config:
    from dpmed.config import read_yaml

    if os.path.exists("config/config.yaml"):
        read_yaml("config/config.yaml")  # a YAML syntax error named by file and line (Snakemake's is not)

    configfile: "config/config.yaml"



report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/report_common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/cadp.smk"  # before train.smk: registers the method cadp of train_classifier
include: "workflow/rules/generate_common.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/federated.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/audit.smk"


rule all:
    input:
        manifests=expand("results/{dataset}/manifest.parquet", dataset=DATASETS),
        caches=[
            f"results/{dataset}/preprocessed/{split}.h5"
            for dataset in DATASETS
            for split in SPLITS
        ],
        summaries=[
            f"results/{dataset}/summary/{name}"
            for dataset in CLASSIFIER_DATASETS
            for name in SUMMARY_FILES
        ],
        comparison=comparison_targets(),
        audit=audit_targets(),
        embeddings=[
            f"results/{dataset}/embeddings/{encoder}.h5"
            for dataset in config["embeddings"]["datasets"]
            for encoder in config["embeddings"]["encoders"]
        ],
        cadp=cadp_targets(),
        study_b=generate_outputs(),
        federated=federated_targets(),
    default_target: True
