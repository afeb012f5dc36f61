"""Exact deep-linear-network statistics (Chapter 3 of [RY]), checked against closed forms and networks."""

import math

import numpy as np
import pytest
import torch

from dlt_companion import ensembles, flows, linear, stats

G1 = np.array([[1.0, 0.4, 0.2], [0.4, 1.5, -0.3], [0.2, -0.3, 0.7]])


def test_two_point_recursion_closed_form():
    for C_W, C_b in [(1.0, 0.0), (0.8, 0.2), (1.3, 0.1)]:
        G = linear.two_point(G1, 7, C_b, C_W)
        l = np.arange(1, 8)[:, None, None]
        geo = (l - 1) * C_b if C_W == 1 else C_b * (1 - C_W ** (l - 1)) / (1 - C_W)
        assert np.allclose(G, C_W ** (l - 1) * G1 + geo)
    assert np.allclose(linear.two_point(2.0, 5), 2.0)            # criticality: constant


def test_fourth_moment_single_input_is_product_formula():
    n, L = 6, 9
    got = linear.fourth_moment(1.7, [n] * L, C_W=1.2)
    l = np.arange(1, L + 1)
    assert np.allclose(got, 3 * 1.2 ** (2 * (l - 1)) * 1.7 ** 2 * (1 + 2 / n) ** (l - 1))
    lead = linear.fourth_moment_leading(1.0, [n] * L)
    assert np.allclose(lead, 3 * (1 + 2 * (l - 1) / n))
    assert not np.allclose(lead, linear.fourth_moment(1.0, [n] * L))


def test_unequal_widths_multiply_layer_factors():
    ws = [5, 2, 9, 3]
    got = linear.fourth_moment(1.0, ws) / 3
    assert np.allclose(got, [1, 1 + 2 / 5, (1 + 2 / 5) * (1 + 2 / 2), (1 + 2 / 5) * 2 * (1 + 2 / 9)])


def test_multi_input_recursion_equals_closed_form():
    F = linear.four_point(G1, [7] * 6, C_W=0.9)
    assert np.allclose(F, linear.four_point_closed_form(G1, 7, 6, C_W=0.9), rtol=1e-13)
    # single-input limit of the tensor form
    assert np.allclose(linear.four_point(2.0, [4] * 5), 4.0 * (1 + 2 / 4) ** np.arange(5))


def test_vertex_leading_order_is_linear_in_depth():
    n = 10_000
    V = linear.vertex(G1, [n] * 5)
    l = 4
    expected = (l - 1) * (np.einsum("ac,bd->abcd", G1, G1) + np.einsum("ad,bc->abcd", G1, G1))
    assert np.allclose(V[l - 1], expected, rtol=1e-3, atol=5e-3)


def _simulated_metric_moments(G, widths, draws, seed):
    """E[Ĝ_ab Ĝ_cd] of a deep linear network (C_b = 0, C_W = 1) by direct numpy simulation."""
    rng = np.random.default_rng(seed)
    B = G.shape[0]
    A = np.linalg.cholesky(G)
    z = np.einsum("ab,mnb->mna", A, rng.standard_normal((draws, widths[0], B)))   # layer 1
    for n_prev, n in zip(widths[:-1], widths[1:]):
        W = rng.standard_normal((draws, n, n_prev)) / np.sqrt(n_prev)
        z = np.einsum("mij,mja->mia", W, z)
    Ghat = np.einsum("mia,mib->mab", z, z) / z.shape[1]
    return np.einsum("mab,mcd->mabcd", Ghat, Ghat)


def test_four_point_against_direct_simulation():
    """F^{(l)} = E[Ĝ^{(l)} ⊗ Ĝ^{(l)}] from matrices drawn in numpy (not the ensemble code);
    Ĝ^{(l+1)} = Ĝ_emp^{(l)} for C_b = 0, C_W = 1, so layer L's F is E[Ĝ_emp^{(L−1)} ⊗ Ĝ_emp^{(L−1)}]."""
    G = G1[:2, :2]
    widths = [3, 5, 2]
    sims = _simulated_metric_moments(G, widths, 200_000, seed=3)
    F = linear.four_point(G, widths + [1])[-1]
    value, err = stats.mean(sims)
    stats.assert_agree("deep linear F by direct simulation", F.ravel(), value.ravel(), err.ravel(),
                       quiet=True)


def test_same_neuron_four_point_sums_three_pairings():
    F = linear.four_point(G1, [5] * 3)
    S = linear.four_point_same_neuron(G1, [5] * 3)
    assert S[2, 0, 1, 2, 2] == pytest.approx(F[2, 0, 1, 2, 2] + F[2, 0, 2, 1, 2] + F[2, 0, 2, 2, 1])


def test_moment_2m_and_log_kernel():
    n, L = 8, 6
    assert np.allclose(linear.moment_2m(1.0, [n] * L, 2), linear.fourth_moment(1.0, [n] * L))
    # E[Ĝ^m] of a product of independent χ²_n/n factors, simulated: an independent reference
    rng = np.random.default_rng(0)
    chi = np.cumprod(rng.chisquare(n, size=(400_000, L - 1)) / n, axis=1)
    for m in (2, 3):
        got = linear.moment_2m(2.0, [n] * L, m)[1:] / (math.prod(range(2 * m - 1, 0, -2)) * 2.0 ** m)
        value, err = stats.mean(chi ** m)
        stats.assert_agree(f"E[G^{m}] by chi-square products", got, value, err, quiet=True)
    mean, var = linear.log_kernel_moments(1.0, [n] * L)
    logs = np.log(rng.chisquare(n, size=(200_000, L)) / n).cumsum(1)
    assert np.allclose(mean, logs.mean(0), atol=5 * logs.std(0).max() / np.sqrt(200_000))
    assert np.allclose(var, logs.var(0), rtol=0.02)


