"""MLP ensembles: shapes, the book's initialization statistics, reproducibility, bad input."""

import numpy as np
import pytest
import torch

from dlt_companion import ensembles, stats


def make(**kw):
    args = dict(n_in=5, widths=[7, 6, 3], act="tanh", C_b=0.2, C_W=1.5, n_networks=40, seed=0)
    args.update(kw)
    return ensembles.MLPEnsemble(**args)


def test_forward_returns_every_layer_batched_over_networks():
    ens = make()
    zs = ens(np.ones((4, 5)))
    assert [tuple(z.shape) for z in zs] == [(40, 4, 7), (40, 4, 6), (40, 4, 3)]
    assert all(z.dtype == torch.float64 for z in zs)
    torch.testing.assert_close(ens.output(np.ones((4, 5))), zs[-1])


def test_forward_matches_a_per_network_reference_computation():
    ens = make(n_networks=3)
    x = torch.randn(4, 5, dtype=torch.float64)
    out = ens.output(x)
    for m in range(3):
        h = x
        for layer, (W, b) in enumerate(zip(ens.weights, ens.biases)):
            if layer:
                h = torch.tanh(h)
            h = h @ W[m].T + b[m]
        torch.testing.assert_close(out[m], h)


@pytest.mark.parametrize("C_b,C_W", [(0.0, 1.0), (0.3, 2.0)])
def test_parameters_have_the_books_variances(C_b, C_W):
    ens = make(widths=[64, 32], n_networks=200, C_b=C_b, C_W=C_W, act="relu")
    for W, fan_in in zip(ens.weights, (5, 64)):
        w = W.flatten().numpy()
        target = C_W / fan_in
        se = target * np.sqrt(2.0 / w.size)
        assert abs(w.var() - target) < 4 * se
        assert abs(w.mean()) < 4 * np.sqrt(target / w.size)
    for b in ens.biases:
        v = b.flatten().numpy()
        assert abs(v.var() - C_b) <= 4 * max(C_b, 1e-300) * np.sqrt(2.0 / v.size)


def test_first_layer_preactivation_kernel_is_cb_plus_cw_overlap():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 5))
    C_b, C_W = 0.3, 1.7
    ens = make(widths=[16, 4], n_networks=4000, C_b=C_b, C_W=C_W, seed=5)
    G, se = stats.kernel(ens(x)[0])
    stats.assert_agree("layer-1 kernel", C_b + C_W * x @ x.T / 5, G, se, quiet=True)


def test_same_seed_gives_the_same_networks_and_sub_ranges_are_consistent():
    a, b = make(seed=11), make(seed=11)
    for Wa, Wb in zip(a.weights, b.weights):
        torch.testing.assert_close(Wa, Wb)
    tail = make(seed=11, n_networks=25, first=15)
    for Wa, Wt in zip(a.weights, tail.weights):
        torch.testing.assert_close(Wa[15:40], Wt)
    assert not torch.equal(make(seed=12).weights[0], a.weights[0])


def test_float32_ensembles_are_the_same_networks_as_float64():
    a, b = make(dtype=torch.float32), make(dtype=torch.float64)
    torch.testing.assert_close(a.weights[1].double(), b.weights[1], rtol=1e-6, atol=1e-7)


def test_per_layer_variances_are_accepted():
    ens = make(C_b=[0.0, 0.1, 0.2], C_W=[1.0, 2.0, 3.0])
    assert ens.spec.C_W == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("kw,match", [
    (dict(widths=[4, -1]), r"widths\[1\] must be a positive integer"),
    (dict(widths=[4, 0]), "positive integer"),
    (dict(widths=[]), "at least one"),
    (dict(n_in=0), "n_in must be a positive integer"),
    (dict(act="relux"), "unknown activation"),
    (dict(C_W=0.0), "C_W must be > 0"),
    (dict(C_W=-2.0), "C_W must be > 0"),
    (dict(C_b=-0.1), "C_b must be >= 0"),
    (dict(C_W=[1.0, 1.0]), "one value per layer"),
    (dict(n_networks=0), "n_networks must be a positive integer"),
    (dict(dtype=torch.int32), "dtype"),
])
def test_bad_arguments_raise_clear_value_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_inputs_of_the_wrong_shape_are_rejected():
    with pytest.raises(ValueError, match=r"shape \[B, n_in\] = \[B, 5\]"):
        make()(np.ones((4, 6)))
    with pytest.raises(ValueError, match="shape"):
        make()(np.ones(5))
