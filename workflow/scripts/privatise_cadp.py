"""Privatise the train and val caches of one dataset at one epsilon (content-aware DP) and write the release's card."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import torch  # noqa: E402

from dpmed.models.inn_training import load_inn  # noqa: E402
from dpmed.privacy.cadp import CADPSettings, max_records_per_patient, privatise_cache  # noqa: E402
from dpmed.privacy.card import render_guarantee, write_privacy_card  # noqa: E402
from dpmed.training.data import read_manifest  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = dict(sm.params.cadp)
labels = p.pop("labels")
torch.set_num_threads(max(1, int(sm.threads)))
with _log.reported(log):
    settings = CADPSettings.from_mapping(p)
    net, meta = load_inn(sm.input.inn, device=sm.params.device)
    manifest = read_manifest(sm.input.manifest)
    k = max_records_per_patient(manifest, ("train", "val"))
    guarantees = [
        privatise_cache(net, inn_trained_on=meta["trained_on"], cache_in=sm.input[split], cache_out=sm.output[split],
                        manifest=manifest, labels=labels, settings=settings, device=next(net.parameters()).device,
                        max_records_per_patient=k)
        for split in ("train", "val")
    ]
# Both splits: the same mechanism on disjoint records, each record privatised once.
assert guarantees[0] == guarantees[1]
g = guarantees[0]
write_privacy_card(sm.output.privacy, render_guarantee(g, max_records_per_patient=k))
log.info("privatised train + val at nominal eps %g: s = %g, b = %g, kind %s, eps that holds %s",
         settings.epsilon, settings.clip, settings.scale, g.kind, g.epsilon)
