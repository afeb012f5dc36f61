"""The ddNTKs of real networks (§∞.1): exact against nested jacrev, and what one GD step does."""

import numpy as np
import pytest
import torch
from torch.func import jacfwd, jacrev

from dlt_companion import ensembles, tangent, training
from dlt_companion.network import MLP


def _flat(ens, m, x):
    """(f, θ0, λ) for network m: outputs z as a flat [n_L·B] vector (p = i·B + α) of flat θ."""
    net, L = ens.net, ens.depth
    shapes = [W[m].shape for W in ens.weights] + [b[m].shape for b in ens.biases]
    theta = torch.cat([W[m].reshape(-1) for W in ens.weights] + [b[m].reshape(-1) for b in ens.biases])
    lam = torch.cat([torch.full((W[m].numel(),), lw / n, dtype=theta.dtype)
                     for W, lw, n in zip(ens.weights, net.lam_W, net.fan_in)]
                    + [torch.full((b[m].numel(),), lb, dtype=theta.dtype)
                       for b, lb in zip(ens.biases, net.lam_b)])

    def f(flat):
        ps, i = [], 0
        for s in shapes:
            k = int(np.prod(s))
            ps.append(flat[i:i + k].reshape(s))
            i += k
        z = ensembles.apply(ps[:L], ps[L:], x, net.act, net.xi, net.gamma, layers="last")[0]
        return z.T.reshape(-1)
    return f, theta, lam


def _reference(ens, m, x):
    """Every differential of network m from full nested jacrev derivative tensors (the baseline)."""
    f, theta, lam = _flat(ens, m, x)
    J = jacrev(f)(theta)
    Hs = jacfwd(jacrev(f))(theta)
    D3 = jacfwd(jacfwd(jacrev(f)))(theta)
    u = J * lam
    H = J @ u.T
    T = torch.einsum("amn,bm,cn->abc", Hs, u, u)
    I = torch.einsum("amno,bm,cn,do->abcd", D3, u, u, u)
    Hu = torch.einsum("amn,cn->acm", Hs, u)
    II = torch.einsum("acm,m,bdm->abcd", Hu, lam, Hu)

    def ntk(t):                                       # Ĥ(θ) as a function of the parameters
        j = jacrev(f)(t)
        return (j * lam) @ j.T
    dH = jacfwd(ntk)(theta)                           # [P, P, N]
    d2H = jacfwd(jacfwd(ntk))(theta)                  # [P, P, N, N]
    dntk = torch.einsum("am,bcm->abc", u, dH)         # Σ λ ∂z_a ∂Ĥ_bc
    dd1 = torch.einsum("am,bn,cdmn->abcd", u, u, d2H)
    dd2 = torch.einsum("am,bmn,n,cdn->abcd", u, Hs, lam, dH)
    return dict(ntk=H, d2=T, d3=I, d2d2=II, dntk=dntk, dd1=dd1, dd2=dd2)


NETS = [
    MLP(2, [3, 3, 2], "tanh", C_b=0.3, C_W=1.5, lam_b=(0.5, 1.0, 2.0), lam_W=(1.0, 0.7, 1.3)),
    MLP(3, [4, 3, 1], "gelu", C_b=0.1, C_W=1.8),
    MLP(2, [3, 3, 3, 1], "softplus", C_W=1.2, xi=0.8, gamma=0.6, lam_b=0.3),     # residual
    MLP(2, [4, 3, 2], "relu", C_b=0.2, C_W=2.0),
]


@pytest.mark.parametrize("net", NETS, ids=[str(n) for n in NETS])
def test_differentials_and_ddntks_equal_nested_jacrev(net):
    ens = net.ensemble(2, seed=4)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(2, net.n_in)))
    D = tangent.differentials(ens, x)
    dd1, dd2 = tangent.ddntk(ens, x)
    n, B = net.widths[-1], 2
    assert D.d3.shape == (2,) + (n,) * 4 + (B,) * 4 and dd1.shape == D.d3.shape == dd2.shape
    for m in range(2):
        ref = _reference(ens, m, x)
        got = dict(ntk=D.ntk, d2=D.d2, d3=D.d3, d2d2=D.d2d2, dntk=D.dntk(), dd1=dd1, dd2=dd2)
        for name, k in [("ntk", 2), ("d2", 3), ("d3", 4), ("d2d2", 4), ("dntk", 3), ("dd1", 4),
                        ("dd2", 4)]:
            g = tangent.composite(got[name][m:m + 1], k)[0]
            torch.testing.assert_close(g, ref[name], rtol=1e-9, atol=1e-11, msg=name)
    torch.testing.assert_close(D.ntk, tangent.empirical_ntk(ens, x), rtol=1e-12, atol=1e-12)


