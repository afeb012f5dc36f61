"""Moments <-> cumulants and the nearly-Gaussian distribution (§1.2-1.3 of [RY])."""

import time
from math import factorial

import numpy as np
import pytest

from dlt_companion import cumulants, gaussian, stats

BELL = [1, 1, 2, 5, 15, 52, 203, 877, 4140, 21147, 115975, 678570, 4213597]


def test_bell_numbers():
    assert [len(cumulants.set_partitions(k)) for k in range(0, 8)] == BELL[:8]
    assert [cumulants.bell_number(k) for k in range(len(BELL))] == BELL
    with pytest.raises(ValueError, match="Bell"):
        cumulants.set_partitions(11)


def _mobius(idx, moment):
    """Reference: the Möbius sum over explicitly listed set partitions."""
    total = 0.0
    for part in cumulants.set_partitions(len(idx)):
        r = len(part)
        total += (-1) ** (r - 1) * factorial(r - 1) * np.prod(
            [moment(tuple(sorted(idx[p] for p in B))) for B in part])
    return total


def _partition_sum(idx, cumulant):
    return sum(np.prod([cumulant(tuple(sorted(idx[p] for p in B))) for B in part])
               for part in cumulants.set_partitions(len(idx)))


def test_recursion_equals_the_mobius_sum_over_partitions():
    x = np.random.default_rng(5).gamma(2.0, 1.0, size=(2000, 3))       # any moment function will do
    moment = lambda s: float(np.prod(x[:, list(s)], axis=1).mean())    # noqa: E731
    for idx in [(0,), (0, 1), (0, 0, 1), (0, 1, 2, 2), (0, 0, 1, 1, 2), (0, 1, 1, 2, 2, 2),
                (0, 0, 0, 1, 2, 2, 2), (2, 1, 0, 1, 2, 0, 1)]:
        assert cumulants.joint_cumulant(idx, moment) == pytest.approx(_mobius(idx, moment), rel=1e-9, abs=1e-9)
        assert cumulants.moment_from_cumulants(idx, moment) == pytest.approx(_partition_sum(idx, moment),
                                                                             rel=1e-9, abs=1e-9)


def test_many_indices_are_fast_or_refused_with_the_cost():
    moms = {k: float(factorial(k)) for k in range(41)}                  # exponential(1)
    t = time.perf_counter()
    assert cumulants.joint_cumulant((0,) * 40, lambda s: moms[len(s)]) == pytest.approx(float(factorial(39)),
                                                                                       rel=1e-9)
    assert time.perf_counter() - t < 5.0
    with pytest.raises(ValueError, match="4.8e\\+06 terms"):
        cumulants.joint_cumulant(tuple(range(14)), lambda s: 1.0)


def test_single_variable_round_trip_and_known_values():
    # Gaussian N(mu, s2): cumulants (mu, s2, 0, 0, 0, 0)
    mu, s2 = 0.7, 2.0
    kappa = np.array([mu, s2, 0, 0, 0, 0])
    m = cumulants.cumulants_to_moments(kappa)
    assert m[1] == pytest.approx(mu ** 2 + s2)
    assert m[3] == pytest.approx(mu ** 4 + 6 * mu ** 2 * s2 + 3 * s2 ** 2)
    assert np.allclose(cumulants.moments_to_cumulants(m), kappa, atol=1e-12)
    # exponential(1): moments n!, cumulants (n-1)!
    moms = [factorial(n) for n in range(1, 7)]
    assert np.allclose(cumulants.moments_to_cumulants(moms), [factorial(n - 1) for n in range(1, 7)])


def test_joint_cumulant_of_gaussian_vanishes_beyond_two():
    K = np.array([[1.0, 0.3, 0.2], [0.3, 2.0, -0.4], [0.2, -0.4, 1.0]])
    mom = lambda idx: gaussian.wick_moment(idx, K)
    assert cumulants.joint_cumulant((0, 2), mom) == pytest.approx(0.2)
    for idx in [(0, 0, 1, 1), (0, 1, 2, 2), (0, 0, 1, 1, 2, 2)]:
        assert abs(cumulants.joint_cumulant(idx, mom)) < 1e-12
    # and the inverse map rebuilds the moment from K alone
    cum = lambda idx: K[idx[0], idx[1]] if len(idx) == 2 else 0.0
    assert cumulants.moment_from_cumulants((0, 1, 2, 2), cum) == pytest.approx(mom((0, 1, 2, 2)))


def test_joint_cumulant_matches_single_variable_recursion():
    moms = np.array([0.3, 1.2, 0.9, 4.1, 5.0])
    by_partitions = [cumulants.joint_cumulant((0,) * k, lambda idx: moms[len(idx) - 1]) for k in range(1, 6)]
    assert np.allclose(by_partitions, cumulants.moments_to_cumulants(moms))


