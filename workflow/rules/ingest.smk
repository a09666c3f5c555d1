# Ingestion: one canonical, pseudonymised manifest per dataset.


rule pseudonym_key:
    output:
        protected(f"{PRIVATE}/pseudonym.key"),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/pseudonym_key.log",
    script:
        "../scripts/pseudonym_key.py"


rule ingest:
    input:
        tables=ingest_tables,
        key=f"{PRIVATE}/pseudonym.key",
    output:
        manifest="results/{dataset}/manifest.parquet",
        rejected="results/{dataset}/rejected.csv",
        sources=f"{PRIVATE}/{{dataset}}/sources.parquet",
    params:
        dataset=lambda w: ingest_slice(w.dataset),
        on_bad_record=config["on_bad_record"],
    threads: config["workers"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/ingest.log",
    benchmark:
        "logs/{dataset}/ingest.benchmark.tsv"
    script:
        "../scripts/ingest.py"
