"""Benchmark: bootstrapped subgroup metrics vs a plain loop over ``roc_auc_score``.

1,000 redraws x 8 labels x 9 sets (whole set + 8 subgroups: sex F/M, six age bins) on
40,000 synthetic test predictions with ties (scores rounded to 3 decimals) and realistic
prevalences (2 %..30 %).  Runs single-threaded.

* project: ``dpmed.evaluation.evaluate_model`` — everything (AUROC, AUPRC, thresholded
  metrics, parity, summaries), timed end to end.
* baseline: the plain loop ``roc_auc_score(y[idx][in_set], s[idx][in_set])`` on the *same*
  redraws, AUROC only, timed on the first few redraws and scaled to 1,000.
* peak memory of the project run: tracemalloc (a second, untimed run) and ru_maxrss.

Usage: ``.venv/bin/python benchmarks/bootstrap.py [--n 40000] [--redraws 1000]
[--baseline-seconds 15]``
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from dpmed.evaluation import bootstrap_indices, evaluate_model  # noqa: E402
from dpmed.evaluation.metrics import subgroup_masks  # noqa: E402

LABELS = ["cardiomegaly", "congestion", "effusion_r", "effusion_l", "infiltrate_r",
          "infiltrate_l", "atelectasis_r", "atelectasis_l"]
PREVALENCE = [0.30, 0.10, 0.15, 0.14, 0.03, 0.02, 0.12, 0.11]
AGE_BINS = [0, 30, 50, 60, 70, 80, 100]


def synthetic(n_test: int, n_val: int, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    n = n_test + n_val
    age = rng.uniform(18, 99, n)
    groups = pd.cut(age, AGE_BINS, right=False).astype(str)
    df = pd.DataFrame({
        "record_id": [f"rec{i:07d}" for i in rng.permutation(n)],
        "split": np.array(["test"] * n_test + ["val"] * n_val),
        "sex": rng.choice(["F", "M"], n),
        "age": age,
        "age_group": groups,
    })
    for lb, prev in zip(LABELS, PREVALENCE):
        y = (rng.random(n) < prev).astype(np.int64)
        logit = np.log(prev / (1 - prev)) + 2.0 * y + rng.normal(size=n) - 0.01 * (age - 60) * y
        df[f"y_{lb}"] = y
        df[f"score_{lb}"] = np.round(1 / (1 + np.exp(-logit)), 3)
    spec = {"sex": ["F", "M"], "age_group": [str(g) for g in pd.unique(
        pd.cut(np.array([b + 1 for b in AGE_BINS[:-1]]), AGE_BINS, right=False).astype(str))]}
    return df, spec


def sklearn_loop(df, spec, n_redraws, seed, redraws_to_time, budget_s):
    test = df[df["split"] == "test"].sort_values("record_id").reset_index(drop=True)
    _, masks, _ = subgroup_masks(test, spec)
    ys = {lb: test[f"y_{lb}"].to_numpy() for lb in LABELS}
    ss = {lb: test[f"score_{lb}"].to_numpy() for lb in LABELS}
    t0 = time.perf_counter()
    done = 0
    for b in range(redraws_to_time):
        idx = bootstrap_indices(len(test), n_redraws, seed, b, b + 1)[0]
        for m in masks:
            ii = idx[m[idx]]
            for lb in LABELS:
                roc_auc_score(ys[lb][ii], ss[lb][ii])
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    return (time.perf_counter() - t0), done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu"],
                    help="where tensors are built; this benchmark runs numpy/scipy code on the CPU only")
    ap.add_argument("--n", type=int, default=40_000)
    ap.add_argument("--redraws", type=int, default=1000)
    ap.add_argument("--baseline-seconds", type=float, default=15.0)
    args = ap.parse_args()
    df, spec = synthetic(args.n, args.n // 4)
    n_sets = 1 + sum(len(v) for v in spec.values())
    print(f"data: {args.n} test records, {len(LABELS)} labels, {n_sets} sets, "
          f"{args.redraws} redraws; distinct scores per label ~"
          f"{df['score_' + LABELS[0]].nunique()}")

    t0 = time.perf_counter()
    out = evaluate_model(df, LABELS, spec, n_bootstrap=args.redraws, seed=0)
    t_project = time.perf_counter() - t0
    print(f"project (all metrics, {len(out)} rows): {t_project:.2f} s")

    t_loop, done = sklearn_loop(df, spec, args.redraws, 0, args.redraws, args.baseline_seconds)
    t_loop_full = t_loop / done * args.redraws
    print(f"sklearn loop (AUROC only): {t_loop:.2f} s for {done} redraws -> "
          f"{t_loop_full:.0f} s for {args.redraws} "
          f"({t_loop / done / n_sets * 1000 / len(LABELS):.1f} ms per roc_auc_score call)")
    print(f"speed-up: {t_loop_full / t_project:.0f}x")

    tracemalloc.start()
    evaluate_model(df, LABELS, spec, n_bootstrap=args.redraws, seed=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory of evaluate_model (tracemalloc): {peak / 2**20:.0f} MiB; "
          f"process max RSS: {rss:.0f} MiB")


if __name__ == "__main__":
    main()
