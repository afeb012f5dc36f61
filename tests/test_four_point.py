"""Four-point vertex V^{(l)} (flows.four_point / flows.run): closed forms, structure, real networks."""

import time

import numpy as np
import pytest
import torch

from dlt_companion import ensembles, flows, stats


def test_deep_linear_vertex_is_2_l_minus_1_K_squared():
    K = 1.7
    V = flows.four_point("linear", 0.0, 1.0, K, 8)
    np.testing.assert_allclose(V, 2.0 * np.arange(8) * K ** 2, rtol=1e-12, atol=1e-12)


def test_deep_linear_vertex_matches_exact_finite_width_moment_at_leading_order():
    # exact: E[z^4] = 3K²(1+2/n)^{l-1}; connected part = 3K²[(1+2/n)^{l-1} − 1] → 3V/n as n → ∞
    K, L, n = 1.0, 6, 1e6
    V = flows.four_point("linear", 0.0, 1.0, K, L)
    exact = 3 * K ** 2 * ((1 + 2 / n) ** np.arange(L) - 1)
    np.testing.assert_allclose(3 * V / n, exact, rtol=1e-4, atol=1e-16)


def test_relu_critical_vertex_is_5_l_minus_1_K_squared():
    V = flows.four_point("relu", 0.0, 2.0, 0.8, 10)
    np.testing.assert_allclose(V, 5.0 * np.arange(10) * 0.8 ** 2, rtol=1e-12, atol=1e-12)


def test_width_ratios_enter_the_propagation_term():
    # linear: V^{(l+1)} = 2K² + (n_l/n_{l-1}) V^{(l)}
    widths = [4, 8, 2, 6]
    V = flows.four_point("linear", 0.0, 1.0, 1.0, 5, widths=widths)
    expected = [0.0]
    for l in range(1, 5):
        r = widths[l - 1] / widths[l - 2] if l >= 2 else 1.0
        expected.append(2.0 + r * expected[-1])
    np.testing.assert_allclose(V, expected, rtol=1e-12)
    # equal widths give ratio 1
    np.testing.assert_allclose(flows.four_point("tanh", 0.1, 1.5, 1.0, 5, widths=[7] * 5),
                               flows.four_point("tanh", 0.1, 1.5, 1.0, 5), rtol=1e-13)


def test_multi_input_linear_vertex_closed_form():
    # linear σ: V^{(l)}_{(ab)(cd)} = (l−1) (K_ac K_bd + K_ad K_bc)
    K1 = np.array([[1.0, 0.3], [0.3, 2.0]])
    V = flows.four_point("linear", 0.0, 1.0, K1, 4)
    pair = np.einsum("ac,bd->abcd", K1, K1) + np.einsum("ad,bc->abcd", K1, K1)
    for l in range(4):
        np.testing.assert_allclose(V[l], l * pair, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu"])
def test_multi_input_vertex_symmetry_and_diagonal_equal_single_input(act):
    K1 = np.array([[1.0, 0.5], [0.5, 1.5]])
    V = flows.four_point(act, 0.2, 1.3, K1, 4)
    np.testing.assert_allclose(V, np.transpose(V, (0, 2, 1, 3, 4)), atol=1e-12)
    np.testing.assert_allclose(V, np.transpose(V, (0, 3, 4, 1, 2)), atol=1e-12)
    for a in range(2):
        np.testing.assert_allclose(V[:, a, a, a, a], flows.four_point(act, 0.2, 1.3, K1[a, a], 4),
                                   rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("bad", [
    dict(act="perceptron"), dict(C_W=-1.0), dict(C_b=-0.1), dict(K1=0.0), dict(depth=0),
    dict(widths=[8, 8]), dict(K1=np.eye(9)), dict(act="nope")])
def test_bad_inputs_raise_value_error(bad):
    args = dict(act="tanh", C_b=0.0, C_W=1.0, K1=1.0, depth=5) | bad
    with pytest.raises(ValueError):
        flows.four_point(**args)


def _per_network(act, C_b, C_W, widths, x, M, seed):
    """Per-network neuron averages for input 0: z², z⁴, and the i≠j average of z_i²z_j²."""
    spec = ensembles.EnsembleSpec.build(x.shape[1], widths, act, C_b, C_W)

    def fn(ens):
        out = []
        for z in ens(x):
            z0 = z[:, 0]
            n = z0.shape[1]
            s2, s4 = (z0 ** 2).sum(1), (z0 ** 4).sum(1)
            out.append(torch.stack([s2 / n, s4 / n, (s2 ** 2 - s4) / (n * (n - 1))], 1))
        return torch.stack(out, 1)
    return ensembles.map_networks(fn, spec, M, seed=seed)


def test_vertex_on_real_networks_with_power_against_scaled_vertex():
    """tanh with C_b ≠ 0 at n = 8: V agrees (same and different neurons); 0.8 V is rejected."""
    act, C_b, C_W, n, L, M = "tanh", 0.1, 1.5, 8, 4, 40_000
    x = np.array([[1.0, 1.0, 1.0, 1.0]])
    per = _per_network(act, C_b, C_W, [n] * L, x, M, seed=3)
    V = flows.four_point(act, C_b, C_W, C_W * 1.0 + C_b, L)
    diff = [stats.jackknife(per[:, l], lambda m: n * (m[2] - m[0] ** 2)) for l in range(1, L)]
    same = [stats.jackknife(per[:, l], lambda m: n / 3 * (m[1] - 3 * m[0] ** 2)) for l in range(1, L)]
    for est in (diff, same):
        val, err = np.array([d[0] for d in est]), np.array([d[1] for d in est])
        stats.assert_agree("V on tanh networks", V[1:], val, err)
    val, err = np.array([d[0] for d in diff]), np.array([d[1] for d in diff])
    assert np.abs(stats.z_scores(0.8 * V[1:], val, err)).max() > 4


def test_dropped_width_ratio_is_rejected_by_networks():
    act, C_b, C_W, L, M = "tanh", 0.1, 1.5, 4, 40_000
    widths = [8, 24, 8, 24]
    x = np.array([[1.0, 1.0, 1.0, 1.0]])
    per = _per_network(act, C_b, C_W, widths, x, M, seed=4)
    fan = np.array([1] + widths[:-1], dtype=float)
    est = [stats.jackknife(per[:, l], lambda m, f=fan[l]: f * (m[2] - m[0] ** 2)) for l in range(1, L)]
    val, err = np.array([e[0] for e in est]), np.array([e[1] for e in est])
    good = flows.four_point(act, C_b, C_W, 1.6, L, widths=widths)
    bad = flows.four_point(act, C_b, C_W, 1.6, L)
    stats.assert_agree("V with width ratios", good[1:], val, err)
    assert np.abs(stats.z_scores(bad[1:], val, err)).max() > 4
