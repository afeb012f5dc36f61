"""flows.ntk_fluctuations: the NTK variance (A, B) and NTK–preactivation cross-correlation (D, F).

Closed forms at layer 2 (exact at any width), recursions specialised by hand for linear and
ReLU networks, the index structure for several inputs, width ratios, and bad input.
"""

import numpy as np
import pytest

from dlt_companion import flows
from dlt_companion.flows import NTKFluctuations

FIELDS = ("A", "B", "D", "F")
K2 = np.array([[1.0, 0.45], [0.45, 1.3]])
T2 = np.array([[1.4, 0.6], [0.6, 1.7]])


def test_first_layer_is_deterministic_for_one_and_several_inputs():
    for K1, T1 in [(0.8, 1.3), (K2, T2)]:
        fl = flows.ntk_fluctuations("tanh", 0.1, 1.5, 0.5, 1.2, K1, T1, 4)
        assert isinstance(fl, NTKFluctuations)
        for name in FIELDS + ("V",):
            assert np.all(getattr(fl, name)[0] == 0.0), name
            assert np.any(getattr(fl, name)[1] != 0.0), name
        np.testing.assert_array_equal(fl.Theta[0], T1)
        np.testing.assert_array_equal(fl.K[0], K1)


@pytest.mark.parametrize("C_W,lam_b,lam_W,K,T", [(1.0, 0.0, 1.0, 1.0, 1.0), (1.7, 0.4, 2.5, 0.6, 2.2)])
def test_layer_two_closed_forms_for_linear_networks(C_W, lam_b, lam_W, K, T):
    """σ = z: ⟨z⁴⟩ = 3K², σ' = 1, so A = 2λ_W²K², B = C_W²Θ², D = 2λ_W C_W K², F = C_W² K Θ."""
    fl = flows.ntk_fluctuations("linear", 0.3, C_W, lam_b, lam_W, K, T, 2)
    np.testing.assert_allclose([fl.A[1], fl.B[1], fl.D[1], fl.F[1]],
                               [2 * lam_W ** 2 * K ** 2, C_W ** 2 * T ** 2, 2 * lam_W * C_W * K ** 2,
                                C_W ** 2 * K * T], rtol=1e-12)
    np.testing.assert_allclose(fl.Theta[1], lam_b + lam_W * K + C_W * T, rtol=1e-13)


@pytest.mark.parametrize("C_W,lam_b,lam_W,K,T", [(2.0, 1.0, 1.0, 1.0, 2.0), (1.3, 0.2, 3.0, 0.7, 0.9)])
def test_layer_two_closed_forms_for_relu(C_W, lam_b, lam_W, K, T):
    """ReLU: ⟨σ²⟩ = K/2, ⟨σ⁴⟩ = 3K²/2, ⟨σ'²⟩ = ⟨σ'⁴⟩ = 1/2, ⟨σ'²σ²⟩ = K/2."""
    fl = flows.ntk_fluctuations("relu", 0.0, C_W, lam_b, lam_W, K, T, 2)
    A = lam_W ** 2 * 5 * K ** 2 / 4 + lam_W * C_W * T * K / 2 + C_W ** 2 * T ** 2 / 4
    D = C_W * (lam_W * 5 * K ** 2 / 4 + C_W * T * K / 4)
    np.testing.assert_allclose([fl.A[1], fl.B[1], fl.D[1], fl.F[1]],
                               [A, C_W ** 2 * T ** 2 / 2, D, C_W ** 2 * T * K / 2], rtol=1e-11)


