"""Radiograph preprocessing: throughput and peak memory at two cohort sizes (one 10x the other).

Each measurement runs in a fresh process (so peak RSS belongs to that run alone): read DICOM ->
modality LUT -> normalise -> equalise -> area resize -> HDF5 cache, via the same
``preprocess_split`` the workflow uses. Prints images/s and the ratio of peak memory
(large / small); streaming means it should stay near 1 (target <= 1.2).

    .venv/bin/python benchmarks/preprocess.py [--patients 60] [--image-size 512] [--size 256] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def _measure(folder: str, size: int, workers: int) -> dict:
    """Runs in the child process."""
    from dpmed.preprocessing.pipeline import preprocess_split
    # Import the readers and transforms before the clock starts: a one-off cost, not throughput.
    import dpmed.io.dicom  # noqa: F401
    import dpmed.preprocessing.radiograph  # noqa: F401

    table = pd.read_csv(Path(folder) / "labels.csv")
    ids = [f"r{i:07d}" for i in range(len(table))]
    manifest = pd.DataFrame({"record_id": ids, "split": "train", "source_path": table["path"]})
    sources = pd.DataFrame(
        {"record_id": ids, "image_path": [str(Path(folder) / p) for p in table["path"]], "mask_path": ""}
    )
    start = time.perf_counter()
    n = preprocess_split(
        manifest, sources, dataset="bench", split="train", kind="radiograph", params={"size": size},
        out_path=Path(folder) / "cache.h5", workers=workers,
    )
    seconds = time.perf_counter() - start
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"images": n, "seconds": seconds, "peak_mb": (self_kb + child_kb) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu"],
                        help="where tensors are built; this benchmark runs numpy/scipy code on the CPU only")
    parser.add_argument("--patients", type=int, default=60, help="patients in the small cohort (large = 10x)")
    parser.add_argument("--image-size", type=int, default=512, help="side of the generated DICOM images")
    parser.add_argument("--size", type=int, default=256, help="preprocessed side")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child[0], int(args.child[1]), int(args.child[2]))))
        return

    from dpmed.demo import generate_cxr_cohort

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, n_patients in (("small", args.patients), ("large", 10 * args.patients)):
            folder = Path(tmp) / label
            generate_cxr_cohort(folder, n_patients=n_patients, images_per_patient=(1, 3),
                                image_size=args.image_size, seed=11, id_prefix="BEN")
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), str(args.size), str(args.workers)],
                check=True, capture_output=True, text=True,
            )
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"radiograph preprocessing {args.image_size}^2 DICOM -> {args.size}^2 HDF5, workers={args.workers}")
    for label, r in results.items():
        print(f"  {label:5s}: {r['images']:6d} images  {r['images'] / r['seconds']:7.1f} images/s  peak RSS {r['peak_mb']:7.1f} MB")
    ratio = results["large"]["peak_mb"] / results["small"]["peak_mb"]
    print(f"cohort size ratio {results['large']['images'] / results['small']['images']:.1f}x; "
          f"peak memory ratio large/small = {ratio:.3f} (target <= 1.2)")


if __name__ == "__main__":
    main()
