"""Entropy, mutual information and the optimal aspect ratio (App. A)."""

import numpy as np
import pytest

from dlt_companion import information as info


def test_gaussian_entropy_and_mutual_information_closed_forms():
    assert info.gaussian_entropy(2.0) == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 2.0))
    K = np.array([[1.0, 0.6], [0.6, 2.0]])
    rho2 = 0.36 / 2.0
    assert info.gaussian_mutual_information(K, [0], [1]) == pytest.approx(-0.5 * np.log(1 - rho2))
    assert info.gaussian_mutual_information(K, [0], [1], n=5) == pytest.approx(-2.5 * np.log(1 - rho2))
    assert info.gaussian_entropy(K, n=3) == pytest.approx(1.5 * np.log(np.linalg.det(2 * np.pi * np.e * K)))


def test_negentropy_of_one_variable_is_skew_and_kurtosis_squared():
    K = 2.0
    assert info.negentropy(K, kappa4=[[[[0.4 * K ** 2]]]]) == pytest.approx(0.4 ** 2 / 48)
    assert info.negentropy(K, kappa3=[[[0.3 * K ** 1.5]]]) == pytest.approx(0.3 ** 2 / 12)


def _network_cumulants(d, eps, G=1.3):
    """κ_{iiii} = 3εG², κ_{iijj} = εG² (i ≠ j) for d output neurons of one input."""
    I = np.eye(d)
    k4 = eps * G ** 2 * (np.einsum("ab,cd->abcd", I, I) + np.einsum("ac,bd->abcd", I, I)
                         + np.einsum("ad,bc->abcd", I, I))
    return G * I, k4


@pytest.mark.parametrize("a, b", [(1, 1), (2, 3)])
def test_nearly_gaussian_information_of_output_neurons_is_n_a_n_b_eps2_over_8(a, b):
    eps = 0.03
    K, k4 = _network_cumulants(a + b, eps)
    mi = info.nearly_gaussian_mutual_information(K, list(range(a)), list(range(a, a + b)), kappa4=k4)
    assert mi == pytest.approx(info.neuron_mutual_information(eps, a, b, order=1), rel=1e-12)
    assert mi == pytest.approx(a * b * eps ** 2 / 8, rel=1e-12)
    J = info.negentropy(K[:a, :a], kappa4=k4[:a, :a, :a, :a])
    assert J == pytest.approx(info.neuron_entropy_deficit(eps, a), rel=1e-12)


def _lognormal(s2):
    g = np.arange(-12.0, 12.0, info.GRID_STEP)
    return g, np.exp(-0.5 * g ** 2 / s2)


@pytest.mark.parametrize("a, b", [(1, 1), (1, 3), (4, 4)])
def test_exact_lognormal_mixture_information_matches_the_series_to_order_eps3(a, b):
    errs = []
    for s2 in (0.01, 0.02):
        exact = info.scale_mixture_information(log_density=_lognormal(s2), n_A=a, n_B=b)
        eps = np.exp(s2) - 1.0
        assert exact.eps == pytest.approx(eps, rel=1e-6)
        series = info.neuron_mutual_information(eps, a, b)
        errs.append(abs(exact.mutual_information - series) / exact.mutual_information)
        assert errs[-1] < 0.2 * (20 + 3 * (a + b)) * eps / 6        # far below the ε³ term
    assert errs[1] / errs[0] == pytest.approx(4.0, rel=0.25)        # the remainder is O(ε⁴): ×4


def test_constant_metric_has_no_information_and_is_gaussian():
    r = info.scale_mixture_information(np.full(100, 2.0), n_A=2, n_B=1)
    assert abs(r.mutual_information) < 1e-10 and abs(r.negentropy) < 1e-6 and r.eps == 0.0


def test_critical_relu_metric_law_has_the_exact_variance():
    for n, l in [(8, 2), (16, 5)]:
        grid, p = info.critical_relu_log_metric(n, l)
        h = grid[1] - grid[0]
        EG, EG2 = np.sum(p * np.exp(grid)) * h, np.sum(p * np.exp(2 * grid)) * h
        keep = 1 - 2.0 ** -n                                # the atom N = 0 is left out
        np.testing.assert_allclose(EG, keep ** -(l - 1), rtol=1e-6)
        np.testing.assert_allclose(EG2 / EG ** 2 - 1, ((1 + 5 / n) * keep) ** (l - 1) - 1, rtol=1e-4)


