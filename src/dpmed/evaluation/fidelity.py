"""Fidelity of synthetic images on features of a frozen encoder, and a memorisation check.

Metrics (all on feature vectors, rows = samples)
------------------------------------------------
* **Fréchet distance** ``FD = ‖μ₁ − μ₂‖² + tr(C₁ + C₂ − 2 (C₁^{½} C₂ C₁^{½})^{½})`` between the
  Gaussians fitted to the two sets (sample covariance, ``ddof = 1``). ``tr (C₁C₂)^{½}`` is
  computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
  ``C₁^{½} C₂ C₁^{½}`` (same eigenvalues as ``C₁C₂``), which avoids the complex parts a general
  ``sqrtm`` produces from round-off. FID is this on Inception features; here the encoder is the
  project's own (no hub weights), so values are comparable only within one encoder.
* **KID**: unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (xᵀy / d + 1)³``, averaged
  over ``subsets`` random subsets of ``subset_size`` from each set (Bińkowski et al. 2018);
  returns mean and standard deviation over the subsets.
* **Precision / recall** (Kynkäänniemi et al. 2019, ``k = 3``): each sample's ball reaches its
  k-th nearest neighbour within its own set; precision is the fraction of synthetic samples
  inside at least one real ball, recall the fraction of real samples inside at least one
  synthetic ball.

Memorisation check (:func:`memorisation_check`)
-----------------------------------------------
For each synthetic sample the distance to its nearest real **training** patch and to its
nearest real **held-out** patch (equal-sized sets). A generator independent of its training
records is as close to held-out records as to training ones (fraction closer to training
≈ 0.5); one that copies records is much closer to training. The check reads the private
training records: its outputs are statistics of private data released without DP, and the
report must say so (summaries only — never per-record distances or indices).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from dpmed.errors import ConfigError

__all__ = [
    "gaussian_stats", "frechet_distance_from_stats", "frechet_distance", "mmd2_unbiased_poly", "kid",
    "knn_radii", "precision_recall", "MemorisationReport", "memorisation_check", "fidelity_table",
    "encode_caches", "generator_fd_scorer",
]


def _features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or len(a) < 2:
        raise ConfigError(f"{name}: need a 2-D array of at least 2 feature vectors, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: features contain NaN or inf")
    return a


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and sample covariance ``(D, D)`` (``ddof = 1``) of ``features`` ``(N, D)``."""
    a = _features(features, "features")
    return a.mean(axis=0), np.atleast_2d(np.cov(a, rowvar=False, ddof=1))


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance_from_stats(mu1, c1, mu2, c2) -> float:
    """Fréchet distance between N(μ₁, C₁) and N(μ₂, C₂) (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, float), np.asarray(mu2, float)
    c1, c2 = np.atleast_2d(np.asarray(c1, float)), np.atleast_2d(np.asarray(c2, float))
    if mu1.shape != mu2.shape or c1.shape != c2.shape or c1.shape != (len(mu1), len(mu1)):
        raise ConfigError(f"Fréchet distance: shapes do not fit ({mu1.shape}, {c1.shape}, {mu2.shape}, {c2.shape})")
    s1 = _psd_sqrt(c1)
    m = s1 @ c2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt)


def frechet_distance(a, b) -> float:
    """Fréchet distance between the Gaussians fitted to feature sets ``a`` and ``b``."""
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def mmd2_unbiased_poly(x, y) -> float:
    """Unbiased MMD² of two equal-sized sets with ``k(x, y) = (xᵀy / d + 1)³``."""
    x, y = _features(x, "x"), _features(y, "y")
    m, d = len(x), x.shape[1]
    if len(y) != m:
        raise ConfigError(f"KID subsets must have equal sizes, got {m} and {len(y)}")
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())


def kid(a, b, *, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance on the encoder's features: (mean, std) of the subset MMD²s.

    ``subset_size`` is capped at the smaller set's size; subsets are drawn without replacement
    within a subset, independently across subsets, from ``numpy.random.default_rng(seed)``.
    """
    a, b = _features(a, "a"), _features(b, "b")
    m = min(int(subset_size), len(a), len(b))
    if int(subsets) < 1 or m < 2:
        raise ConfigError(f"KID needs subsets >= 1 and subset_size >= 2, got {subsets}, {m}")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased_poly(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
            for _ in range(int(subsets))]
    return float(np.mean(vals)), float(np.std(vals))


