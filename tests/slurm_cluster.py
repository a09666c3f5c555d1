"""A throw-away single-node SLURM cluster for integration tests (Debian's slurm-wlm + munge).

Everything lives in one scratch directory (munge key/socket, StateSaveLocation, SlurmdSpoolDir,
pid and log files) except `/etc/slurm/slurm.conf` and `gres.conf`: the SLURM executor plugin
strips SLURM_CONF before its nested `srun`, so the configuration has to be at the default path.
Files found there are backed up and put back on stop. The daemons are started in the foreground
as our own children (`-D`/`-F`) and stopped by pid. No systemd involved.

One fake GPU is declared (`gres.conf`: `File=/dev/null`): `--gpus=1` is accepted and the job sees
`CUDA_VISIBLE_DEVICES=0`, so GPU resource mapping is testable on a machine without a GPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "srun"]
ETC = Path("/etc/slurm")
PORTS = (16817, 16818)
MARKER = "# written by dpmed tests/slurm_cluster.py for a throw-away test cluster; removed afterwards"


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be provided here; the message says why (used as a skip reason)."""


def installed() -> bool:
    return all(shutil.which(b) for b in BINARIES) and Path("/usr/sbin/slurmstepd").exists()


def ensure_packages(timeout: int = 240) -> float:
    """Install the Debian packages if missing (root + apt-get only). Returns the seconds spent."""
    if installed():
        return 0.0
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM is not installed and installing {' '.join(PACKAGES)} needs root")
    if not shutil.which("apt-get"):
        raise ClusterUnavailable("SLURM is not installed and apt-get is not available to install it")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable(f"`{' '.join(cmd)}` timed out after {timeout}s") from None
        if proc.returncode != 0:
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr[-1500:]}")
    if not installed():
        raise ClusterUnavailable(f"{' '.join(PACKAGES)} installed but {BINARIES} / slurmstepd not all found")
    return time.monotonic() - start


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SlurmCluster:
    """One node `localhost` in partition `debug`, with `cpus` CPUs, `memory_mb` and one fake GPU.

    The declared CPUs/memory may exceed the machine's (`SlurmdParameters=config_overrides`): nothing is
    enforced (no cgroups), it only lets realistic cluster requests (e.g. a 16 GB GPU job) be scheduled.
    """

    def __init__(self, root: Path, cpus: int = 8, memory_mb: int = 64000,
                 partition: str = "debug", cluster_name: str = "dpmedtest"):
        self.root = Path(root)
        self.cpus, self.memory_mb = cpus, memory_mb
        self.partition, self.cluster_name = partition, cluster_name
        self.procs: dict[str, subprocess.Popen] = {}
        self._backups: dict[Path, bytes | None] = {}

    # ------------------------------------------------------------------ configuration
    def slurm_conf(self) -> str:
        r = self.root
        return "\n".join([
            MARKER,
            f"ClusterName={self.cluster_name}",
            "SlurmctldHost=localhost",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={r / 'munge' / 'munge.socket'}",
            f"SlurmctldPort={PORTS[0]}",
            f"SlurmdPort={PORTS[1]}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            # keep finished jobs visible to squeue for the whole test (the executor's status
            # queries and the test's per-job checks both read squeue; there is no sacct database)
            "MinJobAge=3600",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "MailProg=/bin/true",
            "GresTypes=gpu",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} "
            "Gres=gpu:1 State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def gres_conf(self) -> str:
        return f"{MARKER}\nNodeName=localhost Name=gpu File=/dev/null\n"

    def _install_conf(self, name: str, text: str) -> None:
        path = ETC / name
        if name == "slurm.conf" and path.exists() and MARKER not in path.read_text(errors="replace"):
            raise ClusterUnavailable(f"{path} exists (a real SLURM installation?); not replacing it")
        if path not in self._backups:
            self._backups[path] = path.read_bytes() if path.exists() else None
        ETC.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def _restore_conf(self) -> None:
        for path, data in self._backups.items():
            if data is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(data)
        self._backups.clear()

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.logs()}")

    def start(self, timeout: float = 60) -> "SlurmCluster":
        for port in PORTS:
            if not _port_free(port):
                raise ClusterUnavailable(f"port {port} is in use (another slurmctld/slurmd running?)")
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        munge = self.root / "munge"
        os.chmod(munge, 0o700)
        try:
            key = munge / "munge.key"
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
            os.chmod(key, 0o600)
            self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                                   f"--socket={munge / 'munge.socket'}", f"--pid-file={munge / 'munged.pid'}",
                                   f"--seed-file={munge / 'munged.seed'}", f"--log-file={self.root / 'log' / 'munged.log'}"])
            self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged socket")
            self._install_conf("slurm.conf", self.slurm_conf())
            self._install_conf("gres.conf", self.gres_conf())
            self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
            self._wait(lambda: self._run(["scontrol", "ping"]).stdout.count("UP") >= 1, timeout, "slurmctld")
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost"])
            self._wait(self.node_idle, timeout, "node idle in sinfo")
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, cmd: list[str], timeout: float = 15) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def node_idle(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%N %t"]).stdout.split()
        return out[:2] == ["localhost", "idle"]

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if ready():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}:\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text[-tail:]}")
        return "\n".join(parts)

    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel whatever is still queued or running on this (private) cluster and wait for it."""
        try:
            self._run(["scancel", "--partition", self.partition])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self._run(["squeue", "-h", "-t", "PENDING,RUNNING,COMPLETING,CONFIGURING"]).stdout.strip():
                    return
                time.sleep(1)
        except (subprocess.SubprocessError, OSError):
            pass

    def stop(self) -> None:
        """Cancel leftover jobs, stop our daemons by pid (slurmd, slurmctld, munged), restore /etc/slurm."""
        try:
            if all(name in self.procs and self.procs[name].poll() is None for name in ("slurmctld", "slurmd")):
                self.cancel_all()
            for name in ("slurmd", "slurmctld", "munged"):
                proc = self.procs.pop(name, None)
                if proc is None or proc.poll() is not None:
                    continue
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            self._restore_conf()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
