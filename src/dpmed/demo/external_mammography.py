"""An external mammography test cohort from another site (BCDR-like), written as DICOM.

Study B tests its classifiers on a second data set from another hospital (BCDR) with the same
label meaning (biopsy-proven malignant vs benign masses). This demo cohort stands in for it:
the same anatomy and lesion model as the CBIS-DDSM-like demo
(:mod:`dpmed.demo.mammography`), acquired by a different :class:`~dpmed.demo.mammography.Site`:

==================  ==========================  ============================================
                    development (CBIS-like)      external (this module, defaults)
==================  ==========================  ============================================
detector            12/16-bit, MONOCHROME2       14-bit, MONOCHROME1 (inverted grey scale)
contrast            linear                       gamma 0.75 (flatter dense-tissue contrast)
noise               anatomy + age-related        + Gaussian read-out noise, sd 0.015
pixel spacing       (not stated; ~0.05 mm)       0.07 mm (lesions 0.71× as many pixels)
malignant fraction  0.42                         0.50
==================  ==========================  ============================================

Description CSV (one, ``external_case_description.csv``)
--------------------------------------------------------
Exactly the CBIS-DDSM mass-description columns (:data:`~dpmed.demo.mammography.CBIS_COLUMNS`),
one row per mass: ``patient_id`` (``X_00001``…), ``breast_density`` (BI-RADS 1–4),
``left or right breast``, ``image view`` (CC/MLO), ``abnormality id``, ``abnormality type``
(``mass``), ``mass shape``, ``mass margins``, ``assessment`` (BI-RADS), ``pathology``
(``MALIGNANT`` / ``BENIGN`` / ``BENIGN_WITHOUT_CALLBACK``), ``subtlety`` (1–5), and the image,
crop and ROI-mask paths relative to the CSV's folder. So the existing ``cbis_ddsm`` ingestion
adapter reads it unchanged, with the CSV listed as the test split::

    adapter: cbis_ddsm
    root: resources/demo/external_mammography
    labels: [malignant]
    description_csvs: {test: [resources/demo/external_mammography/external_case_description.csv]}

(The real BCDR distributes its outlines and features in its own CSVs; a user with BCDR
converts them to these columns, or an adapter does.) Every image carries PatientAge; the
density is in the CSV, as for CBIS-DDSM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ._demographics import sample_age_screening
from .mammography import CBIS_COLUMNS, Site, sample_patient, write_patient

__all__ = ["EXTERNAL_SITE", "EXTERNAL_CSV", "generate_external_mammography_cohort"]

EXTERNAL_SITE = Site(manufacturer="dpmed synthetic external site", bits=(14, 14), photometric="MONOCHROME1",
                     gamma=0.75, noise=0.015, pixel_spacing_mm=0.07, p_malignant=0.5,
                     institution="External Demo Breast Centre")
EXTERNAL_CSV = "external_case_description.csv"


def generate_external_mammography_cohort(out_dir, *, n_patients: int, image_size=(512, 384), seed: int,
                                         site: Site = EXTERNAL_SITE) -> pd.DataFrame:
    """Write the external test cohort to ``out_dir`` and return its description table.

    Layout (``P`` = ``X_00001``…)::

        out_dir/external_case_description.csv
        out_dir/External_{P}_{LEFT|RIGHT}_{CC|MLO}/1-1.dcm               full mammogram (MG)
        out_dir/External_{P}_{LEFT|RIGHT}_{CC|MLO}_{abn}/ROI-mask.dcm    0/255 mask, same size
        out_dir/External_{P}_{LEFT|RIGHT}_{CC|MLO}_{abn}/cropped.dcm     bounding-box crop

    Parameters
    ----------
    n_patients: 1..99999. image_size: (rows, columns). seed: all randomness.
    site: the acquisition (default :data:`EXTERNAL_SITE`).

    Same arguments give byte-identical files; the random stream is separate from the
    development cohort's, so the same seed gives other patients.
    """
    if not 0 < n_patients <= 99_999:
        raise ValueError("n_patients must be in 1..99999 (patient IDs have five digits)")
    H, W = (int(s) for s in image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 0xE47])
    ages = sample_age_screening(rng, n_patients)
    rows = []
    for p in range(n_patients):
        patient = sample_patient(rng, f"X_{p + 1:05d}", int(ages[p]), site)
        rows += write_patient(out, rng, patient, prefix="External", shape=(H, W), seed=seed, index=p,
                              site=site, uid_prefix=("external",))
    table = pd.DataFrame(rows, columns=CBIS_COLUMNS)
    table.to_csv(out / EXTERNAL_CSV, index=False)
    return table
