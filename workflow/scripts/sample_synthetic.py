"""Sample N synthetic patches per class into the cache format, their manifest (real + synthetic
records) and the training cache of mode real+syn (real training patches followed by the synthetic)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dpmed.generation import load_generator, synthetic_guarantee, write_synthetic_set  # noqa: E402
from dpmed.io.atomic import write_parquet  # noqa: E402
from dpmed.io.cache import CacheWriter, read_cache  # noqa: E402
from dpmed.privacy.card import render_guarantee, write_privacy_card  # noqa: E402
from dpmed.training.classifier import _resolve_device  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
real = pd.read_parquet(sm.input.manifest)
generator, info = load_generator(sm.input.generator)
tmp_manifest = sm.output.manifest + ".synthetic-only.parquet"
syn = write_synthetic_set(
    generator, sm.output.synthetic, tmp_manifest, n_per_class=sm.params.n_per_class, seed=sm.params.seed,
    label=sm.params.label, dataset=sm.wildcards.dataset, like=real, guarantee=info["guarantee"],
    params={"generator": sm.input.generator, "variant": sm.wildcards.variant, "epoch": info["selection"]["epoch"]},
    device=str(_resolve_device(sm.params.device)))
os.remove(tmp_manifest)
if "synthetic" not in real.columns:
    real = real.assign(synthetic=False)
write_parquet(pd.concat([real, syn[real.columns]], ignore_index=True), sm.output.manifest)

# real+syn: one training cache holding both (Poisson sampling then runs over their union)
r_img, r_ids, r_attrs = read_cache(sm.input.train)
s_img, s_ids, _ = read_cache(sm.output.synthetic)
attrs = {**r_attrs, "split": "train+synthetic", "params": {"real": sm.input.train, "synthetic": sm.output.synthetic}}
images = np.concatenate([r_img, s_img]) if len(r_img) else s_img
with CacheWriter(sm.output.combined, len(images), images.shape[1:], np.uint8, attrs) as writer:
    for i, (rid, img) in enumerate(zip(list(r_ids) + list(s_ids), images)):
        writer.write(i, rid, img)
write_privacy_card(sm.output.privacy, render_guarantee(synthetic_guarantee(info["guarantee"])))
log.info("%d synthetic patches (%d per class); real+syn cache of %d", len(s_img), sm.params.n_per_class, len(images))
