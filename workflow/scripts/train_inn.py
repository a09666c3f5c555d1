"""Train the conditional INN of content-aware DP (without privacy) and check that it inverts."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import torch  # noqa: E402

from dpmed.models.inn import INNSettings  # noqa: E402
from dpmed.models.inn_training import INNTrainingData, INNTrainSettings, train_inn  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = sm.params.inn
torch.set_num_threads(max(1, int(sm.threads)))
trained_on = INNTrainingData(**p["trained_on"])
if trained_on.role != "public":
    log.warning("the INN is trained on %s: the privatised release will carry NO DP guarantee (its card says why)",
                trained_on.describe())
with _log.reported(log):
    result = train_inn(
        train_h5=sm.input.train, holdout_h5=sm.input.holdout, manifest=sm.input.manifest, labels=p["labels"],
        out_dir=os.path.dirname(sm.output.inn), inn=INNSettings.from_mapping(p["inn"]),
        settings=INNTrainSettings.from_mapping({**p["training"], "device": sm.params.device}),
        trained_on=trained_on, checkpoint=p["checkpoint"],
    )
for row in result["history"]:
    log.info("epoch %d train bpd %.4f held-out bpd %.4f reconstruction error %.3g (%.1f s)", row["epoch"],
             row["train_bpd"], row["holdout_bpd"], row["recon_error"], row["seconds"])
log.info("INN written: held-out bpd %.4f, max |f^-1(f(x)) - x| = %.3g on %s", result["holdout_bpd"],
         result["reconstruction_error"], trained_on.describe())
