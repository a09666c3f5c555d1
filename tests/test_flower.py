"""The federated round loop under Flower's deployment engine: a SuperLink and two SuperNodes on
127.0.0.1 give the same decoders as the in-process run with the same (test-injected) randomness."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'dpmed[federation]')")

from flwr.app import ArrayRecord, ConfigRecord, RecordDict  # noqa: E402

import dpmed  # noqa: E402
from dpmed.errors import DpmedError, SiteError  # noqa: E402
from dpmed.federated import ClientState, run_in_process, shared_weights  # noqa: E402
from dpmed.federated.private import ClientDP, engine_trainer  # noqa: E402
from dpmed.training.engine import TEST_NOISE_ENV  # noqa: E402
from dpmed.federated.data import read_site_file, write_site_file  # noqa: E402
from dpmed.federated.flower import client_round  # noqa: E402
from dpmed.models.cvae import initial_cvae, label_condition  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
D, C, ROUNDS, SEED, NOISE_SEED = 6, 3, 2, 0, 5  # round 2 needs the Context of round 1
EPS, DELTA = 2.0, 1e-3
RUN = {"feature-dim": D, "n-classes": C, "seed": SEED, "lr": 1e-3, "batch-size": 16, "noise-seed": NOISE_SEED,
       "rounds": ROUNDS, "local-epochs": 1, "epsilon": EPS, "delta": DELTA}


def _site_files(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        y = rng.integers(0, C, 40)
        x = np.clip(0.2 + 0.25 * y[:, None] + 0.1 * rng.normal(size=(40, D)), 0, 1)
        paths.append(tmp_path / f"site{i}.npz")
        write_site_file(paths[-1], x, label_condition(torch.tensor(y), C, "multiclass").numpy())
    return paths


def _in_process(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The same engine-backed DP clients in one process (engines kept in memory, no checkpoint)."""
    states, trainers = [], []
    dp = ClientDP(rounds=ROUNDS, local_epochs=1, batch_size=16, epsilon=EPS, delta=DELTA, lr=1e-3)
    for i, p in enumerate(paths):
        x, c = read_site_file(p)
        m = initial_cvae(D, C, SEED, client_index=i)
        states.append(ClientState(f"client-{i}", m, m.decoder, x, c))
        trainers.append(engine_trainer(dp, seed=SEED, client_index=i))

    def trainer(state, epochs, gen, start):
        trainers[states.index(state)](state, epochs, gen, start)
    return run_in_process(states, shared_weights(initial_cvae(D, C, SEED).decoder), rounds=ROUNDS,
                          local_epochs=1, trainer=trainer, noise_seed=NOISE_SEED)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"SuperLink exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"SuperLink did not listen on {port} within {timeout} s")


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    # own session, so the teardown can stop the process and the children it spawned
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_client_round_replies_with_decoder_weights_and_index_only(tmp_path):
    paths = _site_files(tmp_path)
    node = {"checkpoint": str(tmp_path / "private" / "client0.pt")}
    init = shared_weights(initial_cvae(D, C, SEED).decoder)
    content = RecordDict({"arrays": ArrayRecord(init),
                          "config": ConfigRecord({"server-round": 1, "local-epochs": 1})})
    state = RecordDict()
    reply = client_round(content, RUN, {"data-path": str(paths[0]), "client-index": 0, **node}, state)
    assert sorted(reply.keys()) == ["arrays", "metrics"]
    assert dict(reply["metrics"]) == {"client-index": 0}  # no record count, no loss
    assert sorted(reply["arrays"].to_torch_state_dict()) == sorted(init)  # decoder keys only
    # the personal encoder stays in the site's Context for the next round
    kept = state["cvae"].to_torch_state_dict()
    assert any(k.startswith("encoder.") for k in kept)
    # the engine's accountant is in its checkpoint under the private directory, not in the reply
    assert (tmp_path / "private" / "client0.pt").exists()
    assert json.loads(state["trainer"]["json"])["epochs_done"] == 1
    with pytest.raises(DpmedError, match="needs node config 'checkpoint'"):
        client_round(content, RUN, {"data-path": str(paths[0]), "client-index": 0}, RecordDict())
    with pytest.raises(DpmedError, match="site file nowhere.npz: cannot be read"):
        client_round(content, RUN, {"data-path": str(tmp_path / "nowhere.npz"), "client-index": 0, **node}, state)
    np.savez(tmp_path / "raw.npz", x=np.full((40, D), 3.0, np.float32), c=np.zeros((40, C), np.float32))
    with pytest.raises(DpmedError, match="site file raw.npz: features outside"):
        client_round(content, RUN, {"data-path": str(tmp_path / "raw.npz"), "client-index": 0, **node}, state)
    with pytest.raises(SiteError, match="site h7: 40 training records, fewer than the batch size 64"):
        client_round(content, {**RUN, "batch-size": 64},
                     {"data-path": str(paths[0]), "client-index": 0, "site": "h7", **node}, state)


