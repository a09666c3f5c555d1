"""Workers of a preprocessing job die with it: SIGKILL a real preprocessing process, then look for survivors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SCRIPT = textwrap.dedent(
    """
    import sys
    import pandas as pd
    from dpmed.preprocessing.pipeline import preprocess_split

    folder = sys.argv[1]
    preprocess_split(
        pd.read_parquet(f"{folder}/manifest.parquet"), pd.read_parquet(f"{folder}/sources.parquet"),
        dataset="ct", split="train", kind="ct", params={"window": [-150, 250], "shape": [24, 24, 24]},
        out_path=f"{folder}/train.h5", workers=2,
    )
    """
)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigkilled_preprocessing_leaves_no_worker(tmp_path):
    rng = np.random.default_rng(0)
    rows, sources = [], []
    for i in range(48):  # enough work that the job is still running when it is killed
        path = tmp_path / f"v{i}.nii"
        vol = rng.normal(0, 300, (48, 48, 48)).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
        rows.append({"record_id": f"r{i:03d}", "split": "train", "source_path": f"line {i}"})
        sources.append({"record_id": f"r{i:03d}", "image_path": str(path), "mask_path": ""})
    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    pd.DataFrame(sources).to_parquet(tmp_path / "sources.parquet")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]))
    job = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while len(workers) < 2 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
            workers = _children(job.pid)
        assert len(workers) >= 2, "the job never started its workers"
        job.send_signal(signal.SIGKILL)
        job.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [w for w in workers if _alive(w)]
        assert not survivors, f"worker(s) {survivors} outlived their SIGKILLed parent"
        assert not (tmp_path / "train.h5").exists()  # and nothing half-written under the final name
    finally:
        for pid in [job.pid, *_children(job.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
