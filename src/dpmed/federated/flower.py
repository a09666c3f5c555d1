"""The round loop of :mod:`dpmed.federated.rounds` under Flower's deployment engine.

One SuperLink (the server) and one SuperNode per hospital; the Flower app is defined in
``federation/pyproject.toml`` and points at :data:`server_app` and :data:`client_app`:

* the **ServerApp** builds the initial decoder from the run's seed, runs R rounds with
  :class:`DecoderFedAvg` (which averages with :func:`~dpmed.federated.rounds.aggregate`, in
  client-index order, uniform unless counts are declared public) and writes the final global
  decoder to the run's ``output`` path;
* the **ClientApp** loads its site's training file (node config ``data-path``, see
  :func:`dpmed.federated.data.write_site_file`), restores its CVAE (personal encoder included) from the
  ``Context`` of earlier rounds, runs :func:`~dpmed.federated.rounds.client_update` and replies
  with the decoder's weights and its client index, nothing else (no record count, no loss).

Run config keys (``federation/pyproject.toml`` ``[tool.flwr.app.config]``, overridable with
``flwr run --run-config``): ``rounds``, ``local-epochs``, ``batch-size``, ``lr``, ``seed``
(model initialisation), ``feature-dim``, ``n-classes``, ``n-clients``, ``output``,
``noise-seed`` (−1 = OS entropy; only a test sets another value; it seeds the CVAE's
reparameterisation only — the DP noise and Poisson sampling come from the engine's secret seed),
``epsilon``, ``delta``, ``max-grad-norm``, ``accountant`` (per-client DP-SGD; ``epsilon`` −1:
non-private), ``weights`` (empty: uniform; else comma-separated FedAvg weights in client-index
order, e.g. record counts the sites agree to treat as public). Node config keys (each
SuperNode's ``--node-config``): ``data-path``, ``client-index`` (0..M−1, agreed with the
server), ``site`` (the site's pseudonym, for messages), ``checkpoint`` (the engine's state
between rounds, under the site's private directory; deleted after the last round), ``card``
(optional: where the site writes its privacy card after the last round).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Iterable

import torch

from dpmed.errors import DpmedError, SiteError
from dpmed.federated.data import read_site_file
from dpmed.federated.private import ClientDP, engine_trainer
from dpmed.federated.rounds import (ClientState, LocalTrainer, aggregate, client_update, round_generator,
                                    shared_weights)
from dpmed.io.atomic import atomic_path
from dpmed.models.cvae import initial_cvae

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


# -------------------------------------------------------------------------------- server
class DecoderFedAvg(FedAvg):
    """FedAvg of the decoders with dpmed's :func:`aggregate`: client-index order, given weights.

    Flower's FedAvg weights by a ``num-examples`` metric each client reports — a private count
    leaving the site. Clients here report only their (public) client index.
    """

    def __init__(self, n_clients: int, weights: list[float] | None = None):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n_clients,
                         min_available_nodes=n_clients)
        self.n_clients, self.client_weights = n_clients, weights

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        if failed:
            raise DpmedError(f"round {server_round}: {len(failed)} client(s) failed: "
                             + "; ".join(m.error.reason for m in failed))
        by_index = sorted(replies, key=lambda m: int(m.content["metrics"]["client-index"]))
        indices = [int(m.content["metrics"]["client-index"]) for m in by_index]
        if indices != list(range(self.n_clients)):
            raise DpmedError(f"round {server_round}: expected client indices 0..{self.n_clients - 1}, "
                             f"got {indices}")
        decoders = [m.content["arrays"].to_torch_state_dict() for m in by_index]
        return ArrayRecord(aggregate(decoders, self.client_weights)), MetricRecord({"clients": len(decoders)})


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """R rounds of decoder FedAvg; writes the final global decoder (``torch.save``) to ``output``."""
    cfg = context.run_config
    n_clients = int(cfg["n-clients"])
    weights = [float(w) for w in str(cfg.get("weights", "")).split(",") if w.strip()] or None
    init = initial_cvae(cfg["feature-dim"], cfg["n-classes"], cfg["seed"])
    strategy = DecoderFedAvg(n_clients, weights)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(shared_weights(init.decoder)),
                            num_rounds=int(cfg["rounds"]),
                            train_config=ConfigRecord({"local-epochs": int(cfg["local-epochs"])}))
    buf = io.BytesIO()
    torch.save(result.arrays.to_torch_state_dict(), buf)
    with atomic_path(str(cfg["output"])) as tmp:
        Path(tmp).write_bytes(buf.getvalue())


# -------------------------------------------------------------------------------- client
client_app = ClientApp()


def client_dp(run_config: dict) -> ClientDP:
    """The clients' DP settings from the run config (``epsilon`` -1 or absent: non-private)."""
    eps = float(run_config.get("epsilon", -1))
    return ClientDP(rounds=int(run_config["rounds"]), local_epochs=int(run_config["local-epochs"]),
                    batch_size=int(run_config["batch-size"]), epsilon=eps if eps > 0 else math.inf,
                    delta=float(run_config["delta"]) if eps > 0 else None,
                    max_grad_norm=float(run_config.get("max-grad-norm", 1.5)), lr=float(run_config["lr"]),
                    accountant=str(run_config.get("accountant", "prv")))


