# Built-in demo cohorts: real DICOM / NIfTI files generated deterministically from a seed.


rule demo_cxr:
    output:
        "resources/demo/{cohort}/labels.csv",
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
        "resources/demo/ct/clinical.csv",
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
        "resources/demo/mammography/mass_case_description_train_set.csv",
        "resources/demo/mammography/mass_case_description_test_set.csv",
    params:
        demo=demo_params("mammography"),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/demo/mammography.log",
    script:
        "../scripts/demo_cohort.py"


rule demo_external_mammography:
    output:
        "resources/demo/external_mammography/external_case_description.csv",
    params:
        demo=demo_params("external_mammography"),
    conda:
        "../envs/dpmed.yaml"
    log:
        "logs/demo/external_mammography.log",
    script:
        "../scripts/demo_cohort.py"
