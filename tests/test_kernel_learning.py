"""Kernel learning: the NTK predictor, its finite-step form, and the Taylor models of real networks."""

import numpy as np
import pytest
import torch

from dlt_companion import kernel_learning as kl
from dlt_companion import tangent, training
from dlt_companion.network import MLP

RNG = np.random.default_rng(0)
X = RNG.normal(size=(9, 4))
Y = RNG.normal(size=9)


def _kernels(net, x):
    return net.kernel(x)[-1], net.ntk_mean(x)[-1]


# ------------------------------------------------------------------------------------------
# the infinite-width predictor
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_train", [3, 8])            # fewer / more inputs than the 5 parameters
def test_ntk_predictor_of_a_linear_model_is_least_squares(n_train):
    """A depth-1 network is z = b + W x: its NTK is the λ-weighted feature kernel, and the
    trained mean is the (minimum-norm) least-squares fit, also when Θ̃ is singular."""
    lam_b, lam_W = 0.7, 1.3
    net = MLP(4, [1], "tanh", C_b=0.2, C_W=1.1, lam_b=lam_b, lam_W=lam_W)
    K, T = _kernels(net, X)
    mean, cov = kl.ntk_prediction(K, T, Y[:n_train], n_train)
    phi = np.concatenate([np.sqrt(lam_b) * np.ones((9, 1)), np.sqrt(lam_W / 4) * X], axis=1)
    coef = np.linalg.lstsq(phi[:n_train], Y[:n_train], rcond=None)[0]
    np.testing.assert_allclose(mean, phi[n_train:] @ coef, rtol=1e-9, atol=1e-10)
    assert cov.shape == (9 - n_train, 9 - n_train)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-10


def test_trained_linear_networks_follow_the_finite_step_formula_exactly():
    """For a linear model the kernel dynamics is exact: every network, any η, any number of steps."""
    net = MLP(4, [2], "tanh", C_b=0.3, C_W=1.0, lam_b=0.5, lam_W=2.0)
    ens = net.ensemble(16, seed=4)
    z0 = ens.output(X)
    y = RNG.normal(size=(5, 2))
    T = net.ntk_mean(X)[-1]
    eta = 0.9 / np.linalg.eigvalsh(T[:5, :5]).max()
    training.gradient_descent(ens, X[:5], y, eta, 23)
    H = torch.as_tensor(T)[None, None, None].expand(16, 2, 2, 9, 9) * torch.eye(2, dtype=torch.float64)[None, :, :, None, None]
    torch.testing.assert_close(kl.kernel_model(H, z0, y, 5, eta, 23), ens.output(X), rtol=0, atol=1e-11)


def test_finite_step_prediction_starts_at_the_prior_and_tends_to_the_predictor():
    net = MLP(4, [8, 1], "tanh", C_b=0.1, C_W=1.5)
    K, T = _kernels(net, X)
    m0, c0 = kl.ntk_prediction(K, T, Y[:5], 5, eta=0.1, steps=0)
    np.testing.assert_allclose(m0, 0.0, atol=1e-14)
    np.testing.assert_allclose(c0, K[5:, 5:], atol=1e-14)
    eta = 1.0 / np.linalg.eigvalsh(T[:5, :5]).max()
    m_inf, c_inf = kl.ntk_prediction(K, T, Y[:5], 5)
    m_t, c_t = kl.ntk_prediction(K, T, Y[:5], 5, eta, 20_000)
    np.testing.assert_allclose(m_t, m_inf, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c_t, c_inf, rtol=1e-8, atol=1e-10)
    # η above 1/λ_max (but below 2/λ_max): oscillating modes, same limit
    m_o, _ = kl.ntk_prediction(K, T, Y[:5], 5, 1.8 * eta, 5000)
    np.testing.assert_allclose(m_o, m_inf, rtol=1e-8, atol=1e-10)


def test_one_step_prediction_is_one_linearized_update():
    net = MLP(4, [8, 1], "tanh", C_b=0.1, C_W=1.5)
    K, T = _kernels(net, X)
    eta = 0.05
    mean, cov = kl.ntk_prediction(K, T, Y[:5], 5, eta, 1)
    G = eta * T[5:, :5]                              # z_δ(1) = z_δ(0) − ηΘ_δA (z_A(0) − y)
    np.testing.assert_allclose(mean, G @ Y[:5])
    want = K[5:, 5:] - G @ K[:5, 5:] - K[5:, :5] @ G.T + G @ K[:5, :5] @ G.T
    np.testing.assert_allclose(cov, want, atol=1e-13)


