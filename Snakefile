# dpmed: what privacy costs in medical-imaging AI — accuracy and subgroup fairness.
# Stages: demo cohorts -> ingestion (manifests) -> preprocessing (HDF5 caches) -> ...
# Run:  snakemake --cores all            (default config: built-in demo cohorts)
#       snakemake --configfile config/tiny.yaml --cores 2
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/preprocess.smk"


rule all:
    input:
        manifests=expand("results/{dataset}/manifest.parquet", dataset=DATASETS),
        caches=[
            f"results/{dataset}/preprocessed/{split}.h5"
            for dataset in DATASETS
            for split in SPLITS
        ],
    default_target: True
