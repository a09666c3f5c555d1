"""Study C at one (dataset, epsilon, seed): every federated method over the dataset's sites."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.federated.pipeline import FederatedJob, federate_dataset  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
with _log.reported(log):
    job = FederatedJob.from_params(dict(sm.params.job))
    result = federate_dataset(
        job,
        manifest=sm.input.manifest,
        embeddings=sm.input.embeddings,
        public_embeddings=sm.input.get("public_embeddings"),
        public_manifest=sm.input.get("public_manifest"),
        out_dir=os.path.dirname(sm.output.per_site),
        method_dir=os.path.dirname(sm.output.predictions),
        log=log,
    )
    log.info("per-site results:\n%s", result.per_site.drop(columns="site").to_string())
