"""The O(1/n) trained prediction (§∞.2–∞.3): closed forms, exact expectations, real networks."""

import dataclasses

import numpy as np
import pytest
import torch

from dlt_companion import finite_width as fw
from dlt_companion import tangent, training
from dlt_companion.finite_width import _Jet, _descent, _gauss_hermite
from dlt_companion.flows.ddntk import ddntk_statistics
from dlt_companion.network import MLP

X3 = np.array([[1.4, 0.0], [0.0, 1.4], [0.9, 0.7]])
Y2 = np.array([1.2, -0.7])


@pytest.fixture(scope="module")
def comp():
    net = MLP(2, [8, 8, 1], "tanh", C_b=0.1, C_W=1.1, lam_b=0.5)
    st = ddntk_statistics(net.act, net.C_b, net.C_W, net.lam_b, net.lam_W, net.first_layer_kernel(X3),
                          net.first_layer_ntk(X3), net.depth)
    return fw.composite_statistics(st, 1)


def _eta(cs):
    return 1.0 / np.linalg.eigvalsh(cs.Theta[:2, :2]).max()


def test_frozen_ntk_descent_is_the_kernel_predictor_at_every_step():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    H = a @ a.T + np.eye(3)
    z0 = rng.normal(size=3)
    eta, t = 0.5 / np.linalg.eigvalsh(H[:2, :2]).max(), 7
    got = fw.kernel_model_outputs(torch.as_tensor(z0), torch.as_tensor(H), torch.as_tensor(Y2), eta, t, [0, 1])
    R = np.linalg.solve(H[:2, :2], np.eye(2) - np.linalg.matrix_power(np.eye(2) - eta * H[:2, :2], t))
    want = z0 - H[:, :2] @ R @ (z0[:2] - Y2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_pieces_at_convergence_equal_their_closed_forms(comp):
    cs = comp
    pr = fw.trained_prediction(cs, Y2, 2, _eta(cs))
    Th, K = cs.Theta, cs.K
    Ti = np.linalg.inv(Th[:2, :2])
    Phi = Th[:, :2] @ Ti                                          # [P, 2]
    np.testing.assert_allclose(pr.mean_inf, Phi @ Y2, rtol=1e-9, atol=1e-9)
    dPhi = lambda E: (E[:, :2] - Phi @ E[:2, :2]) @ Ti
    np.testing.assert_allclose(pr.mean_pieces["Theta1"], dPhi(cs.Theta1) @ Y2, rtol=1e-8, atol=1e-9)
    # ½ E[d²Φ[ΔĤ, ΔĤ]] y = −E[ΔĤ_{·a} Ti_ab ΔĤ_bc] Ti y + Φ E[ΔĤ_{Aa} Ti_ab ΔĤ_bc] Ti y
    HH = cs.HH
    E1 = np.einsum("ab,pabc->pc", Ti, HH[:, :2, :2, :2])
    E2 = np.einsum("ab,dabc->dc", Ti, HH[:2, :2, :2, :2])
    np.testing.assert_allclose(pr.mean_pieces["dNTK_var"], (-E1 + Phi @ E2) @ Ti @ Y2, rtol=1e-8,
                               atol=1e-9)
    # infinite-width covariance: (e − Φ) K (e − Φ)ᵀ with Φ acting on the training block
    Pm = np.eye(3)
    Pm[:, :2] -= Phi
    np.testing.assert_allclose(pr.cov_inf, Pm @ K @ Pm.T, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(pr.cov_pieces["G1"], Pm @ cs.G1 @ Pm.T, rtol=1e-8, atol=1e-12)
    # trained to convergence: the training outputs are the targets, with no 1/n corrections
    np.testing.assert_allclose(pr.mean_inf[:2], Y2, atol=1e-10)
    np.testing.assert_allclose(pr.mean(n=1)[:2], Y2, atol=1e-9)
    np.testing.assert_allclose(pr.cov(n=1)[:2, :2], 0.0, atol=1e-9)


def test_pieces_are_linear_in_their_statistics(comp):
    cs = comp
    a = fw.trained_prediction(cs, Y2, 2, _eta(cs), steps=40)
    b = fw.trained_prediction(dataclasses.replace(cs, Tz=2 * cs.Tz, I=3 * cs.I, II=3 * cs.II,
                                                  Theta1=-cs.Theta1), Y2, 2, _eta(cs), steps=40)
    np.testing.assert_allclose(b.mean_pieces["dNTK"], 2 * a.mean_pieces["dNTK"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.mean_pieces["ddNTK"], 3 * a.mean_pieces["ddNTK"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.mean_pieces["Theta1"], -a.mean_pieces["Theta1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b.cov_pieces["dNTK"], 2 * a.cov_pieces["dNTK"], rtol=1e-10, atol=1e-12)


def test_expectations_equal_direct_quadrature_with_correlated_fluctuations(comp):
    """Plant fluctuations with exactly the given correlators, T(z) = Σ_d E[T z_d] (K⁻¹z)_d and
    ΔĤ(z) = ½ Σ_cd E[ΔĤ z_c z_d] ((K⁻¹z)_c (K⁻¹z)_d − K⁻¹_cd), average the dynamics over z(0)
    directly and differentiate at zero size: the dNTK pieces and the D, F part of the covariance."""
    cs = dataclasses.replace(comp, HH=0 * comp.HH)
    eta, steps = _eta(cs), 30
    pr = fw.trained_prediction(cs, Y2, 2, eta, steps=steps)
    t = lambda a: torch.as_tensor(np.asarray(a, float))
    nodes, w = _gauss_hermite(cs.K)
    Z, W = t(nodes), t(w)
    Ki = np.linalg.inv(cs.K)
    Yz = nodes @ Ki
    Tz = np.einsum("abcd,nd->nabc", cs.Tz, Yz)
    Xz = 0.5 * np.einsum("abcd,ncd->nab", cs.Hzz, np.einsum("nc,nd->ncd", Yz, Yz) - Ki)
    z4 = torch.zeros((3,) * 4, dtype=torch.float64)
    one = lambda v: _Jet([v, None])

    def run(dH, dT):
        out = _descent(one(Z), _Jet([t(cs.Theta), dH]), _Jet([torch.zeros(3, 3, 3, dtype=torch.float64), dT]),
                       one(z4), one(z4), one(t(Y2)), eta, steps, 2)
        return out.c[0], out.c[1]
    F0, F1 = run(None, t(Tz))
    np.testing.assert_allclose(torch.einsum("np,n->p", F1, W).numpy(), pr.mean_pieces["dNTK"],
                               rtol=1e-8, atol=1e-11)
    F0, F1 = run(t(Xz), None)
    cov1 = torch.einsum("np,nq,n->pq", F1, F0, W)
    m1 = torch.einsum("np,n->p", F1, W)
    m0 = torch.einsum("np,n->p", F0, W)
    got = (cov1 + cov1.T - torch.outer(m0, m1) - torch.outer(m1, m0)).numpy()
    np.testing.assert_allclose(got, pr.cov_pieces["dNTK_var"], rtol=1e-8, atol=1e-11)


def test_truncated_descent_follows_a_wide_network_better_than_its_kernel_model():
    net = MLP(2, [256, 1], "tanh", C_W=1.2)
    ens = net.ensemble(16, seed=5)
    D = tangent.differentials(ens, X3)
    c = lambda a, k: tangent.composite(a, k)
    z0 = ens.output(X3)[:, :, 0]
    eta, steps = 0.5, 40
    args = (c(D.ntk, 2), c(D.d2, 3), c(D.d3, 4), c(D.d2d2, 4))
    zt = fw.truncated_descent(z0, *args, torch.as_tensor(Y2), eta, steps, [0, 1])
    zk = fw.kernel_model_outputs(z0, args[0], torch.as_tensor(Y2), eta, steps, [0, 1])
    training.gradient_descent(ens, X3[:2], Y2, eta=eta, steps=steps)
    z = ens.output(X3)[:, :, 0]
    assert float((z - zt)[:, 2].abs().mean()) < 0.2 * float((z - zk)[:, 2].abs().mean())


def test_bad_input_is_refused(comp):
    with pytest.raises(ValueError, match="targets"):
        fw.trained_prediction(comp, np.ones(3), 2, 0.1)
    with pytest.raises(ValueError, match="eta"):
        fw.trained_prediction(comp, Y2, 2, -0.1)
    with pytest.raises(ValueError, match="does not converge"):
        fw.trained_prediction(comp, Y2, 2, 10.0)
    with pytest.raises(ValueError, match="n_train"):
        fw.trained_prediction(comp, np.ones(4), 4, 0.1)
    with pytest.raises(ValueError, match="CompositeStatistics"):
        fw.trained_prediction("stats", Y2, 2, 0.1)
    with pytest.raises(ValueError, match="steps"):
        fw.truncated_descent(torch.zeros(3), torch.eye(3), torch.zeros(3, 3, 3), torch.zeros((3,) * 4),
                             torch.zeros((3,) * 4), torch.zeros(2), 0.1, -1, [0, 1])
    with pytest.raises(ValueError, match="train"):
        fw.kernel_model_outputs(torch.zeros(3), torch.eye(3), torch.zeros(2), 0.1, 3, [0, 0])


def test_giant_leap_of_a_one_layer_network_is_the_kernel_predictor_for_every_network():
    # a one-layer network is linear in its parameters: its NTK is the same for every network and
    # never moves, so one leap with Ξ = Ĥ_AA⁻¹ lands on the kernel predictor Ĥ_δA Ĥ_AA⁻¹ y exactly
    net = MLP(2, [1], "linear")
    H = torch.as_tensor(net.first_layer_ntk(X3))
    Xi = torch.linalg.inv(H[:2, :2]).numpy()
    predictor = (H[:, :2] @ torch.linalg.solve(H[:2, :2], torch.as_tensor(Y2))).numpy()
    got = fw.giant_leaps(net.ensemble(5, seed=2), X3, Y2, 2, Xi).numpy()
    np.testing.assert_allclose(got, np.broadcast_to(predictor, got.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fw.giant_leaps(net.ensemble(3, seed=2), X3, Y2, 2, Xi, leaps=0).numpy(), 0.0,
                               atol=1e-14)


def test_giant_leaps_and_composite_refuse_bad_input():
    ens = MLP(2, [8, 1], "tanh").ensemble(2, seed=0)
    with pytest.raises(ValueError, match="n_train"):
        fw.giant_leaps(ens, X3, Y2, 4, np.eye(2))
    with pytest.raises(ValueError, match="steps"):
        fw.giant_leaps(ens, X3, Y2, 2, np.eye(2), leaps=-1)
    with pytest.raises(ValueError, match="learning-rate tensor"):
        fw.giant_leaps(ens, X3, Y2, 2, np.eye(3))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        tangent.composite(torch.zeros(2, 1, 1, 3, 3), 0)
    with pytest.raises(ValueError, match="dimensions"):
        tangent.composite(torch.zeros(2, 1, 3), 2)
    with pytest.raises(ValueError, match="equal neuron"):
        tangent.composite(torch.zeros(2, 1, 2, 3, 3), 2)


def test_composite_orders_neuron_major():
    t = torch.arange(2 * 2 * 2 * 3 * 3, dtype=torch.float64).reshape(2, 2, 2, 3, 3)   # [M, i, j, α, β]
    c = tangent.composite(t, 2)
    assert c.shape == (2, 6, 6)
    assert c[1, 1 * 3 + 2, 0 * 3 + 1] == t[1, 1, 0, 2, 1]
