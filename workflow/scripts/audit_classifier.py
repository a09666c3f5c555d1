"""Canary run and empirical privacy audit of one classifier (method, epsilon, seed)."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.privacy.audit import audit_findings  # noqa: E402
from dpmed.training.canary_run import AuditOutputs, AuditSettings, run_canary_audit  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
inputs = dict(sm.input.items())
reference = inputs.pop("reference")
report = run_canary_audit(
    inputs,
    sm.params.training,
    AuditSettings.from_mapping(sm.params.audit),
    AuditOutputs(audit=Path(sm.output.audit), card=Path(sm.output.privacy), history=Path(sm.output.history),
                 model=Path(sm.output.model), mask=Path(sm.output.mask), work=Path(sm.params.work)),
    sm.params.private_dir,
    reference_model=reference,
    device=sm.params.device,
    threads=sm.threads,
)
log.info("audit: m = %d canaries, card epsilon %s, one-run lower bound %.3f (CP %.3f), MIA AUROC %.3f",
         report["m"], report["card_epsilon"], report["epsilon_lower"],
         report["bounds"]["clopper_pearson"]["epsilon_lower"], report["mia_auroc"][0]["auroc"])
for finding in audit_findings(report):
    log.warning("audit finding: %s", finding)
