"""ntk_statistics: per-network neuron-pair averages, the estimators of Θ, A, B, D, F on real
networks (layer 2 is exact at any width, so small networks test the normalisation), and the
1/n extrapolation."""

import numpy as np
import pytest
import torch

from dlt_companion import flows, stats
from dlt_companion import ntk_statistics as ns
from dlt_companion.network import MLP


def test_moments_equal_brute_force_pair_sums():
    g = torch.Generator().manual_seed(0)
    M, n, B = 3, 4, 2
    H = torch.randn(M, n, n, B, B, generator=g, dtype=torch.float64)
    z = torch.randn(M, B, n, generator=g, dtype=torch.float64)
    got = ns._unpack(ns.moments(H, z).numpy(), B)
    for m in range(M):
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        Hm, zm = H[m].numpy(), z[m].numpy()
        want = {
            "h1": np.mean([Hm[i, i] for i in range(n)], axis=0),
            "hh": np.mean([np.multiply.outer(Hm[i, i], Hm[j, j]) for i, j in pairs], axis=0),
            "oo": np.mean([np.multiply.outer(Hm[i, j], Hm[i, j]) for i, j in pairs], axis=0),
            "hz": np.mean([np.multiply.outer(Hm[i, i], np.outer(zm[:, j], zm[:, j])) for i, j in pairs], axis=0),
            "oz": np.mean([np.multiply.outer(Hm[i, j], np.outer(zm[:, i], zm[:, j])) for i, j in pairs], axis=0),
            "ii": np.mean([np.multiply.outer(Hm[i, i], Hm[i, i]) for i in range(n)], axis=0),
            "zz": np.mean([np.outer(zm[:, i], zm[:, i]) for i in range(n)], axis=0),
        }
        for k, v in want.items():
            np.testing.assert_allclose(got[k][m], v, rtol=1e-12, atol=1e-12, err_msg=k)


def test_moments_refuse_bad_shapes():
    with pytest.raises(ValueError, match="at least 2 neurons"):
        ns.moments(torch.zeros(2, 1, 1, 1, 1), torch.zeros(2, 1, 1))
    with pytest.raises(ValueError, match="z must have shape"):
        ns.moments(torch.zeros(2, 3, 3, 1, 1), torch.zeros(2, 1, 4))


X = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]])


@pytest.mark.parametrize("act,C_b,C_W,lam_b,lam_W", [("tanh", 0.1, 1.5, 0.5, 1.2), ("relu", 0.2, 2.0, 1.0, 0.7)])
def test_layer_two_statistics_of_real_networks_match_the_closed_forms(act, C_b, C_W, lam_b, lam_W):
    """Layer 2 is exact at any width: a narrow network (n_1 = 5) tests the normalisation."""
    net = MLP(3, [5, 3], act, C_b=C_b, C_W=C_W, lam_b=lam_b, lam_W=lam_W)
    st = ns.measure(net, X, 6000, seed=2, n_blocks=100)
    th = flows.ntk_fluctuations(act, net.C_b, net.C_W, net.lam_b, net.lam_W,
                                net.first_layer_kernel(X), net.first_layer_ntk(X), 2)
    entries = ([("Theta", 2, (0, 0)), ("Theta", 2, (0, 1)), ("Theta", 2, (1, 1))]
               + [(k, 2, i) for k in "ABDF" for i in [(0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 0, 1), (1, 1, 1, 1)]])
    value, err, cov = st.select(entries)
    want = np.array([getattr(th, "Theta" if k == "Theta" else k)[1][i] for k, _, i in entries])
    stats.assert_agree(f"{act} layer 2: Θ, A, B, D, F", want, value, err, cov=cov)
    # one neuron: all three pairings, S = A + 2B for one input
    S = st.estimate("S", 2)
    stats.assert_agree("one-neuron NTK variance (A + 2B)", th.A[1, 0, 0, 0, 0] + 2 * th.B[1, 0, 0, 0, 0],
                       S.value[0, 0, 0, 0], S.stderr[0, 0, 0, 0])
    # power: forgetting one of B's two pairings is rejected by the same data
    z = stats.z_scores(0.5 * want[3 + 4:3 + 8], value[3 + 4:3 + 8], err[3 + 4:3 + 8])
    assert np.abs(z).max() > 10


