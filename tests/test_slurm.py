"""The tiny config on a real single-node SLURM cluster, through `--workflow-profile profiles/slurm`.

Needs root (it writes /etc/slurm/slurm.conf and starts munged/slurmctld/slurmd) and, when SLURM is
not installed yet, apt-get (it installs slurmctld slurmd slurm-client munge); otherwise skipped.

One module-scoped run pair: the tiny config locally and through the SLURM executor (concurrently,
same seeds, same pseudonym key). The assertions then check that
  (a) every non-local job was one SLURM job: one submission per planned job (the executor's job
      comment `rule_<rule>[_wildcards_<values>]` read back from slurmctld), all COMPLETED, and each
      job's own log (`_log.setup`) names the SLURM job that was submitted for that rule+wildcards;
      local rules ran outside SLURM;
  (b) the GPU-declaring rules (derived from the workflow: resources.gpu > 0 with training.gpu = 1)
      are covered by a GPU block of the profile, were submitted with a GPU request (TresPerJob
      gres:gpu) and saw CUDA_VISIBLE_DEVICES; every other job neither;
  (c) the outputs equal those of the local run: HDF5 arrays and attributes, parquet tables
      (manifests, sources, predictions of non-private models, ...) value for value, the same set
      of result files; DP models (secret OS-entropy noise, different in every run by design)
      agree on their records, labels, plan and epsilon.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from dpmed.privacy.card import read_privacy_card
from slurm_cluster import ClusterUnavailable, SlurmCluster, ensure_packages
from workflow_helpers import REPO, SNAKEMAKE, load_tiny, write_config

pytestmark = [pytest.mark.slurm]

PROFILE = REPO / "profiles" / "slurm"
RUN_TIMEOUT = 900  # seconds per snakemake run; the whole test normally takes a few minutes
# Only for the test cluster: no accounts and no accounting database (so job states from squeue;
# MinJobAge keeps finished jobs there), poll soon (default 40 s) so the short tiny jobs do not wait.
SLURM_TEST_ARGS = ["--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-keep-successful-logs",
                   "--retries", "0", "--slurm-init-seconds-before-status-checks", "5"]
ENV_LINE = re.compile(r"environment: SLURM_JOB_ID=(\S+) CUDA_VISIBLE_DEVICES=(\S+)")


# ---------------------------------------------------------------------------- helpers

def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    # the profile reads these; the test cluster has one partition (the default) and no accounts
    for name in ("DPMED_SLURM_PARTITION", "DPMED_SLURM_ACCOUNT", "DPMED_GPU_PARTITION", "DPMED_GPU_MODEL"):
        env.pop(name, None)
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _cmd(workdir: Path, configfile: Path, *args: str) -> list[str]:
    return [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), *args]


def _start(workdir: Path, configfile: Path, *args: str) -> subprocess.Popen:
    out = open(workdir / "snakemake.out", "w")
    proc = subprocess.Popen(_cmd(workdir, configfile, *args), stdout=out, stderr=subprocess.STDOUT,
                            text=True, env=_env(), start_new_session=True)
    out.close()
    return proc


def _finish(proc: subprocess.Popen, workdir: Path, what: str, cluster: SlurmCluster | None = None) -> None:
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(timeout=60)
    if proc.returncode != 0:
        text = (workdir / "snakemake.out").read_text(errors="replace")
        extra = ""
        if cluster is not None:
            failed = sorted((workdir / "slurm_logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)[-2:]
            extra = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in failed)
            extra += "\n" + cluster.logs()
        raise AssertionError(f"{what} failed ({proc.returncode}):\n{text[-6000:]}\n{extra}")


def _dry_run(workdir: Path, configfile: Path, *args: str) -> list[dict]:
    """Every job a dry run plans: rule, wildcard values, log files, gpu resource."""
    proc = subprocess.run(_cmd(workdir, configfile, "--dry-run", *args), capture_output=True, text=True,
                          env=_env(), timeout=300)
    assert proc.returncode == 0, f"dry run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    text = proc.stdout + proc.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        head = re.match(r"(local)?rule (\w+):", block.strip())
        if not head:
            continue
        field = lambda name: (m.group(1).strip() if (m := re.search(rf"^\s+{name}: (.*)$", block, re.M)) else "")
        wildcards = [kv.split("=", 1)[1] for kv in field("wildcards").split(", ") if "=" in kv]
        gpu = re.search(r"(?:^|, )gpu=(\d+)", field("resources"))
        jobs.append({
            "rule": head.group(2),
            "local": bool(head.group(1)),
            "output": field("output"),
            "wildcards": "_".join(wildcards).replace("/", "_"),
            "logs": [p for p in field("log").split(", ") if p],
            "gpu": int(gpu.group(1)) if gpu else 0,
        })
    return jobs


def _comment(job: dict) -> str:
    """The comment the SLURM executor gives a job's submission."""
    return f"rule_{job['rule']}" + (f"_wildcards_{job['wildcards']}" if job["wildcards"] else "")


