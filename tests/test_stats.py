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
    assert "✔ demo: 2 points, max |Δ|/σ = 1.0" in capsys.readouterr().out
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
