"""The ddNTK statistics (§∞.1): closed forms at layer 2, the book's tensors, real networks."""

import itertools

import numpy as np
import pytest
import scipy.linalg
import torch

from dlt_companion import activations, ensembles, stats, tangent
from dlt_companion.flows import ddntk as dd
from dlt_companion.finite_width import _pairings
from dlt_companion.gaussian import expect_n
from dlt_companion.network import MLP

X2 = np.array([[1.0, 0.3], [-0.4, 1.1]])


def _stats(net, x, **kw):
    return dd.ddntk_statistics(net.act, net.C_b, net.C_W, net.lam_b, net.lam_W,
                               net.first_layer_kernel(x), net.first_layer_ntk(x), net.depth, **kw)


def test_first_layer_vanishes_and_layer_two_ntk_mean_is_exact():
    st = _stats(MLP(2, [5, 5, 1], "tanh", C_b=0.1), X2)
    for name in ("X", "Y", "R1", "S1", "T1", "U1", "Theta1"):
        assert not np.any(getattr(st, name)[0]), name
    assert not np.any(st.Theta1[1])            # E[Ĥ^(2)] = Θ^(2) at any width
    assert np.any(st.Theta1[2])


@pytest.mark.parametrize("act", ["tanh", "gelu", "softplus"])
def test_layer_two_equals_independent_two_dimensional_quadrature(act):
    """X, Y, R', S', T', U' at layer 2 are sources only: single Gaussian integrals over K^(1)."""
    net = MLP(2, [4, 4, 1], act, C_b=0.2, C_W=1.3, lam_b=0.7, lam_W=(1.0, 1.4, 1.0))
    st = _stats(net, X2)
    s = activations.get(act).numpy
    K, Th = net.first_layer_kernel(X2), net.first_layer_ntk(X2)
    cw, lw = 1.3, 1.4

    def avg(*slots):                       # slots: (input, derivative order)
        return expect_n(lambda z: np.prod([s[k](z[..., a]) for a, k in slots], axis=0), K)
    for a, b, c, d in itertools.product(range(2), repeat=4):
        X = lw * cw * avg((a, 1), (b, 0), (c, 1), (d, 0)) * Th[a, c] \
            + cw ** 2 * avg((a, 2), (b, 1), (c, 1), (d, 0)) * Th[a, b] * Th[a, c]
        Y = cw ** 2 * avg((a, 2), (b, 0), (c, 1), (d, 1)) * Th[a, c] * Th[a, d]     # Y[a, b(=z), c, d]
        R = lw * cw * avg((a, 2), (b, 0), (c, 1), (d, 1)) * Th[a, c] * Th[a, d] \
            + cw ** 2 * avg((a, 3), (b, 1), (c, 1), (d, 1)) * Th[a, b] * Th[a, c] * Th[a, d]
        S = lw * cw * avg((a, 1), (b, 1), (c, 1), (d, 1)) * Th[a, c] * Th[b, d] \
            + cw ** 2 * avg((a, 2), (b, 2), (c, 1), (d, 1)) * Th[a, b] * Th[a, c] * Th[b, d]
        U = cw ** 2 * avg((a, 2), (b, 2), (c, 1), (d, 1)) * Th[a, b] * Th[a, c] * Th[b, d]
        T = lw ** 2 * avg((a, 1), (c, 0), (b, 1), (d, 0)) * Th[a, b] \
            + lw * cw * (avg((a, 1), (c, 0), (b, 2), (d, 1)) * Th[a, b] * Th[b, d]
                         + avg((a, 2), (c, 1), (b, 1), (d, 0)) * Th[a, b] * Th[a, c]) \
            + cw ** 2 * avg((a, 2), (c, 1), (b, 2), (d, 1)) * Th[a, b] * Th[a, c] * Th[b, d]
        for name, want in (("X", X), ("Y", Y), ("R1", R), ("S1", S), ("T1", T), ("U1", U)):
            np.testing.assert_allclose(getattr(st, name)[1][a, b, c, d], want, rtol=1e-7, atol=1e-10,
                                       err_msg=f"{name}[{a}{b}{c}{d}]")


