"""Benchmark: cost of DP-SGD per training step of ResNet9-GN (2D), per Opacus grad_sample_mode.

Measures one optimizer step (zero_grad, forward, loss, backward, step) of

* ``nonprivate``: the plain model + NAdam + BCEWithLogitsLoss;
* ``hooks`` / ``functorch`` / ``ew`` / ``ghost``: the same model made private with
  :func:`dpmed.training.dp.make_private` through Opacus (noise multiplier 1.0, C = 1.5; flat
  per-sample clipping, verified exact by ``tests/test_models.py``);
* ``bk``: dpmed's single-pass exact clipping (book-keeping: activation-only backward, exact
  per-sample norms per layer by a shape-based choice of instantiated gradients or ghost Gram
  norms; instantiated gradients no larger than the layer input are kept and summed with the
  clip factors, the other layers get one re-weighted weight-gradient call; Opacus optimizer
  and accountant).

All variants use the *same* architecture and activation (Mish, the DP choice), so the ratio is
the cost of privacy alone. Variants are measured interleaved in one process: each round runs
every variant once (order rotated each round), after warm-up; the medians over rounds are
reported with the DP / non-private ratio.

Usage: ``.venv/bin/python benchmarks/dp_overhead.py [--batch 32] [--size 128] [--width 1.0]
[--rounds 5] [--threads 1] [--modes hooks,functorch,ew,ghost] [--skip-opacus-calibration]``

At the end it calls ``bench_calibration()`` from ``benchmarks/calibration.py`` (another
benchmark, maintained separately) if that file exists.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dpmed.models import ResNet9, count_parameters  # noqa: E402
from dpmed.training.dp import PerSampleLoss, make_private  # noqa: E402

warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="Secure RNG turned off")
ALL_MODES = ("hooks", "functorch", "ew", "ghost", "bk")
TARGET_RATIO = 1.5


def make_variant(name, base_model, x, y, pos_weight):
    """A closure doing one training step for variant ``name``."""
    model = copy.deepcopy(base_model)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if name == "nonprivate":
        loss_fn = PerSampleLoss(criterion)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()

        return step
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    dpm, dpo, crit, _ = make_private(
        model, opt, loader, noise_multiplier=1.0, max_grad_norm=1.5, grad_sample_mode=name,
        poisson_sampling=False, criterion=criterion,
    )

    def step():
        dpo.zero_grad(set_to_none=True)
        loss = crit(dpm(x), y)
        loss.backward()
        dpo.step()
        return loss.item()

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(ALL_MODES))
    ap.add_argument("--skip-opacus-calibration", action="store_true",
                    help="passed through to benchmarks/calibration.py:bench_calibration()")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = ResNet9(in_channels=1, num_labels=8, width=args.width, activation="mish", dims=2)
    x = torch.randn(args.batch, 1, args.size, args.size)
    y = (torch.rand(args.batch, 8) < 0.2).float()
    pos_weight = torch.full((8,), 4.0)
    print("== DP-SGD overhead per training step: ResNet9-GN 2D ==")
    print(f"batch {args.batch} x 1x{args.size}x{args.size}, width {args.width} "
          f"({count_parameters(base):,} parameters), 8 labels, Mish, NAdam, weighted BCE; "
          f"torch {torch.__version__}, {args.threads} thread(s); noise multiplier 1.0, C 1.5, "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")

    variants = {"nonprivate": make_variant("nonprivate", base, x, y, pos_weight)}
    failed = {}
    for mode in [m for m in args.modes.split(",") if m]:
        try:
            step = make_variant(mode, base, x, y, pos_weight)
            step()  # smoke test (counts as warm-up)
            variants[mode] = step
        except Exception as e:  # a mode that does not work is reported, not fatal
            failed[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"

    names = list(variants)
    for _ in range(args.warmup):
        for n in names:
            variants[n]()
    times = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            variants[n]()
            times[n].append(time.perf_counter() - t0)

    med = {n: statistics.median(ts) for n, ts in times.items()}
    base_ms = med["nonprivate"] * 1e3
    print(f"{'variant':<12} {'median ms/step':>15} {'min':>9} {'max':>9} {'DP/nonpriv':>11}")
    for n in names:
        ms = [t * 1e3 for t in times[n]]
        ratio = "" if n == "nonprivate" else f"{med[n] * 1e3 / base_ms:10.2f}x"
        print(f"{n:<12} {med[n] * 1e3:15.1f} {min(ms):9.1f} {max(ms):9.1f} {ratio:>11}")
    for mode, why in failed.items():
        print(f"{mode:<12} not usable: {why}")
    dp_modes = [n for n in names if n != "nonprivate"]
    if dp_modes:
        best = min(dp_modes, key=lambda n: med[n])
        ratio = med[best] * 1e3 / base_ms
        verdict = "meets" if ratio <= TARGET_RATIO else "misses"
        print(f"recommended grad_sample_mode: {best} ({ratio:.2f}x, {verdict} the <= {TARGET_RATIO}x target; "
              f"per-sample clipping verified exact in tests/test_models.py)")

    try:
        from calibration import bench_calibration  # benchmarks/calibration.py (separate owner)
    except ImportError as e:
        print(f"\n[calibration benchmark skipped: benchmarks/calibration.py not available ({e})]")
    else:
        print()
        try:
            bench_calibration(skip_opacus_calibration=args.skip_opacus_calibration)
        except TypeError:
            # older signature without the flag
            bench_calibration()


if __name__ == "__main__":
    main()
