"""Residual flows (App. B): reduction to the plain MLP, the linear residual network in closed form,
marginalization, and clear errors."""

import numpy as np
import pytest
import torch

from dlt_companion import MLP, ensembles, flows, stats
from dlt_companion.flows import residual


@pytest.mark.parametrize("act, C_b, C_W", [("tanh", 0.1, 1.5), ("relu", 0.5, 1.0), ("gelu", 0.5, 1.0)])
def test_xi_one_gamma_zero_is_the_plain_mlp_to_the_last_bit(act, C_b, C_W):
    """Several inputs: the same engine path, bit for bit. One input: the plain flow runs its
    scalar loop (flows.preactivations._flow_one_input), so the two agree to round-off."""
    K1 = np.array([[1.0, 0.3], [0.3, 0.8]])
    for K in (K1, 0.9):
        for widths in (None, [8, 24, 8, 24, 8]):
            a = flows.run(act, C_b, C_W, K, 5, widths=widths)
            b = residual.run(act, C_b, C_W, K, 5, xi=1.0, gamma=0.0, widths=widths)
            for name in ("K", "V", "K_corr"):
                if np.ndim(K) == 2:
                    np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
                else:
                    scale = max(1.0, float(np.max(np.abs(getattr(b, name)))))
                    np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12,
                                               atol=1e-14 * scale, err_msg=name)
            assert not np.any(b.T)


def _linear_residual_exact(K1, n, depth, xi, gamma, C_W=1.0):
    """Exact E[z_i²] and connected E[z_i² z_j²] (i ≠ j) of a linear residual network (C_b = 0).

    Given layer l, q = |z|²/n is multiplied by Y = (γ + c h/√n)² + c² χ²_{n−1}/n (c = ξ√C_W,
    h ~ N(0, 1)), independently of the past; by rotation invariance E[z_i²z_j²] = E[q²] n/(n+2),
    and E[q^{(1)2}] = K1²(1 + 2/n).
    """
    EY, EY2 = 1.0, 1.0
    for _ in range(depth - 1):
        c2 = xi ** 2 * C_W
        EA, EA2 = gamma ** 2 + c2 / n, gamma ** 4 + 6 * gamma ** 2 * c2 / n + 3 * c2 ** 2 / n ** 2
        EB, EB2 = c2 * (n - 1) / n, c2 ** 2 * (n - 1) * (n + 1) / n ** 2
        EY *= EA + EB
        EY2 *= EA2 + 2 * EA * EB + EB2
    return K1 * EY, K1 ** 2 * (EY2 - EY ** 2)


