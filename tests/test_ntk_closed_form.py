"""Chapter 7's checks in closed form: the NTK of a one-hidden-layer network from its weights,
the deterministic first-layer NTK, and one gradient step's Taylor expansion in η."""

import numpy as np
import pytest
import torch
from torch.func import jvp

from dlt_companion import ensembles, tangent, training
from dlt_companion.network import MLP

X = np.random.default_rng(0).normal(size=(5, 4))
Y = np.random.default_rng(1).normal(size=(3, 2))


@pytest.mark.parametrize("act", ["tanh", "relu", "linear"])
def test_ntk_of_a_one_hidden_layer_network_in_closed_form(act):
    """Ĥ = δ_ij [λ_b2 + (λ_W2/n1) σ·σ] + Σ_k W_ik W_jk σ'_k;α σ'_k;β [λ_b1 + λ_W1 x·x/n0]."""
    net = MLP(4, [7, 2], act, C_b=0.3, C_W=1.4, lam_b=(0.6, 0.9), lam_W=(1.2, 0.8))
    ens = net.ensemble(20, seed=2)
    x = torch.as_tensor(X)
    z1 = x @ ens.weights[0].transpose(1, 2) + ens.biases[0][:, None]
    s, ds = net.act.torch[0](z1), net.act.torch[1](z1)
    theta1 = 0.6 + 1.2 * x @ x.T / 4
    closed = (torch.eye(2, dtype=x.dtype)[None, :, :, None, None]
              * (0.9 + 0.8 / 7 * s @ s.transpose(1, 2))[:, None, None]
              + torch.einsum("mik,mjk,mak,mbk,ab->mijab", ens.weights[1], ens.weights[1], ds, ds, theta1))
    torch.testing.assert_close(tangent.empirical_ntk(ens, X), closed, rtol=1e-12, atol=1e-12)


def test_first_layer_ntk_is_the_same_for_every_network():
    net = MLP(4, [6, 3, 1], "tanh", lam_b=0.5, lam_W=2.0)
    H1 = tangent.empirical_ntk(net.ensemble(30, seed=0), X, layer=1)
    want = np.einsum("ij,ab->ijab", np.eye(6), net.first_layer_ntk(X))
    np.testing.assert_allclose(H1.numpy(), np.broadcast_to(want, H1.shape), rtol=0, atol=1e-13)


def test_one_step_taylor_coefficients_from_forward_mode_match_the_step():
    """z(θ − η v) with v = λ ∂L/∂θ: d/dη at 0 is −Ĥε, and the residual is c2 η² + c3 η³ + O(η⁴)."""
    net = MLP(4, [8, 8, 2], "tanh", C_b=0.1, C_W=1.3, lam_b=0.7, lam_W=1.1)
    ens = net.ensemble(6, seed=3)
    x_tr, x_te = X[:3], X[3:]
    L = net.depth
    Ws = [W.clone().requires_grad_() for W in ens.weights]
    bs = [b.clone().requires_grad_() for b in ens.biases]
    z = ensembles.apply(Ws, bs, torch.as_tensor(x_tr), net.act, layers="last")[0]
    g = torch.autograd.grad(0.5 * ((z - torch.as_tensor(Y)) ** 2).sum(), Ws + bs)
    v = [gi * lw / n for gi, lw, n in zip(g[:L], net.lam_W, net.fan_in)] + [gi * lb for gi, lb in zip(g[L:], net.lam_b)]

    def along(t):
        return ensembles.apply([W.detach() - t * d for W, d in zip(Ws, v[:L])],
                               [b.detach() - t * d for b, d in zip(bs, v[L:])],
                               torch.as_tensor(x_te), net.act, layers="last")[0]
    one, t0 = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    d1 = lambda t: jvp(along, (t,), (one,))[1]
    d2 = lambda t: jvp(d1, (t,), (one,))[1]
    d3 = lambda t: jvp(d2, (t,), (one,))[1]
    c1, c2, c3 = d1(t0), d2(t0) / 2, d3(t0) / 6
    xs = np.vstack([x_tr, x_te])
    H = tangent.empirical_ntk(ens, xs)
    eps = ens.output(x_tr) - torch.as_tensor(Y)
    torch.testing.assert_close(c1, -torch.einsum("mijab,mbj->mai", H[..., 3:, :3], eps), rtol=1e-10, atol=1e-12)
    z0 = ens.output(x_te)
    for eta in (1e-2, 3e-3):
        stepped = ens.clone()
        training.gradient_descent(stepped, x_tr, Y, eta, 1)
        rest = stepped.output(x_te) - z0 - eta * c1 - eta ** 2 * c2 - eta ** 3 * c3
        assert float(rest.abs().max()) < 50 * eta ** 4 * float(c3.abs().max() + 1)
