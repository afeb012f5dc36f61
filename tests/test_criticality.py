"""Criticality, fixed points and their stability, the δ-expansion, asymptotics, the ReLU angle flow.

References are independent of the code under test: finite differences of the kernel map
computed by :mod:`flows` (two-input quadrature), iterating the map to see which way the
kernel actually moves, the exact two-input flow, and real networks.
"""

import numpy as np
import pytest

from dlt_companion import activations, ensembles, flows, stats
from dlt_companion import criticality as cr


def _map(act, C_b, C_W, K):
    """f(K) = C_b + C_W⟨σ²⟩_K through flows.kernel (one layer)."""
    return flows.kernel(act, C_b, C_W, K, 2)[1]


def _chi_perp_fd(act, C_b, C_W, K, e=1e-4):
    """χ_⊥ from the two-input map: K_[2]' / K_[2] for two inputs of equal norm, K_[2] = e/2."""
    Kp = flows.kernel(act, C_b, C_W, np.array([[K, K - e], [K - e, K]]), 2)[1]
    return ((Kp[0, 0] + Kp[1, 1] - 2 * Kp[0, 1]) / 4) / (e / 2)


@pytest.mark.parametrize("act,params,C_W", [("relu", {}, 2.0), ("linear", {}, 1.0),
                                            ("leaky_relu", {"slope": 0.2}, 2 / 1.04)])
def test_scale_invariant_critical_point_against_finite_differences(act, params, C_W):
    c = cr.critical_point(act, **params)
    assert c.exists and c.universality == "scale-invariant" and c.C_b == 0.0
    assert c.C_W == pytest.approx(C_W, rel=1e-12)
    a = activations.get(act, **params)
    for K in (0.3, 1.0, 7.0):
        h = 1e-4 * K
        par_fd = (_map(a, 0.0, c.C_W, K + h) - _map(a, 0.0, c.C_W, K - h)) / (2 * h)
        assert par_fd == pytest.approx(1.0, abs=1e-8)
        assert _chi_perp_fd(a, 0.0, c.C_W, K, e=1e-7 * K) == pytest.approx(1.0, abs=2e-4)   # kinked: O(√e)
    assert c.candidates[0].K_star is None and c.candidates[0].stability == "marginal"


@pytest.mark.parametrize("act,C_W", [("tanh", 1.0), ("sin", 1.0), ("erf", np.pi / 4)])
def test_kstar_zero_class(act, C_W):
    c = cr.critical_point(act)
    assert c.universality == "K*=0" and c.K_star == 0.0 and c.C_b == 0.0
    assert c.C_W == pytest.approx(C_W, rel=1e-12)
    zero = c.candidates[0]
    assert zero.stability == "stable" and zero.attracts_from == "above"
    # the map near 0 is K + c K²: compare with the map itself at small K
    K = 1e-3
    assert (_map(act, 0.0, c.C_W, K) - K) / K ** 2 == pytest.approx(c.coefficients.c, rel=1e-2)


@pytest.mark.parametrize("act", ["sigmoid", "softplus", "perceptron"])
def test_no_criticality(act):
    c = cr.critical_point(act)
    assert not c.exists and c.universality == "none" and c.C_W is None and c.reason


@pytest.mark.parametrize("act", ["swish", "gelu"])
def test_half_stable_points_satisfy_the_conditions_by_finite_differences(act):
    c = cr.critical_point(act)
    assert c.universality == "half-stable"
    K = c.K_star
    assert _map(act, c.C_b, c.C_W, K) == pytest.approx(K, rel=1e-10)           # fixed point
    h = 1e-3 * K
    par_fd = (_map(act, c.C_b, c.C_W, K + h) - _map(act, c.C_b, c.C_W, K - h)) / (2 * h)
    assert par_fd == pytest.approx(1.0, abs=1e-7)
    assert _chi_perp_fd(act, c.C_b, c.C_W, K, e=1e-6 * K) == pytest.approx(1.0, abs=1e-5)
    curv_fd = (_map(act, c.C_b, c.C_W, K + 10 * h) - 2 * K + _map(act, c.C_b, c.C_W, K - 10 * h)) / (10 * h) ** 2
    fp = next(p for p in c.candidates if p.K_star == K)
    assert fp.curvature == pytest.approx(curv_fd, rel=0.02)
    # the K* = 0 point of these activations has c > 0: it repels, it is not half-stable
    zero = next(p for p in c.candidates if p.K_star == 0.0)
    assert zero.stability == "unstable" and c.coefficients.c > 0


def _moves_toward(act, C_b, C_W, K_star, K0, depth):
    K = flows.kernel(act, C_b, C_W, K0, depth)
    return abs(K[-1] - K_star) < abs(K0 - K_star)


