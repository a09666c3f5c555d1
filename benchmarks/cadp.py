"""Benchmark: content-aware DP (CADP) — privatisation throughput and one INN training step.

For each network size (``demo``: :data:`dpmed.models.inn.DEMO_INN`, 64², ~7 M parameters;
``paper``: :data:`dpmed.models.inn.PAPER_INN`, 128², 219.4 M parameters) it measures

* privatisation: :func:`dpmed.privacy.cadp.privatise_batch` on one batch (forward f, per-sample
  L1 clip, Laplace noise, inverse f⁻¹, clamp) → images per second;
* training: one Adam step of the non-private INN trainer's loop body (input noise, forward,
  bits-per-dim loss, backward, step) → seconds per step and images per second.

The networks get small random weights in their zero-initialised last layers first (a fresh
network's couplings are identities, which would not change the cost but would hide numerical
trouble). Medians over ``--rounds`` (the paper size runs ``--paper-rounds``, default 1, since one
CPU step takes tens of seconds; ``--skip-paper`` skips it). Both sizes are printed side by side
with the paper/demo ratios.

Usage: ``.venv/bin/python benchmarks/cadp.py [--device cpu] [--batch 8] [--rounds 3]
[--paper-rounds 1] [--threads 1] [--skip-paper]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpmed.models.inn import (
    DEMO_INN,
    PAPER_INN,
    INNSettings,
    bits_per_dim,
    build_inn,
    label_condition,
    trainable_parameters,
)
from dpmed.privacy.cadp import CADPSettings, privatise_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, rounds: int) -> float:
    """Median seconds of ``fn()`` over ``rounds`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(settings: INNSettings, batch: int, device: torch.device, rounds: int) -> dict:
    """Seconds per privatised batch and per training step for the network ``settings``."""
    net = build_inn(settings).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in trainable_parameters(net):
            p.add_((1e-3 * torch.randn(p.shape, generator=g)).to(device))
    x = torch.rand(batch, settings.channels, settings.image_size, settings.image_size, generator=g).to(device)
    n_labels = settings.n_conditions // 2
    c = label_condition(torch.randint(0, 2, (batch, n_labels), generator=g)).to(device)
    cadp = CADPSettings(epsilon=1.0)
    optimizer = torch.optim.Adam(trainable_parameters(net), lr=3e-4)

    def privatise():
        privatise_batch(net, x, c, cadp)

    def train_step():
        net.train()
        z, jac = net(x + 0.1 * torch.randn_like(x), c)
        loss = bits_per_dim(z, jac)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    n_params = sum(p.numel() for p in trainable_parameters(net))
    priv_s = _timed(privatise, device, rounds)
    train_s = _timed(train_step, device, rounds)
    return {"params": n_params, "privatise_s": priv_s, "train_s": train_s,
            "privatise_ips": batch / priv_s, "train_ips": batch / train_s}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paper-rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-paper", action="store_true", help="skip the 219 M-parameter network")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = {"demo": (DEMO_INN, args.rounds)}
    if not args.skip_paper:
        sizes["paper"] = (PAPER_INN, args.paper_rounds)
    results = {}
    for name, (settings, rounds) in sizes.items():
        results[name] = measure(settings, args.batch, device, rounds)
        print(f"measured {name} ({settings.image_size}², {rounds} round(s))", flush=True)

    print(f"\nCADP on {device} ({args.threads} thread(s)), batch {args.batch}")
    print(f"{'':28}" + "".join(f"{n:>14}" for n in results) + ("   paper/demo" if len(results) == 2 else ""))
    rows = [("trainable parameters", "params", "{:>14,d}"),
            ("privatise s/batch", "privatise_s", "{:>14.3f}"),
            ("privatise images/s", "privatise_ips", "{:>14.1f}"),
            ("train s/step", "train_s", "{:>14.3f}"),
            ("train images/s", "train_ips", "{:>14.1f}")]
    for label, key, fmt in rows:
        line = f"{label:28}" + "".join(fmt.format(r[key]) for r in results.values())
        if len(results) == 2:
            line += f"   {results['paper'][key] / results['demo'][key]:>10.3g}x"
        print(line)


if __name__ == "__main__":
    main()
