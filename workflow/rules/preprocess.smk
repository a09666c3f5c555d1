# Preprocessing: one HDF5 cache per dataset and split. Only the dataset's `preprocess` block
# (and its kind) reach these jobs, so e.g. a new CT window reruns the CT chain and nothing else.


rule preprocess:
    input:
        manifest="results/{dataset}/manifest.parquet",
        sources=f"{PRIVATE}/{{dataset}}/sources.parquet",
    output:
        "results/{dataset}/preprocessed/{split}.h5",
    params:
        kind=lambda w: dataset_cfg(w.dataset)["kind"],
        preprocess=lambda w: canonical(dataset_cfg(w.dataset)["preprocess"]),
    threads: config["workers"]
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/preprocess_{split}.log",
    benchmark:
        "logs/{dataset}/preprocess_{split}.benchmark.tsv"
    script:
        "../scripts/preprocess.py"
