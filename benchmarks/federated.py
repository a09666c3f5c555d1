"""Benchmark: study C's building blocks at paper scale, side by side in one run.

* one local epoch of a client (n records, D = 768, C = 11, batch 256, plain Adam): CVAE vs the
  DP-CGAN discriminator step (the part DP-CGAN privatises), with parameter counts;
* Sinkhorn W₂ (geomloss, tensorized, blur 0.01, scaling 0.9) between n real and n synthetic
  768-d embeddings, at n and 2n (how it scales), against one exact OT solve
  (``scipy.optimize.linear_sum_assignment``) at the smaller n.

Usage: ``.venv/bin/python benchmarks/federated.py [--n 1000] [--device cpu]``
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from scipy.spatial.distance import cdist  # noqa: E402

from dpmed.federated.fidelity import sinkhorn_w2  # noqa: E402
from dpmed.models.cvae import (CVAE, CGANDiscriminator, CGANGenerator,  # noqa: E402
                               discriminator_per_sample_loss, label_condition)

D, C, B = 768, 11, 256


def _params(*mods) -> int:
    return sum(p.numel() for m in mods for p in m.parameters())


def _epoch(step, n: int) -> float:
    t = time.perf_counter()
    for i in range(0, n, B):
        step(min(B, n - i))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.rand(args.n, D, device=dev)
    c = label_condition(torch.randint(0, C, (args.n,)), C, "multiclass").to(dev)

    cvae = CVAE(D, C).to(dev)
    opt = torch.optim.Adam(cvae.parameters(), 1e-3)

    def cvae_step(b):
        loss = cvae.per_sample_loss(x[:b], c[:b], g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    gen, disc = CGANGenerator(D, C).to(dev), CGANDiscriminator(D, C).to(dev)
    dopt = torch.optim.Adam(disc.parameters(), 1e-3)

    def disc_step(b):
        with torch.no_grad():
            fake = gen(torch.randn(b, 100, device=dev, generator=g), c[:b])
        loss = discriminator_per_sample_loss(disc, x[:b], c[:b], fake, c[:b]).mean()
        dopt.zero_grad()
        loss.backward()
        dopt.step()

    cvae_step(B), disc_step(B)  # warm-up
    t_cvae, t_disc = _epoch(cvae_step, args.n), _epoch(disc_step, args.n)
    print(f"parameters: CVAE {_params(cvae):,} (decoder {_params(cvae.decoder):,}), "
          f"DP-CGAN {_params(gen, disc):,} -> {_params(gen, disc) / _params(cvae):.2f}x")
    print(f"one local epoch, n={args.n}, batch {B}: CVAE {t_cvae:.3f} s, DP-CGAN discriminator "
          f"{t_disc:.3f} s -> {t_disc / t_cvae:.2f}x")

    rng = np.random.default_rng(0)
    times = {}
    for n in (args.n // 2, args.n):
        a, b = rng.random((n, D)), rng.random((n, D)) * 0.9 + 0.05
        t = time.perf_counter()
        w = sinkhorn_w2(a, b)
        times[n] = time.perf_counter() - t
        if n == args.n // 2:
            t = time.perf_counter()
            cost = cdist(a, b, "sqeuclidean")
            r, cc = linear_sum_assignment(cost)
            exact = float(np.sqrt(cost[r, cc].mean()))
            t_exact = time.perf_counter() - t
            print(f"W2 at n={n}: Sinkhorn {w:.4f} in {times[n]:.2f} s, exact {exact:.4f} in {t_exact:.2f} s "
                  f"-> relative difference {abs(w - exact) / exact:.2%}, time ratio {times[n] / t_exact:.2f}x")
    n1, n2 = args.n // 2, args.n
    print(f"Sinkhorn W2 time n={n2} / n={n1}: {times[n2] / times[n1]:.2f}x")


if __name__ == "__main__":
    main()
