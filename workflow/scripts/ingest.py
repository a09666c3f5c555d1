"""Ingest one dataset: manifest (shareable), rejected records, private source index."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.errors import DataError  # noqa: E402
from dpmed.io.atomic import write_csv, write_parquet  # noqa: E402
from dpmed.io.identifiers import load_or_create_key, restrict_private  # noqa: E402
from dpmed.io.ingest import ingest_dataset  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
with _log.reported(log):
    try:
        result = ingest_dataset(
            sm.wildcards.dataset,
            sm.params.dataset,
            key=load_or_create_key(sm.input.key),
            on_bad_record=sm.params.on_bad_record,
            workers=sm.threads,
        )
    except DataError as err:
        # Snakemake deletes a failed job's outputs; the log folder keeps what was rejected.
        if err.rejected is not None and len(err.rejected):
            write_csv(err.rejected, sm.log.rejected)
            log.error("%d rejected record(s) listed in %s", len(err.rejected), sm.log.rejected)
        raise
    restrict_private(sm.params.private_dir)  # before writing: the folder Snakemake made is 0755
    write_parquet(result.sources, sm.output.sources)
    restrict_private(sm.params.private_dir)
    write_csv(result.rejected, sm.output.rejected)
    write_parquet(result.manifest, sm.output.manifest)
    counts = result.manifest.groupby("split").size().to_dict()
    log.info("%d records ingested %s; %d rejected", len(result.manifest), counts, len(result.rejected))
