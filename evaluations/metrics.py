"""Metric maths on feature arrays: Frechet distance, KID, Inception Score, k-NN precision/recall, feature statistics.

Everything here is network-agnostic. `monitor_fd` is the cheap training-time signal: the Frechet distance in the
feature space of ANY callable (e.g. the project's frozen discriminator backbones). It is reported as
`fd_<name>` and is not comparable to FID; only the Inception features of `evaluations.inception` give FID.
"""

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

STATS_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


def _check_stats(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    return mu1, sigma1, mu2, sigma2


def _psd_factor(sigma):
    """A with A A^T = sigma: the Cholesky factor when sigma is positive definite (fast), else V sqrt(L)."""
    try:
        return scipy.linalg.cholesky(sigma, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        eigenvalues, eigenvectors = scipy.linalg.eigh(sigma, driver="evd", check_finite=False)
        return eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2)), without a general matrix square root.

    With s1 = A A^T, the product s1 s2 = A (A^T s2) has the eigenvalues of the symmetric PSD matrix A^T s2 A, so
    tr(sqrtm(s1 s2)) is the sum of the square roots of those: a Cholesky (or, for singular s1, one symmetric
    eigendecomposition) and one symmetric eigenvalue solve, in float64, instead of scipy's Schur-based sqrtm of a
    non-symmetric 2048 x 2048 product. Eigenvalues below the round-off floor count as zero, so rank-deficient
    covariances (fewer samples than dimensions) give exact zeros, not sqrt(noise). (scipy's LAPACK, not
    torch.linalg: its symmetric eigensolver is the faster one on CPU.)
    """
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    factor = _psd_factor(sigma1)
    product = factor.T @ sigma2 @ factor
    eigenvalues = scipy.linalg.eigh((product + product.T) / 2, eigvals_only=True, driver="evd", check_finite=False)
    floor = np.abs(eigenvalues).max() * len(eigenvalues) * np.finfo(eigenvalues.dtype).eps
    tr_covmean = np.sqrt(np.where(eigenvalues > floor, eigenvalues, 0)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The TTUR / ADM formula with scipy.linalg.sqrtm; the reference the eigenvalue form is tested against."""
    mu1, sigma1, mu2, sigma2 = _check_stats(mu1, sigma1, mu2, sigma2)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real)


