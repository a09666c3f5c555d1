"""Embed every record of a dataset with a frozen encoder."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.training.embeddings import extract_embeddings  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
spec = dict(sm.params.encoder)
if "pretrained" in spec:
    spec = sm.input.encoder
with _log.reported(log):  # an encoder file that does not load or fit: one line naming the file
    extract_embeddings(
        spec,
        [sm.input.train, sm.input.val, sm.input.test],
        sm.output[0],
        device=sm.params.device,
    )
log.info("embeddings written to %s", sm.output[0])
