# Built-in demo cohorts: real DICOM / NIfTI files generated deterministically from a seed.


rule demo_cxr:
    output:
        "results/demo/{cohort}/labels.csv",
    wildcard_constraints:
        cohort="cxr|cxr_public",
    params:
        demo=lambda w: demo_params(w.cohort),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/demo/{cohort}.log",
    script:
        "../scripts/demo_cohort.py"


rule demo_ct:
    output:
        "results/demo/ct/clinical.csv",
    params:
        demo=demo_params("ct"),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/demo/ct.log",
    script:
        "../scripts/demo_cohort.py"


rule demo_mammography:
    output:
        "results/demo/mammography/mass_case_description_train_set.csv",
        "results/demo/mammography/mass_case_description_test_set.csv",
    params:
        demo=demo_params("mammography"),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/demo/mammography.log",
    script:
        "../scripts/demo_cohort.py"
