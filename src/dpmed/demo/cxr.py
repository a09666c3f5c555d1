"""Synthetic chest-radiograph cohort written as DICOM files.

:func:`generate_cxr_cohort` draws frontal chest radiographs with plausible anatomy (lungs,
mediastinum, heart, spine, ribs, clavicles, soft tissue) and eight ordinal findings graded
0–4 whose visual strength grows with the grade. Files come in the encodings real archives
mix: Modality DX or CR, BitsStored 12 or 16, non-identity RescaleSlope/RescaleIntercept on some
CR files, and MONOCHROME1 (inverted polarity) on some files. Identifying headers carry fake
values; the folder layout ``images/{PatientID}/{AccessionNumber}.dcm`` puts identifiers in the
paths, as real exports do.

The patients come from the four demo hospitals of :data:`SITES` (DICOM ``InstitutionName``;
one site per patient), and the sites differ the way real federations do: in detector response
(:func:`apply_site_detector`: sharpness, anti-scatter grid lines, gamma; and the DX/CR mix
:data:`_SITE_DX` — histogram equalisation undoes a gamma curve, not blur or grid lines) and in label
prevalence (per-site shifts of the findings' latent severities, :data:`_SITE_SHIFT`), so the
federation of study C is non-IID.

The same function also produces the disjoint *public* pretraining cohort: call it with another
``id_prefix`` (and seed). PatientIDs are ``f"{id_prefix}{number:06d}"`` with a fixed-width
number, so the prefix is recoverable from every ID and two cohorts generated with different
prefixes can never share a PatientID (UIDs also mix the prefix in, so they differ as well).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.stats import norm

from . import _dicom
from ._demographics import difficulty, sample_age, sample_sex

FINDINGS = (
    "cardiomegaly",
    "congestion",
    "pleural_effusion_right",
    "pleural_effusion_left",
    "pneumonic_infiltrates_right",
    "pneumonic_infiltrates_left",
    "atelectasis_right",
    "atelectasis_left",
)

# Per finding: prevalence of grade >= 2, weight of age, weight of the shared cardiac factor.
_PREVALENCE = np.array([0.30, 0.25, 0.20, 0.17, 0.15, 0.13, 0.24, 0.28])
_AGE_W = np.array([0.55, 0.45, 0.45, 0.45, 0.30, 0.30, 0.40, 0.40])
_CARD_W = np.array([0.80, 0.75, 0.50, 0.50, 0.10, 0.10, 0.20, 0.20])
_PATIENT_SD = 0.7
_STUDY_SD = 0.45

# Rescale (slope, intercept) pairs used on some CR files; DX files keep the identity.
_RESCALES = ((0.5, -1024.0), (2.0, 0.0), (1.0, -512.0), (0.25, 100.0))

#: The demo hospitals (``InstitutionName``); each patient belongs to one.
SITES = tuple(_dicom._INSTITUTIONS)
# Per site: shift of the latent severity of each finding (prevalence differs by site: an ICU-heavy
# general hospital sees more cardiac decompensation, a university clinic more pneumonia, a county
# hospital more outpatients), detector gamma on the attenuation image and P(modality = DX).
_SITE_SHIFT = np.array([
    [0.45, 0.45, 0.30, 0.30, 0.00, 0.00, 0.10, 0.10],
    [-0.10, -0.10, 0.00, 0.00, 0.50, 0.50, 0.00, 0.00],
    [-0.40, -0.40, -0.35, -0.35, -0.30, -0.30, -0.20, -0.20],
    [0.00, 0.00, 0.10, 0.10, -0.10, -0.10, 0.45, 0.45],
])
_SITE_GAMMA = (0.80, 1.00, 1.25, 0.90)
_SITE_BLUR = (0.0, 0.9, 0.0, 1.6)  # extra Gaussian blur (pixels at 256²): detector sharpness
_SITE_GRID = (0.0, 0.0, 5.0, 0.0)  # period (pixels at 256²) of visible anti-scatter grid lines
_SITE_GRID_AMP = 0.02
_SITE_DX = (0.85, 0.55, 0.25, 0.55)

#: Opacity in the "attenuation" image of the lead side marker drawn in the top-left corner.
MARKER_VALUE = 1.0


def marker_box(image_size: int) -> tuple[slice, slice]:
    """Rows/columns of the lead marker, drawn with value :data:`MARKER_VALUE` (no noise, no blur).

    Its stored value is ``2**BitsStored - 1`` (MONOCHROME2) or ``0`` (MONOCHROME1), so after the
    modality LUT it reads ``(2**BitsStored - 1) * slope + intercept`` or ``intercept``.
    """
    a, b = int(round(0.03 * image_size)), int(round(0.09 * image_size))
    return slice(a, b), slice(a, b)


def sample_grades(rng: np.random.Generator, ages: np.ndarray, patient_factors: np.ndarray,
                  patient_offsets: np.ndarray) -> np.ndarray:
    """Ordinal grades 0..4 for studies of patients aged ``ages`` (one row per study)."""
    n = len(ages)
    age_z = (np.asarray(ages, float) - 65.0) / 15.0
    z = (_AGE_W[None, :] * age_z[:, None] + _CARD_W[None, :] * patient_factors[:, None]
         + patient_offsets + rng.normal(0.0, _STUDY_SD, (n, len(FINDINGS))))
    # Thresholds placed on the marginal spread so that P(grade >= 2) is the target prevalence.
    sd = np.sqrt(_AGE_W**2 * 0.9 + _CARD_W**2 + _PATIENT_SD**2 + _STUDY_SD**2)
    t2 = sd * norm.ppf(1.0 - _PREVALENCE)
    cuts = np.stack([t2 - 0.55 * sd, t2, t2 + 0.55 * sd, t2 + 1.1 * sd], axis=1)
    return (z[:, :, None] >= cuts[None, :, :]).sum(axis=2).astype(int)


def _superellipse(U, V, cx, cy, ax, ay, p=2.0):
    return (np.abs((U - cx) / ax) ** p + np.abs((V - cy) / ay) ** p) <= 1.0


def _band(U, V, x0, y0, x1, y1, half_width):
    """Soft segment from (x0,y0) to (x1,y1) with a given half width (in normalised units).

    ``U`` is a (1, S) row of x coordinates and ``V`` an (S, 1) column of y coordinates, both
    increasing; only the segment's bounding box is evaluated.
    """
    out = np.zeros((V.shape[0], U.shape[1]), np.float32)
    u1, v1 = U[0], V[:, 0]
    c0, c1 = np.searchsorted(u1, [min(x0, x1) - half_width, max(x0, x1) + half_width])
    r0, r1 = np.searchsorted(v1, [min(y0, y1) - half_width, max(y0, y1) + half_width])
    if c1 <= c0 or r1 <= r0:
        return out
    Us, Vs = U[:, c0:c1], V[r0:r1, :]
    dx, dy = x1 - x0, y1 - y0
    L2 = dx * dx + dy * dy
    t = np.clip(((Us - x0) * dx + (Vs - y0) * dy) / L2, 0.0, 1.0)
    dist = np.hypot(Us - (x0 + t * dx), Vs - (y0 + t * dy))
    out[r0:r1, c0:c1] = np.clip(1.0 - dist / half_width, 0.0, 1.0)
    return out


def _smooth_field(rng, n, S):
    """A smooth random field on an S×S grid: bilinear upsampling of an n×n white-noise grid."""
    small = rng.random((n, n)).astype(np.float32)
    pos = np.linspace(0, n - 1, S)
    i0 = np.clip(np.floor(pos).astype(int), 0, n - 2)
    w = (pos - i0).astype(np.float32)
    rows = small[i0] * (1 - w)[:, None] + small[i0 + 1] * w[:, None]  # (S, n), no BLAS
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


def _curve_mask(S, pts_xy, radius_px):
    """Rasterise a polyline given in normalised coords to a soft mask (thin wires, leads)."""
    m = np.zeros((S, S), np.float32)
    cols = np.clip(np.round((pts_xy[:, 0] + 1) * 0.5 * (S - 1)).astype(int), 0, S - 1)
    rows = np.clip(np.round((pts_xy[:, 1] + 1) * 0.5 * (S - 1)).astype(int), 0, S - 1)
    m[rows, cols] = 1.0
    if radius_px > 0.5:
        m = ndimage.grey_dilation(m, size=(int(2 * radius_px) | 1,) * 2)
    return m


def _bezier(p0, p1, p2, n=300):
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2)


def render_chest(grades, *, age: float, rng: np.random.Generator, image_size: int = 256,
                 devices: bool | None = None) -> np.ndarray:
    """Draw one frontal (PA/AP) radiograph as a float "attenuation" image in [0, 1].

    Bright = dense (bone, soft tissue, fluid), dark = air. ``grades`` is a sequence of the eight
    grades in :data:`FINDINGS` order. The image left is the patient's right. ``devices`` forces
    pacemaker/ECG leads on or off; ``None`` samples them with an age-dependent probability.
    """
    g = np.asarray(grades, int)
    S = int(image_size)
    diff = difficulty(age)
    # independent streams: anatomy, each finding, devices and acquisition, so that changing one
    # grade changes only that finding's pixels (the parent generator advances by a fixed amount)
    sub = [np.random.default_rng(int(x)) for x in rng.integers(0, 2**62, size=12)]
    rng = sub[0]
    ax = np.linspace(-1.0, 1.0, S, dtype=np.float32)
    u, v = ax[None, :], ax[:, None]  # u: column (x), v: row (y, downwards); broadcast
    scale = rng.uniform(0.93, 1.05)
    U = (u - rng.normal(0, 0.04)) / scale
    V = (v - rng.normal(0, 0.04)) / scale
    px = 2.0 / S / scale  # one pixel in normalised units

    # --- body and soft tissue -------------------------------------------------------------
    torso = _superellipse(U, V, 0.0, 0.22, 0.92, 1.15, 4.0)
    neck = (np.abs(U) < 0.2) & (V < -0.5)
    shoulders = _superellipse(U, V, 0.0, -0.62, 0.98, 0.22, 2.0)
    body = (torso | neck | shoulders).astype(np.float32)
    d = np.float32(0.04) + np.float32(0.46) * body
    d += 0.06 * body * np.clip(np.abs(U) - 0.6, 0, None) / 0.3  # thicker lateral chest wall

    # --- lungs (hemithoraces), heart, diaphragm --------------------------------------------
    lcx = (-0.36, 0.36)  # image-left lung = patient's right lung
    hemi = [_superellipse(U, V, lcx[0], 0.0, 0.27, 0.58, 2.4),
            _superellipse(U, V, lcx[1], 0.02, 0.26, 0.56, 2.4)]
    atel = (g[6], g[7])
    dome_base = (0.40 - 0.025 * atel[0], 0.44 - 0.025 * atel[1])  # volume loss lifts the dome
    ctr = 0.41 + 0.04 * g[0] + rng.normal(0, 0.04)
    ha = ctr * 0.625
    hx, hy, hb = -0.05 + 0.5 * ha, 0.33, 0.2 + 0.3 * ha
    heart = _superellipse(U, V, hx, hy, ha, hb, 2.0)
    lungs = []
    for s in range(2):
        dome = dome_base[s] + 0.3 * ((U - lcx[s]) / 0.3) ** 2
        lungs.append(hemi[s] & (V < dome) & ~heart)
    lung = (lungs[0] | lungs[1]).astype(np.float32)
    d -= 0.30 * lung
    # lung markings: faint smooth texture, denser towards the hila
    tex = 3.4 * (_smooth_field(rng, 24, S) - 0.5)
    hil_r = np.minimum(np.hypot(U + 0.17, V - 0.02), np.hypot(U - 0.17, V - 0.02))
    d += lung * (0.015 * tex + 0.05 * np.exp(-hil_r / 0.2))
    # spine behind the mediastinum, with faint vertebral periodicity
    spine = (np.abs(U) < 0.075) & (V > -0.8)
    d += spine * (0.10 + 0.02 * np.cos(V * 40.0))
    d += 0.05 * heart  # heart slightly denser than the mediastinal soft tissue

    # --- bones: ribs and clavicles -------------------------------------------------------------
    chest = body * (np.abs(U) > 0.08)
    # ten posterior ribs (parabolic arcs) and fainter anterior ribs, evaluated as a phase
    absU = np.abs(U)
    tp = (V - 0.7 * (absU - 0.45) ** 2 + 0.12 + 0.62) / 0.125
    ta = (V - 0.22 + 0.5 * (absU - 0.25) ** 2 + 0.62) / 0.125
    kp, ka = np.round(tp), np.round(ta)
    ribs = (0.07 * ((np.abs(tp - kp) < 0.224) & (kp >= 0) & (kp <= 9))
            + 0.03 * ((np.abs(ta - ka) < 0.16) & (ka >= 0) & (ka <= 9)))
    d += chest * np.minimum(ribs, 0.12) * (np.abs(U) < 0.72)
    for sgn in (-1, 1):
        d += 0.12 * _band(U, V, sgn * 0.1, -0.66, sgn * 0.62, -0.76, 0.035)

    # --- findings ---------------------------------------------------------------------------
    # congestion: bilateral perihilar haze and prominent vessels fanning out from the hila
    if g[1] > 0:
        for s, hxs in enumerate((-0.17, 0.17)):
            r = np.hypot(U - hxs, V - 0.02)
            th = np.arctan2(V - 0.02, U - hxs)
            vessels = np.maximum(np.cos(9.0 * th + sub[2].uniform(0, 6.28)), 0) ** 4
            amp = 0.022 * g[1]
            d += lung * (amp * np.exp(-(r / (0.14 + 0.03 * g[1])) ** 2)
                         + 0.7 * amp * vessels * np.exp(-r / 0.28))
    # pleural effusion: basal opacity with a meniscus rising laterally, on the correct side
    for s in range(2):
        ge = g[2 + s]
        if ge > 0:
            h = (0.0, 0.06, 0.14, 0.24, 0.38)[ge] * sub[3 + s].uniform(0.85, 1.15)
            lateral = np.clip((U - lcx[s]) * (-1 if s == 0 else 1) / 0.27, 0, None)
            level = 0.56 - h - 0.10 * lateral**2
            fluid = lungs[s] * (1.0 / (1.0 + np.exp(-(V - level) / 0.025)))
            d += 0.30 * fluid * (0.7 + 0.075 * ge)
    # pneumonic infiltrates: patchy, blotchy opacities inside the lung of the correct side
    field = _smooth_field(sub[11], 14, S)
    for s in range(2):
        gi = g[4 + s]
        if gi > 0:
            for _ in range(1 + (gi >= 3)):
                cx = lcx[s] + sub[5 + s].uniform(-0.12, 0.12)
                cy = sub[5 + s].uniform(-0.25, 0.35)
                rad = 0.13 + 0.05 * gi
                env = np.exp(-((U - cx) ** 2 + (V - cy) ** 2) / (2 * rad**2))
                patch = np.clip((field - 0.35) / 0.4, 0, 1)
                d += lungs[s] * env * patch * (0.06 + 0.05 * gi)
    # atelectasis: linear (plate-like) bands in the lower lung zone
    for s in range(2):
        ga = g[6 + s]
        if ga > 0:
            for _ in range(1 + (ga >= 3)):
                cx = lcx[s] + sub[7 + s].uniform(-0.1, 0.1)
                cy = sub[7 + s].uniform(0.15, 0.35)
                half = 0.08 + 0.035 * ga
                ang = sub[7 + s].uniform(-0.35, 0.35)
                x0, y0 = cx - half * np.cos(ang), cy - half * np.sin(ang)
                x1, y1 = cx + half * np.cos(ang), cy + half * np.sin(ang)
                band = _band(U, V, x0, y0, x1, y1, 0.012 + 0.008 * ga)
                d += hemi[s] * band * (0.05 + 0.025 * ga)

    # --- devices (more frequent in older patients) ----------------------------------------
    if devices is None:
        pacer = sub[9].random() < 0.02 + 0.22 * diff**2
        ecg = sub[9].random() < 0.08 + 0.45 * diff
    else:
        pacer = ecg = bool(devices)
    metal = np.zeros((S, S), np.float32)
    if pacer:
        gx, gy = 0.5 + sub[9].normal(0, 0.03), -0.58 + sub[9].normal(0, 0.03)
        metal = np.maximum(metal, _superellipse(U, V, gx, gy, 0.075, 0.05, 2.0) * 0.97)
        lead = _bezier((gx - 0.05, gy), (0.0, -0.45), (hx - 0.05, hy + 0.05))
        metal = np.maximum(metal, _curve_mask(S, lead * scale, 1.5) * 0.9)
    if ecg:
        for _ in range(int(sub[9].integers(3, 6))):
            ex, ey = sub[9].uniform(-0.7, 0.7), sub[9].uniform(-0.7, 0.6)
            r = np.hypot(U - ex, V - ey)
            metal = np.maximum(metal, ((r < 0.035) & (r > 0.02)) * 0.85 + (r <= 0.008) * 0.9)
            wire = _bezier((ex, ey), (ex + sub[9].uniform(-0.4, 0.4), ey + sub[9].uniform(0.1, 0.5)),
                           (sub[9].uniform(-1, 1), 1.0))
            metal = np.maximum(metal, _curve_mask(S, wire * scale, 1.0) * 0.75)
    d = np.maximum(d, metal)

    # --- acquisition: blur, contrast loss, exposure, noise ----------------------------------
    d = ndimage.gaussian_filter(d, 0.7 * S / 256.0)
    contrast = 1.0 - 0.35 * diff * sub[10].uniform(0.5, 1.0)
    d = 0.4 + contrast * (d - 0.4)
    d = d * sub[10].uniform(0.92, 1.08) + sub[10].uniform(-0.03, 0.03) + 0.03 * sub[10].normal() * v
    noise_sd = 0.012 + 0.035 * diff * sub[10].uniform(0.5, 1.5)
    d += sub[10].normal(0.0, noise_sd, d.shape).astype(np.float32)
    d = np.clip(d, 0.0, 0.97)
    rs, cs = marker_box(S)
    d[rs, cs] = MARKER_VALUE
    return d.astype(np.float32)


def apply_site_detector(img: np.ndarray, site: int) -> np.ndarray:
    """The look of site ``site``'s detector on an attenuation image from :func:`render_chest`.

    Deterministic (no random draws): extra blur, vertical grid lines and a gamma curve; values
    stay in [0, 0.97] and the lead marker keeps :data:`MARKER_VALUE`.
    """
    S = img.shape[0]
    out = img
    if _SITE_BLUR[site] > 0:
        out = ndimage.gaussian_filter(out, _SITE_BLUR[site] * S / 256.0)
    out = np.clip(out, 0.0, None) ** _SITE_GAMMA[site]
    if _SITE_GRID[site] > 0:
        cols = np.arange(S, dtype=np.float32)
        out = out + _SITE_GRID_AMP * np.cos(2 * np.pi * cols / (_SITE_GRID[site] * S / 256.0))[None, :]
    out = np.clip(out, 0.0, 0.97).astype(np.float32)
    rs, cs = marker_box(S)
    out[rs, cs] = MARKER_VALUE
    return out


def generate_cxr_cohort(out_dir, *, n_patients: int, images_per_patient=(1, 3),
                        image_size: int = 256, seed: int, id_prefix: str = "CXR") -> pd.DataFrame:
    """Write a synthetic chest-radiograph cohort to ``out_dir`` and return its labels table.

    Layout::

        out_dir/labels.csv                             path + 8 finding grades (0..4)
        out_dir/images/{PatientID}/{AccessionNumber}.dcm

    Every study of a patient is a separate file with its own StudyInstanceUID, date and
    accession number; sex/age live only in the DICOM headers. ``images_per_patient`` is an
    inclusive (min, max) range. PatientIDs are ``f"{id_prefix}{i:06d}"``: cohorts generated with
    different prefixes (e.g. ``"CXR"`` private, ``"PUB"`` public) never share a PatientID.
    Same arguments give byte-identical files.
    """
    if not 0 < n_patients <= 999_999:
        raise ValueError("n_patients must be in 1..999999 (PatientIDs have six digits)")
    lo, hi = images_per_patient
    if not 1 <= lo <= hi:
        raise ValueError("images_per_patient must be a (min, max) range with 1 <= min <= max")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 0xC0C5])

    sexes = sample_sex(rng, n_patients)
    ages = sample_age(rng, n_patients)
    n_img = rng.integers(lo, hi + 1, n_patients)
    card = rng.normal(0, 1, n_patients)
    offs = rng.normal(0, _PATIENT_SD, (n_patients, len(FINDINGS)))

    rows = []
    for p in range(n_patients):
        pid = f"{id_prefix}{p + 1:06d}"
        sex = str(sexes[p])
        name = _dicom.fake_name(rng, sex)
        site = int(rng.integers(len(SITES)))  # the same draw fake_institution makes
        institution = SITES[site]
        first = _dicom.REFERENCE_DATE + _dt.timedelta(days=int(rng.integers(0, 2200)))
        birth = _dicom.birth_date_for(first, int(ages[p]), rng)
        gaps = np.concatenate([[0], np.cumsum(rng.integers(1, 400, n_img[p] - 1))])
        dates = [first + _dt.timedelta(days=int(x)) for x in gaps]
        study_ages = np.array([_dicom.age_on(birth, dt) for dt in dates])
        grades = sample_grades(rng, study_ages, np.full(n_img[p], card[p]),
                               np.repeat((offs[p] + _SITE_SHIFT[site])[None, :], n_img[p], axis=0))
        acc_base = int(rng.integers(10**7, 10**8))
        for s in range(n_img[p]):
            age = int(study_ages[s])
            img = apply_site_detector(render_chest(grades[s], age=age, rng=rng, image_size=image_size), site)
            modality = "DX" if rng.random() < _SITE_DX[site] else "CR"
            bits = 12 if rng.random() < 0.5 else 16
            mono1 = rng.random() < 0.2
            slope, intercept = 1.0, 0.0
            if modality == "CR" and rng.random() < 0.5:
                slope, intercept = _RESCALES[int(rng.integers(len(_RESCALES)))]
            maxv = 2**bits - 1
            stored = np.round(img * maxv).astype(np.uint16)
            if mono1:
                stored = (maxv - stored).astype(np.uint16)
            accession = f"{acc_base}{s:02d}"
            uid_parts = (id_prefix, seed, p, s)
            ds = _dicom.base_dataset(
                sop_class_uid=_dicom.DX_STORAGE if modality == "DX" else _dicom.CR_STORAGE,
                sop_instance_uid=_dicom.make_uid("sop", *uid_parts),
                study_uid=_dicom.make_uid("study", *uid_parts),
                series_uid=_dicom.make_uid("series", *uid_parts),
                modality=modality, patient_name=name, patient_id=pid, birth_date=birth,
                sex=sex, age=age, study_date=dates[s], accession=accession,
                institution=institution)
            ds.BodyPartExamined = "CHEST"
            ds.ViewPosition = "AP" if rng.random() < 0.2 + 0.5 * difficulty(age) else "PA"
            ds.ImagerPixelSpacing = [f"{430.0 / image_size:.4f}"] * 2
            if modality == "DX":
                ds.ImageType = ["ORIGINAL", "PRIMARY"]
                ds.PresentationIntentType = "FOR PRESENTATION"
            else:
                ds.ImageType = ["ORIGINAL", "PRIMARY"]
            _dicom.set_mono_pixels(ds, stored, bits_stored=bits,
                                   photometric="MONOCHROME1" if mono1 else "MONOCHROME2")
            ds.RescaleSlope = f"{slope:g}"
            ds.RescaleIntercept = f"{intercept:g}"
            ds.RescaleType = "US"
            rel = f"images/{pid}/{accession}.dcm"
            _dicom.write_dicom(out / rel, ds)
            rows.append([rel, *map(int, grades[s])])
    labels = pd.DataFrame(rows, columns=["path", *FINDINGS])
    labels.to_csv(out / "labels.csv", index=False)
    return labels
