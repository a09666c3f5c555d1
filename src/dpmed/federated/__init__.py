"""dpmed.federated — study C: DP conditional VAEs on embeddings, shared across hospitals.

* :mod:`.sites` — which site each record belongs to (manifest column or Dirichlet label skew),
  per-site splits, checks;
* :mod:`.data` — a site's scaled embeddings and labels per split;
* :mod:`.scaling` — feature bounds that do not come from private data;
* :mod:`.rounds` — the round loop (:func:`client_update`, :func:`aggregate`), in process;
* :mod:`.private` — DP-SGD per client through the private-training engine (σ for every step);
* :mod:`.study` / :mod:`.pipeline` — every method at one (ε, seed), and the workflow job;
* :mod:`.flower` — the same functions under Flower's deployment engine;
* :mod:`.synthetic` — per-site synthetic global data; :mod:`.downstream` — λ-interpolated linear
  classifiers, FedAvg/FedProx baselines, metrics; :mod:`.fidelity` — Sinkhorn W₂.
"""

from dpmed.settings import lazy_exports

# Submodules are imported on first use: a Flower ClientApp process (one per round) imports only
# what one client needs, not scikit-learn and the evaluation code.
_EXPORTS = {
    "data": ("labels_of", "read_embeddings", "read_site_file", "site_arrays", "write_site_file"),
    "downstream": ("FEDPROX_MU", "LAMBDAS", "LinearClassifier", "choose_lambda", "federated_linear",
                   "mean_std_over_sites", "site_downstream", "site_metrics", "train_linear"),
    "fidelity": ("sinkhorn_w2",),
    "guarantee": ("federation_guarantee",),
    "private": ("ClientDP", "client_guarantee", "cvae_loss", "engine_trainer", "linear_loss"),
    "study": ("FederatedSettings", "run_study"),
    "rounds": ("ClientState", "adam_trainer", "aggregate", "aggregation_weights", "client_update",
               "round_generator", "run_in_process", "shared_weights"),
    "scaling": ("FeatureBounds", "fixed_bounds", "public_bounds"),
    "sites": ("SiteRecords", "check_site", "dirichlet_label_skew", "sites_from_column",
              "sites_from_dirichlet"),
    "synthetic": ("LabelDistribution", "public_labels", "synthesize", "uniform_labels"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
