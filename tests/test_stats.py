"""Estimators with error bars: calibrated on Gaussian samples, and the agreement assertion.

Calibration uses synthetic Gaussian "preactivations" with a known covariance: this
tests the *estimators* (bias and standard errors), not any theory of networks.
"""

import numpy as np
import pytest

from dlt_companion import stats

R = 300  # replicas for calibration


def _replicas(M=200, B=2, n=8, seed=0):
    rng = np.random.default_rng(seed)
    K = np.array([[1.0, 0.4], [0.4, 2.0]])[:B, :B]
    L = np.linalg.cholesky(K)
    z = rng.normal(size=(R, M, n, B)) @ L.T            # [R, M, n, B]
    return np.swapaxes(z, 2, 3), K                     # [R, M, B, n]


def _calibrated(estimates, errors, truth, rel=0.12):
    estimates, errors = np.asarray(estimates), np.asarray(errors)
    spread = estimates.std(axis=0, ddof=1)
    np.testing.assert_allclose(errors.mean(axis=0), spread, rtol=rel)         # SE right to ~10%
    bias = np.abs(estimates.mean(axis=0) - truth)
    assert np.all(bias < 4 * spread / np.sqrt(len(estimates)))               # unbiased within noise


def test_kernel_estimate_and_standard_error_are_calibrated():
    z, K = _replicas()
    out = [stats.kernel(zr) for zr in z]
    _calibrated([o[0] for o in out], [o[1] for o in out], K)


@pytest.mark.parametrize("neurons", ["same", "different"])
def test_four_point_is_zero_for_gaussians_with_calibrated_errors(neurons):
    z, K = _replicas(M=150, seed=1)
    out = [stats.four_point(zr, inputs=(0, 1, 0, 1), neurons=neurons) for zr in z]
    _calibrated([o[0] for o in out], [o[1] for o in out], 0.0, rel=0.15)


def test_four_point_detects_a_known_connected_correlator():
    """Scale-mixture of Gaussians: z = s·g with E[s²]=1, Var(s²)=v gives E[z⁴]c = 3v (same neuron)."""
    rng = np.random.default_rng(2)
    M, n, v = 8000, 4, 0.25
    s2 = rng.gamma(shape=1 / v, scale=v, size=(M, 1, 1))     # mean 1, variance v, shared per network
    z = np.sqrt(s2) * rng.normal(size=(M, 1, n))
    same, se_same = stats.four_point(z, neurons="same")
    diff, se_diff = stats.four_point(z, neurons="different")
    stats.assert_agree("same", 3 * v, same, se_same, quiet=True)
    stats.assert_agree("different", v, diff, se_diff, quiet=True)
    with pytest.raises(AssertionError):
        stats.assert_agree("factor 2 off", 2 * v, diff, se_diff, quiet=True)


def test_excess_kurtosis_and_relative_variance_are_calibrated():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(R, 300, 1, 6))
    k = [stats.excess_kurtosis(zr) for zr in z]
    _calibrated([a for a, _ in k], [b for _, b in k], 0.0, rel=0.15)
    G = (z[:, :, 0, :] ** 2).mean(axis=-1)                   # per-network chi²_6 / 6
    rv = [stats.relative_variance(g) for g in G]
    _calibrated([a for a, _ in rv], [b for _, b in rv], 2.0 / 6, rel=0.15)


def test_moments_interface_matches_direct_kurtosis():
    rng = np.random.default_rng(4)
    z = rng.normal(size=(50, 2, 5))
    direct = stats.excess_kurtosis(z, input_index=1)
    via = stats.excess_kurtosis(moments=stats.neuron_moments(z, input_index=1)[:, 0])
    np.testing.assert_allclose(direct, via)


def test_mean_standard_error():
    x = np.arange(10.0)
    m, se = stats.mean(x)
    assert m == 4.5 and se == pytest.approx(np.std(x, ddof=1) / np.sqrt(10))