@pytest.mark.parametrize("act,C_b,C_W", [("gelu", None, None), ("swish", None, None),
                                         ("tanh", 0.0, 1.0), ("gelu", 0.0, 4.0),
                                         ("tanh", 0.0, 1.5), ("tanh", 0.1, 1.5), ("tanh", 0.0, 0.7),
                                         ("softplus", 0.0, 1.0)])
def test_stability_labels_agree_with_iterating_the_map(act, C_b, C_W):
    """Each classified fixed point: the kernel really approaches it from the sides it claims."""
    if C_b is None:
        crit = cr.critical_point(act)
        C_b, C_W = crit.C_b, crit.C_W
    points = cr.fixed_points(act, C_b, C_W)
    assert points
    for p in points:
        K = p.K_star
        d = (0.01 if p.stability == "half-stable" else 0.05) * K if K > 0 else 0.01
        depth = 20_000 if p.stability == "half-stable" else 200
        above = _moves_toward(act, C_b, C_W, K, K + d, depth)
        below = _moves_toward(act, C_b, C_W, K, K - d, depth) if K > 0 else None
        expected = {"stable": (True, True if K > 0 else None), "unstable": (False, False if K > 0 else None),
                    "half-stable": (p.attracts_from == "above", p.attracts_from == "below")}[p.stability]
        assert (above, below) == expected, (act, C_b, C_W, str(p))


def test_half_stable_points_are_found_among_all_fixed_points():
    """SWISH's critical point (a tangency, f'' ~ 6e-6) sits 2 % below a stable crossing at 14.59."""
    c = cr.critical_point("swish")
    pts = cr.fixed_points("swish", c.C_b, c.C_W)
    half = [p for p in pts if p.stability == "half-stable"]
    assert len(half) == 1 and half[0].K_star == pytest.approx(c.K_star, rel=1e-6)
    assert half[0].attracts_from == "below"
    assert any(p.stability == "stable" and p.K_star > c.K_star for p in pts)
    c = cr.critical_point("gelu")
    pts = cr.fixed_points("gelu", c.C_b, c.C_W)
    assert [p.stability for p in pts] == ["stable", "half-stable"]
    assert pts[1].K_star == pytest.approx(c.K_star, rel=1e-6) and pts[1].attracts_from == "above"


def test_scale_invariant_fixed_points_in_closed_form():
    (p,) = cr.fixed_points("relu", 0.2, 1.5)                  # f(K) = 0.2 + 0.75 K
    assert p.K_star == pytest.approx(0.8) and p.stability == "stable"
    (p,) = cr.fixed_points("relu", 0.0, 2.0)
    assert p.K_star is None and p.stability == "marginal"
    assert cr.fixed_points("relu", 0.1, 2.0) == ()            # grows linearly: no fixed point
    (p,) = cr.fixed_points("relu", 0.0, 3.0)
    assert p.K_star == 0.0 and p.stability == "unstable"


def test_kernel_map_derivatives_against_finite_differences():
    for act, C_W, K in [("tanh", 1.3, 0.7), ("gelu", 1.9, 2.5), ("softplus", 1.0, 1.2)]:
        d1, d2, h = cr.kernel_map_derivatives(act, C_W, K)
        e = 1e-3 * K
        f = [_map(act, 0.0, C_W, K + k * e) for k in (-1, 0, 1)]
        assert d1 == pytest.approx((f[2] - f[0]) / (2 * e), rel=1e-6)
        assert d2 == pytest.approx((f[2] - 2 * f[1] + f[0]) / e ** 2, rel=1e-3)
        perp = [cr.susceptibilities(act, 0.0, C_W, K + k * e)[1] for k in (-1, 1)]
        assert h == pytest.approx((perp[1] - perp[0]) / (4 * e), rel=1e-5)


def test_delta_expansion_matches_the_exact_two_input_flow_to_order_delta_squared():
    rng = np.random.default_rng(0)
    x0, dx = rng.standard_normal(8), rng.standard_normal(8)      # dx has a parallel part too
    x0 *= np.sqrt(8 / (x0 @ x0))
    errors = []
    for eps in (0.2, 0.1):
        x = np.stack([x0 + eps * dx / 2, x0 - eps * dx / 2])
        K1 = flows.first_layer_kernel(x, 0.1, 1.6)
        exact = cr.delta_components(flows.kernel("tanh", 0.1, 1.6, K1, 25))
        d = cr.delta_flow("tanh", 0.1, 1.6, K1, 25)
        errors.append([np.abs(got / ref - 1).max() for got, ref in zip((d.K0, d.K1, d.K2), exact)])
        np.testing.assert_allclose(d.kernel()[0], K1, rtol=1e-12)
    errors = np.array(errors)
    assert np.all(errors[1] < 0.02)
    np.testing.assert_allclose(errors[0] / errors[1], 4.0, rtol=0.15)        # O(δ²)


