"""Batched gradient descent: the book's update rule, exactly, for every network at once."""

import numpy as np
import pytest
import torch

from dlt_companion import tangent, training
from dlt_companion.network import MLP

X = np.random.default_rng(0).normal(size=(4, 3))
Y = np.random.default_rng(1).normal(size=(4, 2))


def test_one_step_is_the_books_update_with_lambda_W_over_fan_in():
    net = MLP(3, [6, 5, 2], "tanh", C_b=0.1, C_W=1.2, lam_b=(0.5, 1.0, 2.0), lam_W=(1.0, 0.7, 1.5))
    ens = net.ensemble(3, seed=0)
    before = ens.clone()
    eta = 0.05
    # reference: autograd per network, then θ ← θ − η λ ∂L/∂θ with λ_W/n_{l-1}
    ref_W, ref_b = [], []
    for m in range(3):
        Ws = [W[m].clone().requires_grad_() for W in before.weights]
        bs = [b[m].clone().requires_grad_() for b in before.biases]
        h = torch.as_tensor(X)
        for l, (W, b) in enumerate(zip(Ws, bs)):
            h = (torch.tanh(h) if l else h) @ W.T + b
        L = 0.5 * ((h - torch.as_tensor(Y)) ** 2).sum()
        L.backward()
        ref_W.append([W - eta * lw / n * W.grad for W, lw, n in zip(Ws, net.lam_W, net.fan_in)])
        ref_b.append([b - eta * lb * b.grad for b, lb in zip(bs, net.lam_b)])
    losses = training.gradient_descent(ens, X, Y, eta, 1)
    assert losses.shape == (2, 3)
    for l in range(3):
        torch.testing.assert_close(ens.weights[l], torch.stack([r[l] for r in ref_W]).detach())
        torch.testing.assert_close(ens.biases[l], torch.stack([r[l] for r in ref_b]).detach())
    torch.testing.assert_close(losses[0], training.loss(before, X, Y))
    torch.testing.assert_close(losses[1], training.loss(ens, X, Y))


def test_output_change_after_one_step_is_minus_eta_H_epsilon_to_order_eta_squared():
    net = MLP(3, [16, 16, 2], "tanh", C_b=0.1, C_W=1.5)
    x_test = np.random.default_rng(2).normal(size=(2, 3))
    xs = np.concatenate([X, x_test])
    residuals = []
    etas = [1e-2, 1e-3, 1e-4]
    for eta in etas:
        ens = net.ensemble(5, seed=1)
        z0 = ens.output(xs)
        H = tangent.empirical_ntk(ens, xs)                        # [M, n, n, B, B]
        eps = z0[:, :4] - torch.as_tensor(Y)                      # [M, 4, n]
        pred = -eta * torch.einsum("mijab,mbj->mai", H[..., :, :4], eps)
        training.gradient_descent(ens, X, Y, eta, 1)
        residuals.append(float((ens.output(xs) - z0 - pred).abs().max()))
    ratios = np.array(residuals[:-1]) / np.array(residuals[1:])
    np.testing.assert_allclose(ratios, 100.0, rtol=0.05)          # O(η²): ×100 per decade


def test_training_reduces_the_loss_and_per_network_targets_work():
    ens = MLP(3, [16, 2], "relu", C_W=2.0).ensemble(8, seed=2)
    y = torch.randn(8, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    losses = training.gradient_descent(ens, X, y, 0.05, 200)
    assert torch.all(losses[-1] < 0.2 * losses[0])


def test_zero_learning_rate_layers_do_not_move():
    ens = MLP(3, [8, 8, 2], "tanh").ensemble(2, seed=0)
    W0 = ens.weights[0].clone()
    training.gradient_descent(ens, X, Y, 0.1, 3, lam_b=(0.0, 1.0, 1.0), lam_W=(0.0, 1.0, 1.0))
    assert torch.equal(ens.weights[0], W0)


def test_divergence_is_reported_with_the_step():
    ens = MLP(3, [32, 2], "relu", C_W=2.0).ensemble(2, seed=0)
    with pytest.raises(ValueError, match="non-finite at step"):
        training.gradient_descent(ens, X * 30, Y, 50.0, 50)


@pytest.mark.parametrize("kw,match", [
    (dict(eta=0.0), "eta"), (dict(eta=float("nan")), "eta"), (dict(steps=-1), "steps"),
    (dict(steps=2.5), "steps"), (dict(y=np.ones((4, 3))), "targets"), (dict(lam_W=-1.0), "lam_W"),
])
def test_bad_training_arguments(kw, match):
    args = dict(x=X, y=Y, eta=0.1, steps=1)
    args.update(kw)
    ens = MLP(3, [4, 2], "tanh").ensemble(2)
    with pytest.raises(ValueError, match=match):
        training.gradient_descent(ens, **args)