def _sq_dists(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T
    return np.clip(d, 0, None)


def _min_dist_chunks(x: np.ndarray, y: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For every row of ``x``, the Euclidean distance to its nearest row of ``y``.

    The neighbour is found with the fast expansion ``‖x‖² + ‖y‖² − 2xᵀy`` and its distance
    recomputed directly, so an exact copy has distance 0 (the expansion leaves round-off).
    """
    nearest = np.concatenate([_sq_dists(x[i:i + chunk], y).argmin(1) for i in range(0, len(x), chunk)])
    return np.linalg.norm(x - y[nearest], axis=1)


def knn_radii(x, k: int = 3) -> np.ndarray:
    """Distance from every row of ``x`` to its k-th nearest *other* row."""
    x = _features(x, "x")
    if not 1 <= k < len(x):
        raise ConfigError(f"k must be in 1..{len(x) - 1}, got {k}")
    out = []
    for i in range(0, len(x), 2048):
        d = _sq_dists(x[i:i + 2048], x)
        out.append(np.sqrt(np.partition(d, k, axis=1)[:, k]))  # index 0 is the point itself
    return np.concatenate(out)


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 2048) -> float:
    inside = [(_sq_dists(points[i:i + chunk], centres) <= radii[None, :] ** 2).any(1)
              for i in range(0, len(points), chunk)]
    return float(np.concatenate(inside).mean())


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., k-NN balls; see module docstring)."""
    real, fake = _features(real, "real"), _features(fake, "fake")
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


@dataclass(frozen=True)
class MemorisationReport:
    """Nearest-neighbour distances of synthetic samples to training vs held-out records."""

    n_synthetic: int
    n_reference: int  # size of each reference set (training and held-out, equalised)
    median_to_train: float
    median_to_heldout: float
    fraction_closer_to_train: float
    p_value: float  # one-sided binomial test of "closer to training" against 1/2
    exact_copies: int  # synthetic samples within 1e-9·(median held-out distance) of a training record
    flagged: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def memorisation_check(synthetic, train, heldout, *, alpha: float = 0.01, seed: int = 0,
                       return_distances: bool = False):
    """Is the generator closer to its training records than to held-out ones?

    Parameters
    ----------
    synthetic, train, heldout: ``(N, D)`` arrays (features or flattened pixels) of synthetic
        samples, real training records and real held-out records (same distribution).
    alpha: significance level of the one-sided binomial test.
    seed: the larger reference set is subsampled to the smaller one's size with this seed
        (nearest-neighbour distances shrink with the set size, so the sets must be equal).
    return_distances: also return the two distance arrays (for a histogram; these are per-record
        statistics of private data: plot them, do not publish them as a table).

    Returns
    -------
    :class:`MemorisationReport` (and ``(d_train, d_heldout)`` if asked). ``flagged`` when the
    fraction of synthetic samples closer to training than to held-out records is significantly
    above one half (p < alpha) or any synthetic sample is an exact copy of a training record.
    """
    s, tr, ho = _features(synthetic, "synthetic"), _features(train, "train"), _features(heldout, "heldout")
    n = min(len(tr), len(ho))
    rng = np.random.default_rng(seed)
    tr = tr[np.sort(rng.choice(len(tr), n, replace=False))] if len(tr) > n else tr
    ho = ho[np.sort(rng.choice(len(ho), n, replace=False))] if len(ho) > n else ho
    d_tr, d_ho = _min_dist_chunks(s, tr), _min_dist_chunks(s, ho)
    closer = (d_tr < d_ho).sum() + 0.5 * (d_tr == d_ho).sum()
    p = stats.binomtest(int(np.floor(closer)), len(s), 0.5, alternative="greater").pvalue
    scale = float(np.median(d_ho)) or 1.0
    # copies against every training record, not only the equal-sized subsample
    copies = int((_min_dist_chunks(s, _features(train, "train")) <= 1e-9 * scale).sum())
    report = MemorisationReport(
        n_synthetic=len(s), n_reference=n, median_to_train=float(np.median(d_tr)),
        median_to_heldout=float(np.median(d_ho)), fraction_closer_to_train=float(closer / len(s)),
        p_value=float(p), exact_copies=copies, flagged=bool(p < alpha or copies > 0))
    return (report, (d_tr, d_ho)) if return_distances else report


FIDELITY_COLUMNS = ["class", "comparison", "n_reference", "n_compared", "fd", "kid_mean", "kid_std",
                    "precision", "recall"]


def _row(cls, comparison, ref, cmp, k, kid_subsets, kid_subset_size, seed) -> dict:
    km, ks = kid(ref, cmp, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    p, r = precision_recall(ref, cmp, k=k)
    return {"class": cls, "comparison": comparison, "n_reference": len(ref), "n_compared": len(cmp),
            "fd": frechet_distance(ref, cmp), "kid_mean": km, "kid_std": ks, "precision": p, "recall": r}


def fidelity_table(real, real_labels, synthetic, synthetic_labels, *, k: int = 3, kid_subsets: int = 50,
                   kid_subset_size: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Real-vs-real and real-vs-synthetic fidelity side by side, per class and over all classes.

    The real set (held-out or public records) is split at random into halves A and B; the
    table compares A with B (the floor a perfect generator would reach at this sample size) and
    A with as many synthetic samples as B holds, so both rows have the same sample sizes.
    Columns: :data:`FIDELITY_COLUMNS`; ``class`` is the label value or ``"all"``.
    """
    real, synthetic = _features(real, "real"), _features(synthetic, "synthetic")
    real_labels, synthetic_labels = np.asarray(real_labels), np.asarray(synthetic_labels)
    if len(real_labels) != len(real) or len(synthetic_labels) != len(synthetic):
        raise ConfigError("fidelity_table: one label per feature vector")
    rng = np.random.default_rng(seed)
    rows = []
    groups = [(str(c), real_labels == c, synthetic_labels == c) for c in np.unique(real_labels)]
    for cls, rm, sm in groups + [("all", np.ones(len(real), bool), np.ones(len(synthetic), bool))]:
        r, s = real[rm][rng.permutation(int(rm.sum()))], synthetic[sm]
        half = len(r) // 2
        a, b = r[:half], r[half:2 * half]
        if half <= k or len(s) <= k:
            raise ConfigError(f"fidelity_table: class {cls}: too few samples ({len(r)} real, {len(s)} synthetic) "
                              f"for k = {k}")
        s = s[rng.choice(len(s), min(len(s), half), replace=False)]
        rows.append(_row(cls, "real-vs-real", a, b, k, kid_subsets, kid_subset_size, seed))
        rows.append(_row(cls, "real-vs-synthetic", a, s, k, kid_subsets, kid_subset_size, seed))
    return pd.DataFrame(rows, columns=FIDELITY_COLUMNS)


def encode_caches(model_path, cache_paths: Sequence, *, device: str = "cpu",
                  batch_size: int = 64) -> tuple[list[str], np.ndarray]:
    """Record ids and frozen-encoder features of every record of ``cache_paths``.

    ``model_path``: a dpmed ``model.pt`` (e.g. the public-pretrained ResNet9: its pooled
    penultimate features) or a local encoder spec; uses
    :func:`dpmed.training.embeddings.extract_embeddings`, so images are scaled exactly as the
    encoder was trained. Nothing is downloaded.
    """
    import h5py

    from dpmed.training.embeddings import extract_embeddings

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "features.h5"
        extract_embeddings(model_path, list(cache_paths), out, device=device, batch_size=batch_size)
        with h5py.File(out, "r") as fh:
            ids = [s.decode() if isinstance(s, bytes) else str(s) for s in fh["record_id"][()]]
            return ids, fh["embedding"][()].astype(np.float64)


def generator_fd_scorer(model_path, reference_caches: Sequence, *, n_per_class: int, seed: int = 0,
                        device: str = "cpu"):
    """A checkpoint scorer: Fréchet distance between a generator's samples and reference patches.

    ``reference_caches`` must hold **public or held-out** patches (never the private training
    records; see :class:`dpmed.generation.gan.CheckpointRule`). Their features are computed
    once; each call samples ``n_per_class`` patches per class (fixed ``seed``, so epochs are
    compared on the same z), encodes them with the same frozen encoder and returns the FD
    (lower is better).
    """
    from dpmed.generation.sampling import generate_patches
    from dpmed.io.cache import CacheWriter

    _, ref = encode_caches(model_path, reference_caches, device=device)

    def score(generator) -> float:
        images, _ = generate_patches(generator, n_per_class, seed=seed, device=device)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "samples.h5"
            attrs = {"dataset": "samples", "split": "samples", "kind": "mammography", "value_range": [0, 255]}
            with CacheWriter(path, len(images), images.shape[1:], np.uint8, attrs) as w:
                for i, img in enumerate(images):
                    w.write(i, f"s{i}", img)
            _, feats = encode_caches(model_path, [path], device=device)
        return frechet_distance(ref, feats)

    return score