def make_trainer(run_config: dict, node_config: dict) -> LocalTrainer:
    """The local trainer: DP-SGD through the engine (:func:`~dpmed.federated.private.engine_trainer`),
    σ for all rounds × local epochs; the engine's checkpoint (node config ``checkpoint``, under the
    site's private directory) carries accountant, optimizer and secret seed from round to round."""
    dp = client_dp(run_config)
    if dp.engine_settings().private and not str(node_config.get("checkpoint", "")):
        raise DpmedError("a private federated client needs node config 'checkpoint' (a path under the "
                         "site's private directory): the ClientApp is re-created every round")
    return engine_trainer(dp, seed=int(run_config["seed"]), client_index=int(node_config["client-index"]),
                          checkpoint=str(node_config.get("checkpoint", "")) or None)


def client_round(content: RecordDict, run_config: dict, node_config: dict, state: RecordDict) -> RecordDict:
    """One round at one site: data and CVAE from ``state``, :func:`client_update`, the reply's content.

    ``content`` is the server's message (``arrays``: global decoder, ``config``: round and local
    epochs); ``state`` is the ``Context``'s record store, updated in place: the whole CVAE
    (the personal encoder) and the trainer's state (JSON; the DP engine's accountant history)
    survive from round to round. The reply holds the decoder's weights and the client index only.

    Raises
    ------
    SiteError: fewer training records than the batch size (names the node's ``site``).
    """
    index = int(node_config["client-index"])
    site = str(node_config.get("site", f"client-{index}"))
    x, c = read_site_file(str(node_config["data-path"]))
    cfg = run_config
    if len(x) < int(cfg["batch-size"]):
        raise SiteError(f"site {site}: {len(x)} training records, fewer than the batch size "
                        f"{cfg['batch-size']}")
    model = initial_cvae(cfg["feature-dim"], cfg["n-classes"], cfg["seed"], client_index=index)
    if "cvae" in state:
        model.load_state_dict(state["cvae"].to_torch_state_dict())
    trainer_state = json.loads(str(state["trainer"]["json"])) if "trainer" in state else {}
    client = ClientState(site, model, model.decoder, x, c, trainer_state)
    trainer = make_trainer(cfg, node_config)
    noise_seed = int(cfg.get("noise-seed", -1))
    rnd = int(content["config"]["server-round"])
    decoder = client_update(
        client, content["arrays"].to_torch_state_dict(),
        local_epochs=int(content["config"]["local-epochs"]), trainer=trainer,
        generator=round_generator(None if noise_seed < 0 else noise_seed, index, rnd))
    state["cvae"] = ArrayRecord(shared_weights(model))
    # the live engine stays out of the Context: it resumes from its checkpoint next round
    state["trainer"] = ConfigRecord({"json": json.dumps({k: v for k, v in client.trainer_state.items()
                                                         if not k.startswith("_")})})
    _finish_if_last(client, rnd, cfg, node_config)
    return RecordDict({"arrays": ArrayRecord(decoder), "metrics": MetricRecord({"client-index": index})})


def _finish_if_last(client: ClientState, rnd: int, cfg: dict, node_config: dict) -> None:
    """After the last round: write the client's privacy card (node config ``card``, optional) and
    delete the engine's checkpoint with its secret seed."""
    engine = client.trainer_state.get("_engine")
    if engine is None or rnd < int(cfg["rounds"]):
        return
    if str(node_config.get("card", "")):
        from dpmed.privacy.card import render_guarantee, write_privacy_card

        g = engine.guarantee(released=f"site {client.site}'s CVAE decoder updates (every round)")
        write_privacy_card(str(node_config["card"]), render_guarantee(g))
    engine.remove_checkpoint()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    """The ClientApp's train handler: :func:`client_round` on the message and the node's Context."""
    reply = client_round(msg.content, context.run_config, context.node_config, context.state)
    return Message(content=reply, reply_to=msg)
