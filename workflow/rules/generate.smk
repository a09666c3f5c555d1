# Study B's rules: generators, synthetic sets, fidelity, Table 1 (helpers and the five modes'
# methods in generate_common.smk, included before train.smk).




rule train_generator:
    input:
        unpack(generator_inputs),
    output:
        generator=f"{generator_dir('{dataset}')}/generator.pt",
        history=f"{generator_dir('{dataset}')}/history.csv",
        privacy=f"{generator_dir('{dataset}')}/privacy.json",
    params:
        generator=generator_params,
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=8000,
        runtime=1440,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/generators/{variant}.log",
    benchmark:
        "logs/{dataset}/generators/{variant}.benchmark.tsv"
    script:
        "../scripts/train_generator.py"


rule sample_synthetic:
    input:
        generator=f"{generator_dir('{dataset}')}/generator.pt",
        manifest="results/{dataset}/manifest.parquet",
        train="results/{dataset}/preprocessed/train.h5",
    output:
        synthetic=f"{synthetic_dir('{dataset}')}/synthetic.h5",
        manifest=f"{synthetic_dir('{dataset}')}/manifest.parquet",
        combined=f"{synthetic_dir('{dataset}')}/real_and_synthetic.h5",
        privacy=f"{synthetic_dir('{dataset}')}/privacy.json",
    params:
        n_per_class=lambda w: synthetic_cfg(w.dataset)["n_per_class"],
        seed=lambda w: synthetic_cfg(w.dataset)["seed"],
        label=lambda w: dataset_cfg(w.dataset)["labels"][0],
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/synthetic/{variant}.log",
    benchmark:
        "logs/{dataset}/synthetic/{variant}.benchmark.tsv"
    script:
        "../scripts/sample_synthetic.py"


rule synthetic_fidelity:
    input:
        synthetic=expand(f"{synthetic_dir('{{dataset}}')}/synthetic.h5", variant=GAN_VARIANTS),
        synthetic_manifests=expand(f"{synthetic_dir('{{dataset}}')}/manifest.parquet", variant=GAN_VARIANTS),
        manifest="results/{dataset}/manifest.parquet",
        encoder=fidelity_encoder,
        **{split: f"results/{{dataset}}/preprocessed/{split}.h5" for split in SPLITS},
    output:
        fidelity=report("results/{dataset}/synthetic/fidelity.csv", caption="../report/fidelity.rst",
                        category="{dataset}", subcategory="Synthetic data"),
        memorisation=report("results/{dataset}/synthetic/memorisation.csv", caption="../report/memorisation.rst",
                            category="{dataset}", subcategory="Synthetic data"),
        grid=report("results/{dataset}/synthetic/real_vs_synthetic.png", caption="../report/real_vs_synthetic.rst",
                    category="{dataset}", subcategory="Synthetic data"),
    params:
        variants=GAN_VARIANTS,
        label=lambda w: dataset_cfg(w.dataset)["labels"][0],
        fidelity=lambda w: canonical(synthetic_cfg(w.dataset)["fidelity"]),
        device=config["training"]["device"],
    threads: config["training"]["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=config["training"]["gpu"],
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/synthetic/fidelity.log",
    benchmark:
        "logs/{dataset}/synthetic/fidelity.benchmark.tsv"
    script:
        "../scripts/synthetic_fidelity.py"


localrules:
    study_b_summary,


rule study_b_summary:
    input:
        predictions=lambda w: [run["predictions"] for run in summary_runs(w.dataset)],
        cards=lambda w: [run["predictions"].replace("predictions.parquet", "privacy.json")
                         for run in summary_runs(w.dataset)],
    output:
        table_csv=report("results/{dataset}/summary/study_b_table1.csv", caption="../report/study_b_table1.rst",
                         category="{dataset}", subcategory="Tables"),
        table_md="results/{dataset}/summary/study_b_table1.md",
        figure=report("results/{dataset}/summary/auprc_vs_epsilon_by_mode.png",
                      caption="../report/auprc_vs_epsilon_by_mode.rst", category="{dataset}", subcategory="Figures"),
    params:
        runs=lambda w: summary_runs(w.dataset),
        evaluation=evaluation_params,
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/study_b_summary.log",
    script:
        "../scripts/study_b_summary.py"