def _slurm_jobs() -> dict[str, dict]:
    """Every job slurmctld knows (MinJobAge keeps finished ones): id -> comment, state, GPU request."""
    out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=30).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(m.groups() for m in re.finditer(r"(\w[\w/:]*)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = {"comment": fields.get("Comment", ""), "state": fields.get("JobState"),
                                     "tres_per_job": fields.get("TresPerJob", "")}
    return jobs


def _env_line(path: Path) -> tuple[str, str] | None:
    if not path.exists():
        return None
    for line in path.read_text(errors="replace").splitlines()[:20]:
        if m := ENV_LINE.search(line):
            return m.group(1), m.group(2)
    return None


def _profile() -> dict:
    import yte

    with open(PROFILE / "config.yaml") as fh:
        return yte.process_yaml(fh, require_use_yte=True)


def _h5_items(path: Path) -> dict:
    items = {}
    with h5py.File(path, "r") as fh:
        items["/"] = dict(fh.attrs)
        fh.visititems(lambda name, obj: items.__setitem__(
            name, (obj[()], dict(obj.attrs)) if isinstance(obj, h5py.Dataset) else dict(obj.attrs)))
    return items


# Every output, non-private models included, must be identical: training is deterministic on CPU
# (a load-dependent, timing-based kernel choice once made cxr scores differ by ~1e-4; it is gone).
# DP models draw their noise and batches from OS entropy, so only what does not depend on it
# (records, labels, the plan and epsilon) is compared for them.


def _assert_equal_values(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_values(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, tuple):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_values(x, y, f"{where}[{i}]")
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: {a.dtype}{a.shape} != {b.dtype}{b.shape}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{where}: values differ"


# ---------------------------------------------------------------------------- fixtures

SLURM_DATASETS = ("cxr", "cxr_public", "ct")


def _slurm_subset(config: dict) -> dict:
    """The tiny config's study-A chain (demo, ingestion, preprocessing, public pretraining,
    DP-SGD and non-private classifiers, embeddings, evaluation, summaries): what the SLURM test
    submits. The whole tiny config holds every study and ~150 jobs, each a SLURM job with its own
    Snakemake start-up on a 2-core test machine; this chain holds every kind of job (GPU rules,
    local rules, multi-threaded rules) in a third of the time. Its jobs have the same params as in
    the whole config, so their outputs must equal the local run's."""
    config = copy.deepcopy(config)
    config["datasets"] = {name: ds for name, ds in config["datasets"].items() if name in SLURM_DATASETS}
    for ds in config["datasets"].values():
        for study in ("cadp", "audit"):
            ds.pop(study, None)
    config.setdefault("training", {})["methods"] = ["dpsgd"]
    config.pop("federated", None)
    emb = config.get("embeddings") or {}
    if "datasets" in emb:
        emb["datasets"] = [d for d in emb["datasets"] if d in SLURM_DATASETS]
    return config


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the SLURM test needs root: it installs slurmctld/slurmd/slurm-client/munge with apt-get "
                    "if missing, writes /etc/slurm/slurm.conf and starts the daemons")
    try:
        apt_seconds = ensure_packages()
    except ClusterUnavailable as exc:
        pytest.skip(f"no SLURM cluster possible here: {exc}")
    root = Path(tempfile.mkdtemp(prefix="dpmed-slurm-"))  # short: the munge socket path is limited
    # room for the profile's largest requests; nothing is enforced (no cgroups), it only schedules
    profile = _profile()
    requests = [res for res in profile.get("set-resources", {}).values()] + [profile.get("default-resources", {})]
    cpus = max([4, os.cpu_count() or 1] + [int(r.get("cpus_per_gpu", 0)) * int(r.get("gpu", 1)) for r in requests])
    memory = max([16000] + [int(r.get("mem_mb", 0)) for r in requests]) + 1000
    slurm = SlurmCluster(root, cpus=cpus, memory_mb=memory)
    try:
        slurm.start()
    except ClusterUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no SLURM cluster possible here: {exc}")
    slurm.apt_seconds = apt_seconds
    try:
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(cluster, tiny_run, tmp_path_factory):
    """The tiny config on SLURM, compared with the session's local run of the same config."""
    started = time.monotonic()
    local = tiny_run[0]
    config = _slurm_subset(load_tiny())
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    if "gpu" in schema["properties"].get("training", {}).get("properties", {}):
        config.setdefault("training", {})["gpu"] = 1  # what a GPU cluster run would set
    remote = tmp_path_factory.mktemp("slurm")
    configs = {remote: write_config(remote, copy.deepcopy(config))}

    # the pseudonym key is secret per installation: share it so record ids match between the runs
    key = Path(config["private_dir"]) / "pseudonym.key"
    (remote / key).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(local / key, remote / key)

    slurm_args = ["--workflow-profile", str(PROFILE), *SLURM_TEST_ARGS,
                  "--slurm-logdir", str(remote / "slurm_logs")]
    planned = _dry_run(remote, configs[remote], *slurm_args)
    declared = _dry_run(remote, configs[remote], "--cores", "2")  # the workflow alone (default profile)

    remote_proc = _start(remote, configs[remote], *slurm_args)
    try:
        _finish(remote_proc, remote, "SLURM run", cluster)
    finally:
        if remote_proc.poll() is None:
            remote_proc.terminate()
            remote_proc.wait(timeout=60)
    print(f"\napt: {cluster.apt_seconds:.0f}s, both runs: {time.monotonic() - started:.0f}s")
    # a dry run does not say which jobs stay local; the SLURM run prints them as `localrule`
    local_rules = set(re.findall(r"^localrule (\w+):", (remote / "snakemake.out").read_text(), re.M))
    for job in planned + declared:
        job["local"] = job["rule"] in local_rules
    return {"local": local, "remote": remote, "config": config, "planned": planned,
            "declared": declared, "slurm_jobs": _slurm_jobs()}


# ---------------------------------------------------------------------------- tests

def test_every_job_ran_as_one_slurm_job(runs):
    planned = [j for j in runs["planned"] if j["output"]]  # the `all` target has no output
    remote_jobs = [j for j in planned if not j["local"]]
    assert len(remote_jobs) > len(planned) // 2, "most jobs should go to the cluster"
    slurm = runs["slurm_jobs"]
    comments = Counter(job["comment"] for job in slurm.values())
    expected = Counter(_comment(j) for j in remote_jobs)
    assert comments == expected, f"submissions {dict(comments)} != planned jobs {dict(expected)}"
    assert {job["state"] for job in slurm.values()} == {"COMPLETED"}

    with_env = 0
    for job in planned:
        env = _env_line(runs["remote"] / job["logs"][0]) if job["logs"] else None
        if env is None:
            continue
        with_env += 1
        slurm_id = env[0]
        if job["local"]:
            assert slurm_id == "-", f"local rule {job['rule']} ran inside SLURM job {slurm_id}"
        else:
            assert slurm_id in slurm, f"{job['logs'][0]}: SLURM_JOB_ID={slurm_id} unknown to slurmctld"
            assert slurm[slurm_id]["comment"] == _comment(job), (job["logs"][0], slurm[slurm_id])
    # most scripts log their environment through _log.setup; make sure that check is not vacuous
    assert with_env >= len(remote_jobs) // 2, f"only {with_env} job logs have the environment line"
    # the local baseline did not run inside SLURM
    local_envs = {_env_line(runs["local"] / j["logs"][0]) for j in planned if j["logs"]} - {None}
    assert local_envs and {slurm_id for slurm_id, _ in local_envs} == {"-"}


def test_gpu_rules_get_a_gpu_and_the_others_do_not(runs):
    in_dag = {j["rule"] for j in runs["declared"]}
    gpu_rules = {j["rule"] for j in runs["declared"] if j["gpu"] > 0}  # derived from the workflow
    profile_gpu = {rule for rule, res in (_profile().get("set-resources") or {}).items() if int(res.get("gpu", 0)) > 0}
    assert gpu_rules <= profile_gpu, f"GPU rules without a GPU block in profiles/slurm: {gpu_rules - profile_gpu}"
    local_gpu = {j["rule"] for j in runs["declared"] if j["local"]} & gpu_rules
    assert not local_gpu, f"GPU rules must not be localrules: {local_gpu}"
    assert profile_gpu & in_dag <= gpu_rules, \
        f"profile requests GPUs for rules that declare none: {(profile_gpu & in_dag) - gpu_rules}"
    if not gpu_rules:
        pytest.skip("the workflow declares no GPU rule yet (nothing with resources.gpu > 0 at training.gpu = 1)")

    planned = [j for j in runs["planned"] if j["output"] and not j["local"]]
    assert {j["rule"] for j in planned if j["gpu"] > 0} == gpu_rules & {j["rule"] for j in planned}
    rule_of = {_comment(j): j["rule"] for j in planned}
    for slurm_id, job in runs["slurm_jobs"].items():
        has_gpu = "gpu" in job["tres_per_job"]  # --gpus=1 -> TresPerJob=gres:gpu:1
        assert has_gpu == (rule_of[job["comment"]] in gpu_rules), f"{slurm_id} {job}"

    seen = Counter()
    for job in planned:
        if not job["logs"]:
            continue
        env = _env_line(runs["remote"] / job["logs"][0])
        if job["rule"] in gpu_rules:
            assert env is not None, f"{job['rule']}: {job['logs'][0]} has no environment line (use _log.setup)"
        if env is None:
            continue
        visible = env[1] != "-"
        assert visible == (job["rule"] in gpu_rules), f"{job['logs'][0]}: CUDA_VISIBLE_DEVICES={env[1]}"
        seen[job["rule"] in gpu_rules] += 1
    assert seen[True] > 0


def _dp_model_file(rel: Path) -> bool:
    """A DP model's output (or its evaluation), or a content-aware DP release (privatised caches):
    made with secret OS-entropy noise, so two runs of the same config differ by design and only
    what does not depend on the noise is compared."""
    parts = rel.parts
    return ("classifiers" in parts or "evaluation" in parts or "cadp" in parts) and any(
        p.startswith("eps_") and p != "eps_inf" for p in parts)


def _compare_dp_model(a: Path, b: Path, rel: Path) -> bool:
    if rel.name == "predictions.parquet":  # same records, labels and demographics; scores are noisy
        frames = [pd.read_parquet(p) for p in (a, b)]
        frames = [f[[c for c in f.columns if not c.startswith("score_")]] for f in frames]
        pd.testing.assert_frame_equal(*frames, check_exact=True, obj=str(rel))
        return True
    if rel.name == "privacy.json":  # the same mechanism and plan, both with secret noise
        ca, cb = (read_privacy_card(p) for p in (a, b))
        central = ("noise_multiplier", "sample_rate", "steps", "n_records")
        for key in (central if ca["kind"] == "central" else ("delta", "unit", "guarantee_type")) + ("epsilon_spent", "kind"):
            assert ca[key] == cb[key], (rel, key)
        assert ca["typed_guarantee"]["parameters"] == cb["typed_guarantee"]["parameters"], rel
        assert "OS entropy" in ca["noise_source"] and "OS entropy" in cb["noise_source"]
        return True
    if rel.suffix == ".h5":  # a privatised cache: same records and format, noisy images
        ia, ib = _h5_items(a), _h5_items(b)
        _assert_equal_values(ia["record_id"], ib["record_id"], str(rel))
        assert ia["images"][0].shape == ib["images"][0].shape and ia["images"][0].dtype == ib["images"][0].dtype, rel
        return True
    return False  # metrics of a noisy model: nothing deterministic to compare


def _compare_outputs(local: Path, remote: Path, private: str) -> Counter:
    files = {}
    for wd in (local, remote):
        files[wd] = sorted(p.relative_to(wd) for folder in ("results", private) for p in (wd / folder).rglob("*")
                           if p.is_file())
    # the SLURM run is the study-A chain of the tiny config (_slurm_subset): every file it wrote
    # is one the local run of the whole config wrote too
    assert set(files[remote]) <= set(files[local]), sorted(set(files[remote]) - set(files[local]))[:5]
    compared = Counter()
    for rel in files[remote]:
        a, b = local / rel, remote / rel
        if _dp_model_file(rel):
            if _compare_dp_model(a, b, rel):
                compared[("cadp release " if "classifiers" not in rel.parts else "dp ") + rel.name] += 1
            continue
        if rel.suffix == ".h5":
            _assert_equal_values(_h5_items(a), _h5_items(b), str(rel))
        elif rel.suffix == ".parquet":
            # private source tables hold absolute paths into each run's own workdir
            frames = [pd.read_parquet(p).replace(re.escape(str(wd)), "<workdir>", regex=True) if rel.parts[0] == private
                      else pd.read_parquet(p) for p, wd in ((a, local), (b, remote))]
            pd.testing.assert_frame_equal(*frames, check_exact=True,
                                          obj=str(rel))
        elif rel.name in ("rejected.csv", "pseudonym.key"):
            assert a.read_bytes() == b.read_bytes(), rel
        else:
            continue
        compared["predictions" if rel.name == "predictions.parquet" else rel.suffix] += 1
    return compared


def test_outputs_equal_the_local_run(runs):
    compared = _compare_outputs(runs["local"], runs["remote"], runs["config"]["private_dir"])
    # study-A chain: the caches of cxr, cxr_public and ct and the CXR embeddings
    assert compared[".h5"] >= 10 and compared[".parquet"] >= 8, compared
    models = [j for j in runs["planned"] if j["rule"] == "train_classifier"]
    n_dp = sum(1 for j in models if "/eps_inf/" not in j["output"])
    # non-private models are identical bit for bit; DP models agree on everything but the noise
    assert compared["predictions"] >= len(models) - n_dp, (compared, len(models))
    assert compared["dp predictions.parquet"] == compared["dp privacy.json"] == n_dp, (compared, n_dp)
