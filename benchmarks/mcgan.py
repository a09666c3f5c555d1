"""Benchmark: MCGAN training steps and synthetic patches per second (methods.md B).

Measures, non-privately, at the demo size (64²) and the paper size (128²):

* ``d_step``: one discriminator step on a batch of B (real, fake) pairs — G forward for the
  fakes (no grad), :func:`~dpmed.generation.gan.discriminator_pair_losses`, backward, Adam step;
* ``g_step``: one generator step — G forward, :func:`~dpmed.generation.gan.generator_loss`
  through D, backward, Adam step;
* ``sample``: synthetic uint8 patches per second (G forward in eval mode, batch 64, plus the
  [−1, 1] → uint8 conversion), as the sampling rule produces them.

Steps are interleaved (each round runs every variant once, after warm-up) and medians reported.
The DP / non-private ratio of the discriminator step will be added once the private-training
engine trains D (it will be measured side by side in this script).

Usage: ``.venv/bin/python benchmarks/mcgan.py [--device cpu] [--batch 16] [--sizes 64,128]
[--rounds 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpmed.generation.gan import (discriminator_pair_losses, draw_real_targets, generator_loss,
                                  sample_latent)
from dpmed.generation.sampling import to_uint8
from dpmed.models.mcgan import MCGANSettings, build_mcgan


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def make_steps(size: int, batch: int, dev: torch.device):
    """Closures for one D step, one G step and one sampling batch at patch size ``size``."""
    torch.manual_seed(0)
    g, d = build_mcgan(MCGANSettings(image_size=size))
    g, d = g.to(dev), d.to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    real = (torch.rand(batch, 1, size, size, generator=gen) * 2 - 1).to(dev)
    y_real = torch.randint(2, (batch,), generator=gen).to(dev)

    def d_step():
        z, y = sample_latent(batch, 100, 2, gen, dev)
        with torch.no_grad():
            fake = g(z, y)
        opt_d.zero_grad(set_to_none=True)
        loss = discriminator_pair_losses(d, real, y_real, fake, y, draw_real_targets(batch, gen, device=dev)).mean()
        loss.backward()
        opt_d.step()

    def g_step():
        z, y = sample_latent(batch, 100, 2, gen, dev)
        opt_g.zero_grad(set_to_none=True)
        loss = generator_loss(d, g(z, y), y)
        loss.backward()
        opt_g.step()

    def sample():
        z, y = sample_latent(64, 100, 2, gen, dev)
        with torch.no_grad():
            to_uint8(g.eval()(z, y))
        g.train()

    return {"d_step": d_step, "g_step": g_step, "sample": sample}


def bench(size: int, batch: int, rounds: int, dev: torch.device) -> dict[str, float]:
    steps = make_steps(size, batch, dev)
    for fn in steps.values():  # warm-up
        fn()
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(dev)
            t = time.perf_counter()
            steps[name]()
            _sync(dev)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(f"MCGAN steps, device {dev}, batch {a.batch}, {a.threads} thread(s), median of {a.rounds} rounds")
    print(f"{'size':>5} {'D step s':>9} {'G step s':>9} {'D/G':>6} {'patches/s':>10}")
    for size in (int(s) for s in a.sizes.split(",")):
        t = bench(size, a.batch, a.rounds, dev)
        print(f"{size:>5} {t['d_step']:>9.3f} {t['g_step']:>9.3f} {t['d_step'] / t['g_step']:>6.2f} "
              f"{64 / t['sample']:>10.1f}")


if __name__ == "__main__":
    main()