def inception_score(logits, splits=10, *, split_size=None):
    """exp(E_x KL(p(y|x) || p(y))), averaged over splits; softmax over every logit column.

    `splits` cuts the set into that many near-equal parts. `split_size` instead cuts consecutive chunks of that
    size (the last may be shorter), which is what the ADM evaluator does with 5000; for 50k images both are the
    paper's 10 splits of 5k.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be a non-empty (N, classes) array, got shape {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits, dim=1)
    if split_size is not None:
        parts = torch.split(log_p, split_size)
    else:
        if not 1 <= splits <= len(logits):
            raise ValueError(f"splits must be between 1 and the number of samples ({len(logits)}), got {splits}")
        parts = torch.tensor_split(log_p, splits)
    scores = []
    for part in parts:
        log_marginal = torch.logsumexp(part, dim=0) - math.log(len(part))
        kl = (part.exp() * (part - log_marginal)).sum(dim=1).mean()
        scores.append(math.exp(kl.item()))
    return float(np.mean(scores))


def _squared_distances(u, v):
    # The |u|^2 - 2uv + |v|^2 expansion, as in the reference implementation; clamped against round-off.
    return (u.square().sum(1, keepdim=True) - 2 * u @ v.T + v.square().sum(1)[None]).clamp_(min=0)


def manifold_radii(features, *, k=3, batch=1000):
    """Squared distance of every point to its k-th nearest neighbour in the same set (itself excluded)."""
    if len(features) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(features)}")
    radii = [torch.kthvalue(_squared_distances(rows, features), k + 1, dim=1).values
             for rows in torch.split(features, batch)]
    return torch.cat(radii)


def _fraction_inside(points, centres, radii, batch):
    inside = [(_squared_distances(rows, centres) <= radii[None]).any(dim=1) for rows in torch.split(points, batch)]
    return torch.cat(inside).double().mean().item()


def precision_recall(real_feats, fake_feats, *, k=3, batch=1000, device="cpu"):
    """Improved precision and recall (Kynkaanniemi et al. 2019) with k-NN hyperspheres, as in the ADM evaluator.

    precision: fraction of fake samples inside the real manifold (the union of balls reaching each real point's
    k-th neighbour); recall: fraction of real samples inside the fake manifold. Distances are computed in float32
    in row chunks of `batch` (ADM uses float16 blocks; the difference is round-off at the ball boundaries).
    """
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float32, device=device)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) arrays of equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real_radii = manifold_radii(real, k=k, batch=batch)
    fake_radii = manifold_radii(fake, k=k, batch=batch)
    precision = _fraction_inside(fake, real, real_radii, batch)
    recall = _fraction_inside(real, fake, fake_radii, batch)
    return precision, recall


def _feature_pair(x, y):
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, D) arrays of equal D, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"KID needs at least 2 samples per set (the unbiased estimate drops the diagonal), "
                         f"got {len(x)} and {len(y)}")
    return x, y


def _cubic_kernel(a, b):
    # (a.b / d + 1)^3: Binkowski et al. 2018's choice, kept so values compare with torch-fidelity and clean-fid.
    return (a @ b.T / a.shape[1] + 1) ** 3


def mmd2_unbiased(x, y):
    """Unbiased MMD^2 between feature sets (n, d) and (m, d) under the cubic polynomial kernel, in float64.

    The within-set means leave out the diagonal k(a, a), which is what removes the bias: the expectation is
    exactly 0 when both sets come from the same distribution, so single estimates can be slightly negative.
    """
    x, y = _feature_pair(x, y)
    n, m = len(x), len(y)
    k_xx, k_yy = _cubic_kernel(x, x), _cubic_kernel(y, y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * _cubic_kernel(x, y).mean())


def kid(real_feats, fake_feats, *, num_subsets=100, subset_size=1000, seed=0):
    """Kernel Inception Distance (Binkowski et al. 2018) as (mean, std) of mmd2_unbiased over random subsets.

    torch-fidelity / clean-fid convention: subset_size is clipped to the smaller set, each subset draws rows
    without replacement from each side, and std is the population std (ddof 0), as torch-fidelity reports it.
    Subsets bound the O(n^2) kernel cost; a numpy Generator seeded by `seed` makes the value reproducible.
    """
    real, fake = _feature_pair(real_feats, fake_feats)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    size = min(len(real), len(fake), subset_size)
    rng = np.random.default_rng(seed)

    def draw(features):
        return features[torch.from_numpy(rng.choice(len(features), size, replace=False))]

    values = [mmd2_unbiased(draw(real), draw(fake)) for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


@dataclass
class FeatureStats:
    """Mean and covariance (ddof 1, like np.cov) of a feature set, in float64."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def from_features(cls, features):
        x = torch.as_tensor(np.asarray(features)).double()
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need an (N >= 2, D) feature array for a covariance, got shape {tuple(x.shape)}")
        mu = x.mean(0)
        centred = x - mu
        sigma = centred.T @ centred / (len(x) - 1)
        return cls(mu.cpu().numpy(), sigma.cpu().numpy())

    def frechet_distance(self, other):
        return frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


def save_reference_stats(path, pool, spatial, **arrays):
    """Write ADM reference-batch statistics (`mu, sigma, mu_s, sigma_s`) plus any extra arrays to an npz."""
    np.savez(path, mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma, **arrays)


def load_reference_stats(path_or_npz):
    """(pool, spatial) FeatureStats from an ADM-format npz, or None when it carries no precomputed statistics."""
    npz = np.load(path_or_npz) if not hasattr(path_or_npz, "files") else path_or_npz
    if "mu" not in npz.files:
        return None
    missing = [key for key in STATS_KEYS if key not in npz.files]
    if missing:
        raise ValueError(f"reference statistics are incomplete: has 'mu' but lacks {missing}")
    return FeatureStats(npz["mu"], npz["sigma"]), FeatureStats(npz["mu_s"], npz["sigma_s"])


@torch.no_grad()
def _features(images, feature_fn, batch):
    chunks = [torch.as_tensor(feature_fn(chunk)).flatten(1).double().cpu() for chunk in torch.split(images, batch)]
    return torch.cat(chunks)


def monitor_fd(real_images, fake_images, feature_fn, *, name, batch=64):
    """Training-time Frechet distance in the feature space of `feature_fn` (images -> (N, ...) features).

    `real_images` may be a precomputed FeatureStats (compute it once per run with `feature_stats`). Returns
    {f"fd_{name}": value}. With few samples the covariances are rank-deficient; the value is then biased upwards
    but still tracks training, which is all it is for.
    """
    if not name or not str(name).isidentifier():
        raise ValueError(f"name must be a short identifier such as 'dinov2', got {name!r}")
    real = real_images if isinstance(real_images, FeatureStats) else feature_stats(real_images, feature_fn, batch=batch)
    fake = feature_stats(fake_images, feature_fn, batch=batch)
    return {f"fd_{name}": real.frechet_distance(fake)}


def feature_stats(images, feature_fn, *, batch=64):
    """FeatureStats of `feature_fn` over a tensor of images, evaluated in chunks without gradients."""
    return FeatureStats.from_features(_features(torch.as_tensor(images), feature_fn, batch))
