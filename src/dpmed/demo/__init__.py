"""dpmed.demo: deterministic synthetic cohorts for running the pipeline without data.

* :func:`generate_cxr_cohort` — chest radiographs (DICOM DX/CR) with 8 graded findings; call it
  twice with different ``id_prefix``/``seed`` for the private and the public (pretraining) cohort.
* :func:`generate_ct_cohort` — abdominal CT volumes (NIfTI, HU) with PDAC labels.
* :func:`generate_mammography_cohort` — CBIS-DDSM-like mass cases (DICOM MG + ROI masks + CSVs).
* :func:`generate_external_mammography_cohort` — an external test site (BCDR-like): other detector,
  contrast, noise and pixel spacing, same lesion model and labels, CBIS-format CSV.
"""

from .ct import generate_ct_cohort
from .cxr import generate_cxr_cohort
from .external_mammography import generate_external_mammography_cohort
from .mammography import generate_mammography_cohort

__all__ = ["generate_cxr_cohort", "generate_ct_cohort", "generate_external_mammography_cohort",
           "generate_mammography_cohort"]
