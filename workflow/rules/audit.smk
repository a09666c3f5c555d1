# Empirical privacy audit (issue 12): per audited (method, eps, seed) one canary training job with
# the production job's inputs and params (the same training function), then the dataset's audit
# tables. Included after train.smk: the methods a rule audits are computed when this file is parsed.
# Model families: `audit_classifier` audits the methods trained by `train_classifier` (DP-SGD
# classifiers); other families register their own audit rule the same way.
# Functions: workflow/rules/report_common.smk.


localrules:
    summarise_audit,


rule audit_classifier:
    wildcard_constraints:
        method=methods_of_rule("train_classifier"),
    input:
        unpack(method_inputs),
        # the production model of the same method, eps and seed: the reference that calibrates
        # each canary's score (trained without the flips, independent of the inclusion mask)
        reference=f"{classifier_dir('{dataset}')}/model.pt",
    output:
        audit=f"{audit_dir()}/audit.json",
        privacy=f"{audit_dir()}/privacy.json",
        history=f"{audit_dir()}/history.csv",
        model=f"{audit_private_dir()}/model.pt",
        mask=f"{audit_private_dir()}/mask.parquet",
    params:
        training=audit_training_params,
        audit=audit_settings,
        # both derived from an output path (snakemake --lint): private_dir/audit/{dataset}/{method}/eps/seed
        private_dir=lambda w, output: str(Path(output.mask).parents[5]),
        work=lambda w, output: str(Path(output.mask).parent),
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/audit/{method}_eps_{eps}_seed_{seed}.log",
    benchmark:
        "logs/{dataset}/audit/{method}_eps_{eps}_seed_{seed}.benchmark.tsv"
    script:
        "../scripts/audit_classifier.py"


rule summarise_audit:
    input:
        audits=lambda w: [f"{audit_dir(w.dataset, m, e, s)}/audit.json" for m, e, s in audit_runs(w.dataset)],
        metrics=lambda w: [f"results/{w.dataset}/evaluation/{m}/eps_{e}/seed_{s}/metrics.parquet"
                           for m, e, s in audit_runs(w.dataset)],
        memorisation=lambda w: list(memorisation_inputs(w.dataset).values()),
    output:
        audit_csv=report("results/{dataset}/audit/audit.csv", caption="../report/audit.rst",
                         category="{dataset}", subcategory="Privacy audit"),
        audit_md="results/{dataset}/audit/audit.md",
        subgroups_csv=report("results/{dataset}/audit/audit_subgroups.csv",
                             caption="../report/audit_subgroups.rst", category="{dataset}",
                             subcategory="Privacy audit"),
        subgroups_md="results/{dataset}/audit/audit_subgroups.md",
        memorisation=report("results/{dataset}/audit/memorisation.md", caption="../report/memorisation.rst",
                            category="{dataset}", subcategory="Privacy audit"),
    params:
        runs=lambda w: [{"method": m, "eps": e, "seed": s,
                         "audit": f"{audit_dir(w.dataset, m, e, s)}/audit.json",
                         "metrics": f"results/{w.dataset}/evaluation/{m}/eps_{e}/seed_{s}/metrics.parquet"}
                        for m, e, s in audit_runs(w.dataset)],
        memorisation=lambda w: memorisation_inputs(w.dataset),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/audit/summary.log",
    script:
        "../scripts/summarise_audit.py"