def test_all_layers_by_forward_equation_equal_one_layer_by_jacobians():
    net = MLP(3, [6, 5, 4], "gelu", C_b=0.1, C_W=1.2, lam_b=0.3)
    a = ns.measure(net, X, 64, seed=5, layers=[2, 3], n_blocks=4)
    b = ns.measure(net, X, 64, seed=5, layers=3, n_blocks=4)
    np.testing.assert_allclose(a.blocks[:, 1], b.blocks[:, 0], rtol=1e-10, atol=1e-12)
    assert a.layers == (2, 3) and a.fan_in(3) == 5
    e = a.estimate("A", 3)
    assert e.value.shape == (2, 2, 2, 2) and np.all(e.stderr > 0)
    with pytest.raises(ValueError, match="not measured"):
        a.estimate("A", 1)
    with pytest.raises(ValueError, match="unknown statistic"):
        a.estimate("Q", 3)


def test_first_layer_statistics_vanish_exactly():
    net = MLP(3, [6, 4], "tanh", C_b=0.1, lam_b=0.4, lam_W=2.0)
    st = ns.measure(net, X, 40, seed=1, layers=[1, 2], n_blocks=4)
    for k in "ABDFS":
        assert np.abs(st.estimate(k, 1).value).max() < 1e-12
    np.testing.assert_allclose(st.estimate("Theta", 1).value, net.first_layer_ntk(X), rtol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(net=MLP(3, [4, 1], "tanh")), "at least 2"),
    (dict(n_networks=10, n_blocks=20), "n_blocks"),
    (dict(layers=[3]), "layers must be in"),
    (dict(layers=[2, 2]), "distinct"),
    (dict(net="tanh"), "MLP"),
])
def test_measure_refuses_bad_requests(kwargs, match):
    args = dict(net=MLP(3, [4, 4], "tanh"), x=X, n_networks=8, n_blocks=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ns.measure(**args)


def test_extrapolation_recovers_a_line_in_one_over_n_and_propagates_covariances():
    widths = [16, 32, 64]
    a, b = np.array([1.0, -2.0]), np.array([3.0, 5.0])
    y = np.array([a + b / n for n in widths])
    covs = np.array([[[0.01, 0.004], [0.004, 0.02]]] * 3)
    ex = ns.extrapolate(widths, y, covs)
    np.testing.assert_allclose(ex.value, a, rtol=1e-12)
    np.testing.assert_allclose(ex.slope, b, rtol=1e-12)
    assert ex.chi2 < 1e-20 and ex.dof == 2
    # two widths: the intercept is (n2 y2 − n1 y1)/(n2 − n1), with the matching variance
    two = ns.extrapolate([16, 32], y[:2], covs[:2])
    np.testing.assert_allclose(two.value, (32 * y[1] - 16 * y[0]) / 16)
    np.testing.assert_allclose(two.cov, covs[0] * (1 + 4), rtol=1e-12)
    # Monte Carlo: the quoted intercept covariance is the scatter of refits of noisy data
    rng = np.random.default_rng(0)
    chol = np.linalg.cholesky(covs[0])
    fits = np.array([ns.extrapolate(widths, y + rng.normal(size=y.shape) @ chol.T, covs).value
                     for _ in range(4000)])
    # standard error of a sample covariance from 4000 fits: ~4e-4 here; allow 4 of them
    np.testing.assert_allclose(np.cov(fits.T), ex.cov, rtol=0, atol=1.6e-3)
    with pytest.raises(ValueError, match="two distinct widths"):
        ns.extrapolate([16], y[:1], covs[:1])


def test_unique_entries_are_one_per_class_of_equal_entries():
    """The representatives cover every entry once under the symmetries, which the theory obeys."""
    K2 = np.array([[1.0, 0.45], [0.45, 1.3]])
    T2 = np.array([[1.4, 0.6], [0.6, 1.7]])
    deep = flows.ntk_fluctuations("gelu", 0.2, 1.3, 0.4, 1.1, K2, T2, 4)
    counts = {k: len(ns.unique_entries(k, 2)) for k in ns.FIELDS}
    assert counts == {"Theta": 3, "G": 3, "A": 6, "B": 7, "D": 9, "F": 10, "S": 6}
    for k in "ABDF":
        t = getattr(deep, k)[-1]
        for perm in ns.SYMMETRIES[k]:
            np.testing.assert_allclose(t, t.transpose(perm), rtol=1e-10, atol=1e-13)
        # the representatives' values are distinct at layer 4 (no symmetry was missed)
        vals = [t[i] for i in ns.unique_entries(k, 2)]
        assert len(set(np.round(vals, 10))) == len(vals), k
    # layers 1-2: Ĥ_ij;αβ = Ĥ_ij;βα adds B_1324 = B_2314 and F_1324 = F_2314
    assert len(ns.unique_entries("B", 2, layer=2)) == 6 and len(ns.unique_entries("F", 2, layer=2)) == 9
    for k in "BF":
        t = getattr(deep, k)[1]
        np.testing.assert_allclose(t, t.transpose(ns.EARLY_SYMMETRIES[k][0]), rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="unknown statistic"):
        ns.unique_entries("Q", 2)