def test_moment_2m_does_not_overflow():
    """E[z⁴⁰] at layer 1 is 39!! K²⁰ ≈ 3.2e23 (int64 would wrap around at 9.2e18)."""
    exact = math.prod(range(39, 0, -2))
    assert linear.moment_2m(1.0, [4, 4], 20)[0] == pytest.approx(float(exact), rel=1e-15)
    assert linear.moment_2m(2.0, [4], 30)[0] == pytest.approx(float(math.prod(range(59, 0, -2))) * 2.0 ** 30,
                                                              rel=1e-14)
    with pytest.raises(ValueError, match="float range"):
        linear.moment_2m(1.0, [2] * 40, 150)


def test_fourth_moment_on_real_networks_rejects_leading_form():
    n, L, M = 4, 4, 40_000
    spec = ensembles.EnsembleSpec.build(4, [n] * L, "linear", 0.0, 1.0, dtype=torch.float32)
    m = ensembles.map_networks(lambda e: stats.neuron_moments(e(np.ones((1, 4)))), spec, M, seed=1)
    value, err = stats.mean(m[:, :, 1])
    stats.assert_agree("deep linear E[z^4] exact", linear.fourth_moment(1.0, [n] * L), value, err, quiet=True)
    z_lead = stats.z_scores(linear.fourth_moment_leading(1.0, [n] * L), value, err)
    assert np.abs(z_lead).max() > 4


def test_multi_input_connected_four_point_on_networks():
    x = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -0.5, 1.5, 0.2]])
    n, L, M = 6, 4, 20_000
    G = flows.first_layer_kernel(x, 0.0, 1.0)
    spec = ensembles.EnsembleSpec.build(4, [n] * L, "linear", 0.0, 1.0, dtype=torch.float32)
    z = ensembles.map_networks(lambda e: e.output(x), spec, M, seed=2)
    V = linear.vertex(G, [n] * L)
    v, se = stats.four_point(z, (0, 1, 0, 1), "different")
    stats.assert_agree("V_(01)(01)/n", V[-1, 0, 1, 0, 1] / n, v, se, quiet=True)


@pytest.mark.parametrize("call, match", [
    (lambda: linear.two_point(1.0, 0), "depth"),
    (lambda: linear.two_point(-1.0, 3), ">= 0"),
    (lambda: linear.two_point(np.array([[1.0, 2.0], [2.0, 1.0]]), 3), "positive semidefinite"),
    (lambda: linear.two_point(1.0, 3, C_W=0.0), "C_W"),
    (lambda: linear.four_point(1.0, [], C_b=0.0), "at least one"),
    (lambda: linear.four_point(1.0, [4, 0]), "positive integer"),
    (lambda: linear.four_point(1.0, [4], C_b=-1.0), "C_b"),
    (lambda: linear.fourth_moment(np.eye(2), [4]), "scalar"),
    (lambda: linear.moment_2m(1.0, [4], 0), "m"),
    (lambda: linear.four_point_closed_form(1.0, 2.5, 3), "n must be"),
    (lambda: linear.log_kernel_moments(0.0, [4]), "K1 must be > 0"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("act", ["linear", "relu", "leaky_relu"])
def test_chain_moments_against_simulated_chains(act):
    """E[Ĝ^m] of scale-invariant networks by sampling the per-layer factors directly."""
    from dlt_companion import activations
    a = activations.get(act)
    ap, am = a.scale_invariant
    C_W, n, L, M = 2.0 / (ap ** 2 + am ** 2), 6, 4, 400_000
    rng = np.random.default_rng(7)
    u = rng.standard_normal((M, L - 1, n))
    fac = C_W * np.where(u > 0, ap * u, am * u) ** 2
    G = np.concatenate([np.ones((M, 1)), np.cumprod(fac.mean(-1), axis=1)], axis=1)
    theory = linear.chain_moments([n] * L, 3, act)
    for m in (1, 2, 3):
        value, err = stats.mean(G[:, 1:] ** m)                 # layer 1: Ĝ = K1 exactly
        stats.assert_agree(f"{act} E[G^{m}]", theory[1:, m], value, err, quiet=True)
    assert np.allclose(linear.chain_moments([n] * L, 2, "relu")[:, 2], (1 + 5 / n) ** np.arange(L))


def test_mean_estimator_skewness_against_simulation():
    n, L, M, R = 4, 3, 200, 4000
    rng = np.random.default_rng(11)
    G = np.concatenate([np.ones((R, M, 1)), np.cumprod(rng.chisquare(n, (R, M, L - 1)) / n, axis=2)], axis=2)
    Y = G ** 2 * (rng.standard_normal((R, M, L, n)) ** 4).mean(-1) / 3
    means = Y.mean(1)                                            # R replicate ensemble means
    c = means - means.mean(0)
    skew = (c ** 3).mean(0) / (c ** 2).mean(0) ** 1.5
    theory = linear.mean_estimator_skewness([n] * L, 2, M)
    assert np.allclose(skew[:2], theory[:2], rtol=0.3)
    assert theory[2] > theory[1] > theory[0] > 0
