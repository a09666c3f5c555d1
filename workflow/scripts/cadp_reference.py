"""The cadp method's eps = inf model: the non-private classifier on the ORIGINAL images, which is
the compare_with method's eps = inf model (same initialisation and settings): copied, not retrained."""

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

from dpmed.io.atomic import atomic_path  # noqa: E402
from dpmed.privacy.card import read_privacy_card, render_guarantee, write_privacy_card  # noqa: E402
from dpmed.privacy.guarantee import Guarantee, no_guarantee  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
for name in ("model", "history", "predictions"):
    with atomic_path(sm.output[name]) as tmp:
        shutil.copyfile(sm.input[name], tmp)
card = read_privacy_card(sm.input.privacy)
source = Guarantee.from_dict(card["typed_guarantee"])
g = no_guarantee(source.unit, reason=(
    "Non-private reference of content-aware DP (ε = inf: nothing is privatised): the classifier trained on the "
    f"ORIGINAL images, identical to method {sm.params.reference}'s ε = inf model (copied, not retrained)."),
    released="the trained model weights", non_private_inputs=source.non_private_inputs, derived_from=(source,))
write_privacy_card(sm.output.privacy, render_guarantee(g, max_records_per_patient=card.get("max_records_per_patient"),
                                                       epochs=card.get("epochs")))
log.info("copied %s's eps = inf model as the cadp reference", sm.params.reference)
