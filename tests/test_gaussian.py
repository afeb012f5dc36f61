"""Gaussian expectations against closed forms (target: 1e-10 relative)."""

import numpy as np
import pytest

from dlt_companion import activations, gaussian

relu, erf, tanh = (activations.get(n) for n in ("relu", "erf", "tanh"))
RTOL = 1e-10


def arccos_kernel(K11, K12, K22):
    """⟨relu(z1) relu(z2)⟩ (Cho & Saul's arc-cosine kernel of degree 1)."""
    c = np.clip(K12 / np.sqrt(K11 * K22), -1.0, 1.0)
    th = np.arccos(c)
    return np.sqrt(K11 * K22) / (2 * np.pi) * (np.sin(th) + (np.pi - th) * c)


def arcsin_kernel(K11, K12, K22):
    """⟨erf(z1) erf(z2)⟩ (Williams' arcsine kernel)."""
    return 2 / np.pi * np.arcsin(2 * K12 / np.sqrt((1 + 2 * K11) * (1 + 2 * K22)))


@pytest.mark.parametrize("K", [1e-3, 0.3, 1.0, 4.0, 25.0])
def test_one_variable_closed_forms(K):
    assert gaussian.expect(lambda z: z**4, K) == pytest.approx(3 * K**2, rel=RTOL)
    assert gaussian.expect(lambda z: z**2, K) == pytest.approx(K, rel=RTOL)
    assert gaussian.expect(lambda z: 2.0 + 3.0 * z, K) == pytest.approx(2.0, rel=RTOL)
    assert gaussian.expect(relu, K) == pytest.approx(np.sqrt(K / (2 * np.pi)), rel=RTOL)
    assert gaussian.expect(lambda z: relu(z) ** 2, K) == pytest.approx(K / 2, rel=RTOL)
    assert gaussian.expect(lambda z: relu(z) ** 3, K) == pytest.approx(2 * K**1.5 / np.sqrt(2 * np.pi), rel=RTOL)
    assert gaussian.expect(lambda z: erf(z) ** 2, K) == pytest.approx(arcsin_kernel(K, K, K), rel=RTOL)


def test_zero_variance_gives_the_value_at_zero_exactly():
    assert gaussian.expect(lambda z: np.cos(z) + 1.0, 0.0) == 2.0
    assert gaussian.expect2(np.cos, np.cos, 0.0, 0.0, 0.0) == pytest.approx(1.0, rel=1e-15)
    assert gaussian.expect2(np.cos, lambda z: z**2, 0.0, 0.0, 2.0) == pytest.approx(2.0, rel=RTOL)


def test_expect_is_vectorised_over_kernels():
    K = np.array([[0.5, 1.0], [2.0, 3.0]])
    np.testing.assert_allclose(gaussian.expect(lambda z: z**2, K), K, rtol=RTOL)


PAIRS = [(1.0, 0.3, 2.0), (1.0, -0.9, 1.0), (2.0, 1.99999, 2.0), (3.0, 0.1, 0.2), (0.5, 0.0, 4.0),
         (10.0, 3.0, 10.0), (1.0, 1.0, 1.0), (0.7, -0.7, 0.7)]


@pytest.mark.parametrize("K11,K12,K22", PAIRS)
def test_two_variable_closed_forms(K11, K12, K22):
    assert gaussian.expect2(relu, relu, K11, K12, K22) == pytest.approx(
        arccos_kernel(K11, K12, K22), rel=RTOL, abs=1e-14)
    assert gaussian.expect2(erf, erf, K11, K12, K22) == pytest.approx(
        arcsin_kernel(K11, K12, K22), rel=RTOL, abs=1e-14)
    assert gaussian.expect2(lambda z: z, lambda z: z, K11, K12, K22) == pytest.approx(K12, rel=RTOL, abs=1e-14)
    # Isserlis: E[z1^2 z2^2] = K11 K22 + 2 K12^2
    assert gaussian.expect2(np.square, np.square, K11, K12, K22) == pytest.approx(
        K11 * K22 + 2 * K12**2, rel=RTOL)


