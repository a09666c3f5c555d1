"""Ingest one dataset: manifest (shareable), rejected records, private source index."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.io.atomic import write_csv, write_parquet  # noqa: E402
from dpmed.io.identifiers import load_or_create_key  # noqa: E402
from dpmed.io.ingest import ingest_dataset  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
result = ingest_dataset(
    sm.wildcards.dataset,
    sm.params.dataset,
    key=load_or_create_key(sm.input.key),
    on_bad_record=sm.params.on_bad_record,
    workers=sm.threads,
)
write_parquet(result.sources, sm.output.sources)
write_csv(result.rejected, sm.output.rejected)
write_parquet(result.manifest, sm.output.manifest)
counts = result.manifest.groupby("split").size().to_dict()
log.info("%d records ingested %s; %d rejected", len(result.manifest), counts, len(result.rejected))
