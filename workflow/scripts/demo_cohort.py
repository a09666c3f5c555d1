"""Generate one demo cohort into a temporary folder, then move it into place whole."""

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.demo import generate_ct_cohort, generate_cxr_cohort, generate_mammography_cohort  # noqa: E402

log = _log.setup(snakemake)  # noqa: F821
params = dict(snakemake.params.demo)  # noqa: F821
cohort = params.pop("cohort")
final = Path(snakemake.output[0]).parent  # noqa: F821
partial = final.with_name(f".{final.name}.partial")
shutil.rmtree(partial, ignore_errors=True)

if cohort in ("cxr", "cxr_public"):
    table = generate_cxr_cohort(
        partial,
        n_patients=params["n_patients"],
        images_per_patient=tuple(params["images_per_patient"]),
        image_size=params["image_size"],
        seed=params["seed"],
        id_prefix="CXR" if cohort == "cxr" else "PUB",
    )
elif cohort == "ct":
    table = generate_ct_cohort(
        partial,
        n_patients=params["n_patients"],
        shape=tuple(params["shape"]),
        seed=params["seed"],
        tumour_fraction=params["tumour_fraction"],
    )
elif cohort == "external_mammography":
    from dpmed.demo.external_mammography import generate_external_mammography_cohort

    table = generate_external_mammography_cohort(
        partial, n_patients=params["n_patients"], image_size=tuple(params["image_size"]), seed=params["seed"]
    )
else:
    table = generate_mammography_cohort(
        partial,
        n_patients=params["n_patients"],
        image_size=tuple(params["image_size"]),
        seed=params["seed"],
        test_fraction=params["test_fraction"],
    )

shutil.rmtree(final, ignore_errors=True)
os.replace(partial, final)
log.info("demo cohort %s: %d table rows written to %s", cohort, len(table), final)
