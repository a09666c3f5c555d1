"""Benchmark: cost of DP-SGD per training step of ResNet9-GN (2D), per grad_sample_mode.

Measures one optimizer step on one batch of

* ``nonprivate``: the plain model + NAdam, backward of the mean per-sample weighted BCE (what
  the engine's non-private loop does per batch);
* ``bk`` / ``hooks`` / ``functorch``: the engine's private step
  (:meth:`dpmed.training.engine.PrivateTrainer.private_step`): per-sample clipping to C = 1.5
  (``bk``: dpmed's single-pass exact clipping; ``hooks``/``functorch``: Opacus' per-sample
  gradients), Gaussian noise from the secret generator, the mean over the expected batch size,
  NAdam's step and one accountant step. Exactness is tested in tests/test_models.py and
  tests/test_bk.py.

All variants use the *same* architecture and activation (Mish, the DP choice), so the ratio is
the cost of privacy alone. Variants are measured interleaved in one process: each round runs
every variant once (order rotated each round), after warm-up; the medians over rounds are
reported with the DP / non-private ratio. Tensors and model live on ``--device``.

Usage: ``.venv/bin/python benchmarks/dp_overhead.py [--device cpu] [--batch 32] [--size 128]
[--width 1.0] [--rounds 5] [--threads 1] [--modes bk,hooks,functorch] [--skip-opacus-calibration]``

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
import torch.nn.functional as F  # noqa: E402

from dpmed.models import ResNet9, count_parameters  # noqa: E402
from dpmed.training.engine import EngineSettings, PrivateTrainer  # noqa: E402

warnings.filterwarnings("ignore", message="Full backward hook is firing")
ALL_MODES = ("bk", "hooks", "functorch")
TARGET_RATIO = 1.5


class _Records:
    """Stands for a training set of ``n`` records (only its size is read: the plan)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def _losses(pos_weight):
    def losses(model, batch):
        x, y = batch
        out = F.binary_cross_entropy_with_logits(model(x), y, pos_weight=pos_weight, reduction="none")
        return out.mean(1)

    return losses


def make_variant(name, base_model, x, y, pos_weight, device):
    """A closure doing one training step for variant ``name``."""
    model = copy.deepcopy(base_model)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    losses = _losses(pos_weight)
    if name == "nonprivate":
        def step():
            opt.zero_grad(set_to_none=True)
            loss = losses(model, (x, y)).sum() / len(x)
            loss.backward()
            opt.step()
            return loss.item()

        return step
    # q = 0.01: the plan's calibration is quick; the step itself does not depend on q
    settings = EngineSettings(epochs=1, batch_size=len(x), epsilon=8.0, delta=1e-5, max_grad_norm=1.5,
                              accountant="rdp", grad_sample_mode=name)
    trainer = PrivateTrainer(settings, model, opt, _Records(100 * len(x)), seed=0, device=device)

    def step():
        trainer.private_step((x, y), losses)

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device for the model and every tensor (cpu, cuda)")
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
    dev = torch.device(args.device)
    base = ResNet9(in_channels=1, num_labels=8, width=args.width, activation="mish", dims=2).to(dev)
    x = torch.randn(args.batch, 1, args.size, args.size, device=dev)
    y = (torch.rand(args.batch, 8, device=dev) < 0.2).float()
    pos_weight = torch.full((8,), 4.0, device=dev)
    print("== DP-SGD overhead per training step: ResNet9-GN 2D ==")
    print(f"batch {args.batch} x 1x{args.size}x{args.size}, width {args.width} "
          f"({count_parameters(base):,} parameters), 8 labels, Mish, NAdam, weighted BCE; "
          f"torch {torch.__version__}, device {dev}, {args.threads} thread(s); C 1.5, "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")

    variants = {"nonprivate": make_variant("nonprivate", base, x, y, pos_weight, dev)}
    failed = {}
    for mode in [m for m in args.modes.split(",") if m]:
        try:
            step = make_variant(mode, base, x, y, pos_weight, dev)
            step()  # smoke test (counts as warm-up)
            variants[mode] = step
        except Exception as e:  # a mode that does not work is reported, not fatal
            failed[mode] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"

    names = list(variants)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        for n in names:
            variants[n]()
    times = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync()
            t0 = time.perf_counter()
            variants[n]()
            sync()
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
              f"per-sample clipping verified exact in tests/test_models.py and tests/test_bk.py)")

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