def test_perfectly_correlated_inputs_reduce_to_one_variable():
    for K in (0.2, 1.0, 7.0):
        assert gaussian.expect2(tanh, tanh, K, K, K) == pytest.approx(
            gaussian.expect(lambda z: tanh(z) ** 2, K), rel=RTOL)
        # z2 = 2 z1 exactly
        assert gaussian.expect2(relu, relu, K, 2 * K, 4 * K) == pytest.approx(K, rel=RTOL)


def test_expect2_broadcasts_over_kernel_arrays():
    K12 = np.linspace(-0.9, 0.9, 7)
    np.testing.assert_allclose(gaussian.expect2(relu, relu, 1.0, K12, 1.0),
                               arccos_kernel(1.0, K12, 1.0), rtol=RTOL, atol=1e-14)


def test_three_and_four_variables_match_isserlis():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    K = A @ A.T / 4
    i, j, k, l = 0, 1, 2, 3
    isserlis = K[i, j] * K[k, l] + K[i, k] * K[j, l] + K[i, l] * K[j, k]
    # four variables: the split rule on an ill-conditioned kernel (eigenvalues 0.025..2.3)
    assert gaussian.expect_n(lambda z: z[..., 0] * z[..., 1] * z[..., 2] * z[..., 3], K) == pytest.approx(isserlis, rel=1e-5)
    K3 = K[:3, :3]
    assert gaussian.expect_n(lambda z: z[..., 0] ** 2 * z[..., 1] * z[..., 2], K3) == pytest.approx(
        K3[0, 0] * K3[1, 2] + 2 * K3[0, 1] * K3[0, 2], rel=RTOL)


def test_expect_n_handles_singular_covariances():
    K = np.ones((3, 3))       # z1 = z2 = z3
    assert gaussian.expect_n(lambda z: z[..., 0] * z[..., 1] * z[..., 2] ** 2, K) == pytest.approx(3.0, rel=RTOL)
    K4 = np.zeros((4, 4))
    K4[:2, :2] = [[1.0, 0.3], [0.3, 2.0]]                                  # rank 2 inside four variables
    assert gaussian.expect_n(lambda z: z[..., 0] ** 2 * z[..., 1] ** 2 + z[..., 3], K4) == pytest.approx(
        1.0 * 2.0 + 2 * 0.3**2, rel=1e-7)


def _three(rho, scale=(1.0, 1.3, 0.8)):
    """A 3x3 covariance with correlation rho between every pair and unequal variances."""
    s = np.sqrt(np.asarray(scale))
    return (np.full((3, 3), rho) + (1 - rho) * np.eye(3)) * np.outer(s, s)


@pytest.mark.parametrize("rho, nodes", [(-0.4, None), (0.0, None), (0.3, None), (0.8, None), (0.95, 32)])
def test_three_variables_resolve_relu_kinks_to_closed_form_accuracy(rho, nodes):
    K = _three(rho)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        got = gaussian.expect_n(lambda z: relu(z[..., i]) * relu(z[..., j]), K, nodes=nodes)
        assert got == pytest.approx(arccos_kernel(K[i, i], K[i, j], K[j, j]), rel=RTOL)
        got = gaussian.expect_n(lambda z: erf(z[..., i]) * erf(z[..., j]), K, nodes=nodes)
        assert got == pytest.approx(arcsin_kernel(K[i, i], K[i, j], K[j, j]), rel=RTOL)


def test_three_variables_agree_with_the_two_variable_rule_on_products_of_three():
    # ⟨relu(z0) relu(z1) z2⟩ = Σ_k K_2k ⟨∂_k[relu(z0) relu(z1)]⟩ (Stein) = K_20 ⟨Θ(z0) relu(z1)⟩ + K_21 ⟨relu(z0) Θ(z1)⟩
    K = _three(0.5)
    step = lambda z: (z > 0).astype(float)
    want = K[2, 0] * gaussian.expect2(step, relu, K[0, 0], K[0, 1], K[1, 1]) \
        + K[2, 1] * gaussian.expect2(relu, step, K[0, 0], K[0, 1], K[1, 1])
    got = gaussian.expect_n(lambda z: relu(z[..., 0]) * relu(z[..., 1]) * z[..., 2], K)
    assert got == pytest.approx(want, rel=RTOL)


