"""Run the real workflow (snakemake CLI) in a scratch directory and read what it plans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def write_config(workdir: Path, config: dict, name: str = "config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def eps_labels(config: dict, dataset: str, finite_only: bool = False) -> list[str]:
    """The dataset's epsilon wildcards as the workflow spells them (``0.25``, ``1``, ``inf``)."""
    finite = sorted(float(e) for e in config["datasets"][dataset]["classifier"]["epsilons"])
    return [f"{e:g}" for e in finite] + ([] if finite_only else ["inf"])


def load_tiny() -> dict:
    return yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def snakemake(workdir: Path, configfile: Path, *args: str, check: bool = True, timeout: int = 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(workdir: Path, configfile: Path, *args: str) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run schedules."""
    proc = snakemake(workdir, configfile, "--dry-run", "--cores", "2", *args)
    text = proc.stdout + proc.stderr
    jobs = set()
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        head = re.match(r"(?:local)?rule (\w+):", block.strip())
        out = re.search(r"^\s+output: ([^,\n]+)", block, re.M)
        if head and out:
            jobs.add((head.group(1), out.group(1).strip()))
    return jobs
