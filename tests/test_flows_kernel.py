"""The infinite-width kernel recursion: closed forms, real networks, bad input."""

import numpy as np
import pytest
import torch

from dlt_companion import activations, ensembles, flows, gaussian, stats
from test_gaussian import arccos_kernel


def test_linear_kernel_is_the_exact_affine_recursion():
    K = flows.kernel("linear", 0.3, 1.5, 0.7, depth=6)
    expected = [0.7]
    for _ in range(5):
        expected.append(0.3 + 1.5 * expected[-1])
    np.testing.assert_allclose(K, expected, rtol=1e-13)


def test_relu_at_criticality_preserves_the_single_input_kernel():
    np.testing.assert_allclose(flows.kernel("relu", 0.0, 2.0, 1.3, depth=50), 1.3, rtol=1e-12)


def test_relu_gram_matrix_follows_the_arc_cosine_map():
    K1 = np.array([[1.0, 0.6, -0.2], [0.6, 2.0, 0.1], [-0.2, 0.1, 0.5]])
    C_b, C_W = 0.1, 1.7
    out = flows.kernel("relu", C_b, C_W, K1, depth=5)
    K = K1
    for layer in range(1, 5):
        d = np.diag(K)
        K = C_b + C_W * arccos_kernel(d[:, None], K, d[None, :])
        np.testing.assert_allclose(out[layer], K, rtol=1e-10)
    assert out.shape == (5, 3, 3)


def test_scalar_input_returns_one_value_per_layer():
    assert flows.kernel("tanh", 0.0, 1.0, 1.0, depth=7).shape == (7,)


def test_first_layer_kernel_is_cb_plus_cw_overlap():
    x = np.array([[1.0, 2.0], [0.0, -1.0]])
    np.testing.assert_allclose(flows.first_layer_kernel(x, 0.5, 2.0),
                               0.5 + 2.0 * np.array([[5.0, -2.0], [-2.0, 1.0]]) / 2)


def test_kernel_matches_a_wide_tanh_ensemble():
    """K^(l) for two inputs vs real networks (width 512: the 1/n correction is below the error bar)."""
    x = np.array([[1.0, 0.5, -0.5, 1.0], [0.2, -1.0, 1.0, 0.4]])
    C_b, C_W, depth = 0.1, 1.5, 3
    theory = flows.kernel("tanh", C_b, C_W, flows.first_layer_kernel(x, C_b, C_W), depth)
    ens = ensembles.MLPEnsemble(4, [512] * depth, "tanh", C_b, C_W, n_networks=64, seed=3)
    for layer, z in enumerate(ens(x)):
        G, se = stats.kernel(z)
        stats.assert_agree(f"layer {layer + 1}", theory[layer], G, se, quiet=True)
    # and the check has power: a kernel off by 5% is rejected
    with pytest.raises(AssertionError):
        stats.assert_agree("5% off", 1.05 * theory[-1], *stats.kernel(ens(x)[-1]), quiet=True)


@pytest.mark.parametrize("kwargs,match", [
    (dict(act="tanh", C_b=0.0, C_W=0.0, K1=1.0, depth=3), "C_W must be > 0"),
    (dict(act="tanh", C_b=-1.0, C_W=1.0, K1=1.0, depth=3), "C_b must be >= 0"),
    (dict(act="tanh", C_b=0.0, C_W=1.0, K1=1.0, depth=0), "depth must be a positive integer"),
    (dict(act="tanh", C_b=0.0, C_W=1.0, K1=-1.0, depth=3), ">= 0"),
    (dict(act="nope", C_b=0.0, C_W=1.0, K1=1.0, depth=3), "unknown activation"),
    (dict(act="tanh", C_b=0.0, C_W=1.0, K1=np.array([[1.0, 2.0], [2.0, 1.0]]), depth=3),
     "not positive semidefinite"),
    (dict(act="tanh", C_b=0.0, C_W=1.0, K1=np.ones((2, 3)), depth=3), "square"),
])
def test_bad_arguments_raise_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flows.kernel(**kwargs)


def test_per_layer_hyperparameters_equal_a_hand_iteration():
    C_b, C_W = (0.0, 0.2, 0.1, 0.3), (1.0, 1.5, 0.9, 2.0)
    K = flows.kernel("tanh", C_b, C_W, 0.7, 4)
    hand = [0.7]
    for l in range(1, 4):
        hand.append(C_b[l] + C_W[l] * gaussian.expect(lambda z: np.tanh(z) ** 2, hand[-1]))
    np.testing.assert_allclose(K, hand, rtol=1e-13)
    # scalars are the same as constant sequences, and layer 1's entries are unused
    np.testing.assert_allclose(flows.kernel("tanh", 0.1, 1.5, 0.7, 4),
                               flows.kernel("tanh", (9.0, 0.1, 0.1, 0.1), (9.0, 1.5, 1.5, 1.5), 0.7, 4))


