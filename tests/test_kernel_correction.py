"""1/n correction to the kernel K^{{1}} (flows.kernel_correction): closed forms and real networks."""

import numpy as np
import pytest
import torch

from dlt_companion import activations, ensembles, flows, gaussian, stats


@pytest.mark.parametrize("act,C_W", [("linear", 1.0), ("relu", 2.0), ("leaky_relu", 1.5)])
def test_correction_vanishes_for_scale_invariant_single_input(act, C_W):
    np.testing.assert_allclose(flows.kernel_correction(act, 0.0, C_W, 1.3, 8), 0.0, atol=1e-13)


def test_first_two_layers_have_no_correction_on_real_networks():
    """G^{1(1)} = G^{1(2)} = 0 (layer 1 is Gaussian with a deterministic kernel, so layer 2's
    metric is exactly K^{(2)} at any width): checked on width-3 tanh networks, where the
    layer-3 correction is large enough to be resolved by the same data."""
    x = np.array([[1.0, -0.5]])
    f = flows.run("tanh", 0.1, 1.5, flows.first_layer_kernel(x, 0.1, 1.5)[0, 0], 3)
    ens = ensembles.MLPEnsemble(2, [3, 3, 3], "tanh", 0.1, 1.5, n_networks=60_000, seed=11)
    per_net = torch.stack([(z[:, 0] ** 2).mean(-1) for z in ens(x)], 1).numpy()
    G, se = stats.mean(per_net)
    stats.assert_agree("layers 1-2: metric = K (no 1/n correction)", f.K[:2], G[:2], se[:2], quiet=True)
    assert abs(G[2] - f.K[2]) > 4 * se[2]                 # layer 3: the correction is there
    stats.assert_agree("layer 3: K + G1/n", f.metric(3)[2], G[2], se[2], quiet=True)
    assert f.K_corr[2] != 0.0


def test_single_input_recursion_matches_finite_difference_of_quadrature():
    # K^{1(3)} = (C_W/2) g''(K2) V2 with g(K) = <σ²>_K  (K^{1(2)} = 0)
    act, C_b, C_W, K1 = "tanh", 0.1, 1.5, 1.0
    f = flows.run(act, C_b, C_W, K1, 3)
    g = lambda K: gaussian.expect(lambda z: np.tanh(z) ** 2, K)
    h = 1e-3
    g2 = (g(f.K[1] + h) - 2 * g(f.K[1]) + g(f.K[1] - h)) / h ** 2
    np.testing.assert_allclose(f.K_corr[2], 0.5 * C_W * g2 * f.V[1], rtol=1e-5)


def test_two_input_second_order_term_matches_finite_difference():
    K2 = np.array([[1.0, 0.4], [0.4, 1.3]])
    E = np.array([[0.3, -0.2], [-0.2, 0.5]])
    V2 = np.einsum("ij,kl->ijkl", E, E)      # then Σ ∂²f V = d²/dε² f(K + εE)
    f = lambda e: gaussian.expect2(np.tanh, np.tanh, *(K2 + e * E)[[0, 0, 1], [0, 1, 1]])
    h = 1e-3
    d2 = (f(h) - 2 * f(0.0) + f(-h)) / h ** 2
    np.testing.assert_allclose(gaussian.Averages("tanh", K2).d2K((0, 0), V2)[0, 1], d2, rtol=1e-5)


def test_multi_input_diagonal_equals_single_input():
    K1 = np.array([[1.0, 0.5], [0.5, 1.5]])
    Kc = flows.kernel_correction("softplus", 0.2, 1.3, K1, 4)
    for a in range(2):
        np.testing.assert_allclose(Kc[:, a, a], flows.kernel_correction("softplus", 0.2, 1.3, K1[a, a], 4),
                                   rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(Kc, np.transpose(Kc, (0, 2, 1)))


def test_bad_inputs():
    with pytest.raises(ValueError):
        flows.kernel_correction("tanh", 0.0, 1.0, -1.0, 4)
    with pytest.raises(ValueError):
        flows.kernel_correction("tanh", 0.0, 1.0, 1.0, 4, widths=[0, 3, 3])
    with pytest.raises(ValueError):
        flows.run("tanh", 0.0, 1.0, 1.0, 4).metric()          # equal widths need n


def test_correction_is_resolved_on_real_networks():
    """tanh, C_b = 0.1, C_W = 1.5, n = 8: E[z²] = K + K^{1}/n accepted, K alone rejected."""
    act, C_b, C_W, n, L, M = "tanh", 0.1, 1.5, 8, 6, 40_000
    x = np.array([[1.0, 1.0, 1.0, 1.0]])
    spec = ensembles.EnsembleSpec.build(4, [n] * L, act, C_b, C_W)
    per = ensembles.map_networks(lambda ens: torch.stack([(z[:, 0] ** 2).mean(1) for z in ens(x)], 1),
                                 spec, M, seed=1)
    G, err = stats.mean(per)
    f = flows.run(act, C_b, C_W, C_b + C_W, L)
    stats.assert_agree("E[z²] = K + K1/n", f.metric(n), G, err)
    assert np.abs(stats.z_scores(f.K, G, err)).max() > 4                       # infinite width
    assert np.abs(stats.z_scores(f.replace(K_corr=0 * f.K_corr).metric(n), G, err)).max() > 4
