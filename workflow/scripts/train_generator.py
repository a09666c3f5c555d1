"""Train one MCGAN variant (the study's non-private MCGAN, or DP-MCGAN) and write its card."""

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import torch  # noqa: E402

from dpmed.generation import load_patches, train_mcgan  # noqa: E402
from dpmed.privacy.card import render_guarantee, write_privacy_card  # noqa: E402
from dpmed.training.classifier import _resolve_device  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = sm.params.generator
torch.set_num_threads(max(1, sm.threads))
device = str(_resolve_device(sm.params.device))
with _log.reported(log):
    images, labels = load_patches(sm.input.train, sm.input.manifest, p["label"])
    scorer, score_data = None, ""
    if p["gan"].get("select") == "best":
        from dpmed.evaluation.fidelity import generator_fd_scorer

        # held-out validation patches: not training records, so DP-SGD does not cover them; the card says so
        scorer = generator_fd_scorer(sm.input.encoder, [sm.input.val], n_per_class=p["gan"].get("score_n_per_class", 64),
                                     device=device)
        score_data = "Fréchet distance to the held-out validation patches (not protected by DP)"
    gan = {k: v for k, v in p["gan"].items() if k != "score_n_per_class"}
    result = train_mcgan(images, labels, Path(sm.output.generator).parent, settings=gan, net=p["net"], seed=p["seed"],
                         privacy=p["privacy"], scorer=scorer, score_data=score_data, device=device,
                         checkpoint=p["checkpoint"])
write_privacy_card(sm.output.privacy, render_guarantee(result["guarantee"]))
log.info("generator written: selection %s, resumed from %s, epsilon %s", result["selection"]["epoch"],
         result["resumed_from_epoch"], result["guarantee"].epsilon)
