"""Empirical NTK of ensembles: exact against torch.func.jacrev, the forward equation, closed forms."""

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from dlt_companion import ensembles, gaussian, stats, tangent
from dlt_companion.network import MLP


def _reference_ntk(ens, x, lam_b, lam_W, layer=None):
    """Σ_μ λ_μ ∂z_{i;α}/∂θ_μ ∂z_{j;β}/∂θ_μ per network from torch.func.jacrev (the baseline)."""
    net = ens.net
    l = layer or ens.depth
    x = torch.as_tensor(x, dtype=torch.float64)
    out = []
    for m in range(ens.n_networks):
        params = [W[m] for W in ens.weights[:l]] + [b[m] for b in ens.biases[:l]]

        def f(*p):
            zs = ensembles.apply(p[:l], p[l:], x, net.act, net.xi[:l], net.gamma[:l])
            return zs[-1]                                           # [B, n_l]
        jac = jacrev(f, argnums=tuple(range(2 * l)))(*params)         # each [B, n_l, *shape]
        H = 0.0
        for k in range(l):
            Jw = jac[k].flatten(2)
            Jb = jac[l + k].flatten(2)
            H = H + lam_W[k] / net.fan_in[k] * torch.einsum("aip,bjp->ijab", Jw, Jw) \
                + lam_b[k] * torch.einsum("aip,bjp->ijab", Jb, Jb)
        out.append(H)
    return torch.stack(out)


@pytest.mark.parametrize("net", [
    MLP(3, [5, 4, 2], "tanh", C_b=0.2, C_W=1.3, lam_b=(0.5, 1.0, 2.0), lam_W=(1.0, 0.3, 1.5)),
    MLP(3, [4, 4, 4, 3], "relu", C_b=0.1, C_W=2.0, lam_b=0.0, lam_W=1.0),
    MLP(3, [4, 4, 4, 1], "gelu", C_W=1.0, xi=0.7, gamma=0.9, lam_b=0.4),   # residual
])
def test_empirical_ntk_equals_the_jacrev_reference(net):
    ens = net.ensemble(4, seed=3)
    x = np.random.default_rng(0).normal(size=(3, 3))
    ref = _reference_ntk(ens, x, net.lam_b, net.lam_W)
    got = tangent.empirical_ntk(ens, x)
    assert got.shape == (4, net.widths[-1], net.widths[-1], 3, 3)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for l, H in enumerate(tangent.ntk_by_layer(ens, x), start=1):
        torch.testing.assert_close(H, _reference_ntk(ens, x, net.lam_b, net.lam_W, layer=l),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(tangent.empirical_ntk(ens, x, layer=l), H, rtol=1e-10, atol=1e-12)


def test_learning_rate_arguments_override_the_description():
    net = MLP(3, [5, 2], "tanh")
    ens = net.ensemble(3, seed=1)
    x = np.ones((2, 3))
    a = tangent.empirical_ntk(ens, x, lam_b=0.0, lam_W=2.0)
    b = tangent.empirical_ntk(net.replace(lam_b=0.0, lam_W=2.0).ensemble(3, seed=1), x)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, tangent.empirical_ntk(ens, x))


def test_first_layer_ntk_is_deterministic_and_diagonal_in_neurons():
    net = MLP(4, [6, 3], "tanh", lam_b=0.5, lam_W=2.0)
    ens = net.ensemble(5, seed=0)
    x = np.random.default_rng(1).normal(size=(2, 4))
    H1 = tangent.ntk_by_layer(ens, x)[0]
    want = torch.as_tensor(net.first_layer_ntk(x))
    for i in range(6):
        for j in range(6):
            torch.testing.assert_close(H1[:, i, j], (want if i == j else 0 * want).expand(5, 2, 2))


def test_one_hidden_layer_ntk_mean_matches_the_arc_cosine_closed_form():
    """Θ^{(2)} = λ_b + λ_W⟨σσ⟩_{K1} + C_W⟨σ'σ'⟩_{K1} Θ^{(1)} with ReLU arc-cosine kernels:
    ⟨σσ⟩ = K(sin θ + (π − θ) cos θ)/2π, ⟨σ'σ'⟩ = (π − θ)/2π for equal norms."""
    C_W, lam_b, lam_W = 2.0, 0.3, 1.0
    net = MLP(2, [64, 1], "relu", C_b=0.0, C_W=C_W, lam_b=lam_b, lam_W=lam_W)
    x = np.array([[1.0, 0.0], [np.cos(1.0), np.sin(1.0)]])
    K1, T1 = net.first_layer_kernel(x), net.first_layer_ntk(x)
    k, th = K1[0, 0], np.arccos(K1[0, 1] / K1[0, 0])
    ss = k / (2 * np.pi) * np.array([[np.pi, np.sin(th) + (np.pi - th) * np.cos(th)]] * 2)
    ss[1] = ss[0][::-1]
    dd = np.array([[0.5, (np.pi - th) / (2 * np.pi)], [(np.pi - th) / (2 * np.pi), 0.5]])
    theta2 = lam_b + lam_W * ss + C_W * dd * T1
    spec = net.spec()
    est = ensembles.stream_mean(lambda e: tangent.empirical_ntk(e, x)[:, 0, 0], spec, 4000, seed=2)
    stats.assert_agree("one-hidden-layer NTK mean", theta2, est.value, est.stderr, quiet=True)
    with pytest.raises(AssertionError):                 # the NNGP kernel is not the NTK
        stats.assert_agree("K instead", ss * C_W, est.value, est.stderr, quiet=True)


def test_ntk_streams_through_map_networks():
    net = MLP(3, [8, 8, 1], "tanh")
    x = np.eye(3)[:2]
    full = tangent.empirical_ntk(net.ensemble(70, seed=5), x)[:, 0, 0].numpy()
    streamed = ensembles.map_networks(lambda e: tangent.empirical_ntk(e, x)[:, 0, 0], net.spec(),
                                      70, seed=5, chunk=32)
    np.testing.assert_allclose(streamed, full, rtol=1e-12)


@pytest.mark.parametrize("kw,match", [
    (dict(layer=0), "layer"), (dict(layer=4), "layer"), (dict(lam_b=-1.0), "lam_b"),
    (dict(lam_W=[1.0, 1.0]), "length 3"),
])
def test_bad_ntk_arguments(kw, match):
    ens = MLP(3, [4, 4, 1], "tanh").ensemble(2)
    with pytest.raises(ValueError, match=match):
        tangent.empirical_ntk(ens, np.ones((2, 3)), **kw)
    with pytest.raises(ValueError, match=r"\[B, n_in\]"):
        tangent.empirical_ntk(ens, np.ones((2, 4)))
