# Built-in demo cohorts: real DICOM / NIfTI files generated deterministically from a seed.
# Each cohort gets its own seed offset so the public CXR cohort shares no patients or images
# with the private one.


def demo_params(cohort):
    return {
        "cohort": cohort,
        "seed": config["demo"]["seed"] + DEMO_COHORTS.index(cohort),
        **config["demo"][cohort],
    }


rule demo_cxr:
    output:
        "results/demo/{cohort}/labels.csv",
    wildcard_constraints:
        cohort="cxr|cxr_public",
    params:
        demo=lambda w: demo_params(w.cohort),
    log:
        "logs/demo/{cohort}.log",
    script:
        "../scripts/demo_cohort.py"


rule demo_ct:
    output:
        "results/demo/ct/clinical.csv",
    params:
        demo=demo_params("ct"),
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
    log:
        "logs/demo/mammography.log",
    script:
        "../scripts/demo_cohort.py"