def test_divergence_names_the_layer_instead_of_overflowing():
    with pytest.raises(ValueError, match=r"diverged at layer \d+"):
        flows.run("relu", 0.0, 3.0, 1.0, 2000)
    with pytest.raises(ValueError, match=r"kernel diverged at layer \d+"):
        flows.kernel("relu", 0.0, 3.0, 1.0, 2000)


def test_absurd_depths_are_refused_with_the_cost():
    with pytest.raises(ValueError, match="minutes"):
        flows.kernel("tanh", 0.0, 1.0, 1.0, 10**9)


def test_many_inputs_kernel_is_chunked_and_matches_pairwise():
    x = np.random.default_rng(0).normal(size=(90, 3))
    K1 = flows.first_layer_kernel(x, 0.1, 1.0)
    K = flows.kernel("relu", 0.1, 2.0, K1, 2)[1]
    i, j = 3, 71
    want = 0.1 + 2.0 * gaussian.expect2(lambda z: np.maximum(z, 0), lambda z: np.maximum(z, 0),
                                        K1[i, i], K1[i, j], K1[j, j])
    assert K[i, j] == pytest.approx(want, rel=1e-13)


def test_flow_metadata_errors_are_explicit():
    f = flows.run("tanh", 0.1, 1.5, 1.0, 4, widths=[8, 16, 8])
    with pytest.raises(ValueError, match="without n"):
        f.metric(8)
    f.metric()                                              # the widths are known
    g = flows.run("tanh", 0.1, 1.5, np.eye(2), 3, correction=False)
    assert g.K_corr is None
    with pytest.raises(ValueError, match="correction=False"):
        g.metric(8)


@pytest.mark.parametrize("bad,match", [
    (lambda: flows.first_layer_kernel(np.ones((2, 0)), 0.0, 1.0), "n_0 >= 1"),
    (lambda: flows.first_layer_kernel(np.ones((2, 3)) * 1j, 0.0, 1.0), "real"),
    (lambda: flows.kernel("tanh", 0.0, 1.0, 1.0 + 0.5j, 3), "real"),
    (lambda: flows.kernel("tanh", 0.0, 1.0, np.eye(2) * (1 + 1j), 3), "real"),
    (lambda: flows.kernel("tanh", 0.0, [1.0, 1.0], 1.0, 3), "length 3"),
    (lambda: flows.run("tanh", 0.0, 1.0, np.eye(9), 3), "up to 8"),
])
def test_hostile_flow_calls_raise_value_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_five_inputs_vertex_restricts_to_the_four_input_one():
    """B = 5 works (four-input subsets on the split rule); marginalization: restricting the
    five-input V to inputs 0..3 gives the four-input V."""
    x = np.random.default_rng(1).normal(size=(5, 3))
    K1 = flows.first_layer_kernel(x, 0.1, 1.0)
    V5 = flows.vertex("tanh", 0.1, 1.2, K1, 3)
    V4 = flows.vertex("tanh", 0.1, 1.2, K1[:4, :4], 3)
    np.testing.assert_allclose(V5[:, :4, :4, :4, :4], V4, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu", "softplus", "sin", "linear", "leaky_relu"])
def test_one_input_fast_path_equals_the_general_engine(act):
    """flows.run's scalar one-input loop computes what the [B, B] engine path computes at B = 1."""
    from dlt_companion.activations import get
    from dlt_companion.flows import _layers, preactivations

    depth = 6
    C_b, C_W = _layers.hyper(depth, (0.0, 0.1, 0.2, 0.0, 0.3, 0.1), (1.0, 2.0, 1.5, 0.9, 1.2, 1.1))
    ratios = np.array([1.0, 2.0, 0.5, 1.0, 1.5, 1.0])
    K1 = np.array([[1.3]])
    fast = preactivations._flow_one_input(get(act), C_b, C_W, K1, depth, ratios)
    general = preactivations._flow_general(get(act), C_b, C_W, K1, depth, ratios, True)
    for name, a, b in zip(("K", "V", "G1", "chi"), fast, general):
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13 * scale, err_msg=name)
