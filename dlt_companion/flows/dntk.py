"""RG flow of the differential of the NTK (dNTK): its statistics P and Q  (§11.2–11.3 of [RY]).

The dNTK of layer l (§11.1; :func:`dlt_companion.tangent.dntk` measures it),

    dĤ^{(l)}_{i0i1i2;α0α1α2} = Σ_μ λ_μ (∂z^{(l)}_{i0;α0}/∂θ_μ)(∂Ĥ^{(l)}_{i1i2;α1α2}/∂θ_μ),

vanishes in layer 1, has zero mean (it is odd in the last layer's weights) and
fluctuates at order 1/√n. Its first statistic that matters for training is its
cross-correlation with the preactivations, which at order 1/n has three index structures,

    E[dĤ^{(l)}_{i0i1i2;α0α1α2} z^{(l)}_{i3;α3}]
        = (1/n_{l−1}) [ δ_{i0i3}δ_{i1i2} P^{(l)}_{α0α1α2α3}
                      + δ_{i0i1}δ_{i2i3} Q^{(l)}_{α0α1α2α3} + δ_{i0i2}δ_{i1i3} Q^{(l)}_{α0α2α1α3} ],

the third fixed by the second through dĤ_{i0i1i2;α0α1α2} = dĤ_{i0i2i1;α0α2α1}. So for
distinct neurons i ≠ j: E[dĤ_{ijj;α0α1α2} z_{i;α3}] = P_{α0α1α2α3}/n_{l−1} and
E[dĤ_{iij;α0α1α2} z_{j;α3}] = Q_{α0α1α2α3}/n_{l−1}; for one neuron all three add.
Array indices follow the subscripts in the order written: ``P[a0, a1, a2, a3]``.

Recursion (derived in ``chapters/11_representation_learning.md``). Write the dNTK's
forward equation, multiply by z^{(l+1)}_{i3} and average over the Gaussian weights of
layer l+1 (four pairings of W's); sums over one neuron k of layer l give Gaussian averages
at K^{(l)} with Ĥ_kk → Θ^{(l)}, and sums over pairs k ≠ j give the layer-l cross-neuron
correlations, which at order 1/n_{l−1} are (Stein's lemma on the rows of W^{(l)})

    E[Ĥ_{kj;ab} f(z_k) g(z_j)] = Σ_{βγ} F_{aβbγ} ⟨∂_β f⟩⟨∂_γ g⟩ / n_{l−1},
    E[Ĥ_{kj;ab} Ĥ_{kj;cd} f(z_k) g(z_j)] = B_{acbd} ⟨f⟩⟨g⟩ / n_{l−1},
    E[dĤ_{kjj;012} f(z_k) g(z_j)] = Σ_β P_{012β} ⟨∂_β f⟩⟨g⟩ / n_{l−1},
    E[dĤ_{kkj;012} f(z_k) g(z_j)] = Σ_γ Q_{012γ} ⟨f⟩⟨∂_γ g⟩ / n_{l−1},

with F and B the NTK–preactivation cross-correlation and NTK variance of Chapter 8
(:func:`dlt_companion.flows.ntk_fluctuations`, same index placement). With every average
at K^{(l)}, Θ = Θ^{(l)}, λ_W = λ_W^{(l+1)}, C_W = C_W^{(l+1)}, r = n_l/n_{l−1},
G^{pq}_{ab;β} = ⟨∂_β(σ^{(p)}_a σ^{(q)}_b)⟩ and subscripts 0..3 standing for α0..α3:

    P' = λ_W C_W [Θ_01⟨σ'_0σ'_1σ_2σ_3⟩ + Θ_02⟨σ'_0σ_1σ'_2σ_3⟩]
       + C_W² [Θ_01Θ_12⟨σ'_0σ''_1σ'_2σ_3⟩ + Θ_02Θ_12⟨σ'_0σ'_1σ''_2σ_3⟩]
       + r { λ_W C_W Σ_βγ G^{10}_{03;β} [F_{0β1γ} G^{10}_{12;γ} + F_{0β2γ} G^{01}_{12;γ}]
           + C_W² Θ_12 Σ_βγ G^{10}_{03;β} [F_{0β1γ} G^{21}_{12;γ} + F_{0β2γ} G^{12}_{12;γ}]
           + C_W² ⟨σ'_1σ'_2⟩ Σ_β G^{10}_{03;β} P_{012β} },

    Q' = λ_W C_W Θ_12⟨σ_0σ'_1σ'_2σ_3⟩
       + C_W² [Θ_01Θ_12⟨σ'_0σ''_1σ'_2σ_3⟩ + Θ_02Θ_12⟨σ'_0σ'_1σ''_2σ_3⟩]
       + r { λ_W C_W Σ_βγ G^{01}_{01;β} F_{1β2γ} G^{10}_{23;γ}
           + C_W² Θ_01 Σ_βγ G^{12}_{01;β} F_{1β2γ} G^{10}_{23;γ}
           + C_W² ⟨σ'_0σ'_1⟩⟨σ''_2σ_3⟩ B_{0122}
           + C_W² ⟨σ'_0σ'_1⟩ Σ_γ G^{10}_{23;γ} Q_{012γ} },

with P^{(1)} = Q^{(1)} = 0. Layer 2 is exact at any width (Ĥ^{(1)} is deterministic and
diagonal, dĤ^{(1)} = 0, so only the first two lines survive). The recursions hold for plain
MLPs with a smooth activation: σ'' and σ''' enter as functions (ReLU's are Dirac deltas,
which a network's autograd dNTK never sees).

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

__all__ = ["dntk_statistics", "DNTKStatistics"]


@dataclass(frozen=True)
class DNTKStatistics(_layers.LayerStatistics):
    """Per-layer dNTK–preactivation cross-correlation P, Q to order 1/n, layers l = 1..L  (§11.2).

    ``P[l-1]`` and ``Q[l-1]`` are P^{(l)}, Q^{(l)} in the normalization of the module
    docstring: E[dĤ_{i0i1i2;α0α1α2} z_{i3;α3}] = (δ_{i0i3}δ_{i1i2} P[α0,α1,α2,α3]
    + δ_{i0i1}δ_{i2i3} Q[α0,α1,α2,α3] + δ_{i0i2}δ_{i1i3} Q[α0,α2,α1,α3]) / n_{l−1}.

    Attributes
    ----------
    act : Activation
    C_b, C_W, lam_b, lam_W : tuples of L floats
    widths : tuple of int or None
        As given to :func:`dntk_statistics` (None: equal widths).
    K, Theta : arrays [L] (one input) or [L, B, B]
        Kernel and mean NTK.
    P, Q : arrays [L] (one input) or [L, B, B, B, B]
        dNTK–preactivation cross-correlation; zero at l = 1.
    """

    act: Activation
    C_b: tuple
    C_W: tuple
    lam_b: tuple
    lam_W: tuple
    widths: tuple | None
    K: np.ndarray
    Theta: np.ndarray
    P: np.ndarray
    Q: np.ndarray

    def relative(self) -> dict:
        """Dimensionless one-input ratios P/Θ² and Q/Θ² per layer  (§11.3).

        Divided by n_{l−1} they measure how far one gradient step moves the NTK relative to
        its size (ΔĤ/Θ ~ η Θ · dĤ z /Θ²); at criticality they grow linearly with depth, so the
        dNTK's effect is set by the aspect ratio L/n.

        Returns
        -------
        dict of arrays [L] with keys ``"P"``, ``"Q"``.
        """
        if not self.single_input:
            raise ValueError("relative() is defined for a one-input flow (pass a scalar K1)")
        T2 = self.Theta ** 2
        return {"P": self.P / T2, "Q": self.Q / T2}


def _smooth(act) -> Activation:
    act = _checks.differentiable_activation(act, "the dNTK recursions")
    if act.kinks:
        raise ValueError(f"the dNTK recursions need σ'' and σ''' as functions, but {act.label} has "
                         f"a kink at {list(act.kinks)} (its σ'' is a Dirac delta, which the "
                         "autograd dNTK of a network never sees); use a smooth activation such as "
                         "tanh, sigmoid, softplus, gelu, swish, erf, sin or linear")
    return act


def _slopes(avg: Averages, p: int, q: int) -> np.ndarray:
    """G[a, b, β] = ⟨∂_β(σ^{(p)}_a σ^{(q)}_b)⟩ = δ_βa⟨σ^{(p+1)}_aσ^{(q)}_b⟩ + δ_βb⟨σ^{(p)}_aσ^{(q+1)}_b⟩."""
    B = avg.B
    G = np.zeros((B, B, B))
    idx = np.arange(B)
    G[:, idx, idx] += avg.tensor((p, q + 1))                       # β = b
    G[idx, :, idx] += avg.tensor((p + 1, q))                       # β = a
    return G


def _step(avg: Averages, T: np.ndarray, F: np.ndarray, Bv: np.ndarray, P: np.ndarray,
          Q: np.ndarray, C_W: float, lam_W: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    """(P^{(l+1)}, Q^{(l+1)}) from layer l's averages, Θ, F, B, P, Q (module docstring)."""
    t = avg.tensor
    T01, T02, T12 = T[:, :, None, None], T[:, None, :, None], T[None, :, :, None]
    curv = T01 * T12 * t((1, 2, 1, 0)) + T02 * T12 * t((1, 1, 2, 0))
    P_new = lam_W * C_W * (T01 * t((1, 1, 0, 0)) + T02 * t((1, 0, 1, 0))) + C_W ** 2 * curv
    Q_new = lam_W * C_W * T12 * t((0, 1, 1, 0)) + C_W ** 2 * curv
    if r and (np.any(F) or np.any(Bv) or np.any(P) or np.any(Q)):
        G10, G01 = _slopes(avg, 1, 0), _slopes(avg, 0, 1)
        G12, G21 = _slopes(avg, 1, 2), _slopes(avg, 2, 1)
        pp = t((1, 1))
        P_prop = (lam_W * C_W * (np.einsum("wbxc,wzb,xyc->wxyz", F, G10, G10)
                                 + np.einsum("wbyc,wzb,xyc->wxyz", F, G10, G01))
                  + C_W ** 2 * T12 * (np.einsum("wbxc,wzb,xyc->wxyz", F, G10, G21)
                                      + np.einsum("wbyc,wzb,xyc->wxyz", F, G10, G12))
                  + C_W ** 2 * pp[None, :, :, None] * np.einsum("wzb,wxyb->wxyz", G10, P))
        B_diag = np.einsum("wxyy->wxy", Bv)                         # B_{α0α1α2α2}
        Q_prop = (lam_W * C_W * np.einsum("wxb,xbyc,yzc->wxyz", G01, F, G10)
                  + C_W ** 2 * T01 * np.einsum("wxb,xbyc,yzc->wxyz", G12, F, G10)
                  + C_W ** 2 * pp[:, :, None, None] * (B_diag[..., None] * t((2, 0))[None, None]
                                                       + np.einsum("yzc,wxyc->wxyz", G10, Q)))
        P_new = P_new + r * P_prop
        Q_new = Q_new + r * Q_prop
    return P_new, Q_new