@pytest.mark.parametrize("act", ["tanh", "sin", "erf"])
def test_kstar_zero_power_laws(act):
    L = 2000
    asy = cr.asymptotics(act, np.arange(1, L + 1))
    f = flows.run(act, 0.0, asy.critical.C_W, 1.0, L)
    assert f.K[-1] == pytest.approx(asy.K[-1], rel=0.01)                          # 1/(−c l)
    assert f.V[-1] / f.K[-1] ** 2 == pytest.approx(asy.V_over_K2[-1], rel=0.02)   # (2/3) l
    d = cr.delta_flow(act, 0.0, asy.critical.C_W, (1.0, 0.01, 0.001), L)
    l = np.arange(1, L + 1)[L // 2:]
    slope = lambda y: np.polyfit(np.log(l), np.log(np.abs(y[L // 2:])), 1)[0]   # noqa: E731
    assert -slope(d.K1) == pytest.approx(asy.p_par, abs=0.01)
    assert -slope(d.K2) == pytest.approx(asy.p_perp, abs=0.01)
    assert asy.p_perp == pytest.approx(1.0)         # odd activations: b = c


def test_scale_invariant_vertex_slope():
    assert cr.asymptotics("relu", 11).V_over_K2 == pytest.approx(50.0)
    assert cr.asymptotics("linear", 11).V_over_K2 == pytest.approx(20.0)
    V = flows.four_point("relu", 0.0, 2.0, 1.0, 11)
    assert V[-1] == pytest.approx(50.0, rel=1e-10)         # the recursion agrees


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


@pytest.mark.parametrize("call, match", [
    (lambda: cr.susceptibilities("tanh", 0.0, 0.0, 1.0), "C_W"),
    (lambda: cr.susceptibilities("tanh", 0.0, 1.0, -1.0), ">= 0"),
    (lambda: cr.relu_angle_flow(4.0, 5), "angles"),
    (lambda: cr.asymptotics("sigmoid", 10), "class"),
    (lambda: cr.asymptotics("tanh", 2.5), "integers"),
    (lambda: cr.asymptotics("tanh", 0), "integers"),
    (lambda: cr.critical_point("tanh", K_range=(1.0, 0.5)), "K_range"),
    (lambda: cr.critical_point("tanh", n_grid=0), "n_grid"),
    (lambda: cr.critical_point("tanh", n_grid=2.5), "n_grid"),
    (lambda: cr.fixed_points("tanh", 0.0, 1.0, n_grid=1), "n_grid"),
    (lambda: cr.critical_point(activations.get("leaky_relu"), slope=0.3), "registry name"),
    (lambda: cr.asymptotics(activations.get("leaky_relu"), 5, slope=0.3), "registry name"),
    (lambda: cr.classify_fixed_point("tanh", 0.0, 1.5, 1.0), "not a fixed point"),
    (lambda: cr.delta_flow("tanh", 0.0, 1.0, np.eye(3), 4), "2x2"),
    (lambda: cr.delta_flow("tanh", 0.0, 1.0, (0.0, 0.1, 0.1), 4), "K_\\[0\\] > 0"),
    (lambda: cr.kernel_map_derivatives("tanh", 1.0, 0.0), "K > 0"),
    (lambda: cr.angle_asymptotic(10, slope=1.0), "slope"),
    (lambda: cr.taylor("tanh", order=4), "order"),
    (lambda: cr.fixed_points("perceptron", 0.0, 1.0), "Dirac"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_leaky_relu_params_are_used():
    c = cr.critical_point("leaky_relu", slope=0.3)
    assert c.C_W == pytest.approx(2 / 1.09)


def test_kernel_explodes_vanishes_or_stays_on_real_relu_networks():
    """ReLU kernel on real networks: K^{(L)} = K1 (C_W/2)^{L-1}; only C_W = 2 keeps it O(1)."""
    L, M, n = 10, 512, 16
    x = np.ones((1, 4))
    for C_W in (1.5, 2.0, 2.5):
        spec = ensembles.EnsembleSpec.build(4, [n] * L, "relu", 0.0, C_W)
        per = ensembles.map_networks(lambda ens: (ens.output(x)[:, 0] ** 2).mean(1), spec, M, seed=5)
        G, err = stats.mean(per)
        theory = C_W * (C_W / 2) ** (L - 1)
        stats.assert_agree(f"ReLU K^(L), C_W={C_W}", theory, G, err, quiet=True)
        if C_W != 2.0:
            assert abs(np.log(G / C_W)) > 1.0      # exploded or vanished by more than e
