"""Route a script's logging and warnings to its Snakemake log file."""

import logging
import os
import sys


def setup(snakemake) -> logging.Logger:
    handle = open(snakemake.log[0], "w", buffering=1)
    sys.stderr = handle
    logging.basicConfig(stream=handle, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.captureWarnings(True)
    log = logging.getLogger(snakemake.rule)
    # Where the job ran: a SLURM job id and the GPUs it was given (`-` when unset, e.g. locally).
    log.info("environment: %s", " ".join(f"{k}={os.environ.get(k) or '-'}" for k in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES")))
    return log
