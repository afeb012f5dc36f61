"""network.MLP: one description that builds both the theory and the real networks."""

import numpy as np
import pytest
import torch

from dlt_companion import ensembles, flows, stats
from dlt_companion.network import MLP


def test_scalars_become_per_layer_tuples_and_replace_revalidates():
    net = MLP(4, [8, 8, 2], "tanh", C_b=0.1, C_W=(1.0, 1.5, 2.0), lam_W=2.0)
    assert net.C_b == (0.1, 0.1, 0.1) and net.C_W == (1.0, 1.5, 2.0) and net.lam_W == (2.0,) * 3
    assert net.depth == 3 and net.fan_in == (4, 8, 8) and net.n_parameters == 8 * 5 + 8 * 9 + 2 * 9
    assert net.replace(C_W=1.0).C_W == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="C_W"):
        net.replace(C_W=0.0)


def test_residual_couplings_apply_to_layers_that_can_skip():
    net = MLP(4, [8, 8, 8, 1], "relu", xi=0.5, gamma=0.9)
    assert net.xi == (1.0, 0.5, 0.5, 1.0) and net.gamma == (0.0, 0.9, 0.9, 0.0)
    assert net.residual and not MLP(4, [8, 1], "relu").residual
    with pytest.raises(ValueError, match="never residual"):
        MLP(4, [8, 8], "relu", xi=(0.5, 0.5))
    with pytest.raises(ValueError, match="skip connection"):
        MLP(4, [8, 6], "relu", gamma=(0.0, 1.0))


def test_theory_and_ensemble_read_the_same_per_layer_hyperparameters():
    """Per-layer C_b, C_W (different in every layer) and unequal widths: the description's
    kernel and G^{1} are what its own ensemble measures; the same theory with the scalar
    C_W of layer 1 everywhere is rejected by the same data."""
    x = np.array([[1.0, 0.5, -0.5], [0.2, -1.0, 1.0]])
    net = MLP(3, [12, 24, 12, 1], "tanh", C_b=(0.1, 0.2, 0.05, 0.1), C_W=(1.0, 1.6, 0.8, 1.3))
    flow = net.flow(x)
    spec = net.spec()
    grams = ensembles.map_networks(
        lambda e: torch.stack([torch.einsum("mai,mbi->mab", z, z) / z.shape[-1] for z in e(x)], 1),
        spec, 6000, seed=1)
    iu = np.triu_indices(2)
    per_net = grams[:, :, iu[0], iu[1]].reshape(len(grams), -1)   # distinct entries only
    G, se = stats.mean(per_net)
    theory = flow.metric()[:, iu[0], iu[1]].ravel()
    stats.assert_agree("MLP.flow metric vs its ensemble", theory, G, se,
                       cov=stats.covariance(per_net), quiet=True)
    wrong = flows.run("tanh", 0.1, 1.0, net.first_layer_kernel(x), 4, widths=net.widths)
    with pytest.raises(AssertionError):
        stats.assert_agree("scalar hyperparameters", wrong.metric()[:, iu[0], iu[1]].ravel(), G, se,
                           cov=stats.covariance(per_net), quiet=True)


def test_residual_ensemble_kernel_matches_the_residual_recursion():
    x = np.array([[1.0, 0.0, 1.0]])
    net = MLP(3, [16, 16, 16, 16], "relu", C_b=0.0, C_W=2.0, xi=0.6, gamma=0.8)
    K = net.kernel(x)[:, 0, 0]
    est = ensembles.stream_mean(lambda e: torch.stack([(z[:, 0] ** 2).mean(-1) for z in e(x)], 1),
                                net.spec(), 4000, seed=3)
    stats.assert_agree("residual ReLU kernel", K, est.value, est.stderr, quiet=True)
    # the recursion K' = γ²K + ξ²(C_b + C_W⟨σ²⟩) with ReLU ⟨σ²⟩ = K/2: K' = (0.64 + 0.36) K
    np.testing.assert_allclose(K, K[0], rtol=1e-12)
    # MLP.flow of a residual network is the residual flow (flows.residual, App. B)
    np.testing.assert_allclose(net.flow(x).K[:, 0, 0], K, rtol=1e-12)


def test_first_layer_ntk_and_kernel_are_closed_forms():
    net = MLP(2, [5, 1], "relu", C_b=0.3, C_W=2.0, lam_b=0.5, lam_W=4.0)
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    np.testing.assert_allclose(net.first_layer_kernel(x), 0.3 + 2.0 * x @ x.T / 2)
    np.testing.assert_allclose(net.first_layer_ntk(x), 0.5 + 4.0 * x @ x.T / 2)
    with pytest.raises(ValueError, match=r"\[B, n_in\]"):
        net.first_layer_kernel(np.ones((2, 3)))


@pytest.mark.parametrize("kw,match", [
    (dict(n_in=0), "n_in"), (dict(widths=[]), "at least one"), (dict(widths=[3, 0]), "widths"),
    (dict(act="swishy"), "unknown activation"), (dict(C_W=-1.0), "C_W"), (dict(lam_b=-1.0), "lam_b"),
    (dict(C_b=[0.0, 0.1, 0.2]), "length 2"), (dict(C_W=float("nan")), "finite"),
    (dict(C_W=np.ones((2, 2))), "flat sequence"), (dict(C_b="0.1"), "number"),
])
def test_bad_descriptions_raise_value_errors(kw, match):
    args = dict(n_in=3, widths=[4, 2], act="tanh")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        MLP(**args)