def test_a_one_layer_network_is_a_linear_model_with_vanishing_differentials():
    ens = MLP(3, [2], "tanh").ensemble(4, seed=0)
    D = tangent.differentials(ens, np.ones((2, 3)))
    assert torch.count_nonzero(D.d2) == 0 and torch.count_nonzero(D.d3) == 0
    assert all(torch.count_nonzero(t) == 0 for t in tangent.ddntk(ens, np.ones((2, 3))))


def _step_changes(net, x, y, eta, seed=2):
    """Actual changes of z, Ĥ and dĤ after one GD step, and the pieces predicting them."""
    ens = net.ensemble(4, seed=seed)
    before = tangent.differentials(ens, x)
    eps = (ens.output(x) - y).transpose(1, 2)                       # [M, n_L, B]
    z0 = ens.output(x).transpose(1, 2)
    dh0, dd1, dd2 = before.dntk(), *before.ddntk()
    after = ens.clone()
    training.gradient_descent(after, x, y, eta=eta, steps=1)
    D1 = tangent.differentials(after, x, order=2)
    dz = after.output(x).transpose(1, 2) - z0
    dH = D1.ntk - before.ntk
    ddh = D1.dntk() - dh0
    return dict(eps=eps, before=before, dd1=dd1, dd2=dd2, dz=dz, dH=dH, ddh=ddh)


def test_one_gradient_descent_step_moves_z_ntk_and_dntk_as_the_differentials_say():
    """z to O(η³) with d2 and d3; Ĥ to O(η²) with the dNTK; dĤ to O(η) with the ddNTKs."""
    net = MLP(2, [6, 5, 2], "tanh", C_b=0.2, C_W=1.4, lam_b=(1.0, 0.5, 1.5), lam_W=(1.0, 1.3, 0.8))
    x = torch.as_tensor(np.random.default_rng(3).normal(size=(3, 2)))
    y = torch.as_tensor(np.random.default_rng(4).normal(size=(3, 2)))
    res = {}
    for eta in (2e-3, 1e-3):
        c = _step_changes(net, x, y, eta)
        e, D = c["eps"], c["before"]
        # z: −η Ĥ ε + η²/2 T[ε, ε] − η³/6 I[ε, ε, ε]
        z_pred = (-eta * torch.einsum("mijab,mjb->mia", D.ntk, e)
                  + eta ** 2 / 2 * torch.einsum("mijkabc,mjb,mkc->mia", D.d2, e, e)
                  - eta ** 3 / 6 * torch.einsum("mijklabcd,mjb,mkc,mld->mia", D.d3, e, e, e))
        # Ĥ: −η Σ ε dĤ + η²/2 Σ εε dd_I
        H_pred = (-eta * torch.einsum("mkijcab,mkc->mijab", D.dntk(), e)
                  + eta ** 2 / 2 * torch.einsum("mklijcdab,mkc,mld->mijab", c["dd1"], e, e))
        # dĤ: −η Σ ε (dd_I + dd_II)
        dh_pred = -eta * (torch.einsum("mikjlacbd,mkc->mijlabd", c["dd1"], e)
                          + torch.einsum("mkijlcabd,mkc->mijlabd", c["dd2"], e))
        res[eta] = [float((c["dz"] - z_pred).abs().max() / c["dz"].abs().max()),
                    float((c["dH"] - H_pred).abs().max() / c["dH"].abs().max()),
                    float((c["ddh"] - dh_pred).abs().max() / c["ddh"].abs().max())]
    big, small = res[2e-3], res[1e-3]
    # residuals relative to the change: O(η³), O(η²), O(η) -> halve η: /8, /4, /2
    for got, power in zip(np.array(big) / np.array(small), (3, 2, 1)):
        assert 0.8 * 2 ** power < got < 1.25 * 2 ** power, (res, power)
    assert big[0] < 1e-5 and big[1] < 1e-2 and big[2] < 0.1, res


def test_ddntk_rejects_bad_input():
    ens = MLP(2, [3, 1], "tanh").ensemble(2)
    with pytest.raises(ValueError, match="order"):
        tangent.differentials(ens, np.ones((2, 2)), order=4)
    with pytest.raises(ValueError, match="shape"):
        tangent.ddntk(ens, np.ones((2, 3)))
    with pytest.raises(ValueError, match="MLPEnsemble"):
        tangent.ddntk("not an ensemble", np.ones((2, 2)))
    with pytest.raises(ValueError, match="lam_W"):
        tangent.ddntk(ens, np.ones((2, 2)), lam_W=-1.0)
    with pytest.raises(ValueError, match="order=3"):
        tangent.differentials(ens, np.ones((2, 2)), order=2).ddntk()
