"""dpmed.federated — study C: DP conditional VAEs on embeddings, shared across hospitals.

* :mod:`.sites` — which site each record belongs to (manifest column or Dirichlet label skew),
  per-site splits, checks;
* :mod:`.scaling` — feature bounds that do not come from private data;
* :mod:`.rounds` — the round loop (:func:`client_update`, :func:`aggregate`), in process;
* :mod:`.flower` — the same functions under Flower's deployment engine;
* :mod:`.synthetic` — per-site synthetic global data; :mod:`.downstream` — λ-interpolated linear
  classifiers, FedAvg/FedProx baselines, metrics; :mod:`.fidelity` — Sinkhorn W₂.
"""

from dpmed.federated.downstream import (LAMBDAS, LinearClassifier, choose_lambda, federated_linear,
                                        mean_std_over_sites, site_metrics, train_linear)
from dpmed.federated.fidelity import sinkhorn_w2
from dpmed.federated.rounds import (ClientState, adam_trainer, aggregate, aggregation_weights,
                                    client_update, round_generator, run_in_process, shared_weights)
from dpmed.federated.scaling import FeatureBounds, fixed_bounds, public_bounds
from dpmed.federated.sites import (SiteRecords, check_site, dirichlet_label_skew, sites_from_column,
                                   sites_from_dirichlet)
from dpmed.federated.synthetic import LabelDistribution, public_labels, synthesize, uniform_labels

__all__ = [
    "LAMBDAS", "ClientState", "FeatureBounds", "LabelDistribution", "LinearClassifier", "SiteRecords",
    "adam_trainer", "aggregate", "aggregation_weights", "check_site", "choose_lambda", "client_update",
    "dirichlet_label_skew", "federated_linear", "fixed_bounds", "mean_std_over_sites", "public_bounds",
    "public_labels", "round_generator", "run_in_process", "shared_weights", "sinkhorn_w2",
    "site_metrics", "sites_from_column", "sites_from_dirichlet", "synthesize", "train_linear",
    "uniform_labels",
]
