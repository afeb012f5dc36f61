"""criticality_ntk: closed forms of Θ, fixed-point regimes, large-depth power laws at depth 10³,
and the learning-rate equivalence principle."""

import numpy as np
import pytest
from scipy import optimize

from dlt_companion import criticality_ntk as cn
from dlt_companion import flows
from dlt_companion.gaussian import expect


@pytest.mark.parametrize("act", ["linear", "relu", "leaky_relu"])
@pytest.mark.parametrize("C_b,C_W", [(0.0, None), (0.0, 0.8), (0.3, 0.7), (0.2, None), (0.0, 1.15)])
def test_scale_invariant_theta_closed_form_equals_the_recursion(act, C_b, C_W):
    info = cn.ntk_class(act)
    C_W = info["C_W"] if C_W is None else C_W * info["C_W"]    # None: critical, chi = 1
    got = cn.scale_invariant_theta(act, C_b, C_W, 0.4, 1.3, 0.9, 1.7, 30)
    want = flows.ntk_mean(act, C_b, C_W, 0.4, 1.3, 0.9, 1.7, 30)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_critical_relu_theta_grows_linearly():
    """ReLU at C_W = 2, C_b = 0: Θ^{(l)} = Θ^{(1)} + (l − 1)(λ_b + λ_W K/2)."""
    l = np.arange(1, 51)
    np.testing.assert_allclose(flows.ntk_mean("relu", 0.0, 2.0, 0.5, 2.0, 1.5, 1.0, 50),
                               1.0 + (l - 1) * (0.5 + 1.5), rtol=1e-12)


def _fixed_point(act, C_b, C_W):
    return optimize.brentq(lambda K: C_b + C_W * expect(lambda z: act_fn(act)(z) ** 2, K) - K, 1e-2, 50.0,
                           xtol=1e-15, rtol=1e-15)


def act_fn(name):
    from dlt_companion.activations import get
    return get(name)


@pytest.mark.parametrize("C_b,C_W,regime", [(0.05, 1.5, "vanishing"), (0.0, 1.6, "exploding")])
def test_ntk_at_a_kernel_fixed_point(C_b, C_W, regime):
    K = _fixed_point("tanh", C_b, C_W)
    fp = cn.ntk_fixed_point("tanh", C_b, C_W, 0.3, 1.2, K)
    assert fp.regime == regime
    np.testing.assert_allclose(fp.theta(40, 0.9), flows.ntk_mean("tanh", C_b, C_W, 0.3, 1.2, K, 0.9, 40),
                               rtol=1e-9)
    assert (fp.chi_perp > 1) == (regime == "exploding")
    assert 0 < fp.chi_par < 1                           # a stable fixed point of the kernel
    with pytest.raises(ValueError, match="not a fixed point"):
        cn.ntk_fixed_point("tanh", C_b, C_W, 0.3, 1.2, 1.1 * K)


def test_theta_at_fixed_point_critical_and_checks():
    np.testing.assert_allclose(cn.theta_at_fixed_point(1.0, 2.0, 1.0, 4), [1, 3, 5, 7])
    np.testing.assert_allclose(cn.theta_at_fixed_point(0.5, 1.0, 0.0, 60)[-1], 2.0)
    assert cn.ntk_fixed_point("relu", 0.0, 2.0, 1.0, 1.0, 1.0).regime == "critical"
    with pytest.raises(ValueError, match="chi_perp"):
        cn.theta_at_fixed_point(0.0, 1.0, 1.0, 3)


CASES = [("relu", 1.0, 1.0, 1.0), ("relu", 0.0, 1.0, 2.0), ("relu", 1.0, 0.0, 1.0),
         ("linear", 0.3, 1.0, 1.5), ("leaky_relu", 0.5, 1.0, 1.0), ("tanh", 1.0, 1.0, None),
         ("tanh", 0.0, 1.0, None), ("sin", 0.5, 1.0, None), ("erf", 0.5, 2.0, None)]


@pytest.mark.parametrize("act,lam_b,lam_W,K_star", CASES)
def test_asymptotic_power_laws_match_the_recursions_at_depth_1000(act, lam_b, lam_W, K_star):
    L = 1000
    info = cn.ntk_class(act)
    fl = flows.ntk_fluctuations(act, info["C_b"], info["C_W"], lam_b, lam_W,
                                K_star if K_star else 0.8, 1.0, L)
    asy = cn.asymptotics(act, lam_b, lam_W, K_star=K_star)
    rel = fl.relative()
    # leading order: relative corrections O(log l / l) for K* = 0, O(1/l) for scale invariance
    np.testing.assert_allclose(fl.Theta[-1], asy.theta(L), rtol=0.01)
    largest = max(abs(asy.a_A), asy.a_B, abs(asy.a_D), asy.a_F)
    for k in "ABDF":
        coef = getattr(asy, "a_" + k)
        if coef == 0.0:                                       # no linear growth
            assert abs(rel[k][-1] / L) < 0.01 * largest, k
        else:
            np.testing.assert_allclose(rel[k][-1] / L, coef, rtol=0.02, err_msg=k)
        np.testing.assert_allclose(asy.relative(L)[k], coef * L)


