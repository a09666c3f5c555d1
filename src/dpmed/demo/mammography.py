"""Synthetic CBIS-DDSM-like mammography mass cohort written as DICOM files.

Each patient has one breast imaged in CC and/or MLO view; each image holds one or two masses.
Benign masses are mostly round/oval with circumscribed margins, malignant ones mostly irregular
with spiculated or ill-defined margins (with realistic overlap between the two). For every mass
the generator writes a full-size ROI mask DICOM (0/255, 8 bit) and a bounding-box crop DICOM,
and two description CSVs with exactly the CBIS-DDSM columns. Folder names contain the patient
ID, as in CBIS-DDSM.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import _dicom
from ._demographics import difficulty, sample_age_screening

CBIS_COLUMNS = [
    "patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
    "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
    "image file path", "cropped image file path", "ROI mask file path",
]

_SHAPES = ("ROUND", "OVAL", "LOBULATED", "IRREGULAR")
_MARGINS = ("CIRCUMSCRIBED", "OBSCURED", "ILL_DEFINED", "SPICULATED")
_P_SHAPE = {True: (0.10, 0.15, 0.20, 0.55), False: (0.30, 0.45, 0.15, 0.10)}  # malignant?
_P_MARGIN = {True: (0.07, 0.08, 0.35, 0.50), False: (0.65, 0.20, 0.12, 0.03)}


def _smooth_field(rng, shape, grid):
    """Smooth noise on ``shape`` by bilinear upsampling of a ``grid`` of uniform noise."""
    small = rng.random(grid).astype(np.float32)
    out = small
    for ax, (S, n) in enumerate(zip(shape, grid)):
        pos = np.linspace(0, n - 1, S)
        i0 = np.clip(np.floor(pos).astype(int), 0, n - 2)
        w = (pos - i0).astype(np.float32)
        sh = [1, 1]
        sh[ax] = S
        out = np.take(out, i0, axis=ax) * (1 - w).reshape(sh) + np.take(out, i0 + 1, axis=ax) * w.reshape(sh)
    return out


def render_breast(shape, *, density: int, view: str, age: float, rng: np.random.Generator):
    """Breast (chest wall on the image left) on a dark background; returns (image, breast mask)."""
    H, W = shape
    rows = np.arange(H, dtype=np.float32)[:, None]
    cols = np.arange(W, dtype=np.float32)[None, :]
    cr = H * (0.5 if view == "CC" else 0.56) + rng.normal(0, 0.02 * H)
    ar, ac = H * rng.uniform(0.40, 0.48), W * rng.uniform(0.72, 0.93)
    rho2 = ((rows - cr) / ar) ** 2 + (cols / ac) ** 2
    breast = rho2 <= 1.0
    thick = np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    d = 0.06 + breast * (0.28 + 0.14 * np.sqrt(thick))
    # fibroglandular tissue: multi-scale texture thresholded at a density-dependent quantile
    tex = 0.6 * _smooth_field(rng, shape, (14, 11)) + 0.4 * _smooth_field(rng, shape, (48, 36))
    frac = (0.12, 0.32, 0.55, 0.78)[density - 1]
    thr = np.quantile(tex[breast], 1.0 - frac)
    gland = np.clip((tex - thr) / 0.15, 0.0, 1.0) * breast
    central = np.exp(-(((rows - cr) / (0.55 * ar)) ** 2)) * np.clip(1.2 - np.sqrt(rho2), 0, 1)
    d += 0.16 * gland * np.clip(central * 1.5, 0.0, 1.0)
    if view == "MLO":  # pectoral muscle in the upper chest-wall corner
        ph, pw = H * rng.uniform(0.35, 0.6), W * rng.uniform(0.18, 0.32)
        pect = (cols / pw + rows / ph) <= 1.0
        d = np.where(pect, 0.68 + 0.04 * _smooth_field(rng, shape, (8, 6)), d)
        breast = breast | pect
    d = d + rng.normal(0.0, 0.008 + 0.012 * difficulty(age), shape).astype(np.float32)
    return d.astype(np.float32), breast


def draw_mass(d, *, centre, radius, shape_kind, margin, malignant, rng, within=None):
    """Add a mass to ``d`` in place; returns its ROI mask (bool, full image size).

    ``within`` (optional bool mask, e.g. the breast) confines both the drawing and the ROI.
    """
    H, W = d.shape
    r0, c0 = centre
    ext = int(np.ceil(radius * 2.4)) + 3
    ra, rb = max(int(r0) - ext, 0), min(int(r0) + ext + 1, H)
    ca, cb = max(int(c0) - ext, 0), min(int(c0) + ext + 1, W)
    rr = np.arange(ra, rb, dtype=np.float32)[:, None] - r0
    cc = np.arange(ca, cb, dtype=np.float32)[None, :] - c0
    rot = rng.uniform(0, np.pi)
    x = cc * np.cos(rot) + rr * np.sin(rot)
    y = -cc * np.sin(rot) + rr * np.cos(rot)
    aspect = rng.uniform(0.88, 1.0) if shape_kind == "ROUND" else rng.uniform(0.55, 0.8)
    theta = np.arctan2(y, x)
    rad = np.hypot(x, y * (1.0 / aspect if shape_kind in ("ROUND", "OVAL") else 1.0))
    boundary = np.full_like(theta, radius)
    if shape_kind == "LOBULATED":
        boundary = radius * (1 + 0.18 * np.cos(3 * theta + rng.uniform(0, 6.3))
                             + 0.08 * np.cos(5 * theta + rng.uniform(0, 6.3)))
    elif shape_kind == "IRREGULAR":
        boundary = radius * (1 + sum(rng.uniform(0.04, 0.12) * np.cos(k * theta + rng.uniform(0, 6.3))
                                     for k in range(2, 8)))
    rho = rad / boundary
    soft = {"CIRCUMSCRIBED": 0.03, "OBSCURED": 0.08, "ILL_DEFINED": 0.18, "SPICULATED": 0.1}[margin]
    body = 1.0 / (1.0 + np.exp(-(1.0 - rho) / soft))
    # malignant masses are denser (brighter) on average than benign ones
    amp = rng.uniform(0.15, 0.26) if malignant else rng.uniform(0.07, 0.17)
    profile = body * (0.75 + 0.25 * np.sqrt(np.clip(1 - rho**2, 0, 1)))
    add = amp * profile
    if margin == "CIRCUMSCRIBED":  # "halo sign": thin lucent rim around a circumscribed mass
        add -= 0.35 * amp * ((rho > 1.0) & (rho < 1.18))
    elif margin in ("ILL_DEFINED", "SPICULATED"):  # surrounding desmoplastic reaction
        add += 0.45 * amp * np.exp(-(rho / 1.8) ** 2)
    if margin == "SPICULATED":
        spic = np.zeros_like(add)
        for a in rng.uniform(0, 2 * np.pi, int(rng.integers(10, 20))):
            ln = radius * rng.uniform(1.5, 2.3)
            ux, uy = np.cos(a), np.sin(a)
            t = np.clip(cc * ux + rr * uy, 0, ln)
            dist = np.hypot(cc - t * ux, rr - t * uy)
            width = 1.2 + 1.5 * (1 - t / ln) * radius / 30.0
            spic = np.maximum(spic, np.clip(1 - dist / width, 0, 1) * (1 - 0.6 * t / ln))
        add = np.maximum(add, 0.7 * amp * spic)
    inside = np.ones_like(add, bool) if within is None else within[ra:rb, ca:cb]
    d[ra:rb, ca:cb] += add * inside
    mask = np.zeros((H, W), bool)
    mask[ra:rb, ca:cb] = (rho <= 1.0) & inside
    return mask


def _dataset(stored, *, bits, photometric, meta, sop_class, uid_parts, bits_allocated=16):
    """A dataset with the given (already stored-value) pixels; written later by the caller."""
    ds = _dicom.base_dataset(sop_class_uid=sop_class, sop_instance_uid=_dicom.make_uid("sop", *uid_parts),
                             **meta)
    ds.BodyPartExamined = "BREAST"
    _dicom.set_mono_pixels(ds, stored, bits_stored=bits, photometric=photometric,
                           bits_allocated=bits_allocated)
    return ds


@dataclass(frozen=True)
class Site:
    """How one imaging site acquires and stores mammograms (the demo's detector model).

    The default is the CBIS-DDSM-like site. An external test site differs in detector
    (``manufacturer``, ``bits``, ``photometric``), contrast (``gamma`` on the [0, 1] density
    before quantisation: < 1 flattens the contrast of dense tissue and masses), noise
    (``noise``: extra Gaussian read-out noise, standard deviation on the [0, 1] scale) and pixel
    spacing (``pixel_spacing_mm``: written as PixelSpacing/ImagerPixelSpacing; lesions are drawn
    ``reference_spacing_mm / pixel_spacing_mm`` times as large in pixels). The label meaning
    (pathology) is the same everywhere.
    """

    manufacturer: str = "dpmed synthetic demo"
    bits: tuple[int, int] = (12, 16)  # BitsStored: first with probability 1/2, else second
    photometric: str = "MONOCHROME2"
    gamma: float = 1.0
    noise: float = 0.0
    pixel_spacing_mm: float | None = None
    reference_spacing_mm: float = 0.05
    p_malignant: float = 0.42
    institution: str | None = None  # None: a fake institution per patient

    @property
    def lesion_scale(self) -> float:
        return 1.0 if self.pixel_spacing_mm is None else self.reference_spacing_mm / self.pixel_spacing_mm


CBIS_SITE = Site()


def _sample_mass(rng, p_malignant: float) -> dict:
    malignant = rng.random() < p_malignant
    large = rng.random() < 0.18
    return dict(
        malignant=malignant,
        pathology="MALIGNANT" if malignant else ("BENIGN" if rng.random() < 0.7
                                                  else "BENIGN_WITHOUT_CALLBACK"),
        shape=_SHAPES[int(rng.choice(4, p=_P_SHAPE[malignant]))],
        margin=_MARGINS[int(rng.choice(4, p=_P_MARGIN[malignant]))],
        radius=rng.uniform(66, 100) if large else (rng.uniform(14, 50) if malignant
                                                   else rng.uniform(8, 38)),
        near_border=rng.random() < 0.2,
        assessment=int(rng.choice([4, 5], p=[0.45, 0.55])) if malignant
        else int(rng.choice([2, 3, 4], p=[0.3, 0.35, 0.35])),
        subtlety=int(rng.integers(1, 6)),
    )


def sample_patient(rng, pid: str, age: int, site: Site = CBIS_SITE) -> dict:
    """Breast density, side, views, masses and (fake) identity of one patient."""
    # density falls with age
    dprob = np.array([0.08, 0.38, 0.40, 0.14]) * np.exp(-0.04 * (age - 57) * np.arange(-1.5, 2.5))
    density = int(rng.choice(4, p=dprob / dprob.sum())) + 1
    side = "LEFT" if rng.random() < 0.5 else "RIGHT"
    views = ["CC", "MLO"] if rng.random() < 0.85 else [("CC", "MLO")[int(rng.integers(2))]]
    n_mass = 1 if rng.random() < 0.8 else 2
    masses = [_sample_mass(rng, site.p_malignant) for _ in range(n_mass)]
    name = _dicom.fake_name(rng, "F")
    institution = _dicom.fake_institution(rng)
    study_date = _dicom.REFERENCE_DATE + _dt.timedelta(days=int(rng.integers(0, 2500)))
    birth = _dicom.birth_date_for(study_date, age, rng)
    accession = f"{int(rng.integers(10**7, 10**8))}"
    bits = site.bits[0] if rng.random() < 0.5 else site.bits[1]
    return dict(pid=pid, age=age, density=density, side=side, views=views, masses=masses, name=name,
                institution=site.institution or institution, study_date=study_date, birth=birth,
                accession=accession, bits=bits)


def _mass_centre(rng, breast, near_border: bool, H: int, W: int) -> tuple[float, float]:
    for _ in range(200):  # centre inside the breast, optionally near the image border
        if near_border:
            r0 = rng.choice([rng.uniform(0.02, 0.12), rng.uniform(0.88, 0.98)]) * H
            c0 = rng.uniform(0.02, 0.3) * W
        else:
            r0, c0 = rng.uniform(0.15, 0.85) * H, rng.uniform(0.1, 0.6) * W
        if breast[int(r0), int(c0)]:
            return r0, c0
    cand = np.argwhere(breast)  # fall back to a random breast pixel
    r0, c0 = (float(x) for x in cand[int(rng.integers(len(cand)))])
    return r0, c0


def render_view(rng, shape, patient: dict, view: str, site: Site = CBIS_SITE):
    """The view's stored pixel values (site's detector applied) and one ROI mask per mass."""
    H, W = shape
    img, breast = render_breast((H, W), density=patient["density"], view=view, age=patient["age"], rng=rng)
    rois = []
    for ms in patient["masses"]:
        r0, c0 = _mass_centre(rng, breast, ms["near_border"], H, W)
        rois.append(draw_mass(img, centre=(r0, c0), radius=ms["radius"] * site.lesion_scale,
                              shape_kind=ms["shape"], margin=ms["margin"], malignant=ms["malignant"],
                              rng=rng, within=breast))
    if site.gamma != 1.0:
        img = np.clip(img, 0.0, 1.0) ** site.gamma
    if site.noise > 0:
        img = img + rng.normal(0.0, site.noise, img.shape).astype(np.float32)
    if patient["side"] == "RIGHT":  # chest wall on the image right for right breasts
        img = img[:, ::-1]
        rois = [r[:, ::-1] for r in rois]
    maxv = 2 ** patient["bits"] - 1
    stored = np.round(np.clip(img, 0.0, 1.0) * maxv).astype(np.uint16)
    if site.photometric == "MONOCHROME1":  # bright = less attenuation on this detector
        stored = (maxv - stored).astype(np.uint16)
    return stored, rois


def _tag_view(ds, patient: dict, view: str, site: Site) -> None:
    ds.ImageLaterality = patient["side"][0]
    ds.ViewPosition = view
    if site.pixel_spacing_mm is not None:
        ds.PixelSpacing = ds.ImagerPixelSpacing = [f"{site.pixel_spacing_mm:g}"] * 2
    if site.manufacturer != CBIS_SITE.manufacturer:
        ds.Manufacturer = site.manufacturer


def write_view(out: Path, base: str, stored, rois, patient: dict, view: str, meta: dict,
               uid_parts: tuple, site: Site = CBIS_SITE) -> list[dict]:
    """Write a view's image, ROI-mask and crop DICOMs; return one description row per mass."""
    bits = patient["bits"]
    ds = _dataset(stored, bits=bits, photometric=site.photometric, meta=meta,
                  sop_class=_dicom.MG_STORAGE, uid_parts=(*uid_parts, "img"))
    _tag_view(ds, patient, view, site)
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "0", "US"
    img_rel = f"{base}/1-1.dcm"
    _dicom.write_dicom(out / img_rel, ds)
    rows = []
    for m, (ms, roi) in enumerate(zip(patient["masses"], rois), start=1):
        roi = np.ascontiguousarray(roi)
        ri, ci = np.nonzero(roi)
        r_lo, r_hi, c_lo, c_hi = ri.min(), ri.max() + 1, ci.min(), ci.max() + 1
        mds = _dataset(roi.astype(np.uint8) * 255, bits=8, photometric="MONOCHROME2",
                       meta=dict(meta, series_number=2 + m), sop_class=_dicom.SC_STORAGE,
                       uid_parts=(*uid_parts, m, "roi"), bits_allocated=8)
        _tag_view(mds, patient, view, site)
        mds.ConversionType = "WSD"
        cds = _dataset(stored[r_lo:r_hi, c_lo:c_hi], bits=bits, photometric=site.photometric,
                       meta=dict(meta, series_number=2 + m), sop_class=_dicom.SC_STORAGE,
                       uid_parts=(*uid_parts, m, "crop"), bits_allocated=16)
        cds.InstanceNumber = 2
        _tag_view(cds, patient, view, site)
        cds.ConversionType = "WSD"
        roi_rel, crop_rel = f"{base}_{m}/ROI-mask.dcm", f"{base}_{m}/cropped.dcm"
        _dicom.write_dicom(out / roi_rel, mds)
        _dicom.write_dicom(out / crop_rel, cds)
        rows.append([patient["pid"], patient["density"], patient["side"], view, m, "mass", ms["shape"],
                     ms["margin"], ms["assessment"], ms["pathology"], ms["subtlety"], img_rel, crop_rel,
                     roi_rel])
    return rows


