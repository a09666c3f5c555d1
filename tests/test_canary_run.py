"""The audit's canary training set: which records, which labels, the cache it trains on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dpmed.errors import ConfigError
from dpmed.io.cache import CacheWriter, read_cache
from dpmed.training.canary_run import AuditSettings, canary_manifest, write_subset_cache


def _manifest():
    return pd.DataFrame({"record_id": ["a", "b", "c", "d"], "split": "train",
                         "label_x": [0, 1, 0, 1], "label_y": [0, 0, 1, 1]})


@pytest.mark.parametrize("design, expected_x, expected_y", [
    ("flip", [1, 1, 0, 0], [1, 0, 1, 0]),        # a, d included: flipped; b, c untouched
    ("positive", [1, 1, 0, 1], [1, 0, 1, 1]),    # a, d included: every label 1
])
def test_only_included_canaries_get_canary_labels(design, expected_x, expected_y):
    man = canary_manifest(_manifest(), ["x", "y"], ["a", "b", "d"], [True, False, True], design)
    assert man["label_x"].tolist() == expected_x and man["label_y"].tolist() == expected_y
    assert _manifest()["label_x"].tolist() == [0, 1, 0, 1]   # the input is not modified


def test_subset_cache_drops_left_out_canaries_and_keeps_the_rest(tmp_path):
    src = tmp_path / "train.h5"
    images = np.arange(4 * 3 * 3, dtype=np.uint8).reshape(4, 3, 3)
    with CacheWriter(src, 4, (3, 3), np.uint8, {"split": "train", "value_range": [0, 255]}) as w:
        for i, rid in enumerate("abcd"):
            w.write(i, rid, images[i])
    dst = write_subset_cache(src, np.array([True, False, True, True]), tmp_path / "sub.h5")
    got, ids, attrs = read_cache(dst)
    assert ids == ["a", "c", "d"] and np.array_equal(got, images[[0, 2, 3]])
    assert attrs["value_range"] == [0, 255] and attrs["split"] == "train"


def test_audit_settings_are_checked():
    s = AuditSettings.from_mapping({"canaries": 50, "seed": 3})
    assert (s.canaries, s.seed, s.alpha, s.design) == (50, 3, 0.05, "positive")
    with pytest.raises(ConfigError, match="unknown audit settings"):
        AuditSettings.from_mapping({"canaries": 50, "m": 3})
    with pytest.raises(ConfigError, match="design"):
        AuditSettings.from_mapping({"canaries": 50, "design": "crafted"})
    with pytest.raises(ConfigError):
        AuditSettings.from_mapping({"canaries": 1})
