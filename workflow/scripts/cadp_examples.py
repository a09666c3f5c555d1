"""One PUBLIC image and its privatised copies at every epsilon (the figure releases the original,
so it never shows a private record: the public image goes through the same mechanism)."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import _log  # noqa: E402

import torch  # noqa: E402

from dpmed.models.inn import label_condition  # noqa: E402
from dpmed.models.inn_training import load_inn, open_image_cache  # noqa: E402
from dpmed.privacy.cadp import CADPSettings, privatise_batch  # noqa: E402
from dpmed.reporting.cadp import plot_examples  # noqa: E402

sm = snakemake  # noqa: F821
log = _log.setup(sm)
p = dict(sm.params.cadp)
epsilons, labels, source = p.pop("epsilons"), p.pop("labels"), p.pop("source")
torch.set_num_threads(1)
with _log.reported(log):
    net, meta = load_inn(sm.input.inn, device="cpu")
    ds = open_image_cache(sm.input.cache, sm.input.manifest, labels, meta["settings"])
    x, c = ds.image(0)[None], label_condition(ds.targets[[0]])  # the first record of the public split
    privatised = {e: privatise_batch(net, x, c, CADPSettings.from_mapping({**p, "epsilon": e}))[0, 0].numpy()
                  for e in epsilons}
size = plot_examples(x[0, 0].numpy(), privatised, sm.output[0], source=f"public {source}")
log.info("example figure %s (%d x %d px) from the first record of the public cohort %s", sm.output[0], *size, source)