def test_connected_correlator_of_gamma_samples():
    rng = np.random.default_rng(1)
    x = rng.gamma(3.0, 1.0, size=400_000)          # cumulants 3 (n-1)!
    for k, expected in [(2, 3.0), (3, 6.0), (4, 18.0)]:
        v, se = cumulants.connected_correlator(x, (0,) * k)
        assert abs(v - expected) < 4 * se
    # a Gaussian with the same variance would be rejected
    v, se = cumulants.connected_correlator(x, (0, 0, 0, 0))
    assert abs(v) > 10 * se


def test_joint_estimates_share_one_jackknife():
    x = np.random.default_rng(3).exponential(1.0, size=(20_000, 2)) - 1.0
    sets = [(0, 1), (0, 0, 1), (0, 0, 0, 0)]
    joint = cumulants.connected_correlators(x, sets, n_blocks=50)
    for c, idx in enumerate(sets):
        single = cumulants.connected_correlator(x, idx, n_blocks=50)
        assert joint.value[c] == pytest.approx(single.value, rel=1e-12)
        assert joint.stderr[c] == pytest.approx(single.stderr, rel=1e-10)
    assert np.allclose(joint.cov, joint.cov.T) and np.all(np.linalg.eigvalsh(joint.cov) > 0)


def test_weighted_connected_correlator_equals_unweighted_for_equal_weights():
    x = np.random.default_rng(2).standard_normal((5000, 2))
    a = cumulants.connected_correlator(x, (0, 0, 1, 1))
    b = cumulants.connected_correlator(x, (0, 0, 1, 1), weights=np.full(5000, 3.0))
    assert a[0] == pytest.approx(b[0], rel=1e-10)


def test_nearly_gaussian_leading_order_tensor():
    K = np.array([[1.0, 0.5], [0.5, 0.7]])
    ng = cumulants.NearlyGaussian.isotropic(K, 1e-4)
    for idx in [(0, 0, 0, 0), (0, 0, 1, 1), (0, 1, 1, 1)]:
        exact = ng.exact_connected(idx)
        lead = ng.connected_four_point()[idx]
        assert exact == pytest.approx(lead, rel=2e-3)
    assert ng.exact_moment((0, 1)) == pytest.approx(ng.two_point()[0, 1], rel=1e-6)


def test_single_variable_quartic_is_minus_lambda_K4_and_breaks_at_large_coupling():
    K = 1.3
    small = cumulants.NearlyGaussian.isotropic(K, 1e-4)
    assert small.connected_four_point()[0, 0, 0, 0] == pytest.approx(-1e-4 * K ** 4)
    assert small.exact_connected((0, 0, 0, 0)) == pytest.approx(-1e-4 * K ** 4, rel=1e-3)
    big = cumulants.NearlyGaussian.isotropic(K, 1.0)
    assert abs(big.exact_connected((0, 0, 0, 0)) / -K ** 4) < 0.5       # far from first order


def test_six_point_function_is_order_epsilon_squared():
    """Leading order (10λ² − ρ)K⁶ ε² for one variable; the remainder shrinks like ε³."""
    K = 1.3
    rest = []
    for eps in (0.04, 0.02):
        ng = cumulants.NearlyGaussian.isotropic(K, eps * 1.0, eps ** 2 * 2.0)
        lead = ng.connected_six_point()[(0,) * 6]
        assert lead == pytest.approx(eps ** 2 * (10 * 1.0 ** 2 * K - 2.0) * K ** 6, rel=1e-12)
        rest.append(ng.exact_connected((0,) * 6) - lead)
    assert rest[0] / rest[1] == pytest.approx(8.0, rel=0.15)
    # two variables, general tensors: same scaling of the remainder
    K2 = np.array([[1.0, 0.5], [0.5, 0.7]])
    rest = []
    for eps in (0.04, 0.02):
        ng = cumulants.NearlyGaussian.isotropic(K2, eps * 1.0, eps ** 2 * 2.0)
        rest.append(ng.exact_connected((0, 0, 0, 1, 1, 1)) - ng.connected_six_point()[0, 0, 0, 1, 1, 1])
    assert rest[0] / rest[1] == pytest.approx(8.0, rel=0.15)


def test_inverse_dictionary_recovers_the_couplings():
    K2 = np.array([[1.0, 0.5], [0.5, 0.7]])
    idx4 = list(np.ndindex(2, 2, 2, 2))
    idx6 = list(np.ndindex(*(2,) * 6))
    errors = []
    for eps in (0.02, 0.01):
        ng = cumulants.NearlyGaussian.isotropic(K2, eps * 1.0, eps ** 2 * 3.0)
        memo = {}

        def moment(s):
            if s not in memo:
                memo[s] = ng.exact_moment(s)
            return memo[s]
        G = np.array([[moment((a, b)) if a <= b else moment((b, a)) for b in range(2)] for a in range(2)])
        C4 = np.zeros((2,) * 4)
        C6 = np.zeros((2,) * 6)
        for i in idx4:
            C4[i] = cumulants.joint_cumulant(i, lambda s: moment(tuple(sorted(s))))
        for i in idx6:
            C6[i] = cumulants.joint_cumulant(i, lambda s: moment(tuple(sorted(s))))
        got = cumulants.couplings_from_correlators(G, C4, C6)
        errors.append((np.abs(got.K - ng.K).max(), np.abs(got.V - ng.V).max() / eps,
                       np.abs(got.U - ng.U).max() / eps ** 2))
    errors = np.array(errors)
    assert np.all(errors[1] < [1e-3, 0.05, 0.5])
    # K is off by O(ε²), V by O(ε²) = O(ε)·V, U by O(ε³) = O(ε)·U: halving ε gives 4, 2, 2
    np.testing.assert_allclose(errors[0] / errors[1], [4.0, 2.0, 2.0], rtol=0.25)


