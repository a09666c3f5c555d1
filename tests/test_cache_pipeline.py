"""HDF5 cache writing and the streaming preprocessing driver."""

from __future__ import annotations

import datetime as dt
import itertools

import h5py
import numpy as np
import pandas as pd
import pytest
from dicom_factory import write_dx

from dpmed.io.cache import CacheWriter, read_cache
from dpmed.preprocessing.pipeline import ordered_map, preprocess_split
from dpmed.preprocessing.radiograph import preprocess_radiograph
from dpmed.io.dicom import read_dicom_image


def test_cache_roundtrip_and_attrs(tmp_path):
    path = tmp_path / "train.h5"
    samples = [np.full((4, 4), i, dtype=np.uint8) for i in range(3)]
    with CacheWriter(path, 3, (4, 4), np.uint8, {"dataset": "d", "params": {"size": 4}}) as w:
        for i, s in enumerate(samples):
            w.write(i, f"r{i}", s)
    images, ids, attrs = read_cache(path)
    assert ids == ["r0", "r1", "r2"]
    np.testing.assert_array_equal(images[:, 0, 0], [0, 1, 2])
    assert attrs["params"] == {"size": 4} and attrs["dataset"] == "d"
    with h5py.File(path) as fh:
        assert fh["images"].chunks == (1, 4, 4)


def test_cache_never_half_written(tmp_path):
    path = tmp_path / "x.h5"
    with pytest.raises(ZeroDivisionError):
        with CacheWriter(path, 3, (2, 2), np.uint8, {}) as w:
            w.write(0, "a", np.zeros((2, 2), np.uint8))
            1 / 0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="1 of 2 samples were never written"):
        with CacheWriter(path, 2, (2, 2), np.uint8, {}) as w:
            w.write(0, "a", np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_ordered_map_is_ordered_and_bounded():
    consumed = []

    def items():
        for i in range(40):
            consumed.append(i)
            yield i

    out = []
    for value in ordered_map(abs, items(), workers=2, window=5):
        out.append(value)
        # Never more than `window` items taken beyond what has been yielded.
        assert len(consumed) - len(out) <= 5
    assert out == list(range(40))


def test_preprocess_split_matches_transform_and_is_worker_independent(tmp_path):
    rows, sources = [], []
    for i in range(6):
        path = tmp_path / f"img{i}.dcm"
        write_dx(path, patient_id=f"X{i}", study=dt.date(2021, 1, 1 + i))
        rid = f"rec-{i:02d}"
        rows.append({"record_id": rid, "split": "train" if i < 4 else "test", "source_path": path.name})
        sources.append({"record_id": rid, "image_path": str(path), "mask_path": ""})
    manifest, src = pd.DataFrame(rows), pd.DataFrame(sources)
    kw = dict(dataset="cxr", split="train", kind="radiograph", params={"size": 4})
    n1 = preprocess_split(manifest, src, out_path=tmp_path / "a.h5", workers=1, **kw)
    n2 = preprocess_split(manifest, src, out_path=tmp_path / "b.h5", workers=2, **kw)
    assert n1 == n2 == 4
    a, ids_a, attrs = read_cache(tmp_path / "a.h5")
    b, ids_b, _ = read_cache(tmp_path / "b.h5")
    assert ids_a == ids_b == ["rec-00", "rec-01", "rec-02", "rec-03"]
    np.testing.assert_array_equal(a, b)
    image = read_dicom_image(tmp_path / "img2.dcm")
    np.testing.assert_array_equal(a[2], preprocess_radiograph(image.pixels, image.photometric, 4))
    assert a.dtype == np.uint8 and attrs["value_range"] == [0, 255] and attrs["kind"] == "radiograph"


def test_preprocess_split_names_record_on_failure(tmp_path):
    manifest = pd.DataFrame([{"record_id": "rec-1", "split": "train", "source_path": "images/P-x/gone.dcm"}])
    sources = pd.DataFrame([{"record_id": "rec-1", "image_path": str(tmp_path / "gone.dcm"), "mask_path": ""}])
    from dpmed.errors import BadRecordError

    with pytest.raises(BadRecordError, match=r"images/P-x/gone.dcm: record rec-1"):
        preprocess_split(manifest, sources, dataset="cxr", split="train", kind="radiograph",
                         params={"size": 4}, out_path=tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()
