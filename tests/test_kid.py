"""Tests for KID: the unbiased cubic-kernel MMD^2, its subset average, and its place in the evaluator report."""

import re

import numpy as np
import pytest

from evaluations import evaluator
from evaluations.metrics import FeatureStats, kid, mmd2_unbiased
from tests.test_evaluations import _images, _write_adm_npz, adm_batches, small_net  # noqa: F401 (fixtures)


def _gaussian(rng, n, d=8, shift=0.0, scale=1.0):
    return rng.normal(size=(n, d)) * scale + shift


def _mmd2_by_loops(x, y):
    """The textbook definition, one kernel value at a time, as the reference for the matrix form."""
    d = x.shape[1]

    def k(a, b):
        return (float(np.dot(a, b)) / d + 1) ** 3

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


def test_mmd2_unbiased_matches_the_double_loop_definition():
    rng = np.random.default_rng(0)
    x, y = _gaussian(rng, 7, d=5), _gaussian(rng, 9, d=5, shift=0.3, scale=1.5)
    expected = _mmd2_by_loops(x, y)
    assert abs(expected) > 0.1  # a value that a wrong kernel or normalisation cannot hit by accident
    assert mmd2_unbiased(x, y) == pytest.approx(expected, abs=1e-10)
    assert mmd2_unbiased(x.astype(np.float32), y.astype(np.float32)) == pytest.approx(
        _mmd2_by_loops(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)), abs=1e-10)


def test_kid_over_whole_sets_is_the_full_estimate():
    rng = np.random.default_rng(1)
    x, y = _gaussian(rng, 7, d=5), _gaussian(rng, 7, d=5, shift=0.5)
    full = mmd2_unbiased(x, y)
    assert kid(x, y, num_subsets=1, subset_size=1000) == (pytest.approx(full, abs=1e-12), 0.0)
    # Drawn without replacement, a whole-set subset is a permutation of each set, so no subset differs.
    mean, std = kid(x, y, num_subsets=5, subset_size=7)
    assert mean == pytest.approx(full, abs=1e-12) and std < 1e-12
    # subset_size clips to the smaller set: against 9 rows, y loses 2 rows per subset and the subsets vary.
    longer = np.concatenate([y, _gaussian(rng, 2, d=5, shift=0.5)])
    mean, std = kid(x, longer, num_subsets=20, subset_size=1000)
    assert std > 0 and mean != pytest.approx(mmd2_unbiased(x, longer), abs=1e-6)


def test_kid_is_the_seeded_subset_mean_and_population_std():
    rng = np.random.default_rng(2)
    x, y = _gaussian(rng, 12), _gaussian(rng, 10, shift=0.4)
    draws = np.random.default_rng(3)
    values = []
    for _ in range(6):
        rows_x = draws.choice(12, 4, replace=False)
        values.append(mmd2_unbiased(x[rows_x], y[draws.choice(10, 4, replace=False)]))
    mean, std = kid(x, y, num_subsets=6, subset_size=4, seed=3)
    assert isinstance(mean, float) and isinstance(std, float)
    assert mean == pytest.approx(np.mean(values), abs=1e-12)
    assert std == pytest.approx(np.std(values, ddof=0), abs=1e-12)  # ddof 0, as torch-fidelity reports


def test_mmd2_is_unbiased_and_detects_a_mean_shift():
    rng = np.random.default_rng(0)
    same = np.array([mmd2_unbiased(_gaussian(rng, 50), _gaussian(rng, 60)) for _ in range(40)])
    shifted = np.array([mmd2_unbiased(_gaussian(rng, 50), _gaussian(rng, 60, shift=0.5)) for _ in range(40)])
    # Measured: same -0.0066 +- 0.0117 (0.6 standard errors from 0; seeds 0-4 all within 1.4), shifted 1.15 +- 0.057
    # (20 standard errors). Keeping the diagonal (the biased V-statistic) gives 0.29 +- 0.012 for the same pairs.
    assert abs(same.mean()) < 3 * same.std(ddof=1) / np.sqrt(len(same))
    assert shifted.mean() > 10 * shifted.std(ddof=1) / np.sqrt(len(shifted))
    assert shifted.mean() > 0.5


