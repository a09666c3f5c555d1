"""DICOM and NIfTI readers on files shipped with pydicom / nibabel (no download)."""

from __future__ import annotations

import os
import random
import re
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as NIB_DATA
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, ExplicitVRLittleEndian, generate_uid

from dpmed.errors import BadRecordError
from dpmed.io.dicom import read_dicom_image, read_dicom_series, series_files
from dpmed.io.nifti import read_nifti_volume
from dpmed.io.volume import Volume
from dpmed.preprocessing import window_hu


def _testfile(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns when it would try a download
        path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not shipped with this pydicom")
    return path


# --------------------------------------------------------------------------- DICOM images


def test_ct_small_hounsfield_units_and_window():
    path = _testfile("CT_small.dcm")
    ds = pydicom.dcmread(path)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert (slope, intercept) == (1.0, -1024.0)  # header values of this file
    raw = ds.pixel_array.astype(np.float64)

    img = read_dicom_image(path)
    assert img.pixels.dtype == np.float32 and img.pixels.shape == (128, 128)
    np.testing.assert_array_equal(img.pixels, raw * slope + intercept)
    assert img.modality == "CT"
    assert img.photometric == "MONOCHROME2"
    assert img.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert img.bits_stored == int(ds.BitsStored)
    assert img.transfer_syntax == "Explicit VR Little Endian"

    windowed = window_hu(img.pixels)
    expected = (np.clip(raw - 1024.0, -150, 250) + 150) / 400
    np.testing.assert_allclose(windowed, expected, atol=1e-6)
    assert windowed.min() >= 0 and windowed.max() <= 1


def test_mr_small_uncompressed():
    img = read_dicom_image(_testfile("MR_small.dcm"))
    ref = pydicom.dcmread(_testfile("MR_small.dcm")).pixel_array
    assert img.pixels.shape == (64, 64) and img.pixels.dtype == np.float32
    np.testing.assert_array_equal(img.pixels, ref)  # no rescale in this file
    assert img.modality == "MR"


@pytest.mark.parametrize(
    "name,syntax",
    [
        ("MR_small_jp2klossless.dcm", "JPEG 2000 Image Compression (Lossless Only)"),
        ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS Lossless Image Compression"),
        ("MR_small_RLE.dcm", "RLE Lossless"),
    ],
)
def test_lossless_compressed_equal_uncompressed(name, syntax):
    ref = read_dicom_image(_testfile("MR_small.dcm"))
    img = read_dicom_image(_testfile(name))
    assert img.transfer_syntax == syntax
    assert img.pixels.shape == ref.pixels.shape
    np.testing.assert_array_equal(img.pixels, ref.pixels)


@pytest.mark.parametrize(
    "name,uid,package",
    [
        ("MR_small_jp2klossless.dcm", JPEG2000Lossless, "pylibjpeg-openjpeg"),
        ("MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "pylibjpeg-libjpeg"),
    ],
)
def test_missing_decoder_plugin_named(monkeypatch, name, uid, package):
    # pydicom 3 keeps one Decoder per transfer syntax with its plugins in `_available`
    # (label -> function) and `_unavailable` (label -> missing dependencies); emptying
    # `_available` is exactly the state of an installation without the plugin.
    decoder = get_decoder(uid)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", f"{package}>=2.0")})
    path = _testfile(name)
    with pytest.raises(BadRecordError) as err:
        read_dicom_image(path)
    reason = err.value.reason
    assert uid.name in reason
    assert f"pip install pylibjpeg {package}" in reason
    assert err.value.source == path and err.value.record == ""


def test_failing_decoder_plugin_reported(monkeypatch):
    def broken(src, runner):
        raise ValueError("corrupt codestream")

    monkeypatch.setattr(get_decoder(JPEG2000Lossless), "_available", {"broken": broken})
    with pytest.raises(BadRecordError, match="could not be decoded by any installed plugin") as err:
        read_dicom_image(_testfile("MR_small_jp2klossless.dcm"))
    assert "JPEG 2000" in err.value.reason


def test_rtplan_is_not_an_image():
    with pytest.raises(BadRecordError, match="no pixel data"):
        read_dicom_image(_testfile("rtplan.dcm"))


def test_multiframe_refused():
    with pytest.raises(BadRecordError, match="multi-frame DICOM with 15 frames"):
        read_dicom_image(_testfile("rtdose.dcm"))


def test_colour_refused():
    with pytest.raises(BadRecordError, match="colour or non-grey image .*'RGB'"):
        read_dicom_image(_testfile("SC_rgb_small_odd.dcm"))


def test_non_dicom_file_refused(tmp_path):
    p = tmp_path / "image.dcm"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with pytest.raises(BadRecordError, match="not a DICOM file"):
        read_dicom_image(p)


def test_missing_file_refused(tmp_path):
    p = tmp_path / "nope.dcm"
    with pytest.raises(BadRecordError, match="file not found") as err:
        read_dicom_image(p)
    assert err.value.source == str(p)


def test_error_messages_carry_no_identifiers(tmp_path):
    ds = pydicom.dcmread(_testfile("rtplan.dcm"))
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-987654"
    ds.StudyDate = "19990412"
    p = tmp_path / "plan.dcm"
    ds.save_as(p)
    with pytest.raises(BadRecordError) as err:
        read_dicom_image(p)
    text = str(err.value)
    for ident in ("Doe", "Jane", "987654", "19990412"):
        assert ident not in text


@pytest.mark.parametrize("keep", [600, 0.5])
def test_truncated_file_is_called_truncated(tmp_path, keep):
    """Cut in the header (before the pixel data) or inside the pixel data: never "not an image"."""
    raw = open(_testfile("CT_small.dcm"), "rb").read()
    p = tmp_path / "cut.dcm"
    p.write_bytes(raw[: keep if isinstance(keep, int) else int(len(raw) * keep)])
    with pytest.raises(BadRecordError, match="truncated") as err:
        read_dicom_image(p)
    assert "structured report" not in err.value.reason
    if not isinstance(keep, int):
        assert re.search(r"pixel data is truncated \(\d+ of 32768 bytes\)", err.value.reason)


def test_undecodable_jpeg_extended_names_other_decoders():
    """pydicom's JPEG-lossy.dcm (12-bit JPEG Extended) defeats Pillow and pylibjpeg; GDCM reads it."""
    with pytest.raises(BadRecordError) as err:
        read_dicom_image(_testfile("JPEG-lossy.dcm"))
    reason = err.value.reason
    assert "JPEG Extended" in reason and "tried:" in reason
    assert "pylibjpeg-libjpeg" in reason and "python-gdcm" in reason


def test_malformed_integer_attribute_is_named(tmp_path):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.add_new(0x00280008, "IS", None)
    ds[0x00280008]._value = "abc"  # NumberOfFrames that is no number (as some exports write it)
    p = tmp_path / "nf.dcm"
    ds.save_as(p)
    with pytest.raises(BadRecordError, match="the header attribute NumberOfFrames is not an integer"):
        read_dicom_image(p)


def test_unrecognised_photometric_value_is_not_quoted(tmp_path):
    ds = pydicom.dcmread(_testfile("CT_small.dcm"))
    ds.PhotometricInterpretation = "DOE^JANE"
    p = tmp_path / "odd.dcm"
    ds.save_as(p)
    with pytest.raises(BadRecordError, match="missing or unrecognised") as err:
        read_dicom_image(p)
    assert "DOE" not in str(err.value)


def test_series_files_skip_index_and_desktop_files(tmp_path):
    for name in ("b.dcm", "a.dcm", "DICOMDIR", "Thumbs.db", ".DS_Store", "._a.dcm", "desktop.ini", "IM0001"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in series_files(tmp_path)] == ["IM0001", "a.dcm", "b.dcm"]


# --------------------------------------------------------------------------- DICOM series

ROWS, COLS = 6, 5
ROW_SP, COL_SP = 0.7, 0.8  # PixelSpacing = (between rows, between columns)


def _write_slice(path, stored, *, iop, ipp, slope, intercept, rows=ROWS, cols=COLS):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.ImageOrientationPatient = [float(v) for v in iop]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.PixelSpacing = [ROW_SP, COL_SP]
    ds.SliceThickness = 2.5
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(stored, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _make_series(tmp_path, iop, origin, step, n=7, seed=0):
    """Write n slices (shuffled file order, per-slice slopes); return (paths, hu[r, c, k])."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-500, 500, size=(ROWS, COLS, n)) * 2  # even, so every slope below is exact
    params = [(1.0, -1024.0), (2.0, -1024.0), (0.5, -1000.0)]
    paths = []
    for k in range(n):
        slope, intercept = params[k % 3]
        stored = (hu[:, :, k] - intercept) / slope
        assert np.all(stored == np.round(stored))
        p = tmp_path / f"slice_{random.Random(seed + k).randint(0, 10**6):07d}_{k}.dcm"
        _write_slice(p, stored, iop=iop, ipp=np.asarray(origin) + k * np.asarray(step), slope=slope,
                     intercept=intercept)
        paths.append(p)
    random.Random(seed).shuffle(paths)
    return paths, hu.astype(np.float32)


def test_series_axial_reassembled(tmp_path):
    origin = np.array([-100.0, -120.0, 30.0])
    paths, hu = _make_series(tmp_path, iop=[1, 0, 0, 0, 1, 0], origin=origin, step=[0, 0, 2.5])
    vol = read_dicom_series(paths)
    assert isinstance(vol, Volume)
    # voxel (i=col, j=row, k) runs towards LPS +x (Left), +y (Posterior), +z (Superior):
    # canonical RAS+ flips the first two axes.
    expected = hu.transpose(1, 0, 2)[::-1, ::-1, :]
    np.testing.assert_array_equal(vol.data, expected)
    assert vol.data.dtype == np.float32
    assert vol.axcodes == ("R", "A", "S")
    np.testing.assert_allclose(vol.zooms, (COL_SP, ROW_SP, 2.5))
    np.testing.assert_allclose(np.diag(vol.affine)[:3], (COL_SP, ROW_SP, 2.5))
    # canonical voxel (0,0,0) is the last column/row of the first slice; LPS -> RAS negates x, y
    lps = origin + [(COLS - 1) * COL_SP, (ROWS - 1) * ROW_SP, 0.0]
    np.testing.assert_allclose(vol.affine[:3, 3], [-lps[0], -lps[1], lps[2]])


def test_series_sagittal_reassembled(tmp_path):
    # rows run along +y (posterior), columns down (-z); normal = y x (-z) = -x (towards Right)
    paths, hu = _make_series(
        tmp_path, iop=[0, 1, 0, 0, 0, -1], origin=[50.0, -80.0, 90.0], step=[-3.0, 0, 0], n=5, seed=3
    )
    vol = read_dicom_series(paths)
    # i (col) -> LPS +y = posterior; j (row) -> -z = inferior; k -> LPS -x = Right.
    # canonical (R, A, S) = (k, reversed i, reversed j)
    data_ijk = hu.transpose(1, 0, 2)
    expected = data_ijk.transpose(2, 0, 1)[:, ::-1, ::-1]
    np.testing.assert_array_equal(vol.data, expected)
    np.testing.assert_allclose(vol.zooms, (3.0, COL_SP, ROW_SP))


def test_series_inconsistent_size_refused(tmp_path):
    paths, _ = _make_series(tmp_path, iop=[1, 0, 0, 0, 1, 0], origin=[0, 0, 0], step=[0, 0, 1], n=3)
    odd = tmp_path / "odd.dcm"
    _write_slice(odd, np.zeros((ROWS + 1, COLS)), iop=[1, 0, 0, 0, 1, 0], ipp=[0, 0, 3], slope=1.0,
                 intercept=0.0, rows=ROWS + 1)
    with pytest.raises(BadRecordError, match="slice size"):
        read_dicom_series(paths + [odd])


def test_series_duplicate_and_missing_slices_refused(tmp_path):
    paths, _ = _make_series(tmp_path, iop=[1, 0, 0, 0, 1, 0], origin=[0, 0, 0], step=[0, 0, 1], n=6)
    with pytest.raises(BadRecordError, match="same position"):
        read_dicom_series(paths + [paths[0]])
    by_z = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    with pytest.raises(BadRecordError, match="unevenly spaced") as err:
        read_dicom_series(by_z[:2] + by_z[3:])
    assert err.value.source == str(tmp_path)  # a series-wide problem names the series folder


# --------------------------------------------------------------------------- NIfTI


def test_nifti_true_4d_refused():
    with pytest.raises(BadRecordError, match="4-D"):
        read_nifti_volume(os.path.join(NIB_DATA, "example4d.nii.gz"))


def test_nifti_anatomical_canonical():
    path = os.path.join(NIB_DATA, "anatomical.nii")
    raw = nib.load(path)
    assert nib.aff2axcodes(raw.affine) == ("L", "A", "S")
    vol = read_nifti_volume(path)
    assert vol.data.dtype == np.float32 and vol.data.shape == raw.shape
    assert vol.axcodes == ("R", "A", "S")
    np.testing.assert_array_equal(vol.data, np.flip(raw.get_fdata(), 0))


def test_nifti_standard_already_canonical():
    path = os.path.join(NIB_DATA, "standard.nii.gz")
    raw = nib.load(path)
    vol = read_nifti_volume(path)
    np.testing.assert_array_equal(vol.data, raw.get_fdata())
    np.testing.assert_allclose(vol.affine, raw.affine)
    assert vol.zooms == tuple(float(z) for z in raw.header.get_zooms())


def test_nifti_flipped_affine_read_back_canonical(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    affine = np.array([[-2.0, 0, 0, 10], [0, 3.0, 0, -20], [0, 0, -4.0, 30], [0, 0, 0, 1]])
    p = tmp_path / "flipped.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), p)
    vol = read_nifti_volume(p)
    np.testing.assert_array_equal(vol.data, data[::-1, :, ::-1])
    # new voxel (0,0,0) is old voxel (3, 0, 5): x = 10 - 2*3 = 4, z = 30 - 4*5 = 10
    np.testing.assert_allclose(vol.affine, [[2, 0, 0, 4], [0, 3, 0, -20], [0, 0, 4, 10], [0, 0, 0, 1]])
    assert vol.zooms == (2.0, 3.0, 4.0)


def test_nifti_permuted_axes_canonical(tmp_path):
    data = np.random.default_rng(5).normal(size=(3, 4, 5)).astype(np.float32)
    # array axis 0 -> S, axis 1 -> R, axis 2 -> A
    affine = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 0, 0, 1]])
    p = tmp_path / "perm.nii"
    nib.save(nib.Nifti1Image(data, affine), p)
    vol = read_nifti_volume(p)
    np.testing.assert_array_equal(vol.data, data.transpose(1, 2, 0))


def test_nifti_singleton_4d_squeezed(tmp_path):
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4, 1)
    p = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    vol = read_nifti_volume(p)
    assert vol.data.shape == (2, 3, 4)
    np.testing.assert_array_equal(vol.data, data[..., 0])


def test_nifti_scaling_applied(tmp_path):
    img = nib.Nifti1Image(np.array([[[0, 1], [2, 3]]], dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    p = tmp_path / "scaled.nii"
    nib.save(img, p)
    np.testing.assert_array_equal(read_nifti_volume(p).data, [[[-1024, -1022], [-1020, -1018]]])


def test_nifti_nan_inf_refused_with_count(tmp_path):
    data = np.zeros((4, 4, 4), dtype=np.float32)
    data[0, 0, 0] = data[1, 2, 3] = data[3, 3, 3] = np.nan
    data[2, 2, 2] = np.inf
    data[0, 1, 2] = -np.inf
    p = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), p)
    with pytest.raises(BadRecordError, match=r"5 non-finite voxel\(s\).* out of 64"):
        read_nifti_volume(p)


def test_nifti_missing_and_unreadable(tmp_path):
    with pytest.raises(BadRecordError, match="file not found"):
        read_nifti_volume(tmp_path / "absent.nii.gz")
    bad = tmp_path / "bad.nii"
    bad.write_text("this is not a NIfTI header")
    with pytest.raises(BadRecordError, match="not a readable NIfTI image"):
        read_nifti_volume(bad)
    trunc = tmp_path / "trunc.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), dtype=np.float32), np.eye(4)), tmp_path / "full.nii.gz")
    trunc.write_bytes((tmp_path / "full.nii.gz").read_bytes()[:200])
    with pytest.raises(BadRecordError):
        read_nifti_volume(trunc)


def test_nifti_2d_refused(tmp_path):
    p = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 5), dtype=np.float32), np.eye(4)), p)
    with pytest.raises(BadRecordError, match="3-D volume is required"):
        read_nifti_volume(p)