def test_layer_two_closed_forms_for_linear_networks_with_two_inputs():
    """Isserlis: ⟨z_a z_b z_c z_d⟩ − K_ab K_cd = K_ac K_bd + K_ad K_bc; book index order."""
    C_W, lam_W = 1.4, 0.8
    fl = flows.ntk_fluctuations("linear", 0.0, C_W, 0.3, lam_W, K2, T2, 2)
    pair = np.einsum("ac,bd->abcd", K2, K2) + np.einsum("ad,bc->abcd", K2, K2)
    np.testing.assert_allclose(fl.A[1], lam_W ** 2 * pair, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(fl.D[1], lam_W * C_W * pair, rtol=1e-11, atol=1e-14)
    # B[α1, α3, α2, α4] = C_W² Θ_α1α2 Θ_α3α4 ; F[α1, α3, α2, α4] = C_W² Θ_α1α2 K_α3α4
    np.testing.assert_allclose(fl.B[1], C_W ** 2 * np.einsum("ac,bd->abcd", T2, T2), rtol=1e-12)
    np.testing.assert_allclose(fl.F[1], C_W ** 2 * np.einsum("ac,bd->abcd", T2, K2), rtol=1e-12)


def test_layer_two_relu_two_inputs_matches_the_arc_cosine_kernels():
    """σ' ∈ {0, 1} and σ'σ = σ: B_(00)(11) = C_W²⟨σ'_0σ'_1⟩Θ_01², F_(00)(11) = C_W²⟨σ_0σ_1⟩Θ_01."""
    C_W = 2.0
    th = np.arccos(K2[0, 1] / np.sqrt(K2[0, 0] * K2[1, 1]))
    pp = (np.pi - th) / (2 * np.pi)
    ss = np.sqrt(K2[0, 0] * K2[1, 1]) * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
    fl = flows.ntk_fluctuations("relu", 0.0, C_W, 0.5, 1.0, K2, T2, 2)
    np.testing.assert_allclose(fl.B[1, 0, 0, 1, 1], C_W ** 2 * pp * T2[0, 1] ** 2, rtol=1e-10)
    np.testing.assert_allclose(fl.F[1, 0, 0, 1, 1], C_W ** 2 * ss * T2[0, 1], rtol=1e-10)
    np.testing.assert_allclose(fl.Theta[1, 0, 1], 0.5 + ss + C_W * pp * T2[0, 1], rtol=1e-10)


def _by_hand(act, C_b, C_W, lam_b, lam_W, K1, T1, L, ratios):
    """The one-input recursions written out for σ = z or ReLU (independent of the engine)."""
    if act == "linear":
        s2, s4, p2, p4, p2s2, ds2, dp2, chi_par_over_cw = (lambda K: K), (lambda K: 3 * K * K), 1.0, 1.0, \
            (lambda K: K), 1.0, 0.0, 1.0
    else:
        s2, s4, p2, p4, p2s2, ds2, dp2, chi_par_over_cw = (lambda K: K / 2), (lambda K: 1.5 * K * K), 0.5, \
            0.5, (lambda K: K / 2), 0.5, 0.0, 0.5
    K, T, V, A, B, D, F = K1, T1, 0.0, 0.0, 0.0, 0.0, 0.0
    out = [(K, T, V, A, B, D, F)]
    for l in range(1, L):
        cb, cw, lb, lw, r = C_b[l], C_W[l], lam_b[l], lam_W[l], ratios[l - 1]
        chi_perp, chi_par = cw * p2, cw * chi_par_over_cw
        var_ss, cov_ps, var_pp = s4(K) - s2(K) ** 2, p2s2(K) - p2 * s2(K), p4 - p2 * p2
        var_O = lw ** 2 * var_ss + 2 * lw * cw * T * cov_ps + cw ** 2 * T * T * var_pp
        cov_OQ = cw * (lw * var_ss + cw * T * cov_ps)
        Phi = lw * ds2 + cw * T * dp2
        newA = var_O + r * (Phi * Phi * V + 2 * chi_perp * Phi * D + chi_perp ** 2 * A)
        newD = cov_OQ + r * (chi_par * Phi * V + chi_perp * chi_par * D)
        newB = cw ** 2 * p4 * T * T + r * chi_perp ** 2 * B
        newF = cw ** 2 * p2s2(K) * T + r * chi_par ** 2 * F
        newV = cw ** 2 * var_ss + r * chi_par ** 2 * V
        K, T = cb + cw * s2(K), lb + lw * s2(K) + cw * p2 * T
        V, A, B, D, F = newV, newA, newB, newD, newF
        out.append((K, T, V, A, B, D, F))
    return np.array(out)


@pytest.mark.parametrize("act", ["linear", "relu"])
def test_deeper_layers_match_the_recursions_written_out_by_hand(act):
    L = 6
    C_b, C_W = (0.0, 0.2, 0.1, 0.0, 0.3, 0.1), (1.0, 1.1, 0.9, 2.1, 1.8, 2.0)
    lam_b, lam_W = (0.5, 1.0, 0.0, 2.0, 0.7, 0.3), (1.0, 0.4, 1.5, 1.0, 0.2, 2.5)
    widths = [8, 24, 12, 12, 36]
    ratios = [24 / 8, 12 / 24, 1.0, 36 / 12]
    fl = flows.ntk_fluctuations(act, C_b, C_W, lam_b, lam_W, 0.9, 1.6, L, widths=widths)
    want = _by_hand(act, C_b, C_W, lam_b, lam_W, 0.9, 1.6, L, [1.0] + ratios)
    got = np.stack([fl.K, fl.Theta, fl.V, fl.A, fl.B, fl.D, fl.F], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu", "swish"])
def test_two_input_flow_restricted_to_one_input_is_the_one_input_flow(act):
    args = (act, (0.0, 0.1, 0.2, 0.1, 0.0), (1.0, 1.5, 1.2, 1.8, 1.4), 0.5, (1.0, 1.2, 0.8, 1.0, 0.5))
    two = flows.ntk_fluctuations(*args, K2, T2, 5, widths=[6, 12, 6, 9])
    one = flows.ntk_fluctuations(*args, K2[0, 0], T2[0, 0], 5, widths=[6, 12, 6, 9])
    for name in ("K", "Theta"):
        np.testing.assert_allclose(getattr(two, name)[:, 0, 0], getattr(one, name), rtol=1e-12)
    for name in ("V",) + FIELDS:
        np.testing.assert_allclose(getattr(two, name)[:, 0, 0, 0, 0], getattr(one, name),
                                   rtol=1e-10, atol=1e-13)


def test_kernel_vertex_and_mean_ntk_are_those_of_the_other_flows():
    C_b, C_W, lam_b, lam_W = (0.0, 0.1, 0.3), (1.0, 1.5, 0.8), (1.0, 0.5, 0.2), (1.0, 2.0, 1.0)
    fl = flows.ntk_fluctuations("tanh", C_b, C_W, lam_b, lam_W, K2, T2, 3, widths=[4, 8])
    np.testing.assert_allclose(fl.K, flows.kernel("tanh", C_b, C_W, K2, 3), rtol=1e-12)
    np.testing.assert_allclose(fl.V, flows.vertex("tanh", C_b, C_W, K2, 3, widths=[4, 8]),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(fl.Theta, flows.ntk_mean("tanh", C_b, C_W, lam_b, lam_W, K2, T2, 3),
                               rtol=1e-12)


def test_tensor_symmetries_of_the_book_index_structure():
    fl = flows.ntk_fluctuations("gelu", 0.2, 1.3, 0.4, 1.1, K2, T2, 4)
    A, B, D, F = fl.A, fl.B, fl.D, fl.F
    kw = dict(rtol=1e-10, atol=1e-13)
    # A_(α1α2)(α3α4): symmetric within each pair and under exchanging the pairs
    np.testing.assert_allclose(A, A.transpose(0, 2, 1, 3, 4), **kw)
    np.testing.assert_allclose(A, A.transpose(0, 3, 4, 1, 2), **kw)
    # B_α1α3α2α4 = B_α2α4α1α3 (swap the NTK's two neurons) = B_α3α1α4α2 (swap the two NTKs)
    np.testing.assert_allclose(B, B.transpose(0, 3, 4, 1, 2), **kw)
    np.testing.assert_allclose(B, B.transpose(0, 2, 1, 4, 3), **kw)
    # D_α1α2α3α4: symmetric in (α1α2) and in (α3α4), not under exchanging them
    np.testing.assert_allclose(D, D.transpose(0, 2, 1, 3, 4), **kw)
    np.testing.assert_allclose(D, D.transpose(0, 1, 2, 4, 3), **kw)
    assert not np.allclose(D, D.transpose(0, 3, 4, 1, 2))
    # F_α1α3α2α4 = F_α2α4α1α3
    np.testing.assert_allclose(F, F.transpose(0, 3, 4, 1, 2), **kw)


def test_width_ratio_multiplies_only_the_carried_terms():
    """B^{(3)} = C_W²⟨σ'⁴⟩Θ² + (n_2/n_1) χ_⊥² B^{(2)}: the ratio changes B^{(3)} by (r − 1)χ_⊥²B^{(2)}."""
    from dlt_companion.gaussian import Averages
    args = ("tanh", 0.1, 1.5, 0.5, 1.0, 0.8, 1.2, 3)
    eq = flows.ntk_fluctuations(*args)
    un = flows.ntk_fluctuations(*args, widths=[10, 30])
    avg = Averages("tanh", eq.K[1])
    chi_perp = 1.5 * avg.mean((0, 0), (1, 1))
    chi_par = 1.5 * float(avg.dK((0, 0))[0, 0, 0, 0])
    np.testing.assert_allclose(un.B[2] - eq.B[2], 2.0 * chi_perp ** 2 * eq.B[1], rtol=1e-10)
    np.testing.assert_allclose(un.F[2] - eq.F[2], 2.0 * chi_par ** 2 * eq.F[1], rtol=1e-10)
    for name in FIELDS:                                     # layer 2 never sees a ratio
        assert getattr(un, name)[1] == getattr(eq, name)[1]
    np.testing.assert_allclose(un.fan_in(), [1.0, 10.0, 30.0])
    np.testing.assert_allclose(eq.fan_in(16), [16.0] * 3)


def test_first_layer_hyperparameters_enter_only_through_K1_and_Theta1():
    a = flows.ntk_fluctuations("tanh", (0.0, 0.1), (1.0, 1.5), (0.0, 0.5), (1.0, 1.0), K2, T2, 2)
    b = flows.ntk_fluctuations("tanh", (0.7, 0.1), (3.0, 1.5), (5.0, 0.5), (9.0, 1.0), K2, T2, 2)
    for name in ("K", "Theta") + FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_relative_fluctuations_and_replace():
    fl = flows.ntk_fluctuations("relu", 0.0, 2.0, 1.0, 1.0, 1.0, 2.0, 4)
    rel = fl.relative()
    np.testing.assert_allclose(rel["B"], fl.B / fl.Theta ** 2)
    np.testing.assert_allclose(rel["F"], fl.F / (fl.K * fl.Theta))
    wrong = fl.replace(B=fl.B / 2)
    assert wrong.B[1] == fl.B[1] / 2 and fl.B[1] == 8.0
    with pytest.raises(ValueError, match="one-input"):
        flows.ntk_fluctuations("relu", 0.0, 2.0, 1.0, 1.0, K2, T2, 3).relative()
    with pytest.raises(ValueError, match="pass the width n"):
        fl.fan_in()


@pytest.mark.parametrize("kwargs,match", [
    (dict(act="perceptron"), "Dirac"),
    (dict(act="nonsense"), "nonsense"),
    (dict(C_W=0.0), "C_W"),
    (dict(C_b=-0.1), "C_b"),
    (dict(lam_b=-1.0), "lam_b"),
    (dict(lam_W=(1.0, 1.0)), "lam_W"),
    (dict(Theta1=T2), "Theta1 must have the shape"),
    (dict(K1=-1.0), "K1"),
    (dict(widths=[4, 4, 4, 4, 4, 4]), "widths"),
    (dict(widths=[4, 0]), "widths"),
    (dict(depth=0), "depth"),
])
def test_bad_input_is_refused_with_a_clear_message(kwargs, match):
    args = dict(act="tanh", C_b=0.1, C_W=1.5, lam_b=0.5, lam_W=1.0, K1=0.8, Theta1=1.2, depth=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        flows.ntk_fluctuations(**args)


def test_too_many_inputs_and_non_psd_kernels_are_refused():
    with pytest.raises(ValueError, match="up to 8 inputs"):
        flows.ntk_fluctuations("tanh", 0.1, 1.5, 1, 1, np.eye(9), np.eye(9), 2)
    with pytest.raises(ValueError, match="positive semidefinite"):
        flows.ntk_fluctuations("tanh", 0.1, 1.5, 1, 1, [[1, 2], [2, 1]], np.eye(2), 2)
    with pytest.raises(ValueError, match="K_αα > 0"):
        flows.ntk_fluctuations("relu", 0.0, 2.0, 1, 1, 0.0, 1.0, 3)


def test_divergence_names_the_layer():
    with pytest.raises(ValueError, match="diverged at layer"):
        flows.ntk_fluctuations("relu", 0.0, 40.0, 1.0, 1.0, 1.0, 1.0, 400)
