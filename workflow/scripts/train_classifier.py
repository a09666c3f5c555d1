"""Train one classifier (non-private, DP-SGD, non-private on privatised images, or non-private pretraining on a public cohort)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.training.classifier import ClassifierOutputs  # noqa: E402
from dpmed.training.job import run_classifier_job  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
result = run_classifier_job(
    dict(sm.input.items()),
    sm.params.training,
    ClassifierOutputs(
        model=Path(sm.output.model),
        history=Path(sm.output.history),
        privacy=Path(sm.output.privacy),
        predictions=Path(sm.output.predictions) if "predictions" in sm.output.keys() else None,
    ),
    device=sm.params.device,
    threads=sm.threads,
)
log.info("trained: %s", {k: v for k, v in result.items() if isinstance(v, (int, float, str))})