def test_three_variables_with_a_duplicated_input_integrate_over_the_rank():
    K = np.array([[1.0, 1.0, 0.3], [1.0, 1.0, 0.3], [0.3, 0.3, 2.0]])   # z0 = z1
    got = gaussian.expect_n(lambda z: relu(z[..., 1]) * relu(z[..., 2]), K)
    assert got == pytest.approx(arccos_kernel(1.0, 0.3, 2.0), rel=RTOL)
    assert gaussian.expect_n(lambda z: np.cos(z[..., 0]) + 1.0, np.zeros((3, 3))) == pytest.approx(2.0, rel=1e-15)


def test_four_variables_meet_their_documented_accuracy():
    # the split rule resolves kinks in four variables too (the tensor Gauss–Hermite rule
    # it replaced was 2e-2 off here)
    K = np.full((4, 4), 0.3) + 0.7 * np.eye(4)
    got = gaussian.expect_n(lambda z: relu(z[..., 0]) * relu(z[..., 3]), K)
    assert got == pytest.approx(arccos_kernel(1.0, 0.3, 1.0), rel=1e-7)
    got = gaussian.expect_n(lambda z: tanh(z[..., 0]) * tanh(z[..., 3]), K)
    assert got == pytest.approx(gaussian.expect2(tanh, tanh, 1.0, 0.3, 1.0), rel=1e-6)


def _sobol_reference(fn, K, log2_points=19, seed=0):
    """Randomised quasi-Monte Carlo (scipy's scrambled Sobol, 4 × 2^19 = 2^21 points): an independent
    reference; the spread over 4 scramblings is its error bar."""
    from scipy.stats import norm, qmc
    A = np.linalg.cholesky(K + 1e-300 * np.eye(len(K)))
    vals = []
    for r in range(4):
        u = qmc.Sobol(d=len(K), scramble=True, seed=seed + r).random_base2(log2_points)
        z = norm.ppf(np.clip(u, 1e-16, 1 - 1e-16)) @ A.T
        vals.append(fn(z).mean())
    return np.mean(vals), np.std(vals, ddof=1) / 2


@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "leaky_relu", "softplus", "swish",
                                  "erf", "sin", "sigmoid", "linear"])
def test_connected_four_input_average_against_sobol_quasi_monte_carlo(name):
    """The connected four-input ⟨σ0σ1σ2σ3⟩ − ⟨σ0σ1⟩⟨σ2σ3⟩ (the source of V_(01)(23)) to 0.1 %
    for every registered smooth-or-kinked activation, against an independent QMC reference."""
    from dlt_companion.activations import get
    act = get(name)
    X = np.random.default_rng(3).normal(size=(4, 5))
    K = 0.2 + X @ X.T / 5
    avg = gaussian.Averages(act, K)
    ours = avg.mean((0, 1, 2, 3)) - avg.mean((0, 1)) * avg.mean((2, 3))
    ref, err = _sobol_reference(lambda z: np.prod(act(z), axis=-1), K)
    ref_c = ref - avg.mean((0, 1)) * avg.mean((2, 3))
    assert abs(ours - ref_c) < max(4 * err, 1e-9)
    assert abs(ours - ref_c) <= 1e-3 * abs(ref_c) + 4 * err


def test_expect_n_low_dimensions_use_the_exact_rules():
    K = np.array([[1.0, 0.3], [0.3, 2.0]])
    assert gaussian.expect_n(lambda z: relu(z[..., 0]) * relu(z[..., 1]), K) == pytest.approx(
        arccos_kernel(1.0, 0.3, 2.0), rel=RTOL)


@pytest.mark.parametrize("args", [(1.0, 2.0, 1.0), (-1.0, 0.0, 1.0), (1.0, 0.0, np.nan)])
def test_non_psd_or_invalid_pair_kernels_raise(args):
    with pytest.raises(ValueError):
        gaussian.expect2(relu, relu, *args)