def test_optimal_aspect_ratio_for_relu_and_tanh():
    assert info.nu("relu") == 5.0 and info.nu("tanh") == pytest.approx(2 / 3)
    assert info.optimal_epsilon(2) == pytest.approx(4 / 26)
    assert info.optimal_aspect_ratio("relu", n_L=2) == pytest.approx(4 / 26 / 5)
    assert info.optimal_aspect_ratio("tanh", n_L=4) == pytest.approx(4 / 32 * 1.5)
    eps = np.linspace(0.001, 0.5, 4000)
    assert eps[np.argmax(info.neuron_mutual_information(eps, 1, 1))] == pytest.approx(4 / 26, abs=2e-4)


def test_knn_estimate_of_independent_variables_is_zero_within_its_error():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 4000))
    est = info.knn_mutual_information(a, b, n_blocks=5)
    assert abs(est.value) < 4 * est.stderr + 0.01


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="positive definite"):
        info.gaussian_entropy([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="disjoint"):
        info.gaussian_mutual_information(np.eye(3), [0, 1], [1])
    with pytest.raises(ValueError, match="shape"):
        info.negentropy(np.eye(2), kappa4=np.zeros((3, 3, 3, 3)))
    with pytest.raises(ValueError, match="eps"):
        info.neuron_mutual_information(-0.1)
    with pytest.raises(ValueError, match="order"):
        info.neuron_mutual_information(0.1, order=3)
    with pytest.raises(ValueError, match="n_L"):
        info.optimal_epsilon(1)
    with pytest.raises(ValueError, match="exactly one"):
        info.optimal_aspect_ratio()
    with pytest.raises(ValueError, match="class"):
        info.nu("sigmoid")
    with pytest.raises(ValueError, match="exactly one"):
        info.scale_mixture_information()
    with pytest.raises(ValueError, match="> 0"):
        info.scale_mixture_information(np.array([1.0, -1.0]))
    with pytest.raises(ValueError):
        info.knn_mutual_information(np.zeros(10), np.zeros(10))


def test_mixture_information_estimate_errors_match_replica_spread():
    vals, errs = [], []
    for s in range(12):
        rng = np.random.default_rng(s)
        G = np.exp(0.4 * rng.standard_normal((3000, 2)))
        est, cov = info.mixture_information_estimate(G)
        assert cov.shape == (2, 2) and np.all(np.linalg.eigvalsh(cov) > 0)
        vals.append(est.value[0])
        errs.append(est.stderr[0])
    assert np.std(vals, ddof=1) == pytest.approx(np.mean(errs), rel=0.5)
    exact = info.scale_mixture_information(log_density=_lognormal(0.16)).mutual_information
    assert abs(np.mean(vals) - exact) < 4 * np.std(vals, ddof=1) / np.sqrt(len(vals))


def test_stochastic_metric_of_a_critical_relu_ensemble_has_the_exact_variance():
    import dlt_companion as dlt
    from dlt_companion import ensembles, stats

    net = dlt.MLP(3, [8, 8, 8], "relu", C_W=2.0)
    x = np.array([[1.0, -1.0, 0.5]])
    G = ensembles.map_networks(lambda e: info.stochastic_metric(e, x), net.spec(), 20_000, seed=1)
    K = net.first_layer_kernel(x)[0, 0]
    mom = np.stack([G, G ** 2], -1)
    est = stats.jackknife(mom, lambda m: np.concatenate([m[..., 0], m[..., 1] / m[..., 0] ** 2 - 1]))
    theory = np.concatenate([[K, K], [(1 + 5 / 8) ** l - 1 for l in (1, 2)]])
    stats.assert_agree("stochastic metric: mean K and eps = (1+5/n)^(l-1) - 1", theory, est.value,
                       est.stderr, quiet=True)
    with pytest.raises(ValueError, match="one input"):
        ensembles.map_networks(lambda e: info.stochastic_metric(e, np.ones((2, 3))), net.spec(), 4)


def test_entropy_estimate_of_gaussian_samples():
    rng = np.random.default_rng(3)
    est = info.entropy_estimate(2.0 * rng.standard_normal(20_000))
    assert abs(est.value - 0.5 * np.log(2 * np.pi * np.e * 4.0)) < 4 * est.stderr
    with pytest.raises(ValueError):
        info.entropy_estimate(np.ones(10))
