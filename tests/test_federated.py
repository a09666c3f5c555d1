"""Study C's federated package: sites, bounds, round loop, synthetic data, downstream, fidelity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from dpmed.errors import ConfigError, SiteError
from dpmed.federated import (LAMBDAS, ClientState, adam_trainer, aggregate, aggregation_weights,
                             check_site, choose_lambda, client_update, dirichlet_label_skew,
                             federated_linear, fixed_bounds, mean_std_over_sites, public_bounds,
                             public_labels, round_generator, run_in_process, shared_weights,
                             sinkhorn_w2, site_metrics, sites_from_column, sites_from_dirichlet,
                             synthesize, train_linear, uniform_labels)
from dpmed.models.cvae import CVAE, label_condition

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------- sites
def _manifest(n_patients=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        split = ("train", "train", "train", "val", "test")[p % 5]
        site = f"S{p % 3}"
        cls = int(rng.integers(0, 3))
        for r in range(1 + p % 2):
            rows.append({"record_id": f"r{p:03d}_{r}", "patient_id": f"P{p:03d}", "split": split,
                         "site": site, "label_a": cls})
    return pd.DataFrame(rows)


def test_sites_from_column_keep_the_patient_wise_split():
    m = _manifest()
    sites = sites_from_column(m)
    assert sorted(sites) == ["S0", "S1", "S2"]
    for name, s in sites.items():
        for split in ("train", "val", "test"):
            want = sorted(m.loc[(m.site == name) & (m.split == split), "record_id"])
            assert list(s.split(split)) == want
    all_ids = sorted(i for s in sites.values() for sp in ("train", "val", "test") for i in s.split(sp))
    assert all_ids == sorted(m.record_id)


def test_sites_from_column_refuses_bad_site_columns():
    m = _manifest()
    with pytest.raises(Exception, match="no column \\['site'\\]"):
        sites_from_column(m.drop(columns="site"))
    m2 = m.copy()
    m2.loc[3, "site"] = None
    with pytest.raises(SiteError, match="1 records have no site"):
        sites_from_column(m2)
    m3 = m.copy()
    first = m3.index[m3.patient_id == "P001"]
    m3.loc[first[0], "site"] = "S2"  # P001 has two records; move one to another site
    with pytest.raises(SiteError, match="1 patients have records at more than one site"):
        sites_from_column(m3)


def test_dirichlet_label_skew_counts_and_skew():
    strata = np.repeat(np.arange(4), 250)
    a = dirichlet_label_skew(strata, 5, 0.3, seed=1)
    assert np.array_equal(a, dirichlet_label_skew(strata, 5, 0.3, seed=1))
    assert not np.array_equal(a, dirichlet_label_skew(strata, 5, 0.3, seed=2))
    assert a.min() >= 0 and a.max() <= 4 and len(a) == 1000
    # strong skew at alpha 0.3: some class puts most of its records on one client
    share = lambda assign: max(np.bincount(assign[strata == c], minlength=5).max() / 250 for c in range(4))
    assert share(a) > 0.5
    # near-IID at a large alpha: every client gets about 1/5 of every class
    iid = dirichlet_label_skew(strata, 5, 1e4, seed=1)
    for c in range(4):
        np.testing.assert_allclose(np.bincount(iid[strata == c], minlength=5) / 250, 0.2, atol=0.06)
    with pytest.raises(SiteError):
        dirichlet_label_skew(strata, 5, 0.0, seed=1)


def test_sites_from_dirichlet_moves_whole_patients():
    m = _manifest(60)
    sites = sites_from_dirichlet(m, ["label_a"], n_clients=4, alpha=0.3, seed=0)
    of = {i: s for s, recs in sites.items() for sp in ("train", "val", "test") for i in recs.split(sp)}
    assert set(of) == set(m.record_id)
    assert m.assign(c=m.record_id.map(of)).groupby("patient_id").c.nunique().max() == 1
    split_of = dict(zip(m.record_id, m.split))
    assert all(split_of[i] == sp for s in sites.values() for sp in ("train", "val", "test") for i in s.split(sp))
    assert all(s.startswith("client_") for s in sites)


def test_check_site_errors_name_site_and_reason():
    yc = {"train": np.array([0, 1, 2, 0]), "val": np.array([0, 1]), "test": np.array([2, 1])}
    check_site("h1", yc, ["a", "b", "c"], "multiclass", batch_size=4)
    with pytest.raises(SiteError, match="site h1: 4 training records, fewer than the batch size 8"):
        check_site("h1", yc, ["a", "b", "c"], "multiclass", batch_size=8)
    no_c = {"train": np.array([0, 1, 0, 0]), "val": np.array([0, 1]), "test": np.array([1, 1])}
    with pytest.raises(SiteError, match="site h2: no record of class 'c'"):
        check_site("h2", no_c, ["a", "b", "c"], "multiclass", batch_size=2)
    check_site("h2", no_c, ["a", "b", "c"], "multiclass", batch_size=2, allow_missing_classes=True)
    yl = {"train": np.ones((4, 2)), "val": np.array([[1, 0], [0, 0]]), "test": np.array([[1, 1], [0, 0]])}
    with pytest.raises(SiteError, match="site h3: label 'y' has no positive record in the val split"):
        check_site("h3", yl, ["x", "y"], "multilabel", batch_size=2)
    with pytest.raises(SiteError, match="site h4: no record in the test split"):
        check_site("h4", {**yc, "test": np.array([])}, ["a", "b", "c"], "multiclass", batch_size=2)


def test_site_arrays_align_embeddings_labels_and_splits(tmp_path):
    import h5py

    from dpmed.federated import labels_of, read_embeddings, site_arrays

    m = _manifest(15)
    m["label_b"] = 1 - (m["label_a"] > 0).astype(int)
    m["label_a"] = (m["label_a"] > 0).astype(int)
    ids = m.record_id.to_numpy()[::-1]  # embeddings in another order than the manifest
    emb = np.stack([np.full(3, float(i)) for i in range(len(ids))])
    with h5py.File(tmp_path / "e.h5", "w") as fh:
        fh["record_id"] = ids.astype("S")
        fh["embedding"] = emb
    rid, e = read_embeddings(tmp_path / "e.h5")
    sites = sites_from_column(m)
    bounds = fixed_bounds(3, 0.0, float(len(ids)))
    arr = site_arrays(sites["S1"], rid, e, m, ["a", "b"], "multiclass", bounds)
    for split in ("train", "val", "test"):
        x, y = arr[split]
        want = list(sites["S1"].split(split))
        assert len(x) == len(y) == len(want)
        for r, xi, yi in zip(want, x, y):
            assert xi[0] == pytest.approx(list(ids).index(r) / len(ids))
            assert yi == (0 if m.set_index("record_id").loc[r, "label_a"] else 1)
    ml = site_arrays(sites["S1"], rid, e, m, ["a", "b"], "multilabel", bounds)
    assert ml["train"][1].shape == (len(sites["S1"].train), 2)
    with pytest.raises(Exception, match="site S1: .* records have no embedding"):
        site_arrays(sites["S1"], rid[:3], e[:3], m, ["a", "b"], "multiclass", bounds)
    both = m.assign(label_b=1)
    with pytest.raises(Exception, match="do not have exactly one positive"):
        labels_of(both, ["a", "b"], "multiclass")
    (tmp_path / "bad.h5").write_bytes(b"no hdf5")
    with pytest.raises(Exception, match="embeddings file bad.h5: cannot be read"):
        read_embeddings(tmp_path / "bad.h5")


def test_federation_guarantee_is_the_worst_site_and_keeps_what_touched_data():
    from dpmed.federated import federation_guarantee
    from dpmed.privacy.guarantee import Guarantee, no_guarantee

    def client(eps, delta):
        return Guarantee("central", "record", eps, delta, "dp-sgd", not_guaranteed=("validation records",))
    bounds = public_bounds(np.zeros((3, 2)) + np.arange(2), "PUB").non_private_input()
    _, counts = aggregation_weights(2, "counts", [10, 30])
    g = federation_guarantee([client(0.8, 1e-5), client(1.2, 1e-4)], released="global decoder",
                             non_private_inputs=[bounds, counts])
    assert g.kind == "derived" and g.unit == "record"
    assert g.epsilon == 1.2 and g.delta == 1e-4  # a record is at one site: the worst site's (ε, δ)
    assert bounds in g.non_private_inputs and counts in g.non_private_inputs
    assert g.not_guaranteed[0].startswith("a whole site") and g.not_guaranteed.count("validation records") == 1
    assert len(g.derived_from) == 2
    none = federation_guarantee([client(1.0, 1e-5), no_guarantee(reason="non-private")], released="x")
    assert not none.holds
    with pytest.raises(Exception, match="different units"):
        federation_guarantee([client(1.0, 1e-5), Guarantee("central", "patient", 1.0, 1e-5, "dp-sgd")],
                             released="x")


# ------------------------------------------------------------------------------------ bounds
def test_public_bounds_clip_private_values_and_say_where_they_came_from():
    pub = np.array([[0.0, -2.0], [1.0, 2.0], [0.5, 0.0]])
    b = public_bounds(pub, "PUB", margin=0.1)
    np.testing.assert_allclose(b.low, [-0.1, -2.4])
    np.testing.assert_allclose(b.high, [1.1, 2.4])
    priv = np.array([[0.5, 0.0], [5.0, -9.0]])
    u = b.scale(priv)
    np.testing.assert_allclose(u, [[0.5, 0.5], [1.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(b.unscale(u[:1]), priv[:1], atol=1e-6)
    npi = b.non_private_input()
    assert "public cohort PUB" in npi.source and "bounds" in npi.what
    f = fixed_bounds(3, -1, 1)
    assert f.source == "fixed" and f.scale(np.zeros((1, 3))).tolist() == [[0.5, 0.5, 0.5]]
    const = public_bounds(np.ones((4, 1)), "PUB", margin=0.0)  # a constant public feature still scales
    assert const.high[0] > const.low[0]
    with pytest.raises(ConfigError):
        fixed_bounds(2, 1.0, 1.0)
    with pytest.raises(ConfigError, match="do not fit 2-d bounds"):
        f2 = fixed_bounds(2, 0, 1)
        f2.scale(np.zeros((1, 3)))


# -------------------------------------------------------------------------------- round loop
def test_aggregate_weighted_mean_by_hand():
    u1 = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.0])}
    u2 = {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor([4.0])}
    avg = aggregate([u1, u2])
    assert avg["w"].tolist() == [2.0, 4.0] and avg["b"].tolist() == [2.0]
    wavg = aggregate([u1, u2], [3, 1])
    torch.testing.assert_close(wavg["w"], torch.tensor([1.5, 3.0]))
    with pytest.raises(ConfigError, match="different parameter names"):
        aggregate([u1, {"w": u2["w"]}])
    with pytest.raises(ConfigError, match="different shapes"):
        aggregate([u1, {"w": torch.zeros(3), "b": torch.zeros(1)}])
    with pytest.raises(ConfigError):
        aggregate([u1, u2], [-1, 2])


def test_aggregation_weights_say_when_counts_are_used():
    w, npi = aggregation_weights(4)
    assert w.tolist() == [0.25] * 4 and npi is None
    w, npi = aggregation_weights(2, "counts", [100, 300])
    assert w.tolist() == [0.25, 0.75] and "treated as public" in npi.source
    with pytest.raises(ConfigError):
        aggregation_weights(2, "counts")


def _cvae_clients(n_clients=3, n=40, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    states = []
    for i in range(n_clients):
        y = rng.integers(0, k, n)
        x = np.clip(0.2 + 0.2 * y[:, None] + 0.05 * rng.normal(size=(n, d)), 0, 1)
        m = CVAE(d, k)
        states.append(ClientState(f"s{i}", m, m.decoder, torch.tensor(x, dtype=torch.float32),
                                  label_condition(torch.tensor(y), k, "multiclass")))
    return states


def test_client_update_returns_the_decoder_only_and_keeps_the_encoder():
    s = _cvae_clients(1)[0]
    enc_before = shared_weights(s.model.encoder)
    glob = shared_weights(CVAE(6, 3).decoder)
    out = client_update(s, glob, local_epochs=1, trainer=adam_trainer(batch_size=16),
                        generator=torch.Generator().manual_seed(0))
    assert set(out) == set(s.model.decoder.state_dict())
    assert not any(k.startswith(("encoder", "body", "mu", "logvar")) for k in out)
    assert any(not torch.equal(out[k], glob[k]) for k in out)  # trained from the global weights
    assert any(not torch.equal(v, enc_before[k]) for k, v in shared_weights(s.model.encoder).items())


def test_run_in_process_is_fedavg_of_decoders_and_deterministic_given_a_seed():
    init = shared_weights(CVAE(6, 3).decoder)
    tr = adam_trainer(batch_size=16)
    a = _cvae_clients()
    fa = run_in_process(a, init, rounds=2, local_epochs=1, trainer=tr, noise_seed=5)
    b = _cvae_clients()
    fb = run_in_process(b, init, rounds=2, local_epochs=1, trainer=tr, noise_seed=5)
    assert all(torch.equal(fa[k], fb[k]) for k in fa)
    # encoders stay personal: they differ between clients, decoders are all the global one
    e0, e1 = shared_weights(a[0].model.encoder), shared_weights(a[1].model.encoder)
    assert any(not torch.equal(e0[k], e1[k]) for k in e0)
    assert all(torch.equal(s.model.decoder.state_dict()[k], fa[k]) for s in a for k in fa)
    # round 2 by hand: the final weights are the plain mean of the clients' round-2 updates
    c = _cvae_clients()
    g1 = run_in_process(c, init, rounds=1, local_epochs=1, trainer=tr, noise_seed=5)
    ups = [client_update(s, g1, local_epochs=1, trainer=tr, generator=round_generator(5, i, 2))
           for i, s in enumerate(c)]
    for k in fa:
        torch.testing.assert_close(fa[k], sum(u[k] for u in ups) / 3)
    d = _cvae_clients()
    fd = run_in_process(d, init, rounds=2, local_epochs=1, trainer=tr, noise_seed=6)
    assert any(not torch.equal(fa[k], fd[k]) for k in fa)


def test_round_generator_uses_os_entropy_without_a_seed():
    draws = {float(torch.rand(1, generator=round_generator(None, 0, 1))) for _ in range(5)}
    assert len(draws) == 5
    assert torch.equal(torch.rand(3, generator=round_generator(1, 2, 3)),
                       torch.rand(3, generator=round_generator(1, 2, 3)))


def test_adam_trainer_fedprox_term_pulls_towards_the_global_weights():
    def drift(mu):
        torch.manual_seed(0)
        s = _cvae_clients(1)[0]
        glob = shared_weights(s.shared)
        out = client_update(s, glob, local_epochs=3, trainer=adam_trainer(lr=1e-2, batch_size=8, prox_mu=mu),
                            generator=torch.Generator().manual_seed(0))
        return sum(float(((out[k] - glob[k]) ** 2).sum()) for k in out)
    assert drift(100.0) < 0.5 * drift(0.0)


# --------------------------------------------------------------------------------- synthetic
def test_synthetic_labels_come_from_a_public_distribution():
    m = CVAE(6, 3)
    x, y = synthesize(m, uniform_labels(3), 300, torch.Generator().manual_seed(0))
    assert x.shape == (300, 6) and x.min() >= 0 and x.max() <= 1
    assert set(np.unique(y)) == {0, 1, 2} and np.bincount(y).min() > 70
    pub = np.array([[1, 0], [0, 1], [1, 1]])
    dist = public_labels(pub, "multilabel", 2, "PUB")
    _, yl = synthesize(CVAE(6, 2), dist, 50, torch.Generator().manual_seed(1))
    assert {tuple(r) for r in yl} <= {(1, 0), (0, 1), (1, 1)}
    assert "public cohort PUB" in dist.non_private_input().source
    with pytest.raises(ConfigError, match="multi-class tasks only"):
        from dpmed.federated import LabelDistribution
        LabelDistribution("multilabel", 2, "uniform")


# -------------------------------------------------------------------------------- downstream
def test_site_metrics_against_sklearn():
    y = np.array([0, 0, 0, 1, 2, 2])
    p = np.eye(3)[[0, 0, 1, 1, 2, 0]]
    m = site_metrics(p, y, "multiclass", ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    rng = np.random.default_rng(0)
    yl = rng.integers(0, 2, (30, 2))
    pl = rng.random((30, 2)) + 0.3 * yl
    want = np.mean([roc_auc_score(yl[:, j], pl[:, j]) for j in range(2)])
    assert site_metrics(pl, yl, "multilabel", ["u", "v"])["auroc"] == pytest.approx(want)


def test_choose_lambda_follows_the_better_source():
    y = np.array([0, 1, 2, 0, 1, 2])
    good, bad = np.eye(3)[y], np.eye(3)[(y + 1) % 3]
    assert choose_lambda(good, bad, y, "multiclass", ["a", "b", "c"]) > 0.5
    assert choose_lambda(bad, good, y, "multiclass", ["a", "b", "c"]) < 0.5
    assert LAMBDAS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert choose_lambda(good, good, y, "multiclass", ["a", "b", "c"]) == 0.0  # ties → shared data


def test_linear_classifiers_local_and_federated_learn():
    rng = np.random.default_rng(0)
    def site(n, shift):
        y = rng.integers(0, 2, n)
        return rng.normal(size=(n, 4)) + np.outer(2 * y - 1, [1.5, 0, 0, 0]) + shift, y
    (x1, y1), (x2, y2) = site(120, 0.0), site(120, 0.3)
    local = train_linear(x1, y1, "multiclass", 2, seed=0, epochs=30, lr=1e-2)
    assert site_metrics(local.predict_proba(x2), y2, "multiclass", ["n", "p"])["accuracy"] > 0.85
    from dpmed.federated import FEDPROX_MU

    assert FEDPROX_MU == 0.05
    for mu in (0.0, FEDPROX_MU):
        fed = federated_linear([(x1, y1), (x2, y2)], "multiclass", 2, rounds=3, local_epochs=5, seed=0,
                               prox_mu=mu, lr=1e-2, noise_seed=0)
        assert site_metrics(fed.predict_proba(x1), y1, "multiclass", ["n", "p"])["accuracy"] > 0.85


def test_site_downstream_interpolates_towards_the_useful_source():
    from dpmed.federated import site_downstream

    rng = np.random.default_rng(1)
    def data(n, flip=False):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 3)) + np.outer(2 * y - 1, [2.0, 0, 0])
        return x, (1 - y if flip else y)
    real = {"train": data(60), "val": data(60), "test": data(80)}
    useless = (rng.normal(size=(60, 3)), rng.integers(0, 2, 60))  # synthetic set without signal
    out = site_downstream(real, useless, "multiclass", ["n", "p"], seed=0, epochs=30, lr=1e-2, batch_size=16)
    # a synthetic set without signal: λ = 0 (synthetic only) would be at chance, so λ > 0 wins
    assert out["lambda"] > 0
    assert out["metrics"]["local"]["accuracy"] > 0.85 and out["metrics"]["synthetic"]["accuracy"] < 0.7
    assert out["metrics"]["interpolated"]["accuracy"] > 0.85
    p = out["predictions"]["interpolated"]["test"]
    lam = out["lambda"]
    np.testing.assert_allclose(p, lam * out["predictions"]["local"]["test"]
                               + (1 - lam) * out["predictions"]["synthetic"]["test"])
    # a synthetic set from the right distribution and a local set with flipped labels: λ goes to 0
    bad_local = {**real, "train": data(60, flip=True)}
    out2 = site_downstream(bad_local, data(200), "multiclass", ["n", "p"], seed=0, epochs=30, lr=1e-2, batch_size=16)
    assert out2["lambda"] <= 0.5 and out2["metrics"]["interpolated"]["accuracy"] > 0.85


def test_mean_std_over_sites_by_hand():
    per = pd.DataFrame({"method": ["a", "a", "a", "b", "b"], "site": ["1", "2", "3", "1", "2"],
                        "accuracy": [0.5, 0.7, 0.9, 0.4, 0.6]})
    out = mean_std_over_sites(per).set_index("method")
    assert out.loc["a", "accuracy_mean"] == pytest.approx(0.7)
    assert out.loc["a", "accuracy_std"] == pytest.approx(0.2)
    assert out.loc["b", "accuracy_std"] == pytest.approx(np.sqrt(0.02))
    assert out.loc["a", "n_sites"] == 3


# ---------------------------------------------------------------------------------- fidelity
def test_sinkhorn_w2_against_exact_optimal_transport():
    for seed in range(2):
        rng = np.random.default_rng(seed)
        x, y = rng.random((40, 3)), rng.random((40, 3)) + 0.3
        cost = cdist(x, y, "sqeuclidean")
        r, c = linear_sum_assignment(cost)
        exact = np.sqrt(cost[r, c].mean())
        assert sinkhorn_w2(x, y) == pytest.approx(exact, rel=0.01)
        # the library's ½‖x−y‖² cost would give W2/√2: make sure that is not what is reported
        assert abs(sinkhorn_w2(x, y) - exact / np.sqrt(2)) > 0.1 * exact


def test_sinkhorn_w2_of_a_shifted_gaussian_is_the_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4))
    shift = np.array([0.6, -0.3, 0.0, 0.2])
    assert sinkhorn_w2(x, x + shift) == pytest.approx(np.linalg.norm(shift), rel=0.01)
    assert sinkhorn_w2(x, x) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="same dimension"):
        sinkhorn_w2(x, x[:, :2])


# ------------------------------------------------------------------------------- demo sites
def test_demo_cxr_patients_belong_to_one_site_and_sites_differ(tmp_path):
    import pydicom

    from dpmed.demo import cxr as cxr_mod

    labels = cxr_mod.generate_cxr_cohort(tmp_path, n_patients=24, image_size=32, seed=3)
    site_of = {}
    for rel in labels["path"]:
        ds = pydicom.dcmread(tmp_path / rel, stop_before_pixels=True)
        assert ds.InstitutionName in cxr_mod.SITES
        assert site_of.setdefault(ds.PatientID, ds.InstitutionName) == ds.InstitutionName
    assert len(set(site_of.values())) >= 3
    # label prevalence differs by site: the grade model with site 0's vs site 2's shift
    rng = np.random.default_rng(0)
    n = 4000
    ages, card = rng.uniform(40, 90, n), rng.normal(0, 1, n)
    offs = rng.normal(0, 0.7, (n, 8))
    prev = [(cxr_mod.sample_grades(np.random.default_rng(1), ages, card, offs + cxr_mod._SITE_SHIFT[s]) >= 2)
            .mean(0) for s in range(len(cxr_mod.SITES))]
    assert prev[0][0] > prev[2][0] + 0.1  # cardiomegaly
    assert prev[1][4] > prev[2][4] + 0.1  # infiltrates
    # each site's detector looks different, also after histogram equalisation (which undoes gamma)
    from dpmed.preprocessing.radiograph import equalise_histogram

    img = cxr_mod.render_chest([1] * 8, age=60, rng=np.random.default_rng(0), image_size=128, devices=False)
    looks = [cxr_mod.apply_site_detector(img, s) for s in range(len(cxr_mod.SITES))]
    rs, cs = cxr_mod.marker_box(128)
    for a in looks:
        assert a[rs, cs].min() == a[rs, cs].max() == cxr_mod.MARKER_VALUE and 0 <= a.min() and a.max() <= 1
    eq = [equalise_histogram(np.round(a * 255).astype(np.uint8)).astype(float) for a in looks]
    for i in range(len(eq)):
        for j in range(i + 1, len(eq)):
            assert np.abs(eq[i] - eq[j]).mean() > 2.0, (i, j)


# ------------------------------------------------------------------- the pieces fit together
def test_study_c_in_process_end_to_end_on_separable_toy_sites():
    """Federated CVAE → per-site synthetic data → classifiers and W2: the synthetic data carry
    the class structure of the real data, and training moves them towards the real data."""
    rng = np.random.default_rng(0)
    d, k = 8, 3
    centres = rng.random((k, d)) * 0.6 + 0.2

    def draw(n, probs):
        y = rng.choice(k, n, p=probs)
        return np.clip(centres[y] + 0.03 * rng.normal(size=(n, d)), 0, 1).astype(np.float32), y

    skews = ([0.6, 0.3, 0.1], [0.1, 0.6, 0.3], [0.3, 0.1, 0.6])  # non-IID label mixes
    torch.manual_seed(0)
    states, tests = [], []
    for i, p in enumerate(skews):
        x, y = draw(90, p)
        m = CVAE(d, k)
        states.append(ClientState(f"s{i}", m, m.decoder, torch.from_numpy(x),
                                  label_condition(torch.tensor(y), k, "multiclass")))
        tests.append(draw(60, [1 / 3] * 3))
    init = CVAE(d, k)
    untrained = init.decoder
    w_before = sinkhorn_w2(tests[0][0], synthesize(init, uniform_labels(k), 150,
                                                   torch.Generator().manual_seed(0))[0])
    run_in_process(states, shared_weights(untrained), rounds=5, local_epochs=5,
                   trainer=adam_trainer(lr=3e-3, batch_size=16), noise_seed=0)
    for i, s in enumerate(states):
        xs, ys = synthesize(s.model, uniform_labels(k), 150, torch.Generator().manual_seed(i))
        clf = train_linear(xs, ys, "multiclass", k, seed=0, epochs=40, lr=1e-2, batch_size=32)
        acc = site_metrics(clf.predict_proba(tests[i][0]), tests[i][1], "multiclass", ["a", "b", "c"])
        assert acc["balanced_accuracy"] > 0.9
    w_after = sinkhorn_w2(tests[0][0], synthesize(states[0].model, uniform_labels(k), 150,
                                                  torch.Generator().manual_seed(0))[0])
    assert w_after < 0.5 * w_before
