"""External (BCDR-like) mammography demo site, and demographics of the mammography demo for
subgroup evaluation: DICOM headers, CBIS-format CSV read by the unchanged cbis_ddsm adapter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest

from dpmed.config import validate_config
from dpmed.demo import generate_external_mammography_cohort, generate_mammography_cohort
from dpmed.demo import mammography as mg_mod
from dpmed.demo.external_mammography import EXTERNAL_CSV, EXTERNAL_SITE
from dpmed.io.dicom import read_dicom_image
from dpmed.io.ingest import ingest_dataset
from dpmed.preprocessing.pipeline import preprocess_one
from dpmed.preprocessing.radiograph import apply_photometric

KEY = bytes(range(32))
SIZE = (256, 192)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mg2")
    ext = generate_external_mammography_cohort(root / "ext", n_patients=8, image_size=SIZE, seed=2)
    dev = generate_mammography_cohort(root / "dev", n_patients=8, image_size=SIZE, seed=2)
    return root, ext, dev


def _cfg(root, csvs: dict) -> dict:
    return validate_config({"datasets": {"mg": {
        "kind": "mammography", "adapter": "cbis_ddsm", "root": str(root), "labels": ["malignant"],
        "grades": {"min": 0, "max": 1, "positive_from": 1},
        "split": {"train": 0.75, "val": 0.25, "test": 0.0},
        "description_csvs": csvs}}})["datasets"]["mg"]


def test_external_csv_has_cbis_columns_and_other_detector(cohorts):
    root, ext, _ = cohorts
    table = pd.read_csv(root / "ext" / EXTERNAL_CSV)
    assert list(table.columns) == mg_mod.CBIS_COLUMNS and len(table) == len(ext)
    assert table["patient_id"].str.fullmatch(r"X_\d{5}").all()
    assert table["breast_density"].between(1, 4).all()
    for _, r in table.iterrows():
        img = pydicom.dcmread(root / "ext" / r["image file path"])
        assert img.Modality == "MG" and img.Manufacturer == EXTERNAL_SITE.manufacturer
        assert img.PhotometricInterpretation == "MONOCHROME1" and img.BitsStored == 14
        assert [float(v) for v in img.PixelSpacing] == [0.07, 0.07]
        assert img.PatientAge.endswith("Y") and img.PatientSex == "F"
        mask = pydicom.dcmread(root / "ext" / r["ROI mask file path"]).pixel_array
        assert set(np.unique(mask)) == {0, 255} and mask.shape == img.pixel_array.shape
        rows, cols = np.nonzero(mask)
        crop = pydicom.dcmread(root / "ext" / r["cropped image file path"]).pixel_array
        np.testing.assert_array_equal(crop, img.pixel_array[rows.min():rows.max() + 1, cols.min():cols.max() + 1])


def test_external_cohort_ingests_through_the_unchanged_cbis_adapter(cohorts):
    root, ext, _ = cohorts
    res = ingest_dataset("ext", _cfg(root / "ext", {"test": [str(root / "ext" / EXTERNAL_CSV)]}), key=KEY)
    m = res.manifest
    assert len(m) == len(ext) and res.rejected.empty
    assert set(m["split"]) == {"test"}
    assert m["label_malignant"].sum() == (ext["pathology"] == "MALIGNANT").sum()
    assert m["age"].notna().all() and m["breast_density"].astype(int).between(1, 4).all()
    assert "X_0" not in m.to_csv()


def test_development_cohort_manifest_has_age_and_density_for_subgroups(cohorts):
    root, _, dev = cohorts
    csvs = {"train": [str(root / "dev" / "mass_case_description_train_set.csv")],
            "test": [str(root / "dev" / "mass_case_description_test_set.csv")]}
    m = ingest_dataset("mg", _cfg(root / "dev", csvs), key=KEY).manifest
    # age from the DICOM header (PatientAge), density from the CSV, per record
    ages = {r["image file path"]: int(pydicom.dcmread(root / "dev" / r["image file path"]).PatientAge[:3])
            for _, r in dev.iterrows()}
    assert sorted(m["age"].astype(int)) == sorted(ages[p] for p in dev["image file path"])
    assert sorted(m["breast_density"].astype(int)) == sorted(dev["breast_density"])
    assert m["age_group"].notna().all()


def test_demo_density_covers_all_four_grades_and_falls_with_age():
    rng = np.random.default_rng(0)
    young = [mg_mod.sample_patient(rng, "P", 40)["density"] for _ in range(400)]
    old = [mg_mod.sample_patient(rng, "P", 75)["density"] for _ in range(400)]
    assert set(young) | set(old) == {1, 2, 3, 4}
    assert np.mean(young) > np.mean(old) + 0.3


def _lesion_contrast_and_noise(root, table, n=8):
    """Per record, read through dpmed's reader and photometric handling (as preprocessing does):
    lesion mean minus the mean of a ring around it, and the read-out noise (robust std of the
    difference of horizontal neighbours inside the breast), both on the [0, 1] scale."""
    from scipy import ndimage

    out = []
    for _, r in table.head(n).iterrows():
        im = read_dicom_image(root / r["image file path"])
        x = apply_photometric(im.pixels, im.photometric) / (2 ** im.bits_stored - 1)
        m = read_dicom_image(root / r["ROI mask file path"]).pixels > 0
        breast = x > np.percentile(x, 1) + 0.05
        ring = ndimage.binary_dilation(m, iterations=12) & ~ndimage.binary_dilation(m, iterations=3) & breast
        diff = np.diff(x, axis=1)[breast[:, 1:] & breast[:, :-1]]
        noise = 1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2)
        out.append((x[m].mean() - x[ring].mean(), noise))
    return np.array(out)


def test_external_masses_stay_bright_after_photometric_inversion_and_site_differs(cohorts):
    root, ext, dev = cohorts
    e, d = _lesion_contrast_and_noise(root / "ext", ext), _lesion_contrast_and_noise(root / "dev", dev)
    # the same label meaning: masses are denser (brighter) than their surround at both sites
    assert (e[:, 0] > 0).mean() >= 0.8 and (d[:, 0] > 0).mean() >= 0.8
    # the external detector adds read-out noise (sd 0.015 on top of the anatomy's)
    assert np.median(e[:, 1]) > 1.3 * np.median(d[:, 1])
    # and the patches preprocessing cuts from it are valid 8-bit patches
    patch = preprocess_one("mammography", {"margin": 60, "min_side": 128, "size": 64},
                           str(root / "ext" / ext.loc[0, "image file path"]),
                           str(root / "ext" / ext.loc[0, "ROI mask file path"]))
    assert patch.shape == (64, 64) and patch.dtype == np.uint8 and patch.std() > 5


def test_external_cohort_is_deterministic(tmp_path):
    a = generate_external_mammography_cohort(tmp_path / "a", n_patients=2, image_size=(128, 96), seed=5)
    generate_external_mammography_cohort(tmp_path / "b", n_patients=2, image_size=(128, 96), seed=5)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert len(a) >= 2