def test_rejection_and_importance_sampling_agree_with_quadrature():
    ng = cumulants.NearlyGaussian.isotropic(1.0, 0.5)
    exact = ng.exact_connected((0, 0, 0, 0))
    z, acc = ng.sample(300_000, seed=3)
    assert 0 < acc < 1
    v, se = cumulants.connected_correlator(z, (0, 0, 0, 0))
    assert abs(v - exact) < 4 * se
    v, se = ng.importance_connected((0, 0, 0, 0), 300_000, seed=4)
    assert abs(v - exact) < 4 * se
    assert abs(v - (-0.5)) > 4 * se                # first order is rejected at lambda = 0.5


@pytest.mark.parametrize("call, match", [
    (lambda: cumulants.moments_to_cumulants([]), "last axis"),
    (lambda: cumulants.moments_to_cumulants([1.0, np.nan]), "finite"),
    (lambda: cumulants.joint_cumulant((), lambda i: 1.0), "at least one"),
    (lambda: cumulants.joint_cumulant((0, -1), lambda i: 1.0), "integer >= 0"),
    (lambda: cumulants.connected_correlator(np.zeros((10, 2)), (0, 2)), "indices must be in"),
    (lambda: cumulants.connected_correlator(np.zeros((1, 2)), (0,)), "at least 2"),
    (lambda: cumulants.connected_correlator(np.zeros((10, 2)), (0,), weights=-np.ones(10)), "weights"),
    (lambda: cumulants.NearlyGaussian.isotropic(1.0, -0.1), ">= 0"),
    (lambda: cumulants.NearlyGaussian.create([[1.0]], -np.ones((1, 1, 1, 1))), "negative"),
    (lambda: cumulants.NearlyGaussian.create(np.eye(2), np.ones((2, 2, 2))), "shape"),
    (lambda: cumulants.NearlyGaussian.create(np.eye(2), np.arange(16.0).reshape(2, 2, 2, 2)), "symmetric"),
    (lambda: cumulants.NearlyGaussian.create([[1.0, 1.0], [1.0, 1.0]], np.zeros((2,) * 4)), "positive definite"),
    (lambda: cumulants.set_partitions(-1), "integer >= 0"),
    (lambda: cumulants.NearlyGaussian.isotropic(1.0, 0.1, -0.1), ">= 0"),
    (lambda: cumulants.NearlyGaussian.create(np.eye(2), np.zeros((2,) * 4), np.ones((2,) * 5)), "shape"),
    (lambda: cumulants.connected_correlators(np.zeros((10, 2)), []), "at least one"),
    (lambda: cumulants.couplings_from_correlators([[1.0]], [np.nan]), "finite"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_preactivation_correlators_match_stats_and_the_exact_second_layer_six_point():
    import torch  # noqa: F401  (ensembles need it)
    from dlt_companion import ensembles
    x = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, -1.0, 1.0, 0.5]])
    n, M = 4, 160_000
    ens = ensembles.MLPEnsemble(4, [n, n, n], "relu", 0.0, 2.0, n_networks=M, seed=3)
    zs = ens(x)
    j = cumulants.preactivation_correlators(zs, [("same", (0, 1, 0, 1)), ("different", (0, 0, 1, 1)),
                                                 ("six", 0)])
    for l in range(3):
        for s, (inputs, neurons) in enumerate([((0, 1, 0, 1), "same"), ((0, 0, 1, 1), "different")]):
            ref = stats.four_point(zs[l], inputs, neurons)
            assert j.value[l, s] == pytest.approx(ref.value, rel=1e-12)
            assert j.stderr[l, s] == pytest.approx(ref.stderr, rel=1e-10)
    # layer 2 given layer 1: E[z_i² z_j² z_k²]_conn = κ3(Ĝ) = C_W³ κ3(σ(z)²)/n² with z ~ N(0, K1)
    K1 = 2.0 * (x[0] @ x[0]) / 4
    m = [gaussian.expect(lambda u, p=p: np.maximum(u, 0) ** (2 * p), K1) for p in (1, 2, 3)]
    kappa3 = m[2] - 3 * m[1] * m[0] + 2 * m[0] ** 3
    stats.assert_agree("six-point at layer 2", 8.0 * kappa3 / n ** 2, j.value[1, 2], j.stderr[1, 2], quiet=True)
    assert abs(j.value[1, 2]) > 5 * j.stderr[1, 2]
    assert j.cov.shape == (9, 9)