def test_assert_agree_prints_on_success_and_raises_on_failure(capsys):
    z = stats.assert_agree("demo", [1.0, 2.0], [1.1, 1.9], [0.1, 0.1])
    out = capsys.readouterr().out
    assert "✔ demo: 2 points, max |Δ|/σ = 1.0, χ²/N = 1.00" in out and "p = 0.37" in out
    np.testing.assert_allclose(z, [1.0, -1.0])
    with pytest.raises(AssertionError, match="✘ demo"):
        stats.assert_agree("demo", [1.0], [2.0], [0.1])
    with pytest.raises(ValueError, match="positive error bar"):
        stats.assert_agree("demo", [1.0], [1.0], [0.0])


@pytest.mark.parametrize("call,match", [
    (lambda: stats.kernel(np.ones((1, 2, 3))), "at least 2 networks"),
    (lambda: stats.kernel(np.ones((3, 2, 3, 4))), r"\[M, B, n\]"),
    (lambda: stats.four_point(np.ones((3, 2, 1)), neurons="different"), "at least 2 neurons"),
    (lambda: stats.four_point(np.ones((3, 2, 4)), inputs=(0, 1, 2, 0)), "4 indices"),
    (lambda: stats.four_point(np.ones((3, 2, 4)), neurons="all"), "'same' or 'different'"),
    (lambda: stats.excess_kurtosis(), "exactly one"),
])
def test_bad_inputs_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("where", ["theory", "value", "stderr", "theory_err", "tol"])
def test_assert_agree_fails_on_nan_anywhere(where):
    args = dict(theory=[1.0, 2.0], value=[1.0, 2.0], stderr=[0.1, 0.1], theory_err=0.0, tol=4.0)
    args[where] = np.nan if where in ("theory_err", "tol") else [1.0, np.nan]
    with pytest.raises(ValueError, match="finite"):
        stats.assert_agree("nan", **args)


def test_assert_agree_fails_on_infinite_error_bar_that_would_hide_a_miss():
    with pytest.raises(ValueError, match="finite"):
        stats.assert_agree("inf", [1.0], [100.0], [np.inf])


def test_assert_agree_fails_on_empty_input():
    with pytest.raises(ValueError, match="no points|nothing to compare"):
        stats.assert_agree("empty", [], [], [])


def test_assert_agree_rejects_a_consistent_2_sigma_offset_over_many_points():
    """No point exceeds 4σ, but 50 points all 2σ high give χ²/N = 4: p ≈ 1e-20."""
    n = 50
    theory = np.zeros(n)
    with pytest.raises(AssertionError, match="systematic"):
        stats.assert_agree("offset", theory, np.full(n, 0.2), np.full(n, 0.1))


def test_assert_agree_accepts_honest_gaussian_scatter():
    """1000 replicas of 40 unit-Gaussian points: the χ² criterion fails about 1 in 1000."""
    rng = np.random.default_rng(7)
    fails = 0
    for _ in range(1000):
        try:
            stats.assert_agree("noise", 0.0, rng.normal(size=40), 1.0, quiet=True, tol=1e9)
        except AssertionError:
            fails += 1
        except ValueError:
            raise
    assert fails <= 6


def test_chi2_pvalue_matches_the_survival_function():
    from scipy import stats as sps
    z = np.array([1.0, -2.0, 0.5])
    assert stats.chi2_pvalue(z) == pytest.approx(sps.chi2.sf(5.25, 3))


@pytest.mark.parametrize("n_blocks", [0, 1, -3, 2.5, True])
def test_jackknife_needs_at_least_two_blocks(n_blocks):
    with pytest.raises(ValueError, match="n_blocks"):
        stats.jackknife(np.arange(10.0), lambda m: m, n_blocks=n_blocks)


def test_jackknife_of_the_mean_is_the_standard_error():
    """For a linear estimator the delete-one jackknife equals the textbook standard error."""
    x = np.random.default_rng(1).normal(size=37)
    value, se = stats.jackknife(x, lambda m: m, n_blocks=37)
    assert value == pytest.approx(x.mean())
    assert se == pytest.approx(x.std(ddof=1) / np.sqrt(37), rel=1e-12)


