"""The dNTK of real networks (tangent.dntk) and its statistics P, Q (flows.dntk_statistics)."""

import numpy as np
import pytest
import torch
from torch.func import jacrev

from dlt_companion import ensembles, flows, stats, tangent, training
from dlt_companion.network import MLP

X = np.random.default_rng(0).normal(size=(3, 3))


def reference_dntk(ens, x, layer=None):
    """Σ_μ λ_μ ∂z_{i0;α0}/∂θ_μ ∂Ĥ_{i1i2;α1α2}/∂θ_μ per network, with Ĥ = J Λ Jᵀ and its
    derivative both from torch.func.jacrev (the double-Jacobian baseline, one network at a time)."""
    net = ens.net
    l = layer or ens.depth
    x = torch.as_tensor(x, dtype=torch.float64)
    rates = [net.lam_W[k] / net.fan_in[k] for k in range(l)] + [net.lam_b[k] for k in range(l)]
    out = []
    for m in range(ens.n_networks):
        params = tuple([W[m] for W in ens.weights[:l]] + [b[m] for b in ens.biases[:l]])

        def z(p):
            return ensembles.apply(p[:l], p[l:], x, net.act, net.xi[:l], net.gamma[:l])[-1]

        def H(p):
            J = jacrev(z)(p)
            return sum(r * torch.einsum("aip,bjp->ijab", j.flatten(2), j.flatten(2))
                       for r, j in zip(rates, J))

        J, dH = jacrev(z)(params), jacrev(H)(params)
        out.append(sum(r * torch.einsum("ijbcp,aqp->qijabc", dh.flatten(4), j.flatten(2))
                       for r, dh, j in zip(rates, dH, J)))
    return torch.stack(out)


