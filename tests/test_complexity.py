"""Epilogue ε helpers: parameter budgets, aspect ratios and the dimensionless 1/n couplings."""

import numpy as np
import pytest

from dlt_companion import complexity
from dlt_companion.flows import ntk_fluctuations
from dlt_companion.network import MLP

X = np.array([0.9, -0.4, 0.3])


@pytest.mark.parametrize("L", [2, 3, 5, 12])
def test_parameter_count_matches_the_mlp(L):
    net = MLP(3, [7] * (L - 1) + [2], "tanh")
    assert complexity.parameter_count(3, 7, L, 2) == net.n_parameters


@pytest.mark.parametrize("P,L", [(3000, 2), (3000, 3), (3000, 7), (50_000, 16), (641, 4)])
def test_width_for_budget_is_the_brute_force_best(P, L):
    counts = {n: MLP(4, [n] * (L - 1) + [1], "relu").n_parameters for n in range(1, 3000)}
    best = min(counts, key=lambda n: (abs(counts[n] - P), n))
    assert complexity.width_for_budget(P, L, 4) == best


def test_budget_architectures_spend_about_the_budget():
    rows = complexity.budget_architectures(3000, [3, 4, 8, 16], 4)
    assert [r[0] for r in rows] == [3, 4, 8, 16]
    assert all(abs(p / 3000 - 1) < 0.1 for _, _, p in rows)
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)


def test_depth_for_aspect_ratio_brackets_the_target():
    P, r = 1e6, 0.25
    L = complexity.depth_for_aspect_ratio(P, r, 4)
    ratio = lambda d: d / complexity.width_for_budget(P, d, 4)
    assert ratio(L - 1) < r * 1.2 and ratio(L + 1) > r / 1.2
    assert abs(np.log(ratio(L) / r)) <= min(abs(np.log(ratio(L - 1) / r)), abs(np.log(ratio(L + 1) / r)))


@pytest.mark.parametrize("L,n", [(3, 20), (6, 12), (10, 40)])
def test_relu_vertex_is_five_per_hidden_layer(L, n):
    """Critical ReLU, C_b = 0: E[z⁴]/E[z²]² = 3 Π_l (1 + 5/n_l) exactly, so V/(nK²) = 5(L−1)/n at O(1/n)."""
    c = complexity.couplings(MLP(3, [n] * (L - 1) + [1], "relu", C_W=2.0), X)
    assert c["V"] == pytest.approx(5 * (L - 1) / n, rel=1e-10)


def test_couplings_match_the_ntk_flow_and_the_fan_in():
    net = MLP(3, [9, 9, 9, 1], "tanh", C_b=0.1, C_W=1.2, lam_b=0.4, lam_W=1.5)
    x = X[None]
    fl = ntk_fluctuations("tanh", net.C_b, net.C_W, net.lam_b, net.lam_W, net.first_layer_kernel(x)[0, 0],
                          net.first_layer_ntk(x)[0, 0], net.depth)
    c = complexity.couplings(net, X)
    assert c["Theta"] == pytest.approx(fl.Theta[-1])
    assert c["A+2B"] == pytest.approx((fl.A[-1] + 2 * fl.B[-1]) / (9 * fl.Theta[-1] ** 2), rel=1e-10)
    assert c["D"] == pytest.approx(fl.D[-1] / (9 * fl.K[-1] * fl.Theta[-1]), rel=1e-10)


def test_couplings_are_dimensionless():
    """Rescaling every learning rate by s multiplies Θ by s, dĤ by s², ddĤ by s³: the ratios do not move."""
    a = complexity.couplings(MLP(3, [8, 8, 8, 1], "gelu", C_W=1.7, lam_b=0.3, lam_W=1.1), X)
    b = complexity.couplings(MLP(3, [8, 8, 8, 1], "gelu", C_W=1.7, lam_b=0.3 * 7.0, lam_W=1.1 * 7.0), X)
    assert b["Theta"] == pytest.approx(7.0 * a["Theta"])
    for k in complexity.COUPLINGS:
        assert b[k] == pytest.approx(a[k], rel=1e-9, abs=1e-14), k


def test_couplings_are_organized_by_depth_over_width():
    """At criticality the couplings are (almost) linear in L/n: doubling L and n together changes them by < 15 %, doubling n alone halves them."""
    a = complexity.couplings(MLP(3, [16] * 7 + [1], "relu", C_W=2.0), X)
    b = complexity.couplings(MLP(3, [32] * 15 + [1], "relu", C_W=2.0), X)
    c = complexity.couplings(MLP(3, [32] * 7 + [1], "relu", C_W=2.0), X)
    for k in ("V", "A+2B", "P", "R"):
        assert abs(b[k] / a[k] - 1) < 0.15 and abs(c[k] / a[k] - 0.5) < 0.05, k


@pytest.mark.parametrize("call,match", [
    (lambda: complexity.width_for_budget(-5, 3, 4), "budget"),
    (lambda: complexity.width_for_budget(3000, 1, 4), "at least 2"),
    (lambda: complexity.width_for_budget(10, 8, 4), "cannot fill"),
    (lambda: complexity.parameter_count(4, 0, 3), "n must be a positive integer"),
    (lambda: complexity.depth_for_aspect_ratio(3000, 0.0, 4), "aspect ratio"),
    (lambda: complexity.depth_for_aspect_ratio(3000, 50.0, 4, max_depth=10), "does not reach"),
    (lambda: complexity.couplings("tanh", X), "MLP"),
    (lambda: complexity.couplings(MLP(3, [8, 1], "tanh"), np.ones((2, 3))), "one input"),
    (lambda: complexity.couplings(MLP(3, [1], "tanh"), X), "one-layer"),
    (lambda: complexity.couplings(MLP(3, [8, 8, 1], "tanh", gamma=0.5), X), "residual"),
])
def test_bad_input_is_refused_with_a_reason(call, match):
    with pytest.raises(ValueError, match=match):
        call()