def write_patient(out: Path, rng, patient: dict, *, prefix: str, shape, seed: int, index: int,
                  site: Site = CBIS_SITE, uid_prefix: tuple = ()) -> list[list]:
    """Render and write every view of one patient; return the description rows (CBIS columns)."""
    rows = []
    for vi, view in enumerate(patient["views"]):
        stored, rois = render_view(rng, shape, patient, view, site)
        base = f"{prefix}_{patient['pid']}_{patient['side']}_{view}"
        meta = dict(study_uid=_dicom.make_uid(*uid_prefix, "study", seed, index),
                    series_uid=_dicom.make_uid(*uid_prefix, "series", seed, index, vi), modality="MG",
                    patient_name=patient["name"], patient_id=patient["pid"], birth_date=patient["birth"],
                    sex="F", age=patient["age"], study_date=patient["study_date"],
                    accession=patient["accession"], institution=patient["institution"])
        rows += write_view(out, base, stored, rois, patient, view, meta, (*uid_prefix, seed, index, vi), site)
    return rows


def generate_mammography_cohort(out_dir, *, n_patients: int, image_size=(512, 384), seed: int,
                                test_fraction: float = 0.25) -> pd.DataFrame:
    """Write a synthetic CBIS-DDSM-like mass cohort to ``out_dir`` and return the description table.

    Layout (``split`` = ``Mass-Training`` or ``Mass-Test``, ``P`` = ``P_00001``…)::

        out_dir/mass_case_description_train_set.csv
        out_dir/mass_case_description_test_set.csv
        out_dir/{split}_{P}_{LEFT|RIGHT}_{CC|MLO}/1-1.dcm                full mammogram (MG)
        out_dir/{split}_{P}_{LEFT|RIGHT}_{CC|MLO}_{abn}/ROI-mask.dcm     0/255 mask, same size
        out_dir/{split}_{P}_{LEFT|RIGHT}_{CC|MLO}_{abn}/cropped.dcm      bounding-box crop

    Every image carries PatientAge (and birth/study dates); the breast density (BI-RADS 1–4,
    falling with age, and making masses harder to see) is in the CSVs' ``breast_density``
    column, as in CBIS-DDSM, whose DICOMs do not carry it either.

    Returns both description tables concatenated (train rows first) with the CBIS columns.
    Patients are disjoint between the two sets; about ``test_fraction`` of them are in test.
    Same arguments give byte-identical files.
    """
    if not 0 < n_patients <= 99_999:
        raise ValueError("n_patients must be in 1..99999 (patient IDs have five digits)")
    H, W = (int(s) for s in image_size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 0x3A3])
    ages = sample_age_screening(rng, n_patients)
    n_test = int(round(test_fraction * n_patients))
    is_test = np.zeros(n_patients, bool)
    is_test[rng.choice(n_patients, n_test, replace=False)] = True

    rows = {False: [], True: []}
    for p in range(n_patients):
        patient = sample_patient(rng, f"P_{p + 1:05d}", int(ages[p]))
        prefix = "Mass-Test" if is_test[p] else "Mass-Training"
        rows[bool(is_test[p])] += write_patient(out, rng, patient, prefix=prefix, shape=(H, W), seed=seed, index=p)
    train = pd.DataFrame(rows[False], columns=CBIS_COLUMNS)
    test = pd.DataFrame(rows[True], columns=CBIS_COLUMNS)
    train.to_csv(out / "mass_case_description_train_set.csv", index=False)
    test.to_csv(out / "mass_case_description_test_set.csv", index=False)
    return pd.concat([train, test], ignore_index=True)
