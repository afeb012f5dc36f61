"""RG flow of the neural tangent kernel  (Ch. 8–9 of [RY]).

The NTK of layer-l preactivations (§8.0, with the learning-rate tensor λ_b^{(l)} for
biases and λ_W^{(l)}/n_{l−1} for weights) obeys the exact forward equation

    Ĥ^{(l+1)}_{i1i2;α1α2} = δ_{i1i2}[λ_b + (λ_W/n_l) Σ_j σ_{j;α1}σ_{j;α2}]
                          + Σ_{j1j2} W_{i1j1}W_{i2j2} σ'_{j1;α1}σ'_{j2;α2} Ĥ^{(l)}_{j1j2;α1α2},

with the deterministic first layer Ĥ^{(1)} = δ_{i1i2}[λ_b + λ_W x_α1·x_α2/n_0] (§8.1).
Averaging over the new weights (independent of layer l) at infinite width gives the mean
NTK Θ (§8.2–8.3):

    Θ^{(l+1)}_{α1α2} = λ_b^{(l+1)} + λ_W^{(l+1)} ⟨σ_α1σ_α2⟩_{K^{(l)}}
                      + C_W^{(l+1)} ⟨σ'_α1σ'_α2⟩_{K^{(l)}} Θ^{(l)}_{α1α2}

(and for residual layers of App. B, Θ^{(l+1)} = ξ²[…] + γ² Θ^{(l)}). Averages come from
:class:`dlt_companion.gaussian.Averages`, one input being the B = 1 case.

At order 1/n the NTK fluctuates (§8.2–8.3). With ΔĤ = Ĥ − E[Ĥ] and the book's index
placement, the NTK variance and the NTK–preactivation cross-correlation of layer l are

    E[ΔĤ_{i1i2;α1α2} ΔĤ_{i3i4;α3α4}] = (1/n_{l−1}) [δ_{i1i2}δ_{i3i4} A_{(α1α2)(α3α4)}
                                        + δ_{i1i3}δ_{i2i4} B_{α1α3α2α4} + δ_{i1i4}δ_{i2i3} B_{α1α4α2α3}],
    E[ΔĤ_{i1i2;α1α2} z_{i3;α3} z_{i4;α4}] = (1/n_{l−1}) [δ_{i1i2}δ_{i3i4} D_{α1α2α3α4}
                                        + δ_{i1i3}δ_{i2i4} F_{α1α3α2α4} + δ_{i1i4}δ_{i2i3} F_{α1α4α2α3}],

with A = B = D = F = 0 in the deterministic first layer. :func:`ntk_fluctuations` runs
their recursions (derived in ``chapters/08_rg_flow_of_the_ntk.md``): condition on layer l,
so that the new weights and biases are Gaussian, then expand the remaining averages over
layer l to first order in its fluctuations (V, A, D, F). With Θ̂_{α1α2} the conditional
mean of Ĥ^{(l+1)}_{ii}, Ω_{α1α2} = λ_W σ_α1σ_α2 + C_W Θ_{α1α2} σ'_α1σ'_α2 and
r = n_l/n_{l−1}, every average taken at K^{(l)} and repeated β's summed over ordered pairs:

    A' = Cov(Ω_12, Ω_34) + r [Φ_12 V Φ_34 + C_W⟨σ'_1σ'_2⟩ D_12 Φ_34 + C_W⟨σ'_3σ'_4⟩ D_34 Φ_12
                             + C_W²⟨σ'_1σ'_2⟩⟨σ'_3σ'_4⟩ A_(12)(34)],
    B'_{1324} = C_W²⟨σ'_1σ'_2σ'_3σ'_4⟩Θ_12Θ_34 + r C_W²⟨σ'_1σ'_3⟩⟨σ'_2σ'_4⟩ B_{1324},
    D' = Cov(Ω_12, C_Wσ_3σ_4) + r [Φ_12 V X_34 + C_W⟨σ'_1σ'_2⟩ D_12 X_34],
    F'_{1324} = C_W²⟨σ'_1σ'_2σ_3σ_4⟩Θ_12 + r C_W² Σ_{β1β2} ⟨∂_{β1}(σ'_1σ_3)⟩⟨∂_{β2}(σ'_2σ_4)⟩ F_{1β1 2β2},

where Φ_12^{β1β2} = ∂⟨Ω_12⟩/∂K_{β1β2} and X_34^{β3β4} = C_W ∂⟨σ_3σ_4⟩/∂K_{β3β4} (the V
recursion's susceptibility). For one input this is A' = Var(Ω) + r[Φ²V + 2χ_⊥ΦD + χ_⊥²A],
B' = C_W²⟨σ'⁴⟩Θ² + rχ_⊥²B, D' = Cov(Ω, C_Wσ²) + r[χ_∥ΦV + χ_⊥χ_∥D],
F' = C_W²⟨σ'²σ²⟩Θ + rχ_∥²F (⟨∂(σ'σ)⟩ = d⟨σ²⟩/dK by Stein's lemma, so F is carried by χ_∥).

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
from .preactivations import _propagate, kernel

__all__ = ["ntk_mean", "ntk_fluctuations", "NTKFluctuations"]


def ntk_mean(act, C_b, C_W, lam_b, lam_W, K1, Theta1, depth: int, xi=1.0, gamma=0.0) -> np.ndarray:
    """The infinite-width mean NTK Θ^{(l)} for l = 1..depth  (§8.1–8.3 of [RY]).

    Parameters
    ----------
    act : str or Activation
        Activation σ; σ' must be a function (the perceptron's is not).
    C_b, C_W : float or sequence of ``depth``
        Bias and weight variances (entry l−1 for layer l; layer 1's are unused).
    lam_b, lam_W : float or sequence of ``depth``
        Learning rates λ_b^{(l)}, λ_W^{(l)} (≥ 0; the weights' rate is λ_W/n_{l−1});
        layer 1's enter only through Theta1.
    K1 : float or array [B, B]
        First-layer kernel (:meth:`dlt_companion.network.MLP.first_layer_kernel`).
    Theta1 : float or array [B, B]
        First-layer NTK λ_b^{(1)} + λ_W^{(1)} x·x/n_0 (:meth:`~dlt_companion.network.MLP.first_layer_ntk`);
        same shape as K1.
    depth : int
    xi, gamma : float or sequence of ``depth``
        Residual couplings (App. B); default the plain MLP.

    Returns
    -------
    array [depth] for a scalar K1, or [depth, B, B]; entry l−1 is Θ^{(l)}.
    """
    act = _checks.differentiable_activation(act, "the NTK recursions")
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    lam_b, lam_W = _layers.learning_rates(depth, lam_b, lam_W)
    xi = _layers.per_layer(xi, depth, "xi", _checks.real)
    gamma = _layers.per_layer(gamma, depth, "gamma", _checks.real)
    scalar, K1m = _layers.initial_kernel(K1)
    scalar_t, T = _layers.initial_kernel(Theta1, "Theta1")
    if scalar != scalar_t or T.shape != K1m.shape:
        raise ValueError(f"Theta1 must have the shape of K1 ({'a number' if scalar else K1m.shape}), "
                         f"got {'a number' if scalar_t else T.shape}")
    K = kernel(act, C_b, C_W, K1m, depth, xi=xi, gamma=gamma)
    out = np.empty((depth,) + T.shape)
    out[0] = T
    for l in range(depth - 1):
        avg = Averages(act, K[l], _checked=True)
        new = (lam_b[l + 1] + lam_W[l + 1] * avg.tensor((0, 0))
               + C_W[l + 1] * avg.tensor((1, 1)) * out[l])
        if xi[l + 1] != 1.0 or gamma[l + 1] != 0.0:
            new = xi[l + 1] ** 2 * new + gamma[l + 1] ** 2 * out[l]
        _layers.check_layer("mean NTK", new, l + 2,
                            f"χ_⊥ = C_W⟨σ'²⟩ > 1 or growing λ's make Θ explode (C_W = {C_W[l + 1]:g})")
        out[l + 1] = new
    return out[:, 0, 0] if scalar else out


# --------------------------------------------------------------------------
# finite width: NTK variance and NTK–preactivation cross-correlation (§8.2–8.3)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class NTKFluctuations(_layers.LayerStatistics):
    """Per-layer NTK statistics at initialization to order 1/n, layers l = 1..L  (§8.1–8.3 of [RY]).

    Array indices follow the book's subscripts *in the order written*: for several inputs
    ``A[a1, a2, a3, a4]`` is A_{(α1α2)(α3α4)}, ``B[a1, a3, a2, a4]`` is B_{α1α3α2α4},
    ``D[a1, a2, a3, a4]`` is D_{α1α2α3α4} and ``F[a1, a3, a2, a4]`` is F_{α1α3α2α4}, so that

    * E[ΔĤ_{i1i2;α1α2} ΔĤ_{i3i4;α3α4}] = (δ_{i1i2}δ_{i3i4} A[α1,α2,α3,α4]
      + δ_{i1i3}δ_{i2i4} B[α1,α3,α2,α4] + δ_{i1i4}δ_{i2i3} B[α1,α4,α2,α3]) / n_{l−1},
    * E[ΔĤ_{i1i2;α1α2} z_{i3;α3} z_{i4;α4}] = (δ_{i1i2}δ_{i3i4} D[α1,α2,α3,α4]
      + δ_{i1i3}δ_{i2i4} F[α1,α3,α2,α4] + δ_{i1i4}δ_{i2i3} F[α1,α4,α2,α3]) / n_{l−1}.

    For one input and neurons i ≠ j: Cov(Ĥ_ii, Ĥ_jj) = A/n_{l−1}, E[Ĥ_ij²] = B/n_{l−1},
    Cov(Ĥ_ii, z_j²) = D/n_{l−1}, E[Ĥ_ij z_i z_j] = F/n_{l−1} (and Var Ĥ_ii = (A + 2B)/n_{l−1}).

    Attributes
    ----------
    act : Activation
    C_b, C_W, lam_b, lam_W : tuples of L floats
        Per-layer hyperparameters (layer 1's C_b, C_W, λ's enter only through K1, Theta1).
    widths : tuple of int or None
        Widths (n_1, …, n_{L−1}[, n_L]) if given; None means equal widths.
    K : array [L] (one input) or [L, B, B]
        Kernel K^{(l)}.
    V : array [L] or [L, B, B, B, B]
        Four-point vertex V^{(l)} (as :func:`dlt_companion.flows.vertex`).
    Theta : array [L] or [L, B, B]
        Mean NTK Θ^{(l)} (as :func:`ntk_mean`).
    A, B, D, F : arrays [L] or [L, B, B, B, B]
        NTK variance (A, B) and NTK–preactivation cross-correlation (D, F); zero at l = 1.
    """

    act: Activation
    C_b: tuple
    C_W: tuple
    lam_b: tuple
    lam_W: tuple
    widths: tuple | None
    K: np.ndarray
    V: np.ndarray
    Theta: np.ndarray
    A: np.ndarray
    B: np.ndarray
    D: np.ndarray
    F: np.ndarray

    def relative(self) -> dict:
        """Dimensionless one-input fluctuations A/Θ², B/Θ², D/(KΘ), F/(KΘ) per layer  (§9.1–9.3).

        Divided by n_{l−1} they are the relative sizes of the NTK's fluctuations; at
        criticality they grow linearly with depth (:mod:`dlt_companion.criticality_ntk`).

        Returns
        -------
        dict of arrays [L] with keys ``"A"``, ``"B"``, ``"D"``, ``"F"``.
        """
        if not self.single_input:
            raise ValueError("relative() is defined for a one-input flow (pass a scalar K1)")
        T2, KT = self.Theta ** 2, self.K * self.Theta
        return {"A": self.A / T2, "B": self.B / T2, "D": self.D / KT, "F": self.F / KT}


def _slope_tensor(dss: np.ndarray, pp: np.ndarray) -> np.ndarray:
    """G[a, b, x] = ⟨∂_x(σ'_a σ_b)⟩ from ∂⟨σσ⟩/∂K (Stein) and ⟨σ'σ'⟩, without σ''.

    For a ≠ b: ⟨σ''_a σ_b⟩ = 2 ∂⟨σ_aσ_b⟩/∂K_aa and ⟨∂_b(σ'_aσ_b)⟩ = ⟨σ'_aσ'_b⟩; for a = b the
    total derivative ⟨σ''σ + σ'²⟩_a = ∂⟨σ_a²⟩/∂K_aa. Valid for kinked σ (ReLU's σ'' is a δ).
    """
    B = pp.shape[0]
    G = np.zeros((B, B, B))
    for a in range(B):
        for b in range(B):
            if a == b:
                G[a, a, a] = dss[a, a, a, a]
            else:
                G[a, b, a] = 2.0 * dss[a, b, a, a]
                G[a, b, b] = pp[a, b]
    return G


def _fluctuation_flow(act, C_b, C_W, lam_b, lam_W, K1, T1, depth, ratios):
    """The one code path: K, V, Θ, A, B, D, F for [B, B] first-layer kernel and NTK."""
    nb = K1.shape[0]
    P = nb * nb
    four = (depth,) + (nb,) * 4
    K, T = np.empty((depth, nb, nb)), np.empty((depth, nb, nb))
    V, A, Bt, D, F = (np.zeros(four) for _ in range(5))
    K[0], T[0] = K1, T1
    for l in range(depth - 1):
        Kl, Tl = K[l], T[l]
        if np.any(np.diagonal(Kl) <= 0):
            raise ValueError(f"the finite-width NTK recursions need K_αα > 0 for every input; at layer "
                             f"{l + 1} a variance is {np.diagonal(Kl).min():.3g} (C_b = 0 and a "
                             "zero input, or a vanishing kernel)")
        cb, cw, lb, lw, r = C_b[l + 1], C_W[l + 1], lam_b[l + 1], lam_W[l + 1], ratios[l]
        avg = Averages(act, Kl, _checked=True)
        ss, pp = avg.tensor((0, 0)), avg.tensor((1, 1))
        dss4 = avg.dK((0, 0))
        dss, dpp = dss4.reshape(P, P), avg.dK((1, 1)).reshape(P, P)
        ssv, ppv, tv = ss.ravel(), pp.ravel(), Tl.ravel()
        c_ss = avg.tensor((0, 0, 0, 0)).reshape(P, P) - np.outer(ssv, ssv)     # Cov(σσ, σσ)
        ppss = avg.tensor((1, 1, 0, 0))
        c_ps = ppss.reshape(P, P) - np.outer(ppv, ssv)                        # Cov(σ'σ', σσ)
        pppp = avg.tensor((1, 1, 1, 1))
        c_pp = pppp.reshape(P, P) - np.outer(ppv, ppv)                        # Cov(σ'σ', σ'σ')
        X = cw * dss                                  # C_W ∂⟨σσ⟩/∂K: the V recursion's susceptibility
        Phi = lw * dss + cw * tv[:, None] * dpp       # ∂⟨Ω⟩/∂K, Ω = λ_W σσ + C_W Θ σ'σ'
        Vl, Dl, Al = V[l].reshape(P, P), D[l].reshape(P, P), A[l].reshape(P, P)
        cpp = cw * ppv
        with np.errstate(over="ignore", invalid="ignore"):
            K[l + 1] = cb + cw * ss
            T[l + 1] = lb + lw * ss + cw * pp * Tl
            V[l + 1] = cw ** 2 * c_ss.reshape((nb,) * 4) + r * _propagate(X.reshape((nb,) * 4), V[l])
            cov_OO = (lw ** 2 * c_ss + lw * cw * (c_ps.T * tv[None, :] + tv[:, None] * c_ps)
                      + cw ** 2 * np.outer(tv, tv) * c_pp)
            cov_OQ = cw * (lw * c_ss + cw * tv[:, None] * c_ps)
            PV = Phi @ Vl
            DP = cpp[:, None] * (Dl @ Phi.T)
            A[l + 1] = (cov_OO + r * (PV @ Phi.T + DP + DP.T + np.outer(cpp, cpp) * Al)).reshape((nb,) * 4)
            D[l + 1] = (cov_OQ + r * (PV @ X.T + cpp[:, None] * (Dl @ X.T))).reshape((nb,) * 4)
            # B'[a,b,c,d] = C_W² ⟨σ'σ'σ'σ'⟩ Θ_ac Θ_bd + r C_W² ⟨σ'_aσ'_b⟩⟨σ'_cσ'_d⟩ B[a,b,c,d]
            Bt[l + 1] = cw ** 2 * (pppp * np.multiply.outer(Tl, Tl).transpose(0, 2, 1, 3)
                                   + r * np.multiply.outer(pp, pp) * Bt[l])
            # F'[a,b,c,d] = C_W² ⟨σ'_aσ'_cσ_bσ_d⟩ Θ_ac + r C_W² Σ_xy G[a,b,x] G[c,d,y] F[a,x,c,y]
            G = _slope_tensor(dss4, pp)
            F[l + 1] = cw ** 2 * ((ppss * Tl[:, :, None, None]).transpose(0, 2, 1, 3)
                                  + r * np.einsum("abx,cdy,axcy->abcd", G, G, F[l]))
        # one cheap test per layer (NaN fails the comparison); the message names what diverged
        size = max(float(np.abs(a[l + 1]).max()) for a in (K, T, A, Bt, D, F))
        if not size < 1e250:
            why = (f"K^({l + 1}) = {np.max(np.diagonal(Kl)):.3g}, Θ^({l + 1}) = {np.max(np.diagonal(Tl)):.3g}; "
                   "χ_⊥ > 1 or χ_∥ > 1 make the NTK and its fluctuations explode geometrically with depth")
            for name, value in (("kernel", K[l + 1]), ("mean NTK", T[l + 1]), ("four-point vertex", V[l + 1]),
                                ("NTK variance A", A[l + 1]), ("NTK variance B", Bt[l + 1]),
                                ("NTK-preactivation cross-correlation D", D[l + 1]),
                                ("NTK-preactivation cross-correlation F", F[l + 1])):
                _layers.check_layer(name, value, l + 2, why)
    return K, V, T, A, Bt, D, F


def ntk_fluctuations(act, C_b, C_W, lam_b, lam_W, K1, Theta1, depth: int,
                     widths=None) -> NTKFluctuations:
    """NTK variance (A, B) and NTK–preactivation cross-correlation (D, F), layer by layer  (§8.1–8.3 of [RY]).

    Runs the kernel K, the four-point vertex V, the mean NTK Θ and the order-1/n NTK
    statistics A, B, D, F together (recursions in the module docstring), one Gaussian-average
    engine per layer. Layer 2 is exact at any width: A^{(2)} = Cov(Ω, Ω), B^{(2)} =
    C_W²⟨σ'σ'σ'σ'⟩ΘΘ, D^{(2)} = Cov(Ω, C_Wσσ), F^{(2)} = C_W²⟨σ'σ'σσ⟩Θ at K^{(1)}, Θ^{(1)}.

    Parameters
    ----------
    act : str or Activation
        Activation σ; σ' must be a function (the perceptron's is not).
    C_b, C_W : float or sequence of ``depth``
        Bias (≥ 0) and weight (> 0) variances, per layer if a sequence (entry l−1 for layer l;
        layer 1's enter only through K1).
    lam_b, lam_W : float or sequence of ``depth``
        Learning rates λ_b^{(l)}, λ_W^{(l)} ≥ 0 (the weights' rate is λ_W/n_{l−1}); layer 1's
        enter only through Theta1.
    K1 : float or array [B, B]
        First-layer kernel (:meth:`dlt_companion.network.MLP.first_layer_kernel`); B ≤ 8.
    Theta1 : float or array [B, B]
        First-layer NTK λ_b^{(1)} + λ_W^{(1)} x·x/n_0, same shape as K1.
    depth : int
        Number of layers L.
    widths : sequence of int, optional
        Hidden widths n_1..n_{L−1} (or all n_1..n_L as for an ensemble; the last is unused):
        the propagated terms carry n_l/n_{l−1}. Omitted: equal widths.

    Returns
    -------
    NTKFluctuations
        K, V, Θ and A, B, D, F: arrays [L] for a scalar K1, [L, B, B(, B, B)] otherwise.

    Notes
    -----
    Cost per layer: the Gaussian averages of :class:`~dlt_companion.gaussian.Averages` (about
    0.3 ms for one input and 5–10 ms for two; four distinct inputs need four-dimensional
    rules, ~0.3 s each) plus B⁶ multiply-adds.

    Examples
    --------
    >>> fl = ntk_fluctuations("relu", 0.0, 2.0, 1.0, 1.0, 1.0, 2.0, depth=3)
    >>> [round(float(b), 10) for b in fl.B]          # B^(2) = C_W²⟨σ'⁴⟩Θ^(1)² = 8
    [0.0, 8.0, 32.5]
    """
    act = _checks.differentiable_activation(act, "the NTK recursions")
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    lam_b, lam_W = _layers.learning_rates(depth, lam_b, lam_W)
    ratios, w = _layers.width_ratios(widths, depth)
    scalar, K1m = _layers.initial_kernel(K1)
    scalar_t, T = _layers.initial_kernel(Theta1, "Theta1")
    if scalar != scalar_t or T.shape != K1m.shape:
        raise ValueError(f"Theta1 must have the shape of K1 ({'a number' if scalar else K1m.shape}), "
                         f"got {'a number' if scalar_t else T.shape}")
    if K1m.shape[0] > _layers.MAX_INPUTS:
        raise ValueError(f"the finite-width NTK flows support up to {_layers.MAX_INPUTS} inputs "
                         f"(A, B, D, F have B^4 entries), got {K1m.shape[0]}; ntk_mean takes any number")
    K, V, Th, A, Bt, D, F = _fluctuation_flow(act, C_b, C_W, lam_b, lam_W, K1m, T, depth, ratios)
    if scalar:
        K, Th = K[:, 0, 0], Th[:, 0, 0]
        V, A, Bt, D, F = (a[:, 0, 0, 0, 0] for a in (V, A, Bt, D, F))
    return NTKFluctuations(act, C_b, C_W, lam_b, lam_W, w, K, V, Th, A, Bt, D, F)