def test_covariance_is_that_of_the_linear_map_of_the_gaussian_initial_function():
    """Σ = Cov(z_δ(0) − G z_A(0)) with G = Θ_δA R: checked against the block form A K Aᵀ."""
    net = MLP(4, [8, 8, 1], "gelu", C_b=0.05, C_W=1.2)
    K, T = _kernels(net, X)
    for args in [(), (0.05, 7)]:
        _, cov = kl.ntk_prediction(K, T, Y[:6], 6, *args)
        R = kl._response(T[:6, :6], *(args or (None, None)))
        A = np.concatenate([-T[6:, :6] @ R, np.eye(3)], axis=1)      # z_δ(t) = A z(0) + const
        np.testing.assert_allclose(cov, A @ K @ A.T, atol=1e-12)


def test_several_outputs_and_the_generalization_error():
    net = MLP(4, [8, 1], "tanh", C_b=0.1, C_W=1.5)
    K, T = _kernels(net, X)
    y = RNG.normal(size=(5, 3))
    y_test = RNG.normal(size=(4, 3))
    mean, cov = kl.ntk_prediction(K, T, y, 5)
    assert mean.shape == (4, 3) and cov.shape == (4, 4)
    for c in range(3):
        np.testing.assert_allclose(mean[:, c], kl.ntk_prediction(K, T, y[:, c], 5)[0])
    bv = kl.generalization_error(K, T, y, 5, y_test)
    np.testing.assert_allclose(bv.bias, ((mean - y_test) ** 2).sum(1))
    np.testing.assert_allclose(bv.variance, 3 * np.diag(cov))
    np.testing.assert_allclose(bv.error, bv.bias + bv.variance)


def test_expected_training_loss_is_bias_plus_variance_on_the_training_set():
    """E L(t) = ½ Σ (mean − y)² + ½ tr cov on the training inputs (duplicated as 'test' inputs)."""
    net = MLP(4, [8, 1], "tanh", C_b=0.1, C_W=1.5)
    K, T = _kernels(net, X[:5])
    eta = 0.5 / np.linalg.eigvalsh(T).max()
    loss = kl.expected_training_loss(K, T, Y[:5], eta, 30)
    KK, TT = np.block([[K, K], [K, K]]), np.block([[T, T], [T, T]])
    for t in (0, 1, 7, 30):
        bv = kl.generalization_error(KK, TT, Y[:5], 5, Y[:5], eta, t)
        np.testing.assert_allclose(loss[t], 0.5 * bv.error.sum(), rtol=1e-10)


def test_bad_input_gets_clear_errors():
    net = MLP(4, [8, 1], "tanh")
    K, T = _kernels(net, X)
    with pytest.raises(ValueError, match="n_train"):
        kl.ntk_prediction(K, T, Y[:9], 9)
    with pytest.raises(ValueError, match="n_train"):
        kl.ntk_prediction(K, T, Y[:0], 0)
    with pytest.raises(ValueError, match="targets y"):
        kl.ntk_prediction(K, T, Y[:4], 5)
    with pytest.raises(ValueError, match="same inputs"):
        kl.ntk_prediction(K, T[:8, :8], Y[:5], 5)
    with pytest.raises(ValueError, match="positive semidefinite"):
        kl.ntk_prediction(K, T - 10 * np.eye(9), Y[:5], 5)
    with pytest.raises(ValueError, match="symmetric"):
        kl.ntk_prediction(K + np.triu(np.ones((9, 9)), 1), T, Y[:5], 5)
    with pytest.raises(ValueError, match="both eta and steps"):
        kl.ntk_prediction(K, T, Y[:5], 5, eta=0.1)
    with pytest.raises(ValueError, match="eta must be > 0"):
        kl.ntk_prediction(K, T, Y[:5], 5, eta=-0.1, steps=3)
    with pytest.raises(ValueError, match="steps must be"):
        kl.ntk_prediction(K, T, Y[:5], 5, eta=0.1, steps=2.5)
    with pytest.raises(ValueError, match="diverge"):
        kl.ntk_prediction(K, T, Y[:5], 5, eta=10.0, steps=3)
    with pytest.raises(ValueError, match="targets y must be finite"):
        kl.ntk_prediction(K, T, [np.nan] * 5, 5)
    with pytest.raises(ValueError, match="y_test"):
        kl.generalization_error(K, T, Y[:5], 5, Y[:3])
    with pytest.raises(ValueError, match="widths"):
        kl.width_extrapolation([16, -1], np.zeros(2), np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match="at least 2 widths"):
        kl.width_extrapolation([16], np.zeros(1), np.zeros((1, 1, 1)))


# ------------------------------------------------------------------------------------------
# Taylor models and trained ensembles
# ------------------------------------------------------------------------------------------

