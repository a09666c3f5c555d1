"""Benchmark: cost of DP-SGD per training step of ResNet9-GN (2D or 3D ACS), per grad_sample_mode
and precision.

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
the cost of privacy alone. Each ``--precision`` (``fp32``: TF32 off; ``tf32``: TF32 matmul and
cuDNN on, the same as fp32 on a CPU; ``bf16``: autocast) runs the non-private step and every
mode at that precision; the DP steps clip in float32 at every precision
(:mod:`dpmed.training.numerics`), and each DP step is compared with the non-private step at the
same precision. Variants are measured interleaved in one process: each round runs every
variant once (order rotated each round), after warm-up; the medians over rounds are reported.
Tensors and model live on ``--device``.

``--case`` sets the shape of a paper-scale step: ``2d-512`` (CXR, 512², batch 128) or
``3d-paper`` (CT, 128×224×224 voxels, batch 4); the table then also projects the time of one
paper-scale training per ε (records seen = epochs × training records, from the paper configs;
the step time alone, without data loading or evaluation).

Usage: ``.venv/bin/python benchmarks/dp_overhead.py [--device cpu] [--case 2d-512|3d-paper]
[--batch 32] [--size 128] [--depth D] [--width 1.0] [--precision fp32,tf32,bf16] [--rounds 5]
[--threads 1] [--modes bk,hooks,functorch] [--skip-opacus-calibration]``

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
from dpmed.training.engine import PRECISIONS, EngineSettings, PrivateTrainer  # noqa: E402
from dpmed.training.numerics import compute_precision  # noqa: E402

warnings.filterwarnings("ignore", message="Full backward hook is firing")
ALL_MODES = ("bk", "hooks", "functorch")
TARGET_RATIO = {"cpu": 1.5, "cuda": 1.15}  # DP step / non-private step at the same precision
# paper-scale steps (config/paper-cxr.yaml, config/paper-ct.yaml): shape, and records seen per eps
CASES = {
    "2d-512": {"dims": 2, "size": 512, "depth": None, "batch": 128, "records": 150 * 153_502,
               "paper": "CXR: 150 DP epochs x 153,502 training images"},
    "3d-paper": {"dims": 3, "size": 224, "depth": 128, "batch": 4, "records": 150 * 975,
                 "paper": "CT: 150 DP epochs x 975 training volumes"},
}


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


def make_variant(name, base_model, x, y, pos_weight, device, precision="fp32"):
    """A closure doing one training step for variant ``name`` at ``precision``."""
    model = copy.deepcopy(base_model)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    losses = _losses(pos_weight)
    if name == "nonprivate":
        def step():
            opt.zero_grad(set_to_none=True)
            with compute_precision(precision, device):  # as the engine's non-private loop
                loss = losses(model, (x, y)).float().sum() / len(x)
                loss.backward()
            opt.step()

        return step
    # q = 0.01: the plan's calibration is quick; the step itself does not depend on q
    settings = EngineSettings(epochs=1, batch_size=len(x), epsilon=8.0, delta=1e-5, max_grad_norm=1.5,
                              accountant="rdp", grad_sample_mode=name, precision=precision)
    trainer = PrivateTrainer(settings, model, opt, _Records(100 * len(x)), seed=0, device=device)

    def step():
        trainer.private_step((x, y), losses)

    return step


def _arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="torch device for the model and every tensor (cpu, cuda)")
    ap.add_argument("--case", choices=sorted(CASES), help="a paper-scale step (sets dims, size, depth, batch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=128, help="image side (3D: height and width)")
    ap.add_argument("--depth", type=int, default=None, help="3D: slices (a 3D ACS network when given)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--precision", default="fp32", help=f"comma-separated, of {PRECISIONS}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", default=",".join(ALL_MODES))
    ap.add_argument("--skip-opacus-calibration", action="store_true",
                    help="passed through to benchmarks/calibration.py:bench_calibration()")
    args = ap.parse_args(argv)
    args.records = None
    if args.case:
        case = CASES[args.case]
        args.size, args.depth, args.batch = case["size"], case["depth"], case["batch"]
        args.records, args.paper = case["records"], case["paper"]
    args.precisions = [p for p in args.precision.split(",") if p]
    unknown = [p for p in args.precisions if p not in PRECISIONS]
    if unknown:
        ap.error(f"unknown precision {unknown}; choose from {PRECISIONS}")
    return args


def _build_variants(args, base, x, y, pos_weight, dev):
    variants, failed = {}, {}
    for precision in args.precisions:
        variants[("nonprivate", precision)] = make_variant("nonprivate", base, x, y, pos_weight, dev, precision)
        for mode in [m for m in args.modes.split(",") if m]:
            try:
                step = make_variant(mode, base, x, y, pos_weight, dev, precision)
                step()  # smoke test (counts as warm-up)
                variants[(mode, precision)] = step
            except Exception as e:  # a mode that does not work is reported, not fatal
                failed[(mode, precision)] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
    return variants, failed


def _time_interleaved(variants, rounds, warmup, dev):
    names = list(variants)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync()
            t0 = time.perf_counter()
            variants[n]()
            sync()
            times[n].append(time.perf_counter() - t0)
    return times


def _report(times, failed, args):
    med = {n: statistics.median(ts) for n, ts in times.items()}
    project = f" {'h per eps':>10}" if args.records else ""
    print(f"{'variant':<12} {'precision':<9} {'median ms/step':>15} {'min':>9} {'max':>9} {'DP/nonpriv':>11}{project}")
    for (name, precision), ts in times.items():
        ms = [t * 1e3 for t in ts]
        base = med[("nonprivate", precision)]
        ratio = "" if name == "nonprivate" else f"{med[(name, precision)] / base:10.2f}x"
        hours = f" {med[(name, precision)] / args.batch * args.records / 3600:10.1f}" if args.records else ""
        print(f"{name:<12} {precision:<9} {med[(name, precision)] * 1e3:15.1f} {min(ms):9.1f} {max(ms):9.1f} "
              f"{ratio:>11}{hours}")
    for (mode, precision), why in failed.items():
        print(f"{mode:<12} {precision:<9} not usable: {why}")
    if args.records:
        print(f"(h per eps: the median step time x {args.records:,} records / batch {args.batch}, {args.paper}; "
              "steps only, no data loading or evaluation)")
    for precision in args.precisions:
        dp = [n for n in med if n[1] == precision and n[0] != "nonprivate"]
        if dp:
            best = min(dp, key=lambda n: med[n])
            ratio = med[best] / med[("nonprivate", precision)]
            target = TARGET_RATIO.get(args.device.split(":")[0], TARGET_RATIO["cpu"])
            verdict = "meets" if ratio <= target else "misses"
            print(f"{precision}: fastest grad_sample_mode {best[0]} ({ratio:.2f}x, {verdict} the <= {target}x "
                  f"target; per-sample clipping verified exact in tests/test_bk.py and tests/test_precision.py)")


def main(argv=None):
    args = _arguments(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    dims = 3 if args.depth else 2
    base = ResNet9(in_channels=1, num_labels=8, width=args.width, activation="mish", dims=dims).to(dev)
    shape = (args.depth, args.size, args.size) if dims == 3 else (args.size, args.size)
    x = torch.randn(args.batch, 1, *shape, device=dev)
    y = (torch.rand(args.batch, 8, device=dev) < 0.2).float()
    pos_weight = torch.full((8,), 4.0, device=dev)
    print(f"== DP-SGD overhead per training step: ResNet9-GN {dims}D{' (ACS)' if dims == 3 else ''} ==")
    print(f"batch {args.batch} x 1x{'x'.join(map(str, shape))}, width {args.width} "
          f"({count_parameters(base):,} parameters), 8 labels, Mish, NAdam, weighted BCE; "
          f"torch {torch.__version__}, device {dev}, {args.threads} thread(s); C 1.5, "
          f"{args.rounds} interleaved rounds after {args.warmup} warm-up")
    variants, failed = _build_variants(args, base, x, y, pos_weight, dev)
    _report(_time_interleaved(variants, args.rounds, args.warmup, dev), failed, args)

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
