# Study C: federated data sharing with DP conditional VAEs on frozen-encoder embeddings, one job
# per (dataset, eps, seed) running every method over the same sites (DP-CVAE, DP-CGAN, FedAvg,
# FedProx, local-only), then a per-dataset summary. The federation's per-site classifier of
# `fed_cvae` is also written in the classifiers layout, so it is evaluated and compared like
# every other method. All jobs are CPU-sized (MLPs on embeddings); none declares a GPU.

include: "federated_common.smk"


localrules:
    summarise_federated,


rule federate:
    input:
        unpack(federate_inputs),
    output:
        per_site=f"{fed_dir('{dataset}')}/per_site.csv",
        subgroups=f"{fed_dir('{dataset}')}/subgroups.parquet",
        cards=directory(f"{fed_dir('{dataset}')}/cards"),
        predictions=f"{classifier_dir('{dataset}', 'fed_cvae')}/predictions.parquet",
        privacy=f"{classifier_dir('{dataset}', 'fed_cvae')}/privacy.json",
        history=f"{classifier_dir('{dataset}', 'fed_cvae')}/history.csv",
        model=f"{classifier_dir('{dataset}', 'fed_cvae')}/model.pt",
    params:
        job=federate_params,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/federated/eps_{eps}_seed_{seed}.log",
    benchmark:
        "logs/{dataset}/federated/eps_{eps}_seed_{seed}.benchmark.tsv"
    script:
        "../scripts/federate.py"


rule summarise_federated:
    input:
        per_site=lambda w: [f"{fed_dir(w.dataset, e, s)}/per_site.csv" for e in fed_eps_labels() for s in SEEDS],
        subgroups=lambda w: [f"{fed_dir(w.dataset, e, s)}/subgroups.parquet" for e in fed_eps_labels() for s in SEEDS],
    output:
        **{
            key: report(f"results/{{dataset}}/federated/summary/{name}", caption=f"../report/{rst}",
                        category="{dataset}", subcategory=f"Federated (study C) {sub}")
            for key, (name, rst, sub) in FED_SUMMARY.items()
        },
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/federated/summary.log",
    script:
        "../scripts/summarise_federated.py"
