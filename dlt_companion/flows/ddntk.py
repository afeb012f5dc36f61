"""RG flow of what the end of training needs at order 1/n: the ddNTKs' means and their companions  (§∞.1 of [RY]).

Training a finite-width network to the end (Chapter ∞) involves, besides the kernel K, the
mean NTK Θ and its fluctuations A, B, D, F (Ch. 8, :func:`~dlt_companion.flows.ntk_fluctuations`),
three more families of statistics at initialization, all of order 1/n:

* the **dNTK–preactivation cross-correlation** (§11.2): the dNTK is odd in the outputs, so
  at this order only its correlation with one preactivation survives;
* the **ddNTK means** (§∞.1): the ddNTKs are even and O(1/n) themselves, so only their means
  enter (the book's R, S, T, U);
* the **1/n shift of the mean NTK**, E[Ĥ] = Θ + Θ^{{1}}/n_{l−1}, the NTK's counterpart of the
  kernel's G^{{1}} (it changes the infinite-width predictor at the same order).

Conventions
-----------
Write p = (i, α) for a neuron–input pair and u_p = λ ∂z_p/∂θ (λ_b for biases, λ_W/n_{l−1}
for weights). The recursions are derived for the *derivative contractions* of
:class:`dlt_companion.tangent.Differentials` — T_{p;qr} = ∂²z_p[u_q, u_r],
I_{p;qrs} = ∂³z_p[u_q, u_r, u_s], II_{pq;rs} = ⟨∂²z_p·u_r, λ ∂²z_q·u_s⟩ — whose statistics
at layer l are, with n = n_{l−1} and inputs carried with their neurons,

    E[T_{a;bc} z_d]  = (1/n)[δ_ab δ_cd X_{α_aα_bα_cα_d} + δ_ac δ_bd X_{α_aα_cα_bα_d} + δ_ad δ_bc Y_{α_aα_dα_bα_c}],
    E[I_{a;bcd}]     = (1/n)[δ_ab δ_cd R'_{α_aα_bα_cα_d} + δ_ac δ_bd R'_{α_aα_cα_bα_d} + δ_ad δ_bc R'_{α_aα_dα_bα_c}],
    E[II_{ab;cd}]    = (1/n)[δ_ab δ_cd S'_{α_aα_bα_cα_d} + δ_ac δ_bd T'_{α_aα_bα_cα_d} + δ_ad δ_bc U'_{α_aα_bα_cα_d}],

(X, Y, R', S', T', U' are ``X, Y, R1, S1, T1, U1`` below; R' and Y are symmetric in their last
two indices). The book's objects are linear combinations of these (the identities are in
:mod:`dlt_companion.tangent`):

* dNTK dĤ_{p0p1p2} = Σ λ ∂z_{p0} ∂Ĥ_{p1p2} = T_{p1;p0p2} + T_{p2;p0p1}, and
  E[dĤ_{i0i1i2;α0α1α2} z_{i3;α3}] = (1/n)[δ_{i0i3}δ_{i1i2} P_{α0α1α2α3} + δ_{i0i1}δ_{i2i3} Q_{α0α1α2α3}
  + δ_{i0i2}δ_{i1i3} Q_{α0α2α1α3}] with P_{0123} = X_{1203} + X_{2103}, Q_{0123} = X_{1023} + Y_{2301};
* dd_IĤ_{p0p1p2p3} = Σ λλ ∂z_{p0} ∂z_{p1} ∂²Ĥ_{p2p3} and dd_IIĤ_{p1p2p3p4} = Σ λλ ∂z_{p1} ∂²z_{p2} ∂Ĥ_{p3p4}, with
  E[dd_IĤ_{i0i1i2i3}] = (1/n)[δ_{i0i1}δ_{i2i3} R_{0123} + δ_{i0i2}δ_{i1i3} S_{0123} + δ_{i0i3}δ_{i1i2} S_{0132}],
  E[dd_IIĤ_{i1i2i3i4}] = (1/n)[δ_{i1i2}δ_{i3i4} T_{1234} + δ_{i1i3}δ_{i2i4} U_{1234} + δ_{i1i4}δ_{i2i3} U_{1243}]
  (subscripts are the input indices α of the neurons with the same labels).

This index placement is ours: it follows the book's pattern for A, B, D, F (one tensor per
pairing of neurons, inputs in the order of the paired neurons) but we could not check the
book's own ordering of R, S, T, U's subscripts; the tensors are what the docstrings say.

Recursions
----------
Condition on layer l: the new weights W^{(l+1)} are Gaussian and independent, so averaging
them contracts neuron indices pairwise (Wick); what is left are sums over layer-l neurons
of products of σ^{(k)}(z), Ĥ, T, I, II, whose averages at order 1/n follow from layer l's
statistics (chapters/12_end_of_training.md derives every term). With r = n_l/n_{l−1}, the
averages ⟨·⟩ at K^{(l)}, Θ = Θ^{(l)}, ⟨σ'σ'⟩ = pp, g_{ac,β} = ⟨∂_β(σ'_aσ_c)⟩ and
h_{ac,β} = ⟨∂_β(σ''_aσ'_c)⟩ (first derivatives by Stein's lemma, so ReLU's kink is exact)
and the hyperparameters of layer l+1:

    X⁺_{0123} = λ_W C_W [⟨σ'_0σ_1σ'_2σ_3⟩Θ_02 + r F_{0β2β'} g_{01,β} g_{23,β'}]
              + C_W² [⟨σ''_0σ'_1σ'_2σ_3⟩Θ_01Θ_02 + r(Θ_01 F_{0β2β'} h_{01,β} g_{23,β'} + pp_01 X_{012β} g_{23,β})],
    Y⁺_{0312} = C_W² [⟨σ''_0σ_3σ'_1σ'_2⟩Θ_01Θ_02 + r pp_12(⟨σ''_0σ_3⟩ B_{0012} + Y_{0β12} g_{03,β})],
    R'⁺_{0123} = λ_W C_W [⟨σ''_0σ_1σ'_2σ'_3⟩Θ_02Θ_03 + r pp_23(⟨σ''_0σ_1⟩ B_{0023} + Y_{0β23} g_{01,β})]
              + C_W² [⟨σ'''_0σ'_1σ'_2σ'_3⟩Θ_01Θ_02Θ_03
                      + r pp_23(⟨σ'''_0σ'_1⟩Θ_01 B_{0023} + Θ_01 Y_{0β23} h_{01,β} + pp_01 R'_{0123})],
    S'⁺_{0123} = λ_W C_W [⟨σ'_0σ'_1σ'_2σ'_3⟩Θ_02Θ_13 + r pp_01 pp_23 B_{0123}]
              + C_W² [⟨σ''_0σ''_1σ'_2σ'_3⟩Θ_01Θ_02Θ_13 + r pp_23(⟨σ''_0σ''_1⟩Θ_01 B_{0123} + pp_01 S'_{0123})],
    U'⁺_{0123} = C_W² [⟨σ''_0σ''_1σ'_2σ'_3⟩Θ_01Θ_02Θ_13 + r pp_03 pp_12 U'_{0123}],
    T'⁺_{0123} = λ_W² [⟨σ'_0σ_2σ'_1σ_3⟩Θ_01 + r F_{0β1β'} g_{02,β} g_{13,β'}]
              + λ_W C_W [⟨σ'_0σ_2σ''_1σ'_3⟩Θ_01Θ_13 + ⟨σ''_0σ'_2σ'_1σ_3⟩Θ_01Θ_02
                         + r(Θ_13 F_{0β1β'} g_{02,β} h_{13,β'} + Θ_02 F_{0β1β'} h_{02,β} g_{13,β'}
                             + pp_13 X_{130β} g_{02,β} + pp_02 X_{021β} g_{13,β})]
              + C_W² [⟨σ''_0σ'_2σ''_1σ'_3⟩Θ_01Θ_02Θ_13
                      + r(Θ_02Θ_13 F_{0β1β'} h_{02,β} h_{13,β'} + Θ_02 pp_13 X_{130β} h_{02,β}
                          + Θ_13 pp_02 X_{021β} h_{13,β} + pp_02 pp_13 T'_{0123})],
    Θ¹⁺_{01} = r [λ_W δ⟨σ_0σ_1⟩ + C_W Θ_01 δ⟨σ'_0σ'_1⟩ + C_W pp_01 Θ¹_01
                  + C_W Σ_{βγ}(D_{01βγ} + F_{0β1γ} + F_{0γ1β}) ∂⟨σ'_0σ'_1⟩/∂K_{βγ}],

with repeated β's summed, B, D, F in the index order of
:class:`~dlt_companion.flows.NTKFluctuations`, and δ⟨f⟩ = Σ ∂⟨f⟩/∂K·G^{{1}} + ½ Σ ∂²⟨f⟩/∂K∂K·V
the 1/n shift of a Gaussian average (as in the G^{{1}} recursion). In layer 1 every one of
these vanishes (z^{(1)} is linear in its parameters); layer 2's values are exact at any width.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks
from ..activations import Activation
from ..gaussian import Averages
from . import _layers
from .preactivations import run

__all__ = ["DDNTKStatistics", "ddntk_statistics", "dntk_pq", "ddntk_rstu"]


# ------------------------------------------------------------------------------------------
# Gaussian first-derivative averages (Stein's lemma), exact for kinked activations
# ------------------------------------------------------------------------------------------

def _first_derivatives(avg: Averages, orders: tuple) -> np.ndarray:
    """G[a, c, β] = ⟨∂_{z_β} (σ^{(k0)}(z_a) σ^{(k1)}(z_c))⟩_K for two slots of one neuron.

    Stein's lemma ⟨∂_β F⟩ = Σ_γ (K_S⁻¹)_{βγ} ⟨z_γ F⟩ over the distinct inputs S of F: no σ^{(k+1)}
    is needed, so a ReLU's δ-function second derivative is integrated exactly.
    """
    act, B = avg.act, avg.B
    k0, k1 = orders
    out = np.zeros((B, B, B))
    for a in range(B):
        for c in range(B):
            S = tuple(sorted({a, c}))
            z, w = avg.rule(S)
            F = act.numpy[k0](z[:, S.index(a)]) * act.numpy[k1](z[:, S.index(c)])
            zF = np.einsum("p,ps->s", w * F, z)                           # ⟨z_γ F⟩, γ ∈ S
            Ms = np.linalg.inv(avg.K[np.ix_(S, S)])
            out[a, c, list(S)] = Ms @ zF
    return out


def _perm(t: np.ndarray, order: str) -> np.ndarray:
    """t indexed by the letters of ``order`` (e.g. '0213': t[a0, a2, a1, a3]) as [a0, a1, a2, a3]."""
    return np.einsum(f"{''.join('abcd'[int(c)] for c in order)}->abcd", t)


# ------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DDNTKStatistics(_layers.LayerStatistics):
    """Per-layer statistics at initialization that the end of training needs, l = 1..L  (§∞.1 of [RY]).

    Every tensor has a leading layer axis of length L; tensors with four input indices are
    [L, B, B, B, B] (one input: B = 1). The normalizations are those of the module docstring:
    all of X, Y, R1 (= R'), S1, T1, U1, P, Q, R, S, T, U, A, B, D, F come with one factor
    1/n_{l−1} in front, and E[Ĥ] = Θ + Θ1/n_{l−1}, E[z z] = K + G1/n_{l−1}.

    Attributes
    ----------
    act : Activation
    C_b, C_W, lam_b, lam_W : tuples of L floats
    widths : tuple or None
        Widths the width ratios n_l/n_{l−1} were taken from (None: equal widths).
    K, G1, Theta, Theta1 : arrays [L, B, B]
        Kernel, its 1/n correction G^{{1}}, mean NTK and its 1/n correction Θ^{{1}}.
    V, A, B, D, F : arrays [L, B, B, B, B]
        Four-point vertex and the NTK fluctuations (index order of
        :class:`~dlt_companion.flows.NTKFluctuations`).
    X, Y : arrays [L, B, B, B, B]
        E[T z] (second-derivative contraction with one preactivation).
    R1, S1, T1, U1 : arrays [L, B, B, B, B]
        Means of the third-derivative (R') and Hessian-pair (S', T', U') contractions.
    """

    act: Activation
    C_b: tuple
    C_W: tuple
    lam_b: tuple
    lam_W: tuple
    widths: tuple | None
    K: np.ndarray
    G1: np.ndarray
    Theta: np.ndarray
    Theta1: np.ndarray
    V: np.ndarray
    A: np.ndarray
    B: np.ndarray
    D: np.ndarray
    F: np.ndarray
    X: np.ndarray
    Y: np.ndarray
    R1: np.ndarray
    S1: np.ndarray
    T1: np.ndarray
    U1: np.ndarray

    @property
    def P(self) -> np.ndarray:
        """The dNTK–preactivation tensor P [L, B, B, B, B] (module docstring)."""
        return dntk_pq(self.X, self.Y)[0]

    @property
    def Q(self) -> np.ndarray:
        """The dNTK–preactivation tensor Q [L, B, B, B, B] (module docstring)."""
        return dntk_pq(self.X, self.Y)[1]

    @property
    def R(self) -> np.ndarray:
        """Mean of dd_IĤ, pairing (i0i1)(i2i3): R [L, B, B, B, B]."""
        return ddntk_rstu(self.R1, self.S1, self.T1, self.U1)[0]

    @property
    def S(self) -> np.ndarray:
        """Mean of dd_IĤ, pairing (i0i2)(i1i3): S [L, B, B, B, B]."""
        return ddntk_rstu(self.R1, self.S1, self.T1, self.U1)[1]

    @property
    def T(self) -> np.ndarray:
        """Mean of dd_IIĤ, pairing (i1i2)(i3i4): T [L, B, B, B, B]."""
        return ddntk_rstu(self.R1, self.S1, self.T1, self.U1)[2]

    @property
    def U(self) -> np.ndarray:
        """Mean of dd_IIĤ, pairing (i1i3)(i2i4): U [L, B, B, B, B]."""
        return ddntk_rstu(self.R1, self.S1, self.T1, self.U1)[3]

def dntk_pq(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The book's dNTK–preactivation tensors (P, Q) from (X, Y)  (§11.2; module docstring).

    P_{0123} = X_{1203} + X_{2103},  Q_{0123} = X_{1023} + Y_{2301} (on the last four axes).
    """
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    s = "...abcd"
    P = np.einsum(f"...bcad->{s}", X) + np.einsum(f"...cbad->{s}", X)
    Q = np.einsum(f"...bacd->{s}", X) + np.einsum(f"...cdab->{s}", Y)
    return P, Q


def ddntk_rstu(R1, S1, T1, U1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The book's ddNTK means (R, S, T, U) from the derivative-contraction means (R', S', T', U')  (§∞.1).

    From dd_IĤ_{p0p1p2p3} = I_{p2;p3p0p1} + I_{p3;p2p0p1} + II_{p2p3;p0p1} + II_{p2p3;p1p0} and
    dd_IIĤ_{p1p2p3p4} = II_{p2p3;p1p4} + II_{p2p4;p1p3}, collecting each pairing of neurons:

        R_{0123} = R'_{2301} + R'_{3201} + S'_{2301} + S'_{2310},
        S_{0123} = R'_{2031} + R'_{3120} + T'_{2301} + U'_{2310},
        T_{1234} = T'_{2314} + T'_{2413},   U_{1234} = U'_{2314} + S'_{2413}.
    """
    R1, S1, T1, U1 = (np.asarray(a, float) for a in (R1, S1, T1, U1))
    e = np.einsum
    s = "...abcd"
    R = e(f"...cdab->{s}", R1) + e(f"...dcab->{s}", R1) + e(f"...cdab->{s}", S1) + e(f"...cdba->{s}", S1)
    S = e(f"...cadb->{s}", R1) + e(f"...dbca->{s}", R1) + e(f"...cdab->{s}", T1) + e(f"...cdba->{s}", U1)
    # T_{1234}, U_{1234}: relabel (1,2,3,4) -> (a,b,c,d)
    T = e(f"...bcad->{s}", T1) + e(f"...bdac->{s}", T1)
    U = e(f"...bcad->{s}", U1) + e(f"...bdac->{s}", S1)
    return R, S, T, U


# ------------------------------------------------------------------------------------------
# the flow
# ------------------------------------------------------------------------------------------

def _shift(avg: Averages, orders: tuple, G1: np.ndarray, V: np.ndarray) -> np.ndarray:
    """δ⟨f⟩ = Σ ∂⟨f⟩/∂K · G^{1} + ½ Σ ∂²⟨f⟩/∂K∂K · V for f = ⟨σ^{(k)}σ^{(k')}⟩ over pairs."""
    B = avg.B
    d1 = avg.dK(orders).reshape(B * B, B * B) @ G1.ravel()
    return d1.reshape(B, B) + 0.5 * avg.d2K(orders, V)


def _step(act, avg: Averages, Th, cw, lw, r, G1, V, B_, D, F, X, Y, R1, S1, T1, U1, Th1):
    """One layer l -> l+1 of (Θ¹, X, Y, R', S', T', U') (module docstring)."""
    e = np.einsum
    pp = avg.tensor((1, 1))
    g = _first_derivatives(avg, (1, 0))          # ⟨∂_β(σ'_a σ_c)⟩
    h = _first_derivatives(avg, (2, 1))          # ⟨∂_β(σ''_a σ'_c)⟩
    th01 = Th[:, :, None, None]                   # Θ_{α0α1} broadcast over (α2, α3)
    th02 = Th[:, None, :, None]
    th03 = Th[:, None, None, :]
    th13 = Th[None, :, None, :]
    Bd = e("aabc->abc", B_)                       # B_{α0α0α1α2}
    # contractions with F, X, Y (repeated β's summed)
    Fgg = e("xbyc,xzb,ywc->xzyw", F, g, g)        # F_{0β2β'} g_{01,β} g_{23,β'} -> [0,1,2,3]
    Fhg = e("xbyc,xzb,ywc->xzyw", F, h, g)
    Xg = e("abcx,cdx->abcd", X, g)                # X_{012β} g_{23,β}
    Yg = e("axbc,adx->adbc", Y, g)                # Y_{0β12} g_{03,β} -> indexed [0,3,1,2]
    Yg01 = e("axcd,abx->abcd", Y, g)              # Y_{0β23} g_{01,β}
    Yh01 = e("axcd,abx->abcd", Y, h)
    X_new = (lw * cw * (avg.tensor((1, 0, 1, 0)) * th02 + r * Fgg)
             + cw ** 2 * (avg.tensor((2, 1, 1, 0)) * th01 * th02
                          + r * (th01 * Fhg + pp[:, :, None, None] * Xg)))
    # Y⁺[a, d, b, c]
    s2011 = avg.tensor((2, 0, 1, 1))              # ⟨σ''_a σ_b σ'_c σ'_d⟩ indexed [a,b,c,d]
    Y_new = cw ** 2 * (s2011 * Th[:, None, :, None] * Th[:, None, None, :]
                       + r * (avg.tensor((2, 0))[:, :, None, None] * pp[None, None, :, :] * Bd[:, None, :, :]
                              + pp[None, None, :, :] * Yg))
    pp23 = pp[None, None, :, :]
    pp01 = pp[:, :, None, None]
    R_new = (lw * cw * (s2011 * th02 * th03
                        + r * pp23 * (avg.tensor((2, 0))[:, :, None, None] * Bd[:, None, :, :] + Yg01))
             + cw ** 2 * (avg.tensor((3, 1, 1, 1)) * th01 * th02 * th03
                          + r * pp23 * (avg.tensor((3, 1))[:, :, None, None] * th01 * Bd[:, None, :, :]
                                        + th01 * Yh01 + pp01 * R1)))
    s2211 = avg.tensor((2, 2, 1, 1))
    S_new = (lw * cw * (avg.tensor((1, 1, 1, 1)) * th02 * th13 + r * pp01 * pp23 * B_)
             + cw ** 2 * (s2211 * th01 * th02 * th13
                          + r * pp23 * (avg.tensor((2, 2))[:, :, None, None] * th01 * B_ + pp01 * S1)))
    U_new = cw ** 2 * (s2211 * th01 * th02 * th13
                       + r * pp[:, None, None, :] * pp[None, :, :, None] * U1)
    # T': pieces indexed [0,2,1,3] first, then reordered to [0,1,2,3]
    pp02 = pp[:, None, :, None]
    pp13 = pp[None, :, None, :]
    FGG = e("xbyc,xzb,ywc->xyzw", F, g, g)         # F_{0β1β'} g_{02,β} g_{13,β'} -> [0,1,2,3]
    FGH = e("xbyc,xzb,ywc->xyzw", F, g, h)
    FHG = e("xbyc,xzb,ywc->xyzw", F, h, g)
    FHH = e("xbyc,xzb,ywc->xyzw", F, h, h)
    Xg02 = e("bdax,acx->abcd", X, g)              # X_{130β} g_{02,β} -> [0,1,2,3]
    Xg13 = e("acbx,bdx->abcd", X, g)              # X_{021β} g_{13,β}
    Xh02 = e("bdax,acx->abcd", X, h)
    Xh13 = e("acbx,bdx->abcd", X, h)
    q = lambda orders: _perm(avg.tensor(orders), "0213")       # ⟨…⟩ written [0,2,1,3] -> [0,1,2,3]
    T_new = (lw ** 2 * (q((1, 0, 1, 0)) * th01 + r * FGG)
             + lw * cw * (q((1, 0, 2, 1)) * th01 * th13 + q((2, 1, 1, 0)) * th01 * th02
                          + r * (th13 * FGH + th02 * FHG + pp13 * Xg02 + pp02 * Xg13))
             + cw ** 2 * (q((2, 1, 2, 1)) * th01 * th02 * th13
                          + r * (th02 * th13 * FHH + th02 * pp13 * Xh02 + th13 * pp02 * Xh13
                                 + pp02 * pp13 * T1)))
    # Θ¹: the 1/n shift of the mean NTK
    c = D + e("acbd->abcd", F) + e("adbc->abcd", F)                  # E[ΔĤ_{kk;01} z_kβ z_kγ] n
    dpp = avg.dK((1, 1))                                              # [0,1,β,γ]
    Th1_new = r * (lw * _shift(avg, (0, 0), G1, V) + cw * Th * _shift(avg, (1, 1), G1, V)
                   + cw * pp * Th1 + cw * e("abcd,abcd->ab", c, dpp))
    return Th1_new, X_new, Y_new, R_new, S_new, T_new, U_new


def ddntk_statistics(act, C_b, C_W, lam_b, lam_W, K1, Theta1, depth: int,
                     widths=None) -> DDNTKStatistics:
    """Everything the end of training needs at order 1/n, layer by layer  (§4.5, §8.3, §11.2, §∞.1 of [RY]).

    Runs the preactivation flow (K, V, G^{{1}}, :func:`~dlt_companion.flows.run`), the NTK
    flow (Θ, A, B, D, F, :func:`~dlt_companion.flows.ntk_fluctuations`) and, on top of them,
    the recursions of the module docstring for Θ^{{1}}, the dNTK–preactivation
    correlators (X, Y; the book's P, Q) and the ddNTK means (R', S', T', U'; the book's
    R, S, T, U).

    Parameters
    ----------
    act : str or Activation
        σ' must be a function (not the perceptron); σ'' and σ''' enter as pointwise
        functions (ReLU's vanish), matching the differentials of real networks.
    C_b, C_W, lam_b, lam_W : float or sequence of ``depth``
        Per-layer hyperparameters (layer 1's enter only through K1, Theta1).
    K1, Theta1 : float or array [B, B]
        First-layer kernel and NTK (:meth:`dlt_companion.network.MLP.first_layer_kernel`,
        :meth:`~dlt_companion.network.MLP.first_layer_ntk`); B ≤ 4 (the averages involve up
        to four distinct inputs).
    depth : int
    widths : sequence of int, optional
        Hidden widths n_1..n_{L−1} (or all n_1..n_L); omitted: equal widths.

    Returns
    -------
    DDNTKStatistics
        Tensors with a leading layer axis, for one input as [L, 1, 1(, 1, 1)].

    Notes
    -----
    The plain MLP only (no residual connections). Cost per layer: the averages of
    :class:`~dlt_companion.gaussian.Averages` over up to four inputs plus O(B⁶) arithmetic.
    """
    act = _checks.differentiable_activation(act, "the ddNTK recursions")
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    lam_b, lam_W = _layers.learning_rates(depth, lam_b, lam_W)
    ratios, w = _layers.width_ratios(widths, depth)
    _, K1m = _layers.initial_kernel(K1)
    _, T1m = _layers.initial_kernel(Theta1, "Theta1")
    if T1m.shape != K1m.shape:
        raise ValueError(f"Theta1 must have the shape of K1 {K1m.shape}, got {T1m.shape}")
    B = K1m.shape[0]
    if B > 4:
        raise ValueError(f"the ddNTK statistics involve averages over up to four distinct inputs; "
                         f"give at most 4 inputs, got {B}")
    from .ntk import ntk_fluctuations          # Chapter 8's flow (imported here: it is a sibling module)

    fl = run(act, C_b, C_W, K1m, depth, widths=widths)
    nf = ntk_fluctuations(act, C_b, C_W, lam_b, lam_W, K1m, T1m, depth, widths=widths)
    four = (depth,) + (B,) * 4
    X, Y, R1, S1, T1, U1 = (np.zeros(four) for _ in range(6))
    Th1 = np.zeros((depth, B, B))
    for l in range(depth - 1):
        Kl = fl.K[l]
        if np.any(np.diagonal(Kl) <= 0):
            raise ValueError(f"the ddNTK recursions need K_αα > 0 for every input; at layer {l + 1} "
                             f"a variance is {np.diagonal(Kl).min():.3g}")
        avg = Averages(act, Kl, _checked=True)
        with np.errstate(over="ignore", invalid="ignore"):
            out = _step(act, avg, nf.Theta[l], C_W[l + 1], lam_W[l + 1], ratios[l], fl.K_corr[l],
                        fl.V[l], nf.B[l], nf.D[l], nf.F[l], X[l], Y[l], R1[l], S1[l], T1[l], U1[l],
                        Th1[l])
        for arr, new, name in zip((Th1, X, Y, R1, S1, T1, U1), out,
                                  ("Θ^{1}", "X", "Y", "R'", "S'", "T'", "U'")):
            _layers.check_layer(f"ddNTK statistic {name}", new, l + 2,
                                "χ_⊥ > 1 or χ_∥ > 1 make the statistics explode with depth")
            arr[l + 1] = new
    return DDNTKStatistics(act, C_b, C_W, lam_b, lam_W, w, fl.K, fl.K_corr, nf.Theta, Th1, fl.V,
                           nf.A, nf.B, nf.D, nf.F, X, Y, R1, S1, T1, U1)