def test_kid_symmetry_and_seeding():
    rng = np.random.default_rng(4)
    a, b = _gaussian(rng, 30), _gaussian(rng, 30, shift=0.2, scale=2.0)
    assert mmd2_unbiased(a, b) == pytest.approx(mmd2_unbiased(b, a), rel=1e-12)
    whole_ab, whole_ba = kid(a, b, num_subsets=3, subset_size=30), kid(b, a, num_subsets=3, subset_size=30)
    assert whole_ab[0] == pytest.approx(whole_ba[0], rel=1e-12)
    assert kid(a, b, num_subsets=10, subset_size=8, seed=5) == kid(a, b, num_subsets=10, subset_size=8, seed=5)
    assert kid(a, b, num_subsets=10, subset_size=8, seed=5) != kid(a, b, num_subsets=10, subset_size=8, seed=6)


def test_kid_rejects_bad_inputs():
    rng = np.random.default_rng(5)
    x = _gaussian(rng, 6)
    with pytest.raises(ValueError, match=r"KID needs at least 2 samples per set .* got 6 and 1"):
        kid(x, x[:1])
    with pytest.raises(ValueError, match=r"KID needs at least 2 samples per set .* got 1 and 6"):
        mmd2_unbiased(x[:1], x)
    with pytest.raises(ValueError, match=r"features must be \(N, D\) arrays of equal D, got \(6, 8\) and \(6, 7\)"):
        kid(x, x[:, :7])
    with pytest.raises(ValueError, match=r"features must be \(N, D\) arrays of equal D, got \(6,\) and \(6, 8\)"):
        mmd2_unbiased(x[:, 0], x)
    with pytest.raises(ValueError, match="KID needs num_subsets >= 1 and subset_size >= 2, got 0 and 1000"):
        kid(x, x, num_subsets=0)
    with pytest.raises(ValueError, match="KID needs num_subsets >= 1 and subset_size >= 2, got 100 and 1"):
        kid(x, x, subset_size=1)


def test_evaluator_reports_kid_of_the_pool_features(adm_batches, small_net):  # noqa: F811 (fixtures)
    # 12 reference images against 8 samples: subsets of 8 leave out different reference rows each time, so the
    # value depends on the argument order and the seed, and a mismatch with metrics.kid would show.
    _write_adm_npz(adm_batches / "eight.npz", _images(8, 11))
    result = evaluator.evaluate(adm_batches / "ref.npz", adm_batches / "eight.npz")
    ref_pool = small_net(np.load(adm_batches / "ref.npz")["arr_0"])["pool"].numpy()
    sample_pool = small_net(_images(8, 11))["pool"].numpy()
    expected = kid(ref_pool, sample_pool)
    assert result["kid"] == pytest.approx(expected[0], rel=1e-6)
    assert result["kid_std"] == pytest.approx(expected[1], rel=1e-6)
    assert result["kid_std"] > 0 and kid(sample_pool, ref_pool)[0] != pytest.approx(expected[0], rel=1e-6)
    report = evaluator.format_report(result)
    assert re.search(rf"^  KID +{result['kid']:.6g} \+- {result['kid_std']:.6g}$", report, re.M), report

    pool = FeatureStats.from_features(sample_pool)
    spatial = FeatureStats.from_features(small_net(_images(8, 11))["spatial"])
    np.savez(adm_batches / "stats_only.npz", mu=pool.mu, sigma=pool.sigma, mu_s=spatial.mu, sigma_s=spatial.sigma)
    stats_only = evaluator.evaluate(adm_batches / "stats_only.npz", adm_batches / "eight.npz")
    assert stats_only["kid"] is None and stats_only["kid_std"] is None
    assert re.search(r"^  KID +n/a$", evaluator.format_report(stats_only), re.M)
