"""Route a script's logging and warnings to its Snakemake log file."""

import logging
import sys


def setup(snakemake) -> logging.Logger:
    handle = open(snakemake.log[0], "w", buffering=1)
    sys.stderr = handle
    logging.basicConfig(stream=handle, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
    logging.captureWarnings(True)
    return logging.getLogger(snakemake.rule)
