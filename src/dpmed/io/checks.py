"""Is this record what its dataset says it is? Checks that refuse rather than guess.

Each check raises :class:`ValueError` with a reason built from fixed text and whitelisted DICOM
terms only (never a header value or a statistic of the image), so the reason can be written to
``rejected.csv`` and logs as it is.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Modalities each image kind accepts. OT (other) is how secondary-capture conversions of
# radiographs are often labelled; an absent Modality is accepted (it is rare and not wrong).
ACCEPTED_MODALITIES = {
    "radiograph": ("CR", "DX", "RG", "OT"),
    "mammography": ("MG", "OT"),
    "ct": ("CT",),
}
# DICOM defined terms for Modality (PS3.3 C.7.3.1.1.1); only these are ever quoted in a reason.
KNOWN_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER "
    "KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG "
    "RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN "
    "TEXTUREMAP TG US VA XA XC".split()
)
# SOP classes that carry pixel data but are not images of a patient's anatomy.
_NON_IMAGE_SOP_WORDS = ("Segmentation", "RT Dose", "RT Image", "RT Structure", "Parametric Map",
                        "Presentation State", "Structured Report", "SR Storage", "Encapsulated",
                        "Key Object", "Raw Data", "Spatial Registration")

# Plausible Hounsfield units: every CT field of view of a body holds air, lung or fat well below
# -200 HU, and real tissue and bone lie in [-1024, 3071] (values down to -3024 are padding
# outside the reconstruction circle). MR intensities, [0, 1]-normalised data and CT without its
# rescale intercept (air stored as 0) fail the first test; the bounds use the 1st and 99th
# percentiles so a few padding or metal voxels do not decide.
HU_AIR_OR_FAT_BELOW = -200.0
HU_RANGE = (-3100.0, 4000.0)


def shown_modality(modality: str) -> str:
    """The modality as it may appear in a message: a defined term, else 'an unrecognised modality'."""
    text = str(modality or "").strip().upper()
    return repr(text) if text in KNOWN_MODALITIES else "an unrecognised modality"


def check_modality(kind: str, modality: str, sop_class_name: str) -> None:
    """Refuse a DICOM object whose modality or SOP class does not fit the dataset's kind.

    Parameters
    ----------
    kind: ``radiograph``, ``mammography`` or ``ct``.
    modality: the header's Modality ('' if absent).
    sop_class_name: pydicom's name of the SOPClassUID (e.g. ``"Segmentation Storage"``).

    Raises
    ------
    ValueError: SEG, RT dose/structure/plan, SR, presentation states and the like, or an image of
        another modality (e.g. MR where CT is expected).
    """
    for word in _NON_IMAGE_SOP_WORDS:
        if word.lower() in str(sop_class_name).lower():
            raise ValueError(
                f"the DICOM object is a {word} object (modality {shown_modality(modality)}), not an image "
                f"of the patient; a {kind} dataset needs {'/'.join(ACCEPTED_MODALITIES[kind])} images"
            )
    text = str(modality or "").strip().upper()
    if text and text not in ACCEPTED_MODALITIES[kind]:
        raise ValueError(
            f"modality {shown_modality(modality)} does not fit a {kind} dataset "
            f"(accepted: {', '.join(ACCEPTED_MODALITIES[kind])})"
        )


def check_not_constant(pixels: np.ndarray, what: str = "image") -> None:
    """Raises ValueError when every pixel has the same value (a blank or failed export)."""
    if pixels.size == 0 or float(np.max(pixels)) == float(np.min(pixels)):
        raise ValueError(f"the {what} is constant (every pixel has the same value); it holds no image")


def check_hounsfield(data: np.ndarray) -> None:
    """Raises ValueError when a CT volume's values do not look like Hounsfield units.

    The reason names the thresholds, never the volume's own values.
    """
    check_not_constant(data, "volume")
    low, high = np.percentile(data, [1, 99])
    if low > HU_AIR_OR_FAT_BELOW or low < HU_RANGE[0] or high > HU_RANGE[1]:
        raise ValueError(
            "values do not look like Hounsfield units (a CT holds air or fat below "
            f"{HU_AIR_OR_FAT_BELOW:g} HU and tissue within [{HU_RANGE[0]:g}, {HU_RANGE[1]:g}] HU); "
            "is it an MR volume, normalised data, or a CT exported without its rescale intercept?"
        )


def content_digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the decoded pixel values (and shapes): equal for the same image in any encoding."""
    h = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        h.update(repr(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()
