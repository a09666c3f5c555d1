"""Benchmark: MCGAN training steps and synthetic patches per second (methods.md B).

Measures, non-privately, at the demo size (64²) and the paper size (128²):

* ``d_step``: one discriminator step on a batch of B (real, fake) pairs — G forward for the
  fakes (no grad), :func:`~dpmed.generation.gan.discriminator_pair_losses`, backward, Adam step;
* ``g_step``: one generator step — G forward, :func:`~dpmed.generation.gan.generator_loss`
  through D, backward, Adam step;
* ``sample``: synthetic uint8 patches per second (G forward in eval mode, batch 64, plus the
  [−1, 1] → uint8 conversion), as the sampling rule produces them.

* ``dp_d_step`` (when the private-training engine ``dpmed.training.engine`` is installed): the
  same D step as the engine runs it under DP (``PrivateTrainer.private_step``: per-pair clipping
  by each of ``--modes``, Gaussian noise, Adam step), reported as the ratio to ``d_step``.

Both D steps call the same task step (:meth:`~dpmed.generation.gan.MCGANTask.d_losses`:
augmentation, one fake per real record, smoothed targets). Steps are interleaved (each round
runs every variant once, after warm-up) and medians reported.

Usage: ``.venv/bin/python benchmarks/mcgan.py [--device cpu] [--batch 16] [--sizes 64,128]
[--rounds 3] [--threads 1] [--modes bk,hooks]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from torch.utils.data import TensorDataset

from dpmed.generation.gan import GANTrainSettings, MCGANTask, generator_loss, sample_latent
from dpmed.generation.sampling import to_uint8
from dpmed.models.mcgan import MCGANSettings, build_mcgan


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _dp_d_step(d, task: MCGANTask, real, y_real, batch: int, mode: str, dev: torch.device):
    """One D step as the engine runs it under DP, or None if the engine is not installed."""
    try:
        from dpmed.training.engine import EngineSettings, PrivateTrainer, full_float32
    except ImportError:
        return None
    opt = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999))
    settings = EngineSettings(epochs=1, batch_size=batch, epsilon=8.0, delta=1e-5, max_grad_norm=1.0,
                              grad_sample_mode=mode)
    trainer = PrivateTrainer(settings, d, opt, TensorDataset(real.cpu(), y_real.cpu()), seed=0, device=dev)

    def step():
        with full_float32():
            trainer.private_step((real, y_real), task.d_losses)

    return step


def make_steps(size: int, batch: int, dev: torch.device, modes=("bk",)):
    """Closures for one D step (non-private, and DP if the engine is installed), one G step and
    one sampling batch at patch size ``size``."""
    torch.manual_seed(0)
    g, d = build_mcgan(MCGANSettings(image_size=size))
    g, d = g.to(dev), d.to(dev)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    task = MCGANTask(g, opt_g, GANTrainSettings(epochs=1, batch_size=batch), gen)
    real = (torch.rand(batch, 1, size, size, generator=gen) * 2 - 1).to(dev)
    y_real = torch.randint(2, (batch,), generator=gen).to(dev)

    def d_step():
        opt_d.zero_grad(set_to_none=True)
        task.d_losses(d, (real, y_real)).mean().backward()
        opt_d.step()

    def g_step():
        task.g_step(d)

    def sample():
        z, y = sample_latent(64, 100, 2, gen, dev)
        with torch.no_grad():
            to_uint8(g.eval()(z, y))
        g.train()

    steps = {"d_step": d_step, "g_step": g_step, "sample": sample}
    for mode in modes:  # each DP mode on its own copy of D, interleaved with the others
        dp = _dp_d_step(copy.deepcopy(d), task, real, y_real, batch, mode, dev)
        if dp is not None:
            steps[f"dp_d_step_{mode}"] = dp
    return steps


def bench(size: int, batch: int, rounds: int, dev: torch.device, modes=("bk",)) -> dict[str, float]:
    steps = make_steps(size, batch, dev, modes)
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
    ap.add_argument("--modes", default="bk,hooks", help="per-sample gradient modes of the DP D step (compared)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    print(f"MCGAN steps, device {dev}, batch {a.batch}, {a.threads} thread(s), median of {a.rounds} rounds")
    modes = [m for m in a.modes.split(",") if m]
    print(f"{'size':>5} {'D step s':>9} {'G step s':>9} {'D/G':>6} {'patches/s':>10} "
          + " ".join(f"{'DP ' + m + ' s':>11} {m + '/non-DP':>12}" for m in modes))
    for size in (int(s) for s in a.sizes.split(",")):
        t = bench(size, a.batch, a.rounds, dev, modes)
        dp = " ".join(f"{t[f'dp_d_step_{m}']:>11.3f} {t[f'dp_d_step_{m}'] / t['d_step']:>12.2f}"
                      if f"dp_d_step_{m}" in t else f"{'n/a':>11} {'(no engine)':>12}" for m in modes)
        print(f"{size:>5} {t['d_step']:>9.3f} {t['g_step']:>9.3f} {t['d_step'] / t['g_step']:>6.2f} "
              f"{64 / t['sample']:>10.1f} {dp}")


if __name__ == "__main__":
    main()