def test_kernel_model_closed_form_equals_gradient_descent_on_the_linearized_network():
    net = MLP(4, [12, 12, 2], "tanh", C_b=0.1, C_W=1.3, lam_b=(1.0, 0.5, 2.0))
    ens = net.ensemble(5, seed=2)
    y = RNG.normal(size=(6, 2))
    H = tangent.empirical_ntk(ens, X)
    eta, steps = 0.05, 40
    closed = kl.kernel_model(H, ens.output(X), y, 6, eta, steps)
    trained = kl.taylor_model_descent(ens, X, y, 6, eta, steps, order=1)
    torch.testing.assert_close(closed, trained, rtol=1e-9, atol=1e-10)


def test_taylor_models_of_a_linear_network_are_the_network():
    net = MLP(4, [3], "tanh", C_b=0.1, C_W=1.0)
    ens = net.ensemble(4, seed=1)
    y = RNG.normal(size=(6, 3))
    q = kl.taylor_model_descent(ens, X, y, 6, 0.1, 15, order=2)
    training.gradient_descent(ens, X[:6], y, 0.1, 15)
    torch.testing.assert_close(q, ens.output(X), rtol=1e-10, atol=1e-11)


def test_kernel_and_quadratic_models_miss_the_trained_network_at_second_and_third_order():
    """After a few steps of rate η the linear Taylor model misses the network by O(η²) and the
    quadratic one by O(η³): halving η divides the misses by 4 and by 8."""
    net = MLP(4, [32, 32, 1], "tanh", C_b=0.1, C_W=1.5)
    miss = []
    for eta in (0.002, 0.001):
        ens = net.ensemble(6, seed=3)
        lin = kl.taylor_model_descent(ens, X, Y[:6], 6, eta, 5, order=1)
        quad = kl.taylor_model_descent(ens, X, Y[:6], 6, eta, 5, order=2)
        training.gradient_descent(ens, X[:6], Y[:6], eta, 5)
        z = ens.output(X)
        miss.append([float((z - lin).abs().max()), float((z - quad).abs().max())])
    ratio = np.array(miss[0]) / np.array(miss[1])
    np.testing.assert_allclose(ratio, [4.0, 8.0], rtol=0.15)


def test_mirror_networks_start_from_minus_the_function_with_the_same_ntk():
    ens = MLP(4, [6, 6, 2], "tanh", C_b=0.2, C_W=1.3).ensemble(3, seed=0)
    both = kl.mirrored(ens)
    assert both.n_networks == 6
    torch.testing.assert_close(both.output(X)[3:], -ens.output(X))
    torch.testing.assert_close(both.output(X)[:3], ens.output(X))
    H = tangent.empirical_ntk(both, X)
    torch.testing.assert_close(H[3:], H[:3])


def test_train_and_record_trains_every_network_and_its_mirror():
    net = MLP(4, [6, 1], "tanh", C_b=0.1, C_W=1.2)
    out = kl.train_and_record(net.spec(), X, Y[:5], 5, 0.1, [0, 3, 10], 7, seed=5)
    assert out.shape == (7, 2, 3, 9, 1)
    ens = net.ensemble(7, seed=5)
    np.testing.assert_allclose(out[:, 0, 0], ens.output(X).numpy())
    np.testing.assert_allclose(out[:, 1, 0], -ens.output(X).numpy())
    training.gradient_descent(ens, X[:5], Y[:5], 0.1, 10)
    np.testing.assert_allclose(out[:, 0, 2], ens.output(X).numpy(), rtol=1e-12, atol=1e-12)
    chunked = kl.train_and_record(net.spec(), X, Y[:5], 5, 0.1, [0, 3, 10], 7, seed=5, chunk=3)
    np.testing.assert_allclose(chunked, out, rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="increasing"):
        kl.train_and_record(net.spec(), X, Y[:5], 5, 0.1, [3, 3], 7)


def test_width_extrapolation_removes_a_1_over_n_term_exactly():
    widths = [8, 16, 32]
    values = np.array([[1.0 + 3.0 / n, -2.0 + 0.5 / n] for n in widths])
    covs = np.array([np.eye(2) / n for n in widths])
    v, c = kl.width_extrapolation(widths, values, covs)
    np.testing.assert_allclose(v, [1.0, -2.0], atol=1e-12)
    assert c.shape == (2, 2) and np.all(np.diag(c) > 0)
    v2, _ = kl.width_extrapolation(widths, values + np.array([[5.0 / n ** 2] * 2 for n in widths]),
                                   covs, order=2)
    np.testing.assert_allclose(v2, [1.0, -2.0], atol=1e-10)
