# Bootstrapped subgroup evaluation of every model, then per-dataset tables and figures.
# Both are cheap: local rules, never queued on a cluster.


localrules:
    evaluate_classifier,
    summarise_dataset,


rule evaluate_classifier:
    input:
        predictions=f"{classifier_dir('{dataset}')}/predictions.parquet",
    output:
        "results/{dataset}/evaluation/{method}/eps_{eps}/seed_{seed}/metrics.parquet",
    params:
        evaluation=evaluation_params,
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/evaluation/{method}_eps_{eps}_seed_{seed}.log",
    script:
        "../scripts/evaluate_classifier.py"


rule summarise_dataset:
    input:
        metrics=lambda w: [run["metrics"] for run in summary_runs(w.dataset)],
        predictions=lambda w: [run["predictions"] for run in summary_runs(w.dataset)],
        manifest="results/{dataset}/manifest.parquet",
    output:
        **{
            name.replace(".", "_"): report(
                f"results/{{dataset}}/summary/{name}",
                caption=f"../report/{name.rsplit('.', 1)[0]}.rst",
                category="{dataset}",
                subcategory="Figures" if name.endswith(".png") else "Tables",
            )
            for name in SUMMARY_FILES
        },
    params:
        evaluation=evaluation_params,
        runs=lambda w: summary_runs(w.dataset),
        spread=lambda w: dataset_spread(w.dataset),
        table_method=lambda w: run_methods(w.dataset)[0],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/summary.log",
    script:
        "../scripts/summarise_dataset.py"