def dntk_statistics(act, C_b, C_W, lam_b, lam_W, K1, Theta1, depth: int,
                    widths=None) -> DNTKStatistics:
    """The dNTK–preactivation cross-correlation P^{(l)}, Q^{(l)} for l = 1..depth  (§11.2 of [RY]).

    Runs the recursions of the module docstring on top of the kernel, the mean NTK and the
    NTK fluctuations F, B of :func:`dlt_companion.flows.ntk_fluctuations` (Chapter 8).
    Normalization: E[dĤ_{i0i1i2} z_{i3}] = (δ_{i0i3}δ_{i1i2}P + δ_{i0i1}δ_{i2i3}Q +
    δ_{i0i2}δ_{i1i3}Q_{(1↔2)}) / n_{l−1}, the dNTK–preactivation connected correlator (the
    dNTK has zero mean) at first order in 1/n.

    Parameters
    ----------
    act : str or Activation
        A smooth activation (σ'' and σ''' are functions; ReLU-like kinks are refused).
    C_b, C_W : float or sequence of ``depth``
        Bias and weight variances (entry l−1 for layer l).
    lam_b, lam_W : float or sequence of ``depth``
        Learning rates λ_b^{(l)}, λ_W^{(l)} (the weights' rate is λ_W/n_{l−1}).
    K1, Theta1 : float or arrays [B, B]
        First-layer kernel and NTK (:meth:`dlt_companion.network.MLP.first_layer_kernel`,
        :meth:`~dlt_companion.network.MLP.first_layer_ntk`); B ≤ 8 (four distinct inputs
        need four-dimensional quadrature, ~0.3 s per set of four and layer).
    depth : int
    widths : sequence of int, optional
        Hidden widths n_1..n_{L−1} (or all n_1..n_L): the propagated terms carry
        r = n_l/n_{l−1}. Omitted: equal widths.

    Returns
    -------
    DNTKStatistics
        K, Θ, P, Q: arrays [L] for a scalar K1, [L, B, B] and [L, B, B, B, B] otherwise.

    Examples
    --------
    >>> s = dntk_statistics("tanh", 0.0, 1.0, 1.0, 1.0, 1.0, 2.0, depth=2)
    >>> float(s.P[0]), round(float(s.Q[1]), 6) == round(float(s.P[1] - s.P[1] + s.Q[1]), 6)
    (0.0, True)
    """
    from .ntk import ntk_fluctuations

    act = _smooth(act)
    fl = ntk_fluctuations(act, C_b, C_W, lam_b, lam_W, K1, Theta1, depth, widths=widths)
    L = fl.depth
    ratios, w = _layers.width_ratios(widths, L)
    scalar = fl.single_input
    shape4 = lambda a: np.asarray(a, float).reshape((L,) + (1,) * 4) if scalar else np.asarray(a, float)
    K = fl.K.reshape(L, 1, 1) if scalar else fl.K
    Theta = fl.Theta.reshape(L, 1, 1) if scalar else fl.Theta
    F, Bv = shape4(fl.F), shape4(fl.B)
    nb = K.shape[1]
    P = np.zeros((L,) + (nb,) * 4)
    Q = np.zeros((L,) + (nb,) * 4)
    for l in range(L - 1):
        avg = Averages(act, K[l], _checked=True)
        with np.errstate(over="ignore", invalid="ignore"):
            P[l + 1], Q[l + 1] = _step(avg, Theta[l], F[l], Bv[l], P[l], Q[l],
                                       fl.C_W[l + 1], fl.lam_W[l + 1], ratios[l])
        for name, value in (("dNTK statistic P", P[l + 1]), ("dNTK statistic Q", Q[l + 1])):
            _layers.check_layer(name, value, l + 2,
                                "χ_⊥ > 1 or χ_∥ > 1 make the NTK and its differential explode "
                                "geometrically with depth")
    if scalar:
        P, Q = P.reshape(L), Q.reshape(L)
    return DNTKStatistics(act=act, C_b=fl.C_b, C_W=fl.C_W, lam_b=fl.lam_b, lam_W=fl.lam_W,
                          widths=w, K=fl.K, Theta=fl.Theta, P=P, Q=Q)