def test_negative_variance_and_bad_covariances_raise():
    with pytest.raises(ValueError, match=">= 0"):
        gaussian.expect(relu, -1.0)
    with pytest.raises(ValueError, match="positive semidefinite"):
        gaussian.expect_n(lambda z: z[..., 0], np.array([[1.0, 2.0, 0], [2.0, 1.0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        gaussian.expect_n(lambda z: z[..., 0], np.ones((2, 3)))
    with pytest.raises(ValueError, match="1 to 4"):
        gaussian.expect_n(lambda z: z[..., 0], np.eye(5))


def test_pair_rule_is_the_rule_behind_expect2():
    z1, z2, w = gaussian.pair_rule(1.0, 0.3, 2.0)
    assert z1.shape == z2.shape == w.shape
    assert w.sum() == pytest.approx(1.0, rel=1e-14)
    assert (relu(z1) * relu(z2)) @ w == pytest.approx(arccos_kernel(1.0, 0.3, 2.0), rel=RTOL)
    with pytest.raises(ValueError):
        gaussian.pair_rule(1.0, 2.0, 1.0)


# --------------------------------------------------------------------------------------------
# the engine: Averages
# --------------------------------------------------------------------------------------------

def test_averages_reproduce_the_single_purpose_rules():
    from dlt_companion.activations import get
    act = get("tanh")
    K = np.array([[1.0, 0.3, 0.1], [0.3, 2.0, -0.4], [0.1, -0.4, 0.7]])
    avg = gaussian.Averages(act, K)
    ss = avg.tensor((0, 0))
    for a in range(3):
        assert ss[a, a] == pytest.approx(gaussian.expect(lambda z: tanh(z) ** 2, K[a, a]), rel=1e-13)
        for b in range(3):
            if a != b:
                assert ss[a, b] == pytest.approx(gaussian.expect2(tanh, tanh, K[a, a], K[a, b], K[b, b]),
                                                 rel=1e-13)
    dd = avg.tensor((1, 1))
    d1 = act.numpy[1]
    assert dd[0, 1] == pytest.approx(gaussian.expect2(d1, d1, 1.0, 0.3, 2.0), rel=1e-13)
    mixed = avg.mean((0, 1, 2), (1, 0, 2))
    want = gaussian.expect_n(lambda z: act.numpy[1](z[..., 0]) * tanh(z[..., 1]) * act.numpy[2](z[..., 2]), K)
    assert mixed == pytest.approx(want, rel=1e-12)


def test_averages_tensor_is_symmetric_where_the_orders_are():
    avg = gaussian.Averages("gelu", np.array([[1.0, 0.3], [0.3, 1.5]]))
    T = avg.tensor((1, 1, 0, 0))
    np.testing.assert_allclose(T, T.transpose(1, 0, 2, 3), rtol=1e-14)
    np.testing.assert_allclose(T, T.transpose(0, 1, 3, 2), rtol=1e-14)
    assert not np.allclose(T, T.transpose(2, 3, 0, 1))             # σ'σ'σσ is not σσσ'σ'


@pytest.mark.parametrize("name", ["tanh", "relu", "softplus"])
def test_kernel_derivatives_match_finite_differences(name):
    """dK and d2K (Stein's lemma) against central differences of the averages along a
    symmetric direction Δ: d/dt T(K+tΔ) = Σ dK Δ and d²/dt² T = Σ d2K with V = Δ⊗Δ."""
    K = np.array([[1.0, 0.35], [0.35, 1.4]])
    D = np.array([[0.3, -0.2], [-0.2, 0.5]])
    h = 1e-4
    for orders in [(0, 0), (1, 1)]:
        if name == "relu" and orders == (1, 1):
            continue                                          # step functions: d²⟨σ'σ'⟩ has δ's
        T = lambda t: gaussian.Averages(name, K + t * D).tensor(orders)   # noqa: E731
        avg = gaussian.Averages(name, K)
        first = np.einsum("abcd,cd->ab", avg.dK(orders), D)
        np.testing.assert_allclose(first, (T(h) - T(-h)) / (2 * h), rtol=1e-6, atol=1e-9)
        second = avg.d2K(orders, np.einsum("ab,cd->abcd", D, D))
        np.testing.assert_allclose(second, (T(h) - 2 * T(0.0) + T(-h)) / h**2, rtol=2e-4, atol=1e-6)


def test_relu_ntk_derivative_of_step_products_is_finite_and_correct():
    """d⟨σ'σ'⟩/dK for ReLU (step functions) by Stein, against the closed form
    ⟨σ'σ'⟩ = (π − θ)/2π, θ = arccos(K12/√(K11K22))."""
    K = np.array([[1.0, 0.4], [0.4, 2.0]])
    avg = gaussian.Averages("relu", K)
    dK = avg.dK((1, 1))[0, 1]
    h = 1e-6
    f = lambda k12: (np.pi - np.arccos(k12 / np.sqrt(2.0))) / (2 * np.pi)   # noqa: E731
    total = dK[0, 1] + dK[1, 0]                                   # a symmetric change of K12
    assert total == pytest.approx((f(0.4 + h) - f(0.4 - h)) / (2 * h), rel=1e-7)


def test_averages_refuse_singular_kernels_for_derivatives_but_not_for_means():
    K = np.array([[1.0, 1.0], [1.0, 1.0]])
    avg = gaussian.Averages("tanh", K)
    assert avg.mean((0, 1)) == pytest.approx(gaussian.expect(lambda z: tanh(z) ** 2, 1.0), rel=1e-12)
    with pytest.raises(ValueError, match="singular"):
        avg.dK((0, 0))


@pytest.mark.parametrize("call,match", [
    (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(3), nodes=0), "nodes"),
    (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(3), nodes=2.7), "nodes"),
    (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(4), nodes=400), "points"),
    (lambda: gaussian.expect(lambda z: z, 1.0 + 1j), "real"),
    (lambda: gaussian.expect2(tanh, tanh, 1.0, 0.1j, 1.0), "real"),
    (lambda: gaussian.Averages("tanh", [[1.0]]).mean((0, 1)), "0..0"),
    (lambda: gaussian.Averages("tanh", [[1.0]]).mean((0,), (4,)), "0..3"),
    (lambda: gaussian.Averages("tanh", np.eye(5)).mean((0, 1, 2, 3, 4)), "at most 4"),
])
def test_hostile_gaussian_calls_raise_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wick_moment_of_many_indices_is_fast_and_exact():
    """E[z^40] = 39!! K^20 (≈ 3.2e23 for K = 1): 21 memoised states, not 10^23 pairings."""
    from math import prod
    assert gaussian.wick_moment((0,) * 40, [[1.0]]) == pytest.approx(prod(range(1, 40, 2)), rel=1e-14)
    K = np.array([[1.0, 0.3], [0.3, 2.0]])
    idx = (0,) * 12 + (1,) * 10                                    # 22 indices
    # reference: E[z0^12 z1^10] from the conditional decomposition z1 = ρ' z0 + w
    got = gaussian.wick_moment(idx, K)
    ref = gaussian.expect_n(lambda z: z[..., 0] ** 12 * z[..., 1] ** 10, K)
    assert got == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("name", ["relu", "tanh", "gelu", "erf"])
def test_four_input_rule_is_converged_against_a_finer_rule(name):
    """The default 14 nodes a side against 24 (5.3 M points): connected part to 1e-4 (erf at
    K ≈ 3, the slowest case, is 8e-5 off; ReLU and tanh ~1e-7)."""
    from dlt_companion.activations import get
    act = get(name)
    X = np.random.default_rng(3).normal(size=(4, 5))
    K = 0.2 + X @ X.T / 5
    avg = gaussian.Averages(act, K)
    fine = gaussian.expect_n(lambda z: np.prod(act(z), axis=-1), K, nodes=24)
    s = avg.mean((0, 1)) * avg.mean((2, 3))
    assert avg.mean((0, 1, 2, 3)) - s == pytest.approx(fine - s, rel=1e-4)
