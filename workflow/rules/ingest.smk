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
        private_dir=lambda w, input: os.path.dirname(input.key),
    threads: config["workers"]
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/dpmed.yaml"
    log:
        main="logs/{dataset}/ingest.log",
        # written only when ingestion stops on its data (e.g. every record rejected): Snakemake
        # deletes a failed job's outputs, results/{dataset}/rejected.csv included
        rejected="logs/{dataset}/rejected.csv",
    benchmark:
        "logs/{dataset}/ingest.benchmark.tsv"
    script:
        "../scripts/ingest.py"