def test_tanh_coefficients_are_the_documented_numbers():
    asy = cn.asymptotics("tanh", 1.0, 1.0)
    assert asy.constants["p_perp"] == pytest.approx(1.0) and asy.constants["a1"] == pytest.approx(-2.0)
    np.testing.assert_allclose([asy.a_A, asy.a_B, asy.a_D, asy.a_F], [1 / 15, 1 / 5, -1 / 6, 1 / 5])
    relu = cn.asymptotics("relu", 0.0, 1.0, K_star=1.0)          # w = 1: (1 + 1 + 5)/3, 2/3, 3, 1
    np.testing.assert_allclose([relu.a_A, relu.a_B, relu.a_D, relu.a_F], [7 / 3, 2 / 3, 3, 1])


def test_ntk_class_refuses_other_activations():
    for act in ["gelu", "softplus", "sigmoid", "swish"]:
        with pytest.raises(ValueError, match="class|half-stable"):
            cn.asymptotics(act)
    with pytest.raises(ValueError, match="K_star"):
        cn.asymptotics("relu")
    with pytest.raises(ValueError, match="both 0"):
        cn.asymptotics("tanh", 0.0, 0.0)


@pytest.mark.parametrize("act,C_b,C_W,K1", [("relu", 0.0, 2.0, 1.3), ("tanh", 0.0, 1.0, 0.7),
                                            ("tanh", 0.2, 1.7, 0.5), ("gelu", 0.1, (1.0, 1.6, 1.2, 1.9, 1.4, 1.0), 0.9)])
def test_layer_contributions_sum_to_the_output_ntk(act, C_b, C_W, K1):
    L = 6
    lam_b, lam_W = (0.3, 1.0, 0.5, 0.0, 2.0, 1.0), 0.7
    C_W1 = C_W[0] if np.ndim(C_W) else C_W
    x_sq = (K1 - C_b) / C_W1
    per = cn.layer_contributions(act, C_b, C_W, lam_b, lam_W, K1, L)
    Theta1 = lam_b[0] + lam_W * x_sq
    Theta = flows.ntk_mean(act, C_b, C_W, lam_b, lam_W, K1, Theta1, L)
    np.testing.assert_allclose(per.sum(), Theta[-1], rtol=1e-12)
    assert per[3, 0] == 0.0


@pytest.mark.parametrize("act,C_b,C_W", [("relu", 0.0, 2.0), ("tanh", 0.0, 1.0), ("tanh", 0.3, 2.0),
                                         ("relu", 0.0, 2.3)])
def test_equivalence_learning_rates_give_equal_contributions_and_theta_of_order_one(act, C_b, C_W):
    K1 = 0.8
    for L in [4, 16, 64]:
        lb, lw = cn.equivalence_learning_rates(act, C_b, C_W, K1, L, lam_b=0.5, lam_W=1.5)
        per = cn.layer_contributions(act, C_b, C_W, lb, lw, K1, L)
        np.testing.assert_allclose(per[:, 0], 0.5 / L, rtol=1e-10)
        np.testing.assert_allclose(per[:, 1], 1.5 / L, rtol=1e-10)
        x_sq = (K1 - C_b) / C_W
        Theta = flows.ntk_mean(act, C_b, C_W, lb, lw, K1, lb[0] + lw[0] * x_sq, L)
        np.testing.assert_allclose(Theta[-1], 2.0, rtol=1e-10)


@pytest.mark.parametrize("act,K_star", [("relu", 1.3), ("tanh", None), ("sin", None)])
def test_the_book_power_law_rates_keep_theta_of_order_one_at_large_depth(act, K_star):
    info = cn.ntk_class(act)
    K1 = K_star if K_star else 1.0
    out = []
    for L in [50, 400]:
        lb, lw = cn.equivalence_power_law(act, L, 0.5, 1.5, K_star=K_star)
        per = cn.layer_contributions(act, info["C_b"], info["C_W"], lb, lw, K1, L)
        out.append(per.sum())
        # away from the first layers every layer contributes ~ (λ̃_b + λ̃_W)/L
        np.testing.assert_allclose(per[L // 2:].sum(axis=1) * L, 2.0, rtol=0.1)
    assert abs(out[1] - 2.0) < abs(out[0] - 2.0) + 1e-9 and abs(out[1] - 2.0) < 0.1


def test_equivalence_rates_refuse_a_layer_that_contributes_nothing():
    with pytest.raises(ValueError, match="contributes nothing"):
        cn.equivalence_learning_rates("relu", 0.0, 2.0, 0.0, 4)
