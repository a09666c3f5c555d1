"""Study C's table and figures over every (epsilon, seed) of one dataset."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.reporting.federated import write_federated_summary  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
with _log.reported(log):
    table = write_federated_summary(list(sm.input.per_site), list(sm.input.subgroups), dict(sm.output.items()))
    log.info("summary:\n%s", table.to_string())