@pytest.mark.parametrize("xi, gamma, C_W", [(0.6, 0.8, 1.0), (0.5, 1.0, 1.3), (1.2, 0.3, 0.7)])
def test_linear_residual_network_matches_its_closed_form(xi, gamma, C_W):
    depth, K1 = 6, 1.3
    f = residual.run("linear", 0.0, C_W, K1, depth, xi=xi, gamma=gamma)
    for l in range(1, depth + 1):
        G, c4 = _linear_residual_exact(K1, 10 ** 7, l, xi, gamma, C_W)
        np.testing.assert_allclose(f.K[l - 1], G, rtol=1e-12)
        np.testing.assert_allclose(f.V[l - 1], 1e7 * c4, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(f.K_corr, 0.0, atol=1e-12)   # E[z²] is exact: no 1/n correction
    np.testing.assert_allclose(f.T, 0.0, atol=1e-12)        # odd σ: no three-point vertex


def test_linear_residual_ensemble_matches_the_closed_form_at_small_width():
    n, depth, xi, gamma = 4, 4, 0.6, 0.8
    net = MLP(3, [n] * depth, "linear", C_W=1.0, xi=xi, gamma=gamma)
    x = np.array([[1.0, -0.5, 0.7]])
    K1 = float(net.first_layer_kernel(x)[0, 0])

    def fn(e):
        z = e.output(x)[:, 0, :]
        s2 = (z ** 2).sum(-1)
        return torch.stack([s2 / n, (s2 ** 2 - (z ** 4).sum(-1)) / (n * (n - 1))], -1)
    per = ensembles.map_networks(fn, net.spec(), 40_000, seed=5)
    G, c4 = _linear_residual_exact(K1, n, depth, xi, gamma)
    est = stats.jackknife(per, lambda m: np.array([m[0], m[1] - m[0] ** 2]))
    stats.assert_agree("linear residual, exact at n = 4", [G, c4], est.value, est.stderr,
                       cov=stats.covariance(per, lambda m: np.array([m[0], m[1] - m[0] ** 2])),
                       quiet=True)
    # the first-order recursion is off at n = 4 (the exact answer is needed here)
    with pytest.raises(AssertionError):
        f = residual.run("linear", 0.0, 1.0, K1, depth, xi=xi, gamma=gamma)
        stats.assert_agree("first order at n = 4", [G, 0.5 * f.V[-1] / n], est.value, est.stderr,
                           quiet=True)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_two_input_residual_flow_restricted_to_one_input_is_the_one_input_flow(act):
    K1 = np.array([[1.2, 0.4], [0.4, 0.7]])
    two = residual.run(act, 0.2, 1.1, K1, 5, xi=0.7, gamma=0.6)
    one = residual.run(act, 0.2, 1.1, 1.2, 5, xi=0.7, gamma=0.6)
    np.testing.assert_allclose(two.K[:, 0, 0], one.K, rtol=1e-12)
    np.testing.assert_allclose(two.V[:, 0, 0, 0, 0], one.V, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(two.T[:, 0, 0, 0], one.T, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(two.K_corr[:, 0, 0], one.K_corr, rtol=1e-8, atol=1e-12)
    # the four-point vertex is symmetric within and between its pairs
    V = two.V[-1]
    np.testing.assert_allclose(V, V.transpose(1, 0, 2, 3), atol=1e-12)
    np.testing.assert_allclose(V, V.transpose(2, 3, 0, 1), atol=1e-12)


def test_one_input_recursion_in_closed_form():
    """V' = ξ⁴S + 4γ²ξ²χK² + (γ² + ξ²χ)² V + 2ξ²(γ² + ξ²χ)·2C_W⟨σσ'⟩T and T' = γ(γ² + ξ²χ)T + γξ²C_W⟨zσ²⟩."""
    K, xi, g = 1.0, 0.6, 0.8
    f = residual.run("relu", 0.0, 2.0, K, 4, xi=xi, gamma=g)
    S, chi, A, Zs = 5.0 * K ** 2, 1.0, np.sqrt(K / (2 * np.pi)), K ** 1.5 * np.sqrt(2 / np.pi)
    V, T = 0.0, 0.0
    for l in range(1, 4):
        P = g ** 2 + xi ** 2 * chi
        V, T = (xi ** 4 * S + 4 * g ** 2 * xi ** 2 * chi * K ** 2 + P ** 2 * V
                + 2 * xi ** 2 * P * 2 * 2.0 * A * T), g * P * T + g * xi ** 2 * 2.0 * Zs
        np.testing.assert_allclose(f.V[l], V, rtol=1e-10)
        np.testing.assert_allclose(f.T[l], T, rtol=1e-10)


def test_mlp_flow_of_a_residual_network_is_the_residual_flow():
    net = MLP(3, [8, 8, 8, 1], "gelu", C_b=0.2, C_W=1.1, xi=0.8, gamma=0.5)
    x = np.array([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5]])
    f = net.flow(x)
    g = residual.run("gelu", 0.2, 1.1, net.first_layer_kernel(x), 4, xi=net.xi, gamma=net.gamma,
                     widths=net.widths)
    np.testing.assert_array_equal(f.V, g.V)
    np.testing.assert_allclose(f.K, net.kernel(x), rtol=1e-12)


def test_residual_susceptibilities_and_effective_aspect_ratio():
    par, perp = residual.susceptibilities("relu", 2.0, 1.0, xi=0.6, gamma=0.8)
    assert par == pytest.approx(1.0) and perp == pytest.approx(1.0)
    r = residual.effective_aspect_ratio("relu", 0.0, 2.0, 1.0, 5, n=16, xi=1.0, gamma=0.0)
    np.testing.assert_allclose(r, np.arange(5) / 16, atol=1e-12)     # plain: V/(5 n K²) = (l−1)/n


def test_bad_input_gets_clear_errors():
    with pytest.raises(ValueError, match="first layer is never residual"):
        residual.run("relu", 0.0, 2.0, 1.0, 3, xi=(0.5, 0.5, 0.5), gamma=(0.0, 0.5, 0.5))
    with pytest.raises(ValueError, match="xi"):
        residual.run("relu", 0.0, 2.0, 1.0, 3, xi=np.nan, gamma=0.5)
    with pytest.raises(ValueError, match="gamma"):
        residual.run("relu", 0.0, 2.0, 1.0, 3, xi=1.0, gamma=(0.0, 0.5))
    with pytest.raises(ValueError, match="skip connection needs"):
        residual.run("relu", 0.0, 2.0, 1.0, 3, xi=0.6, gamma=0.8, widths=[8, 16])
    with pytest.raises(ValueError, match="up to 8 inputs"):
        residual.run("relu", 0.0, 2.0, np.eye(9), 3, xi=0.6, gamma=0.8)
    with pytest.raises(ValueError, match="one input"):
        residual.effective_aspect_ratio("relu", 0.0, 2.0, np.eye(2), 3, n=8)
    with pytest.raises(ValueError):
        residual.effective_aspect_ratio("relu", 0.0, 2.0, 1.0, 3, n=0)
    with pytest.raises(ValueError, match="diverged at layer"):
        residual.run("relu", 0.0, 2.0, 1.0, 2000, xi=1.0, gamma=1.2)
    with pytest.raises(ValueError):
        residual.run("perceptron", 0.0, 2.0, 1.0, 3, xi=0.6, gamma=0.8)
