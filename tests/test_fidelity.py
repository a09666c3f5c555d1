"""Fidelity metrics (FD, KID, precision/recall) against independent computations; memorisation check."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from dpmed.errors import ConfigError
from dpmed.evaluation.fidelity import (FIDELITY_COLUMNS, encode_caches, fidelity_table, frechet_distance,
                                       frechet_distance_from_stats, kid, knn_radii, memorisation_check,
                                       mmd2_unbiased_poly, precision_recall)


def _with_exact_moments(rng, n, mu, cov):
    """n samples whose sample mean is exactly mu and sample covariance (ddof 1) exactly cov."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # sample cov = I
    return z @ np.linalg.cholesky(cov).T + mu


def test_fd_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # commuting covariances: tr sqrt(C1 C2) = sum sqrt(v1 v2)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-12)
    a = _with_exact_moments(rng, 50, mu1, np.diag(v1))
    b = _with_exact_moments(rng, 70, mu2, np.diag(v2))
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fd_general_covariances_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    d = 6
    m1, m2 = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    c1, c2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2)))
    assert frechet_distance_from_stats(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8)
    # 1-D: (mu1-mu2)^2 + (s1 - s2)^2
    assert frechet_distance_from_stats([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)


def _brute_mmd2(x, y):
    k = lambda a, b: (np.dot(a, b) / len(a) + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_against_brute_force_loop():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.7
    assert mmd2_unbiased_poly(x, y) == pytest.approx(_brute_mmd2(x, y), rel=1e-10)
    # one subset of the full size is the full sets, permuted (MMD² is permutation invariant)
    mean, std = kid(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(_brute_mmd2(x, y), rel=1e-10) and std == 0.0
    # unbiased: same distribution -> mean near 0; shifted -> clearly positive
    same, _ = kid(rng.standard_normal((400, 5)), rng.standard_normal((400, 5)), subsets=20, subset_size=100)
    shifted, _ = kid(rng.standard_normal((400, 5)), rng.standard_normal((400, 5)) + 1, subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted
    with pytest.raises(ConfigError):
        kid(x[:1], y[:1])


def _brute_pr(real, fake, k):
    def radius(s, i):
        return sorted(np.linalg.norm(s[i] - s[j]) for j in range(len(s)) if j != i)[k - 1]
    rr = [radius(real, i) for i in range(len(real))]
    rf = [radius(fake, i) for i in range(len(fake))]
    prec = np.mean([any(np.linalg.norm(f - real[j]) <= rr[j] for j in range(len(real))) for f in fake])
    rec = np.mean([any(np.linalg.norm(r - fake[j]) <= rf[j] for j in range(len(fake))) for r in real])
    return prec, rec


def test_precision_recall_against_brute_force_knn():
    rng = np.random.default_rng(3)
    real = rng.standard_normal((40, 3))
    fake = np.concatenate([rng.standard_normal((20, 3)) * 0.3, rng.standard_normal((15, 3)) + 4])
    p, r = precision_recall(real, fake, k=3)
    bp, br = _brute_pr(real, fake, 3)
    assert (p, r) == (pytest.approx(bp), pytest.approx(br))
    assert 0.4 < p < 0.7 and r < 0.8  # half the fakes are far off; fakes cover the core only
    np.testing.assert_allclose(knn_radii(real, 3)[0], sorted(np.linalg.norm(real[0] - real[1:], axis=1))[2])
    assert precision_recall(real, real, k=3) == (1.0, 1.0)


def test_memorisation_flags_a_copying_generator_not_an_independent_one():
    rng = np.random.default_rng(4)
    train, heldout = rng.standard_normal((300, 16)), rng.standard_normal((400, 16))
    copier = train[rng.choice(300, 200)] + 0.05 * rng.standard_normal((200, 16))
    independent = rng.standard_normal((200, 16))
    bad = memorisation_check(copier, train, heldout, seed=0)
    good, (d_tr, d_ho) = memorisation_check(independent, train, heldout, seed=0, return_distances=True)
    assert bad.flagged and bad.fraction_closer_to_train > 0.95 and bad.median_to_train < 0.2 * bad.median_to_heldout
    assert not good.flagged and 0.35 < good.fraction_closer_to_train < 0.65
    assert good.n_reference == 300 and len(d_tr) == len(d_ho) == 200
    exact = memorisation_check(np.concatenate([independent, train[:1]]), train, heldout)
    assert exact.exact_copies == 1 and exact.flagged


def test_fidelity_table_real_vs_real_beside_real_vs_synthetic():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((120, 4))
    labels = np.arange(120) % 2
    real[labels == 1] += 2
    good = np.concatenate([rng.standard_normal((50, 4)), rng.standard_normal((50, 4)) + 2])
    syn_labels = np.repeat([0, 1], 50)
    bad = good.copy()
    bad[syn_labels == 1] += 3
    t_good = fidelity_table(real, labels, good, syn_labels, kid_subsets=5, kid_subset_size=20)
    t_bad = fidelity_table(real, labels, bad, syn_labels, kid_subsets=5, kid_subset_size=20)
    assert list(t_good.columns) == FIDELITY_COLUMNS and len(t_good) == 6
    assert list(t_good["class"]) == ["0", "0", "1", "1", "all", "all"]
    assert (t_good["n_reference"] == t_good["n_compared"]).all()
    row = lambda t, c, cmp: t[(t["class"] == c) & (t["comparison"] == cmp)].iloc[0]  # noqa: E731
    assert row(t_bad, "1", "real-vs-synthetic").fd > 5 * row(t_bad, "1", "real-vs-real").fd
    assert row(t_bad, "0", "real-vs-synthetic").fd == pytest.approx(row(t_good, "0", "real-vs-synthetic").fd)
    assert row(t_bad, "1", "real-vs-synthetic").precision < 0.2 < row(t_good, "1", "real-vs-synthetic").precision


def test_encode_caches_uses_the_frozen_encoder(tmp_path):
    from training_helpers import make_cohort

    from dpmed.models import build_model

    paths, _ = make_cohort(tmp_path, sizes=(6, 4, 2), size=16)
    torch.manual_seed(0)
    net = build_model({"width": 0.125, "groups": 8, "in_channels": 1, "num_labels": 2})
    torch.save({"state_dict": net.state_dict(), "model_cfg": net.config(), "labels": ["a", "b"],
                "normalization": {"mean": 0.5, "std": 0.25, "channels": 1}}, tmp_path / "model.pt")
    ids, feats = encode_caches(tmp_path / "model.pt", [paths["train"], paths["val"]])
    assert ids[:2] == ["train-0000", "train-0001"] and feats.shape == (10, net.channels[-1])
    assert np.isfinite(feats).all() and feats.std(0).max() > 0
