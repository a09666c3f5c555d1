"""Read DICOM images (radiographs, single CT/MR slices) and DICOM CT series.

Error messages never contain header identifiers (patient name/ID, dates, UIDs of the
study): only the path given by the caller (who redacts it, see
``BadRecordError.with_context``), transfer-syntax names and structural facts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder

from dpmed.errors import BadRecordError
from dpmed.io.volume import Volume, canonical_volume

__all__ = ["DicomImage", "read_dicom_image", "read_dicom_series", "series_files", "decoder_install_hint"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_GREY = ("MONOCHROME1", "MONOCHROME2")
# Defined terms of PhotometricInterpretation; only these are ever quoted in a reason.
_PHOTOMETRIC_TERMS = _GREY + ("RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420",
                              "YBR_PARTIAL_422", "YBR_ICT", "YBR_RCT", "HSV", "ARGB", "CMYK", "XYZ")
# Files that export tools and desktops leave in series folders; they are not slices.
_NOT_SLICES = {"dicomdir", "thumbs.db", ".ds_store", "desktop.ini", "lockfile", "version"}
# Transfer syntaxes some installed plugins cannot decode in every variant (12-bit JPEG Extended
# is beyond Pillow; damaged JPEG streams that GDCM still reads) -> what else to try.
_OTHER_DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg, or GDCM: pip install python-gdcm"

# Transfer syntax UID → the pip package(s) that provide a pydicom decoder for it.
_DECODER_PACKAGES: dict[str, str] = {
    # JPEG 2000 / HTJ2K
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
    # JPEG (baseline, extended, lossless) and JPEG-LS
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    # RLE (pydicom has a pure-Python decoder; this one is faster)
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",
}


@dataclass(frozen=True)
class DicomImage:
    """One decoded grey-scale DICOM frame.

    Attributes
    ----------
    pixels: float32, 2-D (rows, cols): stored values with the **modality LUT applied**
        (RescaleSlope/RescaleIntercept, or the Modality LUT Sequence), e.g. Hounsfield
        units for CT. The VOI LUT / windowing and the photometric interpretation are
        *not* applied (MONOCHROME1 images are still inverted; see
        :func:`dpmed.preprocessing.radiograph.apply_photometric`).
    photometric: PhotometricInterpretation, ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
    modality: Modality (``"CT"``, ``"CR"``, ``"DX"``, ``"MG"``, ...; ``""`` if absent).
    pixel_spacing: (row spacing, column spacing) in mm from PixelSpacing, else
        ImagerPixelSpacing, else None.
    bits_stored: BitsStored.
    transfer_syntax: the transfer syntax's name (e.g. ``"JPEG 2000 Image Compression
        (Lossless Only)"``).
    """

    pixels: np.ndarray
    photometric: str
    modality: str
    pixel_spacing: tuple[float, float] | None
    bits_stored: int
    transfer_syntax: str


def decoder_install_hint(transfer_syntax_uid: str) -> str:
    """Return the pip packages that provide a decoder for a transfer syntax ("" if none known)."""
    return _DECODER_PACKAGES.get(str(transfer_syntax_uid), "")


def series_files(folder: str | os.PathLike) -> list[Path]:
    """The slice files of a series folder, in name order.

    Skipped: sub-folders, hidden files (``.DS_Store``, macOS ``._*`` forks) and the index and
    thumbnail files exports leave behind (``DICOMDIR``, ``Thumbs.db``, ``desktop.ini``).
    """
    return sorted(
        p for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _NOT_SLICES
    )


def _int_attribute(ds: pydicom.Dataset, keyword: str, default: int, source: str) -> int:
    """An integer header attribute; a malformed value is refused naming the attribute."""
    value = ds.get(keyword, default)
    try:
        return int(value if value not in (None, "") else default)
    except (TypeError, ValueError):
        raise BadRecordError(source, "", f"the header attribute {keyword} is not an integer") from None


def _shown_photometric(photometric: str) -> str:
    return repr(photometric) if photometric in _PHOTOMETRIC_TERMS else "missing or unrecognised"


def _shown_syntax(tsuid: pydicom.uid.UID) -> str:
    return f"{tsuid.name!r} ({tsuid})" if tsuid.is_transfer_syntax else "an unrecognised transfer syntax"


def _read_dataset(path: str | os.PathLike) -> pydicom.Dataset:
    """dcmread with our error contract (missing / not DICOM / unreadable)."""
    source = str(path)
    p = Path(path)
    if not p.exists():
        raise BadRecordError(source, "", "file not found; check the path and the data root")
    if not p.is_file():
        raise BadRecordError(source, "", "path is not a regular file (expected a DICOM file)")
    try:
        return pydicom.dcmread(str(p))
    except InvalidDicomError as exc:
        raise BadRecordError(
            source, "", "not a DICOM file (no 'DICM' preamble marker); check that the file is a "
            "DICOM Part 10 file and not e.g. a PNG, a DICOMDIR index or a truncated download"
        ) from exc
    except Exception as exc:  # truncated / corrupted element stream
        raise BadRecordError(
            source, "", f"DICOM file could not be parsed ({type(exc).__name__}); it may be "
            "truncated or corrupted"
        ) from exc


def _transfer_syntax(ds: pydicom.Dataset, source: str) -> pydicom.uid.UID:
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsuid is None:
        raise BadRecordError(
            source, "", "the DICOM file meta information has no TransferSyntaxUID, so the "
            "pixel data cannot be decoded; re-export the file with a complete file meta header"
        )
    return pydicom.uid.UID(str(tsuid))


def _no_pixel_data_reason(ds: pydicom.Dataset) -> str:
    from dpmed.io.checks import shown_modality

    sop_name = pydicom.uid.UID(str(ds.get("SOPClassUID", "") or "")).name
    if "Rows" in ds or "BitsAllocated" in ds or "Image Storage" in sop_name:
        # An image object whose pixel data never arrives: the file ends early.
        return (
            "the file ends before its pixel data: the header describes an image but no pixel data "
            "follows, so the file is truncated (an incomplete download or copy); export it again"
        )
    return (
        f"DICOM object has no pixel data (modality {shown_modality(ds.get('Modality', ''))}, e.g. a "
        "structured report or RT plan); it is not an image and cannot be used here"
    )


def _check_pixel_length(ds: pydicom.Dataset, source: str, n_frames: int, samples: int) -> None:
    """Uncompressed pixel data shorter than its header promises means a truncated file."""
    rows = _int_attribute(ds, "Rows", 0, source)
    cols = _int_attribute(ds, "Columns", 0, source)
    bits = _int_attribute(ds, "BitsAllocated", 0, source)
    if "PixelData" not in ds or not (rows and cols and bits):
        return
    expected = (rows * cols * n_frames * samples * bits + 7) // 8
    got = len(ds.PixelData)
    if got < expected:
        raise BadRecordError(
            source, "", f"pixel data is truncated ({got} of {expected} bytes); the file is incomplete "
            "(an interrupted download or copy), export it again"
        )


def _decoded_frame(ds: pydicom.Dataset, source: str) -> tuple[np.ndarray, pydicom.uid.UID]:
    """Checks shared by single images and series slices, then the stored 2-D frame."""
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise BadRecordError(source, "", _no_pixel_data_reason(ds))
    tsuid = _transfer_syntax(ds, source)

    n_frames = _int_attribute(ds, "NumberOfFrames", 1, source) or 1
    if n_frames != 1:
        raise BadRecordError(
            source, "", f"multi-frame DICOM with {n_frames} frames; only single-frame images are "
            "supported (split the frames into separate files first)"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    samples = _int_attribute(ds, "SamplesPerPixel", 1, source) or 1
    if samples != 1 or photometric not in _GREY:
        raise BadRecordError(
            source, "", f"colour or non-grey image (PhotometricInterpretation {_shown_photometric(photometric)}, "
            f"{samples} sample(s) per pixel); a grey-scale MONOCHROME1/MONOCHROME2 image is required"
        )
    if not tsuid.is_compressed:
        _check_pixel_length(ds, source, n_frames, samples)

    if tsuid.is_compressed:
        try:
            decoder = get_decoder(tsuid)
        except NotImplementedError as exc:
            raise BadRecordError(
                source, "", f"pixel data uses the transfer syntax {_shown_syntax(tsuid)}, "
                "which pydicom cannot decode; convert the file to an uncompressed transfer syntax"
            ) from exc
        if not decoder.is_available:
            raise BadRecordError(source, "", _missing_decoder_reason(tsuid, decoder.missing_dependencies))

    try:
        # as_rgb only matters for YBR images, which are refused above.
        arr = ds.pixel_array
    except RuntimeError as exc:
        if "missing dependencies" in str(exc):  # pydicom: "... all plugins are missing dependencies"
            raise BadRecordError(source, "", _missing_decoder_reason(tsuid, [])) from exc
        raise BadRecordError(source, "", _undecodable_reason(tsuid)) from exc
    except Exception as exc:
        if tsuid.is_compressed:
            raise BadRecordError(source, "", _undecodable_reason(tsuid)) from exc
        raise BadRecordError(
            source, "", f"pixel data could not be decoded ({type(exc).__name__}, transfer syntax "
            f"{_shown_syntax(tsuid)}); the file may be truncated or its image header inconsistent"
        ) from exc
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise BadRecordError(
            source, "", f"decoded pixel data has shape {arr.shape}; a single 2-D grey frame is required"
        )
    return arr, tsuid


def _undecodable_reason(tsuid: pydicom.uid.UID) -> str:
    """Compressed data the installed plugins failed on: name the plugins that decode more."""
    try:
        tried = ", ".join(get_decoder(tsuid).available_plugins) or "none"
    except NotImplementedError:
        tried = "none"
    reason = (
        f"compressed pixel data could not be decoded by any installed plugin (tried: {tried}; "
        f"transfer syntax {_shown_syntax(tsuid)})"
    )
    if tsuid.name.startswith("JPEG") and not tsuid.name.startswith("JPEG 2000"):
        return reason + f"; some JPEG variants (e.g. 12-bit JPEG Extended) need another decoder: {_OTHER_DECODERS}"
    hint = decoder_install_hint(tsuid)
    more = f"pip install {hint}, or GDCM: pip install python-gdcm" if hint else "GDCM: pip install python-gdcm"
    return reason + f"; the file may be corrupted, or another decoder reads it: {more}"


def _missing_decoder_reason(tsuid: pydicom.uid.UID, missing: list[str]) -> str:
    hint = decoder_install_hint(tsuid)
    reason = (
        f"pixel data is compressed with {_shown_syntax(tsuid)} and no decoder plugin for it is "
        "installed"
    )
    if hint:
        reason += f"; install it with: pip install {hint}"
    if missing:
        reason += " (pydicom reports: " + "; ".join(missing) + ")"
    return reason


def _modality_lut(arr: np.ndarray, ds: pydicom.Dataset, source: str) -> np.ndarray:
    try:
        out = apply_modality_lut(arr, ds)
    except Exception as exc:
        raise BadRecordError(
            source, "", f"the modality LUT / rescale header is invalid ({type(exc).__name__})"
        ) from exc
    out = np.asarray(out, dtype=np.float32)
    n_bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if n_bad:
        raise BadRecordError(source, "", f"{n_bad} pixel(s) are NaN or inf after the modality LUT")
    return out


def _spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    for kw in ("PixelSpacing", "ImagerPixelSpacing"):
        val = ds.get(kw)
        if val is not None and len(val) == 2:
            try:
                return (float(val[0]), float(val[1]))
            except (TypeError, ValueError):
                return None
    return None


def read_dicom_image(path: str | os.PathLike) -> DicomImage:
    """Read a single-frame grey-scale DICOM image; see :class:`DicomImage` for the contract.

    ``pixels`` is float32 (rows, cols) with the modality LUT applied
    (``pydicom.pixels.apply_modality_lut``); no VOI LUT, no photometric inversion.
    Compressed transfer syntaxes are decoded with the installed pydicom plugins
    (pylibjpeg-openjpeg for JPEG 2000, pylibjpeg-libjpeg for JPEG / JPEG-LS,
    pylibjpeg-rle or pydicom itself for RLE).

    Raises
    ------
    BadRecordError(source=str(path), record="", reason) when the file is missing, is not
    DICOM or cannot be parsed, holds no pixel data (SR, RT plan, ...), is multi-frame with
    more than one frame, is a colour image (RGB/YBR/palette), or its pixel data cannot be
    decoded — for a missing decoder plugin the reason names the transfer syntax and the
    pip packages to install.
    """
    source = str(path)
    ds = _read_dataset(path)
    arr, tsuid = _decoded_frame(ds, source)
    pixels = _modality_lut(arr, ds, source)
    bits = _int_attribute(ds, "BitsStored", 0, source)
    return DicomImage(
        pixels=pixels,
        photometric=str(ds.PhotometricInterpretation).strip().upper(),
        modality=str(ds.get("Modality", "") or ""),
        pixel_spacing=_spacing(ds),
        bits_stored=bits or int(arr.dtype.itemsize * 8),
        transfer_syntax=str(tsuid.name),
    )


# Largest relative deviation of a slice gap from the median gap before the series is
# refused (catches missing or duplicated slices, tolerates rounding in the headers).
_GAP_TOLERANCE = 0.1


def read_dicom_series(paths: Sequence[str | os.PathLike]) -> Volume:
    """Assemble a CT volume from a DICOM series (one single-frame file per slice).

    Steps: read every slice (same checks as :func:`read_dicom_image`); require identical
    Rows/Columns, ImageOrientationPatient (to 1e-4) and PixelSpacing; sort slices by
    ImagePositionPatient projected on the slice normal (row cosine × column cosine);
    apply each slice's own modality LUT (slope/intercept may differ per slice); require
    evenly spaced slices (each gap within 10 % of the median gap, no duplicates); build the
    voxel → LPS affine from orientation, spacing and positions, convert it to RAS
    (negate x and y) and reorient the array to the closest canonical RAS+ orientation.

    Returns
    -------
    Volume with float32 data in RAS+ canonical orientation (the same contract as
    :func:`dpmed.io.nifti.read_nifti_volume`); values in Hounsfield units for CT.
    A single-slice series is accepted; its slice thickness is taken from
    SpacingBetweenSlices, else SliceThickness, else 1 mm.

    Raises
    ------
    BadRecordError: for the first unusable slice (source = that slice's path), or with
        source = the first path of the series for series-level inconsistencies.
    """
    paths = list(paths)
    if not paths:
        raise BadRecordError("", "", "empty DICOM series: no slice files were given")
    folders = {str(Path(p).parent) for p in paths}
    # Series-wide problems name the series folder (each slice's own problem names the slice).
    series_source = folders.pop() if len(folders) == 1 else str(paths[0])

    slices = []
    for path in paths:
        source = str(path)
        ds = _read_dataset(path)
        arr, _ = _decoded_frame(ds, source)
        try:
            iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
            ipp = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
            spacing = np.array([float(v) for v in ds.PixelSpacing], dtype=np.float64)
        except (AttributeError, TypeError, ValueError) as exc:
            raise BadRecordError(
                source, "", "slice lacks a valid ImageOrientationPatient, ImagePositionPatient or "
                "PixelSpacing; a volume cannot be assembled from it"
            ) from exc
        if iop.shape != (6,) or ipp.shape != (3,) or spacing.shape != (2,) or np.any(spacing <= 0):
            raise BadRecordError(
                source, "", "malformed ImageOrientationPatient / ImagePositionPatient / PixelSpacing"
            )
        slices.append((source, ds, arr, iop, ipp, spacing))

    _, ds0, arr0, iop0, _, spacing0 = slices[0]
    for source, _, arr, iop, _, spacing in slices[1:]:
        if arr.shape != arr0.shape:
            raise BadRecordError(
                source, "", f"slice size {arr.shape} differs from the series' first slice {arr0.shape}"
            )
        if not np.allclose(iop, iop0, atol=1e-4):
            raise BadRecordError(source, "", "ImageOrientationPatient differs from the rest of the series")
        if not np.allclose(spacing, spacing0, rtol=1e-4, atol=1e-6):
            raise BadRecordError(source, "", "PixelSpacing differs from the rest of the series")

    row_dir = iop0[:3] / np.linalg.norm(iop0[:3])  # direction of increasing column index
    col_dir = iop0[3:] / np.linalg.norm(iop0[3:])  # direction of increasing row index
    normal = np.cross(row_dir, col_dir)
    if np.linalg.norm(normal) < 1e-6:
        raise BadRecordError(series_source, "", "ImageOrientationPatient row and column cosines are parallel")
    normal /= np.linalg.norm(normal)

    order = np.argsort([float(s[4] @ normal) for s in slices], kind="stable")
    slices = [slices[i] for i in order]
    positions = np.stack([s[4] for s in slices])

    if len(slices) > 1:
        along = positions @ normal
        gaps = np.diff(along)
        median_gap = float(np.median(gaps))
        if median_gap <= 1e-6 or np.any(gaps <= 1e-6):
            raise BadRecordError(
                series_source, "", "two or more slices share the same position; the series holds "
                "duplicate slices or several series mixed together"
            )
        if np.any(np.abs(gaps - median_gap) > _GAP_TOLERANCE * median_gap):
            raise BadRecordError(
                series_source, "", f"slices are unevenly spaced (gaps {gaps.min():.3g}–{gaps.max():.3g} mm, "
                f"median {median_gap:.3g} mm); slices are probably missing"
            )
        # Mean step vector between consecutive slices (keeps gantry tilt as a shear).
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        thickness = ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0
        step = normal * float(thickness)

    # data[i, j, k]: i = column index, j = row index, k = slice index.
    data = np.empty((arr0.shape[1], arr0.shape[0], len(slices)), dtype=np.float32)
    for k, (source, ds, arr, *_rest) in enumerate(slices):
        data[:, :, k] = _modality_lut(arr, ds, source).T

    row_spacing, col_spacing = spacing0  # PixelSpacing = (between rows, between columns)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return canonical_volume(data, ras)