@pytest.mark.parametrize("net", [
    MLP(3, [5, 4, 2], "tanh", C_b=0.2, C_W=1.3, lam_b=(0.5, 1.0, 2.0), lam_W=(1.0, 0.3, 1.5)),
    MLP(3, [4, 4, 4, 1], "gelu", C_W=1.0, xi=0.7, gamma=0.9, lam_b=0.4),          # residual
    MLP(3, [3, 2], "relu", C_b=0.1, C_W=2.0),
])
def test_dntk_equals_the_double_jacobian_reference_at_every_layer(net):
    ens = net.ensemble(3, seed=3)
    for layer in range(1, net.depth + 1):
        got = tangent.dntk(ens, X, layer=layer)
        n = net.widths[layer - 1]
        assert got.shape == (3, n, n, n, 3, 3, 3)
        torch.testing.assert_close(got, reference_dntk(ens, X, layer), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(tangent.dntk(ens, X), tangent.dntk(ens, X, layer=net.depth))


def test_dntk_of_a_single_layer_network_vanishes():
    """z = b + W x is linear in its parameters: its NTK is constant, its dNTK zero."""
    ens = MLP(3, [4], "tanh", C_b=0.3, C_W=1.0).ensemble(5, seed=0)
    assert torch.count_nonzero(tangent.dntk(ens, X)) == 0
    deep = MLP(3, [4, 4], "tanh").ensemble(5, seed=0)
    assert torch.count_nonzero(tangent.dntk(deep, X, layer=1)) == 0
    assert torch.count_nonzero(tangent.dntk(deep, X)) > 0


def test_dntk_is_symmetric_in_its_last_two_neuron_input_pairs():
    ens = MLP(3, [6, 6, 3], "swish", C_b=0.1, C_W=1.2).ensemble(2, seed=1)
    d = tangent.dntk(ens, X)
    torch.testing.assert_close(d, d.permute(0, 1, 3, 2, 4, 6, 5))


def test_one_gradient_step_moves_the_ntk_by_minus_eta_epsilon_dntk():
    """ΔĤ_{i1i2;δ1δ2} = −η Σ_{i0,α} ε_{i0;α} dĤ_{i0i1i2;αδ1δ2} + O(η²) (§11.1): the residual of
    the first-order prediction shrinks by 100 per decade of η."""
    net = MLP(3, [8, 8, 2], "tanh", C_b=0.1, C_W=1.5, lam_b=0.5)
    x_all = np.concatenate([X, np.random.default_rng(5).normal(size=(2, 3))])
    y = np.random.default_rng(6).normal(size=(3, 2))
    base = net.ensemble(4, seed=2)
    H0 = tangent.empirical_ntk(base, x_all)
    dH = tangent.dntk(base, x_all)
    eps = base.output(X) - torch.as_tensor(y)                                 # [M, 3, n_L]
    first = -torch.einsum("mai,mijkabc->mjkbc", eps, dH[..., :3, :, :])
    residuals = []
    for eta in (1e-3, 1e-4, 1e-5):
        ens = base.clone()
        training.gradient_descent(ens, X, y, eta, 1)
        residuals.append(float((tangent.empirical_ntk(ens, x_all) - H0 - eta * first).abs().max()))
    ratios = np.array(residuals[:-1]) / np.array(residuals[1:])
    np.testing.assert_allclose(ratios, 100.0, rtol=0.05)


def test_dntk_bad_input():
    ens = MLP(3, [4, 2], "tanh").ensemble(2, seed=0)
    with pytest.raises(ValueError, match="layer must be in 1..2"):
        tangent.dntk(ens, X, layer=3)
    with pytest.raises(ValueError, match="positive integer"):
        tangent.dntk(ens, X, layer=0)
    with pytest.raises(ValueError, match="MLPEnsemble"):
        tangent.dntk("not an ensemble", X)
    with pytest.raises(ValueError, match="shape"):
        tangent.dntk(ens, np.ones((2, 4)))
    with pytest.raises(ValueError, match="lam_W"):
        tangent.dntk(ens, X, lam_W=-1.0)


# ------------------------------------------------------------------------------------------
# statistics: P and Q
# ------------------------------------------------------------------------------------------

def _measure_PQ(net, x, M, seed):
    """n_{L-1} × neuron-pair averages of dĤ_{ijj} z_i (P) and dĤ_{iij} z_j (Q), one input."""
    vals = ensembles.map_networks(lambda e: tangent.dntk_preactivation_moments(e, x)[:, :, 0, 0, 0, 0],
                                  net.spec(), M, seed=seed)
    return stats.mean(vals * net.fan_in[-1])


def test_preactivation_moments_are_the_neuron_pair_averages():
    ens = MLP(3, [5, 3], "tanh", C_b=0.1, C_W=1.2).ensemble(2, seed=4)
    x = X[:2]
    d, z = tangent.dntk(ens, x), ens.output(x)
    got = tangent.dntk_preactivation_moments(ens, x)
    assert got.shape == (2, 2, 2, 2, 2, 2)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    P = sum(d[:, i, j, j, :, :, :, None] * z[:, None, None, None, :, i] for i, j in pairs) / 6
    Q = sum(d[:, i, i, j, :, :, :, None] * z[:, None, None, None, :, j] for i, j in pairs) / 6
    torch.testing.assert_close(got[:, 0], P)
    torch.testing.assert_close(got[:, 1], Q)
    with pytest.raises(ValueError, match="two distinct output neurons"):
        tangent.dntk_preactivation_moments(MLP(3, [5, 1], "tanh").ensemble(2), x)


def test_layer_two_statistics_are_exact_at_any_width():
    """Ĥ^{(1)} is deterministic and dĤ^{(1)} = 0, so P^{(2)}, Q^{(2)} hold at width 6."""
    net = MLP(4, [6, 4], "tanh", C_b=0.1, C_W=1.5, lam_b=0.5, lam_W=2.0)
    x = np.array([[1.0, 0.5, -0.5, 1.0]])
    s = flows.dntk_statistics(net.act, net.C_b, net.C_W, net.lam_b, net.lam_W,
                              net.first_layer_kernel(x)[0, 0], net.first_layer_ntk(x)[0, 0], 2)
    (value, err) = _measure_PQ(net, x, 3000, seed=1)
    stats.assert_agree("layer-2 P, Q at width 6", [s.P[1], s.Q[1]], value, err)
    stats.assert_rejects("layer-2 P, Q without the C_W² curvature terms",
                         [s.P[1] - 0.5 * (s.P[1] + s.Q[1]), s.Q[1]], value, err)


def test_two_input_flow_restricted_to_one_input_is_the_one_input_flow():
    x = np.array([[1.0, 0.5, -0.5, 1.0], [0.3, -1.0, 0.8, 0.2]])
    net = MLP(4, [8, 8, 8, 1], "gelu", C_b=0.1, C_W=1.2, lam_b=0.5, lam_W=1.5)
    args = (net.act, net.C_b, net.C_W, net.lam_b, net.lam_W)
    two = flows.dntk_statistics(*args, net.first_layer_kernel(x), net.first_layer_ntk(x), 4)
    one = flows.dntk_statistics(*args, net.first_layer_kernel(x)[0, 0], net.first_layer_ntk(x)[0, 0], 4)
    np.testing.assert_allclose(two.P[:, 0, 0, 0, 0], one.P, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(two.Q[:, 0, 0, 0, 0], one.Q, rtol=1e-10, atol=1e-13)
    # P_{α0α1α2α3} = P_{α0α2α1α3}: dĤ_{ijj} is symmetric in its last two inputs
    np.testing.assert_allclose(two.P, two.P.transpose(0, 1, 3, 2, 4), rtol=1e-12, atol=1e-14)
    assert np.all(two.P[0] == 0) and np.all(two.Q[0] == 0)


def test_deep_linear_network_statistics_have_the_closed_form():
    """σ = z (σ' = 1, σ'' = 0), one input, C_b = 0, C_W = 1: K = K1, F^{(l)} = K Θ-type sums, and
    the recursions reduce to P' = λ_W[2ΘK + 2rF] + rP and Q' = λ_W[ΘK + rF] + rQ; with F from
    flows.ntk_fluctuations they must be met exactly."""
    K1, T1, L = 0.8, 1.7, 6
    s = flows.dntk_statistics("linear", 0.0, 1.0, 1.0, 0.6, K1, T1, L)
    fl = flows.ntk_fluctuations("linear", 0.0, 1.0, 1.0, 0.6, K1, T1, L)
    for l in range(L - 1):
        np.testing.assert_allclose(s.P[l + 1], 0.6 * (2 * fl.Theta[l] * K1 + 2 * fl.F[l]) + s.P[l], rtol=1e-12)
        np.testing.assert_allclose(s.Q[l + 1], 0.6 * (fl.Theta[l] * K1 + fl.F[l]) + s.Q[l], rtol=1e-12)


def test_dntk_statistics_bad_input():
    with pytest.raises(ValueError, match="kink"):
        flows.dntk_statistics("relu", 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="perceptron"):
        flows.dntk_statistics("perceptron", 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="C_W"):
        flows.dntk_statistics("tanh", 0.0, -1.0, 1.0, 1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="positive semidefinite"):
        flows.dntk_statistics("tanh", 0.0, 1.0, 1.0, 1.0, [[1.0, 2.0], [2.0, 1.0]], np.eye(2), 3)
    with pytest.raises(ValueError, match="shape"):
        flows.dntk_statistics("tanh", 0.0, 1.0, 1.0, 1.0, np.eye(2), 1.0, 3)
    with pytest.raises(ValueError, match="replace|relative"):
        flows.dntk_statistics("tanh", 0.0, 1.0, 1.0, 1.0, np.eye(2), np.eye(2), 2).relative()
