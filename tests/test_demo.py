"""Tests of the synthetic demo cohorts (dpmed.demo): formats, headers, determinism, anatomy."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut
from scipy import ndimage

from dpmed.demo import generate_ct_cohort, generate_cxr_cohort, generate_mammography_cohort
from dpmed.demo import _demographics as demo_demog
from dpmed.demo import cxr as cxr_mod
from dpmed.demo import ct as ct_mod
from dpmed.demo import mammography as mg_mod

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
MG = "1.2.840.10008.5.1.4.1.1.1.2"


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# demographics
# --------------------------------------------------------------------------------------------
def test_demographics_imbalanced_like_the_studies():
    rng = np.random.default_rng(0)
    sex = demo_demog.sample_sex(rng, 5000)
    assert 0.56 < (sex == "M").mean() < 0.64
    age = demo_demog.sample_age(rng, 5000)
    bins = pd.Series([demo_demog.age_bin(a) for a in age]).value_counts(normalize=True)
    assert set(bins.index) == {"[0,30)", "[30,60)", "[60,70)", "[70,80)", "[80,100)"}
    assert bins["[0,30)"] >= 0.03
    assert bins.min() >= 0.03
    assert ((age >= 50) & (age <= 85)).mean() > 0.7
    assert demo_demog.difficulty(85) > demo_demog.difficulty(60) > demo_demog.difficulty(30)


# --------------------------------------------------------------------------------------------
# chest radiographs
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cxr(tmp_path_factory):
    root = tmp_path_factory.mktemp("cxr")
    labels = generate_cxr_cohort(root, n_patients=30, image_size=128, seed=7)
    return root, labels


def _display(ds) -> np.ndarray:
    """Modality-LUT values with MONOCHROME1 inverted, so bright = dense."""
    a = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a = (2**ds.BitsStored - 1) * float(ds.RescaleSlope) + 2 * float(ds.RescaleIntercept) - a
    return a


def test_cxr_labels_table(cxr):
    root, labels = cxr
    on_disk = pd.read_csv(root / "labels.csv")
    assert list(on_disk.columns) == ["path", *cxr_mod.FINDINGS]
    pd.testing.assert_frame_equal(on_disk, labels)
    grades = labels[list(cxr_mod.FINDINGS)].to_numpy()
    assert grades.dtype.kind == "i" and grades.min() >= 0 and grades.max() <= 4
    assert len(labels) >= 30 and labels["path"].is_unique
    assert all((root / p).is_file() for p in labels["path"])


def test_cxr_dicom_headers_and_layout(cxr):
    root, labels = cxr
    seen = {"bits": set(), "photo": set(), "modality": set(), "rescale": set(), "sex": set()}
    studies = set()
    for rel in labels["path"]:
        ds = pydicom.dcmread(root / rel)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.Modality, ds.SOPClassUID) in {("DX", DX), ("CR", CR)}
        assert ds.pixel_array.shape == (128, 128) and ds.Rows == ds.Columns == 128
        assert ds.PixelRepresentation == 0 and ds.BitsAllocated == 16
        assert ds.pixel_array.max() < 2**ds.BitsStored
        assert re.fullmatch(r"\d{3}Y", ds.PatientAge)
        assert re.fullmatch(r"CXR\d{6}", ds.PatientID)
        assert re.fullmatch(r"\d{8}", ds.PatientBirthDate) and re.fullmatch(r"\d{8}", ds.StudyDate)
        assert ds.PatientBirthDate < ds.StudyDate
        assert "^" in str(ds.PatientName) and ds.InstitutionName and ds.AccessionNumber
        # age in the header agrees with birth and study dates
        b, s = ds.PatientBirthDate, ds.StudyDate
        age = int(s[:4]) - int(b[:4]) - ((s[4:]) < (b[4:]))
        assert int(ds.PatientAge[:3]) == age
        # identifiers in the path, like real exports
        assert rel == f"images/{ds.PatientID}/{ds.AccessionNumber}.dcm"
        studies.add(ds.StudyInstanceUID)
        seen["bits"].add(int(ds.BitsStored))
        seen["photo"].add(ds.PhotometricInterpretation)
        seen["modality"].add(ds.Modality)
        seen["sex"].add(ds.PatientSex)
        seen["rescale"].add((float(ds.RescaleSlope), float(ds.RescaleIntercept)) != (1.0, 0.0))
        if ds.Modality == "DX":  # DX keeps the identity rescale
            assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
    assert seen["bits"] == {12, 16}
    assert seen["photo"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["modality"] == {"DX", "CR"}
    assert seen["rescale"] == {True, False}
    assert seen["sex"] == {"M", "F"}
    assert len(studies) == len(labels)  # every image is its own study
    assert labels["path"].str.split("/").str[1].value_counts().max() > 1  # several per patient


def test_cxr_modality_lut_and_polarity(cxr):
    """The lead marker (drawn at full opacity) reads the intended value after the modality LUT,
    and after honouring MONOCHROME1 the lungs are darker than the spine in every image."""
    root, labels = cxr
    rs, cs = cxr_mod.marker_box(128)
    lung_darker = []
    for rel in labels["path"]:
        ds = pydicom.dcmread(root / rel)
        slope, icpt = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        maxv = 2**ds.BitsStored - 1
        marker = apply_modality_lut(ds.pixel_array, ds)[rs, cs]
        expected = icpt if ds.PhotometricInterpretation == "MONOCHROME1" else maxv * slope + icpt
        np.testing.assert_allclose(marker, expected)
        disp = _display(ds)
        lung = disp[int(0.36 * 128):int(0.5 * 128), int(0.27 * 128):int(0.36 * 128)].mean()
        spine = disp[int(0.36 * 128):int(0.5 * 128), int(0.485 * 128):int(0.515 * 128)].mean()
        lung_darker.append(lung < spine)
    assert np.mean(lung_darker) >= 0.9


def test_cxr_is_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_patients=3, image_size=64)
    generate_cxr_cohort(tmp_path / "a", seed=11, **kw)
    generate_cxr_cohort(tmp_path / "b", seed=11, **kw)
    generate_cxr_cohort(tmp_path / "c", seed=12, **kw)
    a, b, c = (_all_files(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a != c


def test_cxr_public_and_private_cohorts_are_disjoint(cxr, tmp_path):
    root, labels = cxr
    pub = generate_cxr_cohort(tmp_path / "pub", n_patients=30, image_size=64, seed=8,
                              id_prefix="PUB")
    priv_ids = {pydicom.dcmread(root / p).PatientID for p in labels["path"]}
    pub_ds = [pydicom.dcmread(tmp_path / "pub" / p) for p in pub["path"]]
    assert not priv_ids & {d.PatientID for d in pub_ds}
    priv_uids = {pydicom.dcmread(root / p).StudyInstanceUID for p in labels["path"]}
    assert not priv_uids & {d.StudyInstanceUID for d in pub_ds}
    # even with the same seed, a different prefix gives different IDs and UIDs
    same = generate_cxr_cohort(tmp_path / "same", n_patients=2, image_size=64, seed=7,
                               id_prefix="PUB")
    ds0 = pydicom.dcmread(tmp_path / "same" / same["path"][0])
    assert ds0.PatientID.startswith("PUB") and ds0.StudyInstanceUID not in priv_uids


def _heart_extent(im: np.ndarray) -> float:
    S = im.shape[0]
    r0, r1 = int((0.25 + 1) / 2 * S), int((0.42 + 1) / 2 * S)
    band = ndimage.uniform_filter(im, 5)[r0:r1, int(0.15 * S):int(0.85 * S)]
    return float((band > 0.36).sum(1).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cxr_heart_width_grows_with_cardiomegaly_grade(seed):
    widths = [_heart_extent(cxr_mod.render_chest([g, 0, 0, 0, 0, 0, 0, 0], age=30, devices=False,
                                                 rng=np.random.default_rng(seed), image_size=128))
              for g in range(5)]
    assert np.all(np.diff(widths) > 0), widths


def _side_difference(finding: str, grade: int, seed: int = 3) -> tuple[float, float]:
    """Mean intensity added by a finding in the image-left and image-right lung bases."""
    idx = cxr_mod.FINDINGS.index(finding)
    g = np.zeros(8, int)
    base = cxr_mod.render_chest(g, age=30, devices=False, rng=np.random.default_rng(seed))
    g[idx] = grade
    ill = cxr_mod.render_chest(g, age=30, devices=False, rng=np.random.default_rng(seed))
    diff = ndimage.uniform_filter(ill - base, 9)
    S = base.shape[0]
    rows = slice(int(0.3 * S), int(0.8 * S))
    return (float(diff[rows, int(0.1 * S):int(0.45 * S)].mean()),
            float(diff[rows, int(0.55 * S):int(0.9 * S)].mean()))


@pytest.mark.parametrize("finding", ["pleural_effusion", "pneumonic_infiltrates", "atelectasis"])
def test_cxr_findings_on_the_correct_side_and_graded(finding):
    # patient's right is the image left (PA view)
    right_l, right_r = _side_difference(f"{finding}_right", 4)
    left_l, left_r = _side_difference(f"{finding}_left", 4)
    assert right_l > 3 * abs(right_r) and right_l > 0.003
    assert left_r > 3 * abs(left_l) and left_r > 0.003
    weak = _side_difference(f"{finding}_right", 1)[0]
    assert 0 < weak < right_l


def test_cxr_grades_prevalence_and_age():
    rng = np.random.default_rng(0)
    n = 6000
    ages = rng.integers(20, 95, n)
    g = cxr_mod.sample_grades(rng, ages, rng.normal(0, 1, n), rng.normal(0, 0.7, (n, 8)))
    pos = g >= 2
    assert np.all(pos.mean(0) > 0.08) and np.all(pos.mean(0) < 0.37)
    assert np.all(pos[ages >= 70].mean(0) > pos[ages < 50].mean(0))
    assert set(np.unique(g)) == {0, 1, 2, 3, 4}


# --------------------------------------------------------------------------------------------
# abdominal CT
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    clinical = generate_ct_cohort(root, n_patients=10, seed=3)
    return root, clinical


def test_ct_clinical_table(ct):
    root, clinical = ct
    on_disk = pd.read_csv(root / "clinical.csv")
    assert list(on_disk.columns) == ["patient_id", "sex", "age", "pdac", "path"]
    pd.testing.assert_frame_equal(on_disk, clinical)
    assert clinical["pdac"].sum() == 4 and set(clinical["pdac"]) == {0, 1}
    assert set(clinical["sex"]) <= {"M", "F"} and clinical["age"].dtype.kind == "i"
    assert all(clinical["path"] == "volumes/" + clinical["patient_id"] + ".nii.gz")
    assert all((root / p).is_file() for p in clinical["path"])


def test_ct_volumes_in_hounsfield_units_and_orientation(ct):
    root, clinical = ct
    codes = set()
    for rel in clinical["path"]:
        img = nib.load(root / rel)
        assert img.get_data_dtype() == np.int16
        assert img.shape == (64, 64, 32)
        zooms = img.header.get_zooms()
        np.testing.assert_allclose(zooms, (6.4, 6.4, 6.25))
        codes.add(nib.aff2axcodes(img.affine))
        raw = np.asarray(img.dataobj).astype(float)
        can = nib.as_closest_canonical(img)
        assert nib.aff2axcodes(can.affine) == ("R", "A", "S")
        v = can.get_fdata()
        assert v.min() >= -1024 and v.max() <= 3071
        nx, ny, nz = v.shape
        # air outside the body
        assert v[0, 0, nz // 2] == -1000 and v[-1, -1, 0] == -1000
        # bone (>= 400 HU) sits posterior, ribs only in the upper abdomen
        bone = np.argwhere(v >= 400)
        assert bone[:, 1].mean() < ny / 2
        spine = v[nx // 2 - 1:nx // 2 + 2, int(0.265 * (ny - 1)) - 1:int(0.265 * (ny - 1)) + 2,
                  nz // 2 - 1:nz // 2 + 2]
        assert np.median(spine) >= 400
        lateral = bone[np.abs(bone[:, 0] - nx / 2) > nx / 4]
        assert lateral[:, 2].mean() > nz / 2
        # the anterior midline: air, then subcutaneous fat, then muscle / soft tissue
        ray = v[nx // 2 - 1:nx // 2 + 1, ::-1, 4].mean(0)  # anterior -> posterior
        first = int(np.argmax(ray > -500))
        assert -160 <= ray[first:first + 1].mean() <= -40
        inner = ray[first:first + 12]
        assert np.any((inner > 20) & (inner < 90))
        # stored orientation matters: raw arrays of flipped files put the spine elsewhere
        axc = nib.aff2axcodes(img.affine)
        raw_bone = np.argwhere(raw >= 400)
        if axc[1] == "P":
            assert raw_bone[:, 1].mean() > ny / 2
        if axc[2] == "I":
            raw_lat = raw_bone[np.abs(raw_bone[:, 0] - nx / 2) > nx / 4]
            assert raw_lat[:, 2].mean() < nz / 2
    assert ("R", "A", "S") in codes and len(codes) >= 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ct_lesion_is_hypodense(seed):
    shape = (64, 64, 32)
    tum, marks = ct_mod.render_abdomen(shape, age=30, sex="M", tumour=True, clips=False,
                                       rng=np.random.default_rng(seed))
    ctl, _ = ct_mod.render_abdomen(shape, age=30, sex="M", tumour=False, clips=False,
                                   rng=np.random.default_rng(seed))
    i, j, k = marks["lesion_centre"]
    nb = (slice(i - 1, i + 2), slice(j - 1, j + 2), slice(k - 1, k + 2))
    lesion, pancreas = tum[nb].mean(), ctl[nb].mean()
    assert 20 <= pancreas <= 70  # soft tissue
    assert pancreas - 35 <= lesion <= pancreas - 5
    assert marks["lesion_radius_vox"] >= 3


def test_ct_is_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_patients=3, shape=(32, 32, 16))
    generate_ct_cohort(tmp_path / "a", seed=5, **kw)
    generate_ct_cohort(tmp_path / "b", seed=5, **kw)
    generate_ct_cohort(tmp_path / "c", seed=6, **kw)
    a, b, c = (_all_files(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a != c


# --------------------------------------------------------------------------------------------
# mammography
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mg(tmp_path_factory):
    root = tmp_path_factory.mktemp("mg")
    desc = generate_mammography_cohort(root, n_patients=16, seed=4)
    return root, desc


def test_mammography_description_csvs(mg):
    root, desc = mg
    train = pd.read_csv(root / "mass_case_description_train_set.csv")
    test = pd.read_csv(root / "mass_case_description_test_set.csv")
    for df in (train, test):
        assert list(df.columns) == mg_mod.CBIS_COLUMNS
    assert len(train) + len(test) == len(desc)
    assert not set(train["patient_id"]) & set(test["patient_id"])
    assert test["patient_id"].nunique() == 4  # 25 % of 16 patients
    assert all(re.fullmatch(r"P_\d{5}", p) for p in desc["patient_id"])
    assert set(desc["pathology"]) <= {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    assert "MALIGNANT" in set(desc["pathology"])
    assert set(desc["abnormality type"]) == {"mass"}
    assert set(desc["image view"]) <= {"CC", "MLO"}
    assert set(desc["left or right breast"]) <= {"LEFT", "RIGHT"}
    assert desc["breast_density"].between(1, 4).all()
    for df, split in ((train, "Mass-Training"), (test, "Mass-Test")):
        for _, r in df.iterrows():
            stem = f"{split}_{r['patient_id']}_{r['left or right breast']}_{r['image view']}"
            assert r["image file path"] == f"{stem}/1-1.dcm"
            assert r["ROI mask file path"] == f"{stem}_{r['abnormality id']}/ROI-mask.dcm"
            assert r["cropped image file path"] == f"{stem}_{r['abnormality id']}/cropped.dcm"
            for col in ("image file path", "ROI mask file path", "cropped image file path"):
                assert (root / r[col]).is_file()


def test_mammography_dicoms_masks_and_crops(mg):
    root, desc = mg
    big = near_border = 0
    denser = []
    for _, r in desc.iterrows():
        img = pydicom.dcmread(root / r["image file path"])
        assert img.Modality == "MG" and img.SOPClassUID == MG
        assert img.PhotometricInterpretation == "MONOCHROME2" and img.BitsAllocated == 16
        assert int(img.BitsStored) in (12, 16)
        assert img.PatientSex == "F" and re.fullmatch(r"\d{3}Y", img.PatientAge)
        assert img.PatientID == r["patient_id"] and img.ViewPosition == r["image view"]
        assert img.ImageLaterality == r["left or right breast"][0]
        pix = img.pixel_array
        assert pix.shape == (512, 384)
        roi = pydicom.dcmread(root / r["ROI mask file path"])
        assert roi.BitsStored == 8 and roi.PhotometricInterpretation == "MONOCHROME2"
        m = roi.pixel_array
        assert m.shape == pix.shape and set(np.unique(m)) == {0, 255}
        rows, cols = np.nonzero(m)
        crop = pydicom.dcmread(root / r["cropped image file path"]).pixel_array
        np.testing.assert_array_equal(crop, pix[rows.min():rows.max() + 1, cols.min():cols.max() + 1])
        # the mass lies inside the breast and is denser than the tissue around it
        background = np.percentile(pix, 1)
        assert pix[m > 0].min() > background + 0.05 * (2**img.BitsStored - 1)
        ring = (ndimage.binary_dilation(m > 0, iterations=12)
                & ~ndimage.binary_dilation(m > 0, iterations=3)
                & (pix > background + 0.05 * (2**img.BitsStored - 1)))
        denser.append(pix[m > 0].mean() > pix[ring].mean())
        big += max(np.ptp(rows), np.ptp(cols)) + 1 > 128
        near_border += min(rows.min(), cols.min(), 511 - rows.max(), 383 - cols.max()) < 30
    assert big >= 1 and near_border >= 1
    assert np.mean(denser) >= 0.85


@pytest.mark.parametrize("margin", ["CIRCUMSCRIBED", "SPICULATED"])
def test_mammography_margins_drawn_as_labelled(margin):
    d = np.zeros((200, 200), np.float32)
    mask = mg_mod.draw_mass(d, centre=(100, 100), radius=30,
                            shape_kind="OVAL" if margin == "CIRCUMSCRIBED" else "IRREGULAR",
                            margin=margin, malignant=margin == "SPICULATED",
                            rng=np.random.default_rng(0))
    assert mask.sum() > 1000 and mask[100, 100]
    ring = ndimage.binary_dilation(mask, iterations=15) & ~ndimage.binary_dilation(mask, iterations=3)
    outside = d[ring]
    if margin == "CIRCUMSCRIBED":  # sharp edge, nothing dense outside the mask
        assert outside.max() < 0.1 * d[mask].mean()
    else:  # spicules / desmoplastic reaction reach out of the mask
        assert outside.mean() > 0.1 * d[mask].mean()


def test_mammography_is_deterministic_and_seed_dependent(tmp_path):
    kw = dict(n_patients=2, image_size=(128, 96))
    generate_mammography_cohort(tmp_path / "a", seed=1, **kw)
    generate_mammography_cohort(tmp_path / "b", seed=1, **kw)
    generate_mammography_cohort(tmp_path / "c", seed=2, **kw)
    a, b, c = (_all_files(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert a != c