def test_trainer_state_survives_rounds_through_the_context(tmp_path, monkeypatch):
    """The DP engine keeps its accountant in trainer_state: it must compose over every round."""
    import dpmed.federated.flower as fl

    def counting_trainer(run_config, node_config):
        def train(state, epochs, generator, start):
            state.trainer_state["steps"] = state.trainer_state.get("steps", 0) + epochs * 3
        return train
    monkeypatch.setattr(fl, "make_trainer", counting_trainer)
    paths = _site_files(tmp_path)
    state = RecordDict()
    arrays = ArrayRecord(shared_weights(initial_cvae(D, C, SEED).decoder))
    for rnd in (1, 2, 3):
        content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": rnd, "local-epochs": 2})})
        client_round(content, RUN, {"data-path": str(paths[1]), "client-index": 1}, state)
    assert json.loads(state["trainer"]["json"]) == {"steps": 18}


class _Reply:
    """What DecoderFedAvg reads of a Flower reply message."""

    def __init__(self, index, weights, error=None):
        self.content = {"arrays": ArrayRecord(weights), "metrics": {"client-index": index}}
        self.error = error

    def has_error(self):
        return self.error is not None


def test_decoder_fedavg_orders_by_client_and_uses_the_given_weights():
    from types import SimpleNamespace

    from dpmed.federated.flower import DecoderFedAvg

    u = [{"w": torch.tensor([float(i), 2.0 * i])} for i in range(3)]
    replies = [_Reply(2, u[2]), _Reply(0, u[0]), _Reply(1, u[1])]
    arrays, _ = DecoderFedAvg(3).aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.tensor([1.0, 2.0]))
    arrays, _ = DecoderFedAvg(3, [0.0, 0.0, 1.0]).aggregate_train(1, replies)
    torch.testing.assert_close(arrays.to_torch_state_dict()["w"], torch.tensor([2.0, 4.0]))
    with pytest.raises(DpmedError, match="expected client indices 0..2, got \\[0, 2\\]"):
        DecoderFedAvg(3).aggregate_train(1, replies[:2])
    failed = _Reply(1, u[1], error=SimpleNamespace(reason="site h2: 3 training records"))
    with pytest.raises(DpmedError, match="round 4: 1 client\\(s\\) failed: site h2: 3 training records"):
        DecoderFedAvg(3).aggregate_train(4, [replies[0], failed, replies[1]])


def test_superlink_and_two_supernodes_match_the_in_process_run(tmp_path, monkeypatch):
    """DP clients through the engine on both sides; the test-only noise seed makes the engine's
    secret noise and Poisson batches reproducible (a real run never sets it)."""
    monkeypatch.setenv(TEST_NOISE_ENV, "11")
    paths = _site_files(tmp_path)
    expected = _in_process(paths)
    port = _free_port()
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),  # flower-superexec
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(dpmed.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    procs = []
    try:
        procs.append(_start([str(BIN / "flower-superlink"), "--insecure", "--port", str(port),
                             "--database", str(tmp_path / "state.db")], env, tmp_path / "superlink.log"))
        _wait_for_port(port, procs[0])
        for i, p in enumerate(paths):
            procs.append(_start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                 "--port", str(_free_port()),
                                 "--node-config", f"data-path='{p}' client-index={i} "
                                 f"checkpoint='{tmp_path / 'private' / f'c{i}.pt'}' card='{tmp_path / f'card{i}.json'}'"],
                                env, tmp_path / f"supernode{i}.log"))
        out = tmp_path / "global_decoder.pt"
        run_config = (f"rounds={ROUNDS} local-epochs=1 batch-size=16 lr=0.001 seed={SEED} feature-dim={D} "
                      f"n-classes={C} n-clients=2 noise-seed={NOISE_SEED} epsilon={EPS} delta={DELTA} "
                      f"output='{out}'")
        res = subprocess.run([str(BIN / "flwr"), "run", str(REPO / "federation"), "local", "--stream",
                              "--run-config", run_config], env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        deadline = time.time() + 30  # the ServerApp writes the file as its last step
        while not out.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert out.exists(), (tmp_path / "superlink.log").read_text()[-3000:]
    finally:
        _stop(procs)
    got = torch.load(out)
    assert sorted(got) == sorted(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    for i in range(2):  # each site's card after the last round; checkpoints (secret seeds) deleted
        text = (tmp_path / f"card{i}.json").read_text()
        # seeded test noise: the card must refuse a guarantee and say why
        assert json.loads(text)["guarantee"].startswith("None") and "TEST ONLY" in text
    assert not list((tmp_path / "private").glob("*.pt"))
