# One page per dataset with every method the config ran (issue 12): utility, worst-group AUROC
# and the largest parity difference against epsilon, each method's kind of guarantee read from
# its privacy cards, and the best model per epsilon among guarantees at least as strong.
# Generic over the method registry: whatever summary_runs() lists is compared.
# Functions: workflow/rules/report_common.smk.


localrules:
    compare_methods,


rule compare_methods:
    input:
        metrics=lambda w: [run["metrics"] for run in comparison_runs(w.dataset)],
        privacy=lambda w: [run["privacy"] for run in comparison_runs(w.dataset)],
    output:
        comparison_csv=report("results/{dataset}/comparison/comparison.csv", caption="../report/comparison_table.rst",
                              category="{dataset}", subcategory="Comparison of mechanisms"),
        comparison_md="results/{dataset}/comparison/comparison.md",
        best_csv=report("results/{dataset}/comparison/best_by_epsilon.csv", caption="../report/best_by_epsilon.rst",
                        category="{dataset}", subcategory="Comparison of mechanisms"),
        best_md="results/{dataset}/comparison/best_by_epsilon.md",
        figure=report("results/{dataset}/comparison/comparison.png", caption="../report/comparison_figure.rst",
                      category="{dataset}", subcategory="Comparison of mechanisms"),
    params:
        comparison=comparison_params,
        runs=lambda w: comparison_runs(w.dataset),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/{dataset}/comparison.log",
    script:
        "../scripts/compare_methods.py"
