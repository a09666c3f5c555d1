"""Route a script's logging and warnings to its Snakemake log file."""

import contextlib
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


@contextlib.contextmanager
def reported(log: logging.Logger):
    """Turn a dpmed error (bad config or data) into one clear line on the console and in the log.

    Snakemake shows a failed job's console output, not its log; the traceback of an expected
    error would only bury the reason. The message is dpmed's own (built from table lines and
    pseudonyms, see dpmed.io.ingest), so it may be shown. Exits with status 1.
    """
    from dpmed.errors import DpmedError

    try:
        yield
    except DpmedError as err:
        line = f"dpmed {type(err).__name__}: {err}"
        log.error("%s", line)
        print(line, file=sys.__stderr__, flush=True)
        sys.exit(1)
