"""Synthetic abdominal CT cohort (pancreatic cancer vs control) written as NIfTI volumes.

Volumes hold Hounsfield units as int16 on disk (identity scaling, so ``get_fdata()`` returns HU):
air −1000 outside the body, subcutaneous and visceral fat ≈ −100, organs ≈ 30–65 HU (liver,
spleen, kidneys, pancreas), muscle ≈ 50, contrast-filled aorta/IVC, bone ≥ 400 (vertebral body,
spinous process, ribs). Tumour cases carry a hypodense pancreatic lesion (10–30 HU below the
pancreas, variable size and position) with an upstream dilated duct. Older patients get more
noise, weaker enhancement and more surgical clips with metal streak artefacts.

Some volumes are stored in LPS order or with a reversed slice axis; their affine says so, so
``nibabel.as_closest_canonical`` restores the same RAS+ array for every file.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ._demographics import difficulty, sample_age, sample_sex

HU_AIR = -1000.0
HU_FAT = -100.0
HU_MUSCLE = 50.0
HU_LIVER = 60.0
HU_SPLEEN = 50.0
HU_KIDNEY = 35.0
HU_PANCREAS = 45.0
HU_BONE_TRABECULAR = 450.0
HU_BONE_CORTICAL = 800.0

#: Storage orientations: canonical RAS, LPS (first two axes flipped), reversed slice order.
ORIENTATIONS = {"RAS": (), "LPS": (0, 1), "RAI": (2,)}


def _ellipsoid(X, Y, Z, c, r):
    return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0


def _smooth_noise(rng, n, shape):
    """Smooth random field on ``shape`` from an ``n``-per-axis grid (separable linear upsampling)."""
    small = rng.random((n, n, n)).astype(np.float32)
    out = small
    for ax, S in enumerate(shape):
        pos = np.linspace(0, n - 1, S)
        i0 = np.clip(np.floor(pos).astype(int), 0, n - 2)
        w = (pos - i0).astype(np.float32)
        sh = [1, 1, 1]
        sh[ax] = S
        out = (np.take(out, i0, axis=ax) * (1 - w).reshape(sh)
               + np.take(out, i0 + 1, axis=ax) * w.reshape(sh))
    return out


def pancreas_centreline(t, jitter=(0.0, 0.0, 0.0)):
    """Pancreas centreline (normalised RAS coords) at t in [0, 1], head (t=0) to tail (t=1)."""
    t = np.asarray(t, float)
    x = 0.18 - 0.62 * t
    y = -0.02 + 0.10 * np.sin(np.pi * t) - 0.06 * t
    z = -0.05 + 0.22 * t
    return x + jitter[0], y + jitter[1], z + jitter[2]


def render_abdomen(shape, *, age: float, sex: str, tumour: bool, rng: np.random.Generator,
                   clips: bool | None = None) -> tuple[np.ndarray, dict]:
    """Draw one abdominal CT volume in canonical RAS+ voxel order, in HU (float32).

    Axis 0 runs to the patient's Right, axis 1 to Anterior, axis 2 to Superior. Returns the
    volume and a dict of landmarks in voxel indices (``lesion_centre``/``lesion_radius`` when
    ``tumour``, ``spine``, ``air``, ``subcut_fat``, ``liver``).
    """
    nx, ny, nz = shape
    diff = difficulty(age)
    X = np.linspace(-1, 1, nx, dtype=np.float32)[:, None, None]
    Y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    Z = np.linspace(-1, 1, nz, dtype=np.float32)[None, None, :]

    def vox(x, y, z):
        return (int(round((x + 1) / 2 * (nx - 1))), int(round((y + 1) / 2 * (ny - 1))),
                int(round((z + 1) / 2 * (nz - 1))))

    bx, by = rng.uniform(0.78, 0.9), rng.uniform(0.6, 0.7)
    cy = -0.05
    fat = rng.uniform(0.06, 0.14) + (0.03 if sex == "F" else 0.0)
    r_body = (X / bx) ** 2 + ((Y - cy) / by) ** 2
    body = np.broadcast_to(r_body <= 1.0, shape)
    inner = np.broadcast_to(((X / (bx - fat)) ** 2 + ((Y - cy) / (by - fat)) ** 2) <= 1.0, shape)
    cavity = np.broadcast_to(((X / (bx - fat - 0.05)) ** 2
                              + ((Y - cy) / (by - fat - 0.05)) ** 2) <= 1.0, shape)

    v = np.full(shape, HU_AIR, np.float32)
    v[body] = HU_FAT
    v[inner] = HU_MUSCLE
    # abdominal cavity: soft tissue (bowel) interleaved with visceral fat
    visceral = _smooth_noise(rng, 7, shape)
    v[cavity] = np.where(visceral[cavity] > 0.62 - 0.05 * (sex == "M"), HU_FAT + 15, 35.0)

    enh = 1.0 - 0.4 * diff * rng.uniform(0.5, 1.0)  # weaker enhancement / contrast in the old
    j = rng.normal(0, 0.03, 3)
    organs = [
        (_ellipsoid(X, Y, Z, (0.38 + j[0], 0.05 + j[1], 0.45 + j[2]), (0.42, 0.45, 0.6)), HU_LIVER),
        (_ellipsoid(X, Y, Z, (-0.52 + j[0], -0.2 + j[1], 0.5 + j[2]), (0.17, 0.22, 0.35)), HU_SPLEEN),
        (_ellipsoid(X, Y, Z, (0.33, -0.38 + j[1], -0.05), (0.13, 0.12, 0.38)), HU_KIDNEY),
        (_ellipsoid(X, Y, Z, (-0.33, -0.38 + j[1], 0.0), (0.13, 0.12, 0.38)), HU_KIDNEY),
    ]
    for mask, hu in organs:
        v[mask & cavity] = 40.0 + enh * (hu - 40.0)
    # vessels: contrast-filled aorta and IVC
    aorta = np.broadcast_to((X + 0.08) ** 2 + (Y + 0.25) ** 2 <= 0.065**2, shape)
    ivc = np.broadcast_to((X - 0.13) ** 2 + (Y + 0.22) ** 2 <= 0.06**2, shape)
    v[aorta] = 40.0 + enh * 140.0
    v[ivc] = 40.0 + enh * 80.0

    # pancreas: tube along a curved centreline, head to tail
    pj = rng.normal(0, 0.03, 3)
    ts = np.linspace(0, 1, 40)
    cx, cyl, cz = pancreas_centreline(ts, pj)
    radius = np.where(ts < 0.25, 0.12, 0.085) * rng.uniform(0.9, 1.1)
    dist = np.full(shape, np.inf, np.float32)
    for k in range(len(ts)):
        dk = np.sqrt((X - cx[k]) ** 2 + (Y - cyl[k]) ** 2 + ((Z - cz[k]) * 0.6) ** 2) / radius[k]
        dist = np.minimum(dist, dk)
    pancreas = dist <= 1.0
    v[(dist > 1.0) & (dist <= 1.6) & cavity] = HU_FAT + 10.0  # peripancreatic fat
    hu_pan = 40.0 + enh * (HU_PANCREAS - 40.0) + rng.normal(0, 3)
    v[pancreas] = hu_pan

    marks = {}
    if tumour:
        t0 = float(rng.choice([rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.9)], p=[0.7, 0.3]))
        lc = np.array(pancreas_centreline(t0, pj), float)
        lr = rng.uniform(0.1, 0.22)
        lshape = (lr, lr * rng.uniform(0.8, 1.2), lr * 1.4)
        lesion = _ellipsoid(X, Y, Z, lc, lshape) & cavity
        # mass effect: the gland bulges around the tumour into the peripancreatic fat
        bulge = _ellipsoid(X, Y, Z, lc, tuple(1.35 * r for r in lshape)) & cavity
        delta = rng.uniform(10.0, 30.0) * (0.6 + 0.4 * enh)
        # upstream duct dilatation (towards the tail) and the hypodense mass itself
        duct_t = ts[ts > t0 + 0.05]
        if len(duct_t):
            dx_, dy_, dz_ = pancreas_centreline(duct_t, pj)
            dd = np.full(shape, np.inf, np.float32)
            for k in range(len(duct_t)):
                dd = np.minimum(dd, np.sqrt((X - dx_[k]) ** 2 + (Y - dy_[k]) ** 2
                                            + ((Z - dz_[k]) * 0.6) ** 2))
            v[(dd <= 0.05) & pancreas] = 10.0
        v[bulge & ~lesion] = hu_pan
        v[lesion] = hu_pan - delta
        marks["lesion_centre"] = vox(*lc)
        marks["lesion_radius_vox"] = lr * (nx - 1) / 2
        marks["lesion_delta_hu"] = delta

    # bone: vertebral body (cortical rim + trabecular core), spinous process, ribs
    sy = -0.47 + 0.02 * rng.normal()
    vb = ((X / 0.13) ** 2 + ((Y - sy) / 0.12) ** 2)
    v[np.broadcast_to(vb <= 1.0, shape)] = HU_BONE_CORTICAL
    v[np.broadcast_to(vb <= 0.55, shape)] = HU_BONE_TRABECULAR + rng.normal(0, 20)
    spin = (np.abs(X) <= 0.03) & (Y <= sy - 0.1) & (Y >= sy - 0.28)
    v[np.broadcast_to(spin, shape) & body] = 600.0
    ang = np.arctan2((Y - cy) / by, X / bx)
    rib_r = (r_body >= ((bx - fat - 0.05) / bx) ** 2) & (r_body <= ((bx - fat + 0.02) / bx) ** 2)
    rib_ang = (np.cos(ang * 9.0) > 0.8) & (np.abs(np.sin(ang)) < 0.95)
    ribs = np.broadcast_to(rib_r & rib_ang, shape) & (Z > -0.1)
    v[ribs & (np.cos(Z * 18.0) > 0.2)] = 700.0

    marks["air"] = (1, 1, nz // 2)
    marks["spine"] = vox(0.0, sy, 0.0)
    marks["subcut_fat"] = vox(0.0, cy + by - fat / 2, -0.6)
    marks["liver"] = vox(0.45, 0.05, 0.5)

    # surgical clips with metal streak artefacts (more frequent in older patients)
    if clips is None:
        clips = rng.random() < 0.05 + 0.4 * diff
    if clips:
        for _ in range(int(rng.integers(1, 4))):
            c = (rng.uniform(0.05, 0.45), rng.uniform(-0.1, 0.3), rng.uniform(-0.4, 0.6))
            ci = vox(*c)
            zsl = slice(max(ci[2] - 1, 0), ci[2] + 2)
            th = np.arctan2(Y - c[1], X - c[0])[:, :, 0]
            rr = np.hypot(X - c[0], Y - c[1])[:, :, 0]
            streak = 110.0 * np.cos(th * 2 * int(rng.integers(4, 8))) * np.exp(-rr / 0.25)
            v[:, :, zsl] += (streak * body[:, :, 0])[:, :, None]
            v[ci[0], ci[1], ci[2]] = 2500.0

    v[body] += rng.normal(0, 8 + 22 * diff * rng.uniform(0.6, 1.4), int(body.sum())).astype(np.float32)
    return v, marks


def _reorient(data: np.ndarray, affine: np.ndarray, flips) -> tuple[np.ndarray, np.ndarray]:
    """Store ``data`` with the given voxel axes reversed and the affine adjusted to match."""
    aff = affine.copy()
    for ax in flips:
        data = np.flip(data, axis=ax)
        m = np.eye(4)
        m[ax, ax] = -1.0
        m[ax, 3] = data.shape[ax] - 1
        aff = aff @ m
    return np.ascontiguousarray(data), aff


def generate_ct_cohort(out_dir, *, n_patients: int, shape=(64, 64, 32), seed: int,
                       tumour_fraction: float = 0.4) -> pd.DataFrame:
    """Write a synthetic abdominal CT cohort to ``out_dir`` and return the clinical table.

    Layout::

        out_dir/clinical.csv                 patient_id,sex,age,pdac,path
        out_dir/volumes/{PatientID}.nii.gz   int16 HU, one volume per patient

    ``round(tumour_fraction * n_patients)`` patients (older ones more likely) have PDAC.
    Voxel spacing is 0.8 × 0.8 × 2.5 mm scaled from a 512 × 512 × 80 scan to ``shape``.
    Same arguments give byte-identical files.
    """
    if not 0 < n_patients <= 999_999:
        raise ValueError("n_patients must be in 1..999999")
    shape = tuple(int(s) for s in shape)
    out = Path(out_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([int(seed), 0xC7])
    sexes = sample_sex(rng, n_patients)
    ages = sample_age(rng, n_patients)
    n_t = int(round(tumour_fraction * n_patients))
    w = np.exp(0.03 * (ages - 65.0))
    tumour_idx = rng.choice(n_patients, size=n_t, replace=False, p=w / w.sum())
    pdac = np.zeros(n_patients, int)
    pdac[tumour_idx] = 1

    spacing = np.array([0.8 * 512 / shape[0], 0.8 * 512 / shape[1], 2.5 * 80 / shape[2]])
    canon = np.diag([*spacing, 1.0])
    canon[:3, 3] = -spacing * (np.array(shape) - 1) / 2.0
    names = list(ORIENTATIONS)
    rows = []
    for p in range(n_patients):
        pid = f"CT{p + 1:06d}"
        hu, _ = render_abdomen(shape, age=float(ages[p]), sex=str(sexes[p]), tumour=bool(pdac[p]),
                               rng=rng)
        orient = names[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        data, aff = _reorient(np.clip(np.round(hu), -1024, 3071).astype(np.int16), canon,
                              ORIENTATIONS[orient])
        img = nib.Nifti1Image(data, aff)
        img.header.set_data_dtype(np.int16)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(aff, code=1)
        img.set_sform(aff, code=1)
        rel = f"volumes/{pid}.nii.gz"
        nib.save(img, out / rel)
        rows.append([pid, str(sexes[p]), int(ages[p]), int(pdac[p]), rel])
    clinical = pd.DataFrame(rows, columns=["patient_id", "sex", "age", "pdac", "path"])
    clinical.to_csv(out / "clinical.csv", index=False)
    return clinical