def test_estimates_are_typed_and_unpack_like_tuples():
    est = stats.mean(np.arange(4.0))
    assert isinstance(est, stats.Estimate)
    value, se = est
    assert value == est.value and se == est.stderr
    assert est.replace(value=0.0).value == 0.0


def test_covariance_of_the_mean_matches_the_standard_error_and_catches_correlation():
    rng = np.random.default_rng(5)
    common = rng.normal(size=(4000, 1))
    x = common + 0.3 * rng.normal(size=(4000, 5))            # five strongly correlated "layers"
    C = stats.covariance(x)
    np.testing.assert_allclose(np.sqrt(np.diag(C)), stats.mean(x).stderr, rtol=1e-12)
    corr = C[0, 1] / np.sqrt(C[0, 0] * C[1, 1])
    assert corr == pytest.approx(1 / 1.09, abs=0.02)
    est = stats.jackknife(x, lambda m: m ** 2)
    Cj = stats.covariance(x, lambda m: m ** 2)
    np.testing.assert_allclose(np.sqrt(np.diag(Cj)), est.stderr, rtol=1e-12)


def test_correlated_chi2_accepts_a_common_fluctuation_and_rejects_a_real_offset():
    """Five correlated points that all sit 2.5σ high because the ensemble drew a high common
    mode are a 1-σ event for the correlated χ²; a true offset in one direction the common
    mode cannot explain is rejected."""
    sigma = 0.1
    rho = 0.95
    C = sigma ** 2 * (rho * np.ones((5, 5)) + (1 - rho) * np.eye(5))
    value = np.full(5, 2.5 * sigma)
    with pytest.raises(AssertionError, match="systematic"):
        stats.assert_agree("independent", 0.0, value, sigma)
    stats.assert_agree("correlated", 0.0, value, sigma, cov=C, quiet=True)
    zigzag = 2.5 * sigma * np.array([1, -1, 1, -1, 1])
    with pytest.raises(AssertionError):
        stats.assert_agree("zigzag", 0.0, zigzag, sigma, cov=C, quiet=True)
    with pytest.raises(ValueError, match=r"\[N, N\]"):
        stats.assert_agree("shape", 0.0, value, sigma, cov=np.eye(4))


def test_assert_rejects_uses_the_same_rule_as_assert_agree(capsys):
    z = stats.assert_rejects("offset of 2 sigma on 20 points", np.zeros(20), np.full(20, 2.0), np.ones(20))
    assert np.allclose(z, 2.0) and "rejected" in capsys.readouterr().out      # χ² p ~ 1e-16
    stats.assert_rejects("one outlier", np.zeros(3), [0.0, 0.0, 5.0], np.ones(3))
    with pytest.raises(AssertionError, match="no power"):
        stats.assert_rejects("consistent", np.zeros(3), [0.5, -0.5, 1.0], np.ones(3))
    with pytest.raises(ValueError):
        stats.assert_rejects("nan", [np.nan], [1.0], [1.0])


def test_jackknife_covariance_of_many_points_does_not_inflate_the_chi2():
    """With a few hundred blocks, Δᵀ Ĉ⁻¹ Δ over 64 points averages 1.48 N (Hotelling), and a
    right theory fails the p-value criterion; the default block count keeps it near N."""
    rng = np.random.default_rng(0)
    N, M = 64, 20_000
    mix = np.eye(N) + 0.3 * np.tri(N, k=-1) / np.sqrt(N)          # correlated points
    chi2, chi2_200 = [], []
    for _ in range(12):
        x = rng.standard_normal((M, N)) @ mix.T
        value = x.mean(0)                                             # the theory (0) is right
        for out, blocks in ((chi2, None), (chi2_200, 200)):
            C = stats.covariance(x, lambda a: a, n_blocks=blocks)     # the estimator path
            out.append(value @ np.linalg.solve(C, value) / N)
    assert np.mean(chi2) < 1.12, np.mean(chi2)
    assert np.mean(chi2_200) > 1.3, np.mean(chi2_200)                # the old default: ≈ 1.48
