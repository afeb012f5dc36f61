"""Criticality, universality classes, large-depth asymptotics and the ReLU angle flow."""

import numpy as np
import pytest
import torch

from dlt_companion import criticality as cr
from dlt_companion import activations, ensembles, flows, stats


@pytest.mark.parametrize("act,params,C_W", [("relu", {}, 2.0), ("linear", {}, 1.0),
                                            ("leaky_relu", {"slope": 0.2}, 2 / 1.04)])
def test_scale_invariant_critical_point(act, params, C_W):
    c = cr.critical_point(act, **params)
    assert c.exists and c.universality == "scale-invariant" and c.C_b == 0.0
    assert c.C_W == pytest.approx(C_W, rel=1e-12)
    par, perp = cr.susceptibilities(activations.get(act, **params), 0.0, c.C_W, [0.3, 1.0, 7.0])
    np.testing.assert_allclose(par, 1.0, rtol=1e-12)
    np.testing.assert_allclose(perp, 1.0, rtol=1e-12)


@pytest.mark.parametrize("act,C_W", [("tanh", 1.0), ("sin", 1.0), ("erf", np.pi / 4)])
def test_kstar_zero_class(act, C_W):
    c = cr.critical_point(act)
    assert c.universality == "K*=0" and c.K_star == 0.0 and c.C_b == 0.0
    assert c.C_W == pytest.approx(C_W, rel=1e-12)
    assert cr.susceptibilities(act, 0.0, c.C_W, 0.0) == pytest.approx((1.0, 1.0))


@pytest.mark.parametrize("act", ["sigmoid", "softplus", "perceptron"])
def test_no_criticality(act):
    c = cr.critical_point(act)
    assert not c.exists and c.universality == "none" and c.C_W is None and c.reason


@pytest.mark.parametrize("act,K_star", [("swish", 14.32), ("gelu", 3.56)])
def test_half_stable_classes_satisfy_the_critical_conditions(act, K_star):
    c = cr.critical_point(act)
    assert c.universality == "half-stable" and c.K_star == pytest.approx(K_star, rel=1e-3)
    assert cr.susceptibilities(act, c.C_b, c.C_W, c.K_star) == pytest.approx((1.0, 1.0), rel=1e-9)
    K = flows.kernel(act, c.C_b, c.C_W, c.K_star, 3)
    np.testing.assert_allclose(K, c.K_star, rtol=1e-9)


def test_kstar_zero_power_laws_for_tanh():
    L = 2000
    f = flows.run("tanh", 0.0, 1.0, 1.0, L)
    asy = cr.asymptotics("tanh", L)
    assert f.K[-1] == pytest.approx(asy["K"], rel=0.01)          # K ≈ 1/(2l)
    assert f.V[-1] / f.K[-1] ** 2 == pytest.approx(asy["V_over_K2"], rel=0.02)   # (2/3) l
    assert asy["p_perp"] == pytest.approx(1.0)


def test_scale_invariant_vertex_slope():
    assert cr.asymptotics("relu", 11)["V_over_K2"] == pytest.approx(50.0)
    assert cr.asymptotics("linear", 11)["V_over_K2"] == pytest.approx(20.0)


def test_relu_arc_cosine_flow_matches_two_input_kernel():
    th0 = 1.2
    K1 = np.array([[1.0, np.cos(th0)], [np.cos(th0), 1.0]])
    K = flows.kernel("relu", 0.0, 2.0, K1, 12)
    np.testing.assert_allclose(np.arccos(np.clip(K[:, 0, 1], -1, 1)), cr.relu_angle_flow(th0, 12), atol=1e-7)
    a = 0.3
    Kl = flows.kernel(activations.get("leaky_relu", slope=a), 0.0, 2 / (1 + a * a), K1, 12)
    np.testing.assert_allclose(np.arccos(np.clip(Kl[:, 0, 1] / Kl[:, 0, 0], -1, 1)),
                               cr.relu_angle_flow(th0, 12, slope=a), atol=1e-7)


def test_relu_angle_decays_as_3pi_over_l():
    th = cr.relu_angle_flow(1.5, 5000)
    assert th[-1] == pytest.approx(cr.angle_asymptotic(5000), rel=0.01)


def test_bad_inputs():
    with pytest.raises(ValueError):
        cr.susceptibilities("tanh", 0.0, 0.0, 1.0)
    with pytest.raises(ValueError):
        cr.susceptibilities("tanh", 0.0, 1.0, -1.0)
    with pytest.raises(ValueError):
        cr.relu_angle_flow(4.0, 5)
    with pytest.raises(ValueError):
        cr.asymptotics("sigmoid", 10)
    with pytest.raises(ValueError):
        cr.critical_point("tanh", K_range=(1.0, 0.5))


def test_kernel_explodes_vanishes_or_stays_on_real_relu_networks():
    """ReLU kernel on real networks: K^{(L)} = K1 (C_W/2)^{L-1}; only C_W = 2 keeps it O(1)."""
    L, M, n = 10, 512, 16
    x = np.ones((1, 4))
    for C_W in (1.5, 2.0, 2.5):
        spec = ensembles.EnsembleSpec.build(4, [n] * L, "relu", 0.0, C_W)
        per = ensembles.map_networks(lambda ens: (ens.output(x)[:, 0] ** 2).mean(1), spec, M, seed=5)
        G, err = stats.mean(per)
        theory = C_W * (C_W / 2) ** (L - 1)
        stats.assert_agree(f"ReLU K^(L), C_W={C_W}", theory, G, err)
        if C_W != 2.0:
            assert abs(np.log(G / C_W)) > 1.0      # exploded or vanished by more than e