def test_one_input_is_the_B_equals_one_case_of_several():
    net = MLP(2, [5, 5, 5, 1], "tanh", C_b=0.1, C_W=1.2)
    both = _stats(net, X2)
    one = _stats(net, X2[:1])
    for name in ("X", "Y", "R1", "S1", "T1", "U1"):
        np.testing.assert_allclose(getattr(one, name)[:, 0, 0, 0, 0],
                                   getattr(both, name)[:, 0, 0, 0, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(one.Theta1[:, 0, 0], both.Theta1[:, 0, 0], rtol=1e-9, atol=1e-12)


def test_relu_has_no_second_derivative_sources():
    st = _stats(MLP(2, [4, 4, 1], "relu", C_W=2.0), X2)
    assert not np.any(st.Y[1]) and not np.any(st.U1[1])
    assert np.all(np.isfinite(st.R1)) and np.any(st.X[1])



def test_book_tensors_are_the_pairings_of_the_dntk_and_ddntk_identities():
    """Build composite E[T z], E[I], E[II] from random X, Y, R', S', T', U' (with their symmetries),
    apply the per-network identities dĤ = T + T, dd_I = I + I + II + II, dd_II = II + II, and read
    off every neuron pairing: the result must be (P, Q) and (R, S, T, U)."""
    rng = np.random.default_rng(0)
    B, n = 2, 3
    X = rng.normal(size=(B,) * 4)
    Y = rng.normal(size=(B,) * 4)
    Y = Y + Y.transpose(0, 1, 3, 2)
    R1 = rng.normal(size=(B,) * 4)
    R1 = R1 + R1.transpose(0, 1, 3, 2)
    S1, T1, U1 = (rng.normal(size=(B,) * 4) for _ in range(3))
    S1, T1, U1 = (t + t.transpose(1, 0, 3, 2) for t in (S1, T1, U1))   # (a,c) <-> (b,d)
    Tz = _pairings(n, X, X, Y, "acbd", "adbc")
    I = _pairings(n, R1, R1, R1, "acbd", "adbc")
    II = _pairings(n, S1, T1, U1, "abcd", "abcd")
    # the same index maps as tangent.Differentials.dntk/ddntk, on composite tensors
    dH = np.einsum("bacd->abcd", Tz) + np.einsum("cabd->abcd", Tz)      # E[dĤ_{p0p1p2} z_p3]
    dd1 = (np.einsum("cdab->abcd", I) + np.einsum("dcab->abcd", I) + np.einsum("cdab->abcd", II)
           + np.einsum("cdba->abcd", II))
    dd2 = np.einsum("bcad->abcd", II) + np.einsum("bdac->abcd", II)
    P, Q = dd.dntk_pq(X, Y)
    R, S, T, U = dd.ddntk_rstu(R1, S1, T1, U1)
    c = lambda i, a: i * B + a
    for a, b, cc, d in itertools.product(range(B), repeat=4):
        # dĤ_{i0i1i2} z_{i3}: pairings (i0 i3)(i1 i2) -> P, (i0 i1)(i2 i3) -> Q
        assert np.isclose(dH[c(0, a), c(1, b), c(1, cc), c(0, d)], P[a, b, cc, d])
        assert np.isclose(dH[c(0, a), c(0, b), c(1, cc), c(1, d)], Q[a, b, cc, d])
        assert np.isclose(dd1[c(0, a), c(0, b), c(1, cc), c(1, d)], R[a, b, cc, d])
        assert np.isclose(dd1[c(0, a), c(1, b), c(0, cc), c(1, d)], S[a, b, cc, d])
        assert np.isclose(dd1[c(0, a), c(1, b), c(1, cc), c(0, d)], S[a, b, d, cc])
        assert np.isclose(dd2[c(0, a), c(0, b), c(1, cc), c(1, d)], T[a, b, cc, d])
        assert np.isclose(dd2[c(0, a), c(1, b), c(0, cc), c(1, d)], U[a, b, cc, d])
        assert np.isclose(dd2[c(0, a), c(1, b), c(1, cc), c(0, d)], U[a, b, d, cc])


def test_layer_two_statistics_agree_with_real_networks():
    """Exact at any width: ensembles of width-6 networks with two output neurons separate the pairings."""
    net = MLP(2, [6, 2], "tanh", C_b=0.2, C_W=1.3, lam_b=0.7, lam_W=1.2)
    st = _stats(net, X2)

    def fn(ens):
        D = tangent.differentials(ens, X2)
        z = ens.output(X2)
        T, I, II = D.d2, D.d3, D.d2d2
        out = []
        for p, q in ((0, 1), (1, 0)):
            out.append(torch.stack([
                torch.einsum("mabc,md->mabcd", T[:, p, p, q], z[:, :, q]),     # X
                torch.einsum("mabc,md->madbc", T[:, p, q, q], z[:, :, p]),     # Y
                I[:, p, p, q, q], II[:, p, p, q, q], II[:, p, q, p, q], II[:, p, q, q, p]], 1))
        return 0.5 * (out[0] + out[1]).flatten(1)
    vals = 6 * ensembles.map_networks(fn, net.spec(), 3000, seed=2)       # n_1 · (per network)
    # entries that are equal (or linearly dependent) by symmetry are compared once
    centred = vals - vals.mean(0)
    _, r, piv = scipy.linalg.qr(centred, mode="economic", pivoting=True)
    keep = np.sort(piv[:int(np.sum(np.abs(np.diag(r)) > 1e-8 * np.abs(r[0, 0])))])
    est = stats.mean(vals[:, keep])
    theory = np.stack([st.X[1], st.Y[1], st.R1[1], st.S1[1], st.T1[1], st.U1[1]]).ravel()[keep]
    stats.assert_agree("layer-2 ddNTK statistics", theory, est.value, est.stderr,
                       cov=stats.covariance(vals[:, keep]))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at most 4 inputs"):
        dd.ddntk_statistics("tanh", 0.0, 1.0, 1.0, 1.0, np.eye(5), np.eye(5), 3)
    with pytest.raises(ValueError, match="shape of K1"):
        dd.ddntk_statistics("tanh", 0.0, 1.0, 1.0, 1.0, np.eye(2), np.eye(3), 3)
    with pytest.raises(ValueError, match="perceptron"):
        dd.ddntk_statistics("perceptron", 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3)
    with pytest.raises(ValueError, match="C_W"):
        dd.ddntk_statistics("tanh", 0.0, -1.0, 1.0, 1.0, 1.0, 1.0, 3)
