"""Benchmark: ``bk``'s per-sample rule for ACS convolutions (3D) against an unfold throughout.

Times the engine privatiser's clipped step (forward, backward, per-sample norms, clipped sum;
no noise or optimizer) of a 3D ResNet9-GN (ACS) with the two rules an ACSConv3d can have in
``bk``:

* ``bk`` (the registered rule): per plane one grouped ``conv3d_weight`` call, the batch as the
  groups, and the unfold on layers with at most 16 output positions per sample
  (:func:`dpmed.training.bk.acs_grad_sample_method`);
* ``unfold``: Opacus' sampler on every layer (:func:`dpmed.models.acs.compute_acs_grad_sample`), which unfolds
  the volume into a column matrix k² times its size;

next to the non-private forward and backward of the same model, interleaved in one process
(median over rounds after one warm-up). Both rules are exact (tests/test_models.py).

Usage: ``.venv/bin/python benchmarks/acs_clipping.py [--device cpu] [--batch 4] [--depth 32]
[--size 96] [--width 1.0] [--rounds 4] [--threads 1]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from dpmed.models import ResNet9
from dpmed.models.acs import ACSConv3d, compute_acs_grad_sample
from dpmed.training import bk
from dpmed.training.engine import make_privatiser


def _loss(model, x, y):
    return F.binary_cross_entropy_with_logits(model(x), y, reduction="none").mean(1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    x = torch.randn(args.batch, 1, args.depth, args.size, args.size, device=dev)
    y = (torch.rand(args.batch, 8, device=dev) < 0.2).float()
    base = ResNet9(in_channels=1, num_labels=8, width=args.width, activation="mish", dims=3).to(dev)
    rules = {"bk": bk.rule_for(ACSConv3d(1, 3)),
             "unfold": bk.BKRule(lambda m, a, g: compute_acs_grad_sample(m, [a], g))}
    privs = {}
    for name, rule in rules.items():
        bk.register_bk_rule(ACSConv3d, rule)
        privs[name] = make_privatiser(copy.deepcopy(base), 1.0, "bk")
    plain = copy.deepcopy(base)

    def run(name):
        if name == "nonprivate":
            plain.zero_grad(set_to_none=True)
            _loss(plain, x, y).sum().backward()
            return
        bk.register_bk_rule(ACSConv3d, rules[name])  # the rule is looked up at clipping time
        priv = privs[name]
        priv.reset()
        priv.begin()
        priv.clip_accumulate(_loss(priv.model, x, y))

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    names = ["nonprivate", "bk", "unfold"]
    times = {n: [] for n in names}
    try:
        for r in range(args.rounds + 1):
            for n in names[r % 3:] + names[:r % 3]:
                sync()
                t0 = time.perf_counter()
                run(n)
                sync()
                if r:  # round 0 is the warm-up
                    times[n].append(time.perf_counter() - t0)
    finally:
        bk.register_bk_rule(ACSConv3d, rules["bk"])
    med = {n: statistics.median(ts) for n, ts in times.items()}
    print("== bk per-sample clipping of ACS convolutions: the registered rule vs an unfold throughout ==")
    print(f"ResNet9-GN 3D (ACS), width {args.width}, batch {args.batch} x 1x{args.depth}x{args.size}x{args.size}, "
          f"torch {torch.__version__}, device {dev}, {args.threads} thread(s), median of {args.rounds} rounds")
    for n in names:
        ratio = "" if n == "nonprivate" else f"  {med[n] / med['nonprivate']:.2f}x the non-private step"
        print(f"{n:<11} {med[n] * 1e3:9.1f} ms{ratio}")
    print(f"the unfold takes {med['unfold'] / med['bk']:.2f}x the time of bk's rule")


if __name__ == "__main__":
    main()
