"""Finite-width flows of residual MLPs: kernel, four-point vertex, 1/n kernel correction  (App. B of [RY]).

A residual layer (§B.1) adds a skip connection to the MLP layer,

    z^{(l+1)}_i = ξ^{(l+1)} [b^{(l+1)}_i + Σ_j W^{(l+1)}_{ij} σ(z^{(l)}_j)] + γ^{(l+1)} z^{(l)}_i ,

with ξ = 1, γ = 0 the plain MLP. The conditioning argument of Chapter 4 goes through with
one change: *given layer l*, the preactivations of layer l+1 are Gaussian, independent
across neurons, with covariance ξ² Ĝ^{(l+1)} (Ĝ the stochastic metric of the MLP block,
Ĝ = C_b + C_W (1/n_l) Σ_j σ_j σ_j) but now with a **mean** γ z^{(l)}_i. Writing
z' = γ z + ξ ζ with ζ | layer l ~ N(0, Ĝ) and averaging:

* kernel (§B.2): K^{(l+1)} = γ² K^{(l)} + ξ² [C_b + C_W ⟨σσ⟩_{K^{(l)}}];
* four-point vertex (§B.3). For two different neurons the connected four-point function is
  γ⁴ Cov(z z, z z) + γ²ξ² [Cov(z_i z_i, Ĝ) + Cov(Ĝ, z_j z_j)] + ξ⁴ Cov(Ĝ, Ĝ). The last is the
  MLP's (source S plus propagation D V Dᵀ); the mixed covariance has a piece from the neuron
  j = i inside Ĝ, C_W[⟨z z σσ⟩ − K⟨σσ⟩] = 2 (K⊗K) Dᵀ by Stein's lemma, and a piece D V from the
  other neurons. With pairs of inputs as matrix indices, D = C_W ∂⟨σσ⟩/∂K and
  (K⊗K)_{(ab)(ef)} = K_ae K_bf,

      V^{(l+1)} = ξ⁴ S + 2γ²ξ² [(K⊗K) Dᵀ + D (K⊗K)] + (n_l/n_{l−1}) P V^{(l)} Pᵀ,
      P = γ² 1 + ξ² D ,

  so the residual parallel susceptibility is χ_∥ = γ² + ξ² C_W d⟨σ²⟩/dK (one input), and
  for one input V' = ξ⁴ S + 4γ²ξ² χ K² + (γ² + ξ²χ)² V: the skip connection adds a source
  of its own, which is first order in ξ²;
* 1/n correction to the metric: E[z' z'] = γ² E[z z] + ξ² E[Ĝ], so
  G^{{1}(l+1)} = (n_l/n_{l−1}) [γ² G^{{1}(l)} + ξ² (D G^{{1}(l)} + (C_W/2) ∂²⟨σσ⟩/∂K∂K · V^{(l)})].

Every average and kernel derivative comes from :class:`dlt_companion.gaussian.Averages`,
exactly as in :mod:`dlt_companion.flows.preactivations`; with ξ = 1, γ = 0 in every layer the
arithmetic is the plain MLP's, term by term (a test checks equality to the last bit).

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks
from ..gaussian import Averages
from . import _layers
from .preactivations import Flow, _propagate

__all__ = ["run", "ResidualFlow", "vertex", "three_point", "kernel_correction", "susceptibilities",
           "effective_aspect_ratio"]


@dataclass(frozen=True)
class ResidualFlow(Flow):
    """A :class:`~dlt_companion.flows.Flow` of a residual MLP, with its three-point vertex  (App. B).

    Attributes (beyond those of :class:`~dlt_companion.flows.Flow`)
    ----------------------------------------------------------------
    T : array [L] (one input) or [L, B, B, B]
        Three-point vertex: E[z_{i;γ} z_{k;α} z_{k;β}] = T_{γ(αβ)}/n_{l−1} for i ≠ k, and
        E[z_{i;α} z_{i;β} z_{i;γ}] = (T_{α(βγ)} + T_{β(αγ)} + T_{γ(αβ)})/n_{l−1} (one input:
        E[z_i z_k²] = T/n, E[z_i³] = 3T/n). Zero for plain MLPs and for odd σ.
    xi, gamma : tuple of L floats
        The residual couplings used.
    """

    T: np.ndarray | None = None
    xi: tuple = ()
    gamma: tuple = ()


def _couplings(depth: int, xi, gamma) -> tuple[tuple, tuple]:
    """Per-layer (ξ, γ), checked: layer 1 is never residual."""
    xi = _layers.per_layer(xi, depth, "xi", _checks.real)
    gamma = _layers.per_layer(gamma, depth, "gamma", _checks.real)
    if np.ndim(xi) and (xi[0] != 1.0 or gamma[0] != 0.0):
        raise ValueError("the first layer is never residual (K^(1) is given): xi[0] must be 1 and "
                         f"gamma[0] must be 0, got xi[0] = {xi[0]}, gamma[0] = {gamma[0]}")
    return xi, gamma


def _kk(K: np.ndarray) -> np.ndarray:
    """(K⊗K)_{(ab)(ef)} = K_ae K_bf as a [B², B²] matrix."""
    B = K.shape[0]
    return np.einsum("ae,bf->abef", K, K).reshape(B * B, B * B)


def _first_derivative(A: np.ndarray) -> np.ndarray:
    """E_{γ(αβ)} = ⟨∂_γ(σ_α σ_β)⟩ = δ_γα ⟨σ'_α σ_β⟩ + δ_γβ ⟨σ_α σ'_β⟩ from A_ab = ⟨σ'_a σ_b⟩; [B, B²]."""
    B = A.shape[0]
    E = np.zeros((B, B, B))
    idx = np.arange(B)
    E[idx, idx, :] += A
    E[idx, :, idx] += A
    return E.reshape(B, B * B)


def _flow(act, C_b, C_W, xi, gamma, K1, depth, ratios, want_corr):
    B = K1.shape[0]
    K = np.empty((depth, B, B))
    V = np.zeros((depth, B, B, B, B))
    T = np.zeros((depth, B, B, B))
    Kc = np.zeros((depth, B, B))
    chi = np.empty(depth)
    K[0] = K1
    eye = np.eye(B * B)
    for l in range(depth):
        Kl = K[l]
        if np.any(np.diagonal(Kl) <= 0):
            raise ValueError(f"the finite-width recursions need K_αα > 0 for every input; at layer "
                             f"{l + 1} a variance is {np.diagonal(Kl).min():.3g} (C_b = 0 and a "
                             "zero input, or a vanishing kernel)")
        nxt = min(l + 1, depth - 1)
        cw, x2, g2, g = C_W[nxt], xi[nxt] ** 2, gamma[nxt] ** 2, gamma[nxt]
        avg = Averages(act, Kl, _checked=True)
        D = cw * avg.dK((0, 0))                                  # [B, B, B, B]
        chi[l] = g2 + x2 * D[0, 0, 0, 0]                         # residual χ_∥ (one input)
        if l + 1 == depth:
            break
        ss = avg.tensor((0, 0))
        block = C_b[l + 1] + cw * ss                             # MLP block's kernel map
        S = cw ** 2 * (avg.tensor((0, 0, 0, 0)) - np.multiply.outer(ss, ss))
        plain = x2 == 1.0 and g2 == 0.0
        odd = bool(np.any(T[l]))                                 # a three-point vertex to carry
        r = ratios[l]
        D2 = D.reshape(B * B, B * B)
        with np.errstate(over="ignore", invalid="ignore"):
            if plain:                                            # the MLP arithmetic, unchanged
                K[l + 1] = block
                V[l + 1] = S + r * _propagate(D, V[l])
                P2 = D2
            else:
                KK = _kk(Kl)
                P2 = g2 * eye + x2 * D2
                cross = 2.0 * (KK @ D2.T + D2 @ KK)
                K[l + 1] = g2 * Kl + x2 * block
                V[l + 1] = (x2 * x2 * S + g2 * x2 * cross.reshape(B, B, B, B)
                            + r * _propagate(P2.reshape(B, B, B, B), V[l]))
            if odd or g != 0.0:
                E2 = _first_derivative(avg.tensor((1, 0)))       # ⟨∂_γ(σ_α σ_β)⟩, [B, B²]
            if odd:                                              # layer l's three-point vertex
                T2 = T[l].reshape(B, B * B)
                U = cw * E2.T @ T2                               # [B², B²]
                V[l + 1] += r * x2 * (P2 @ U.T + U @ P2.T).reshape(B, B, B, B)
            if g != 0.0:                                         # the skip creates T (non-odd σ)
                Z2 = Kl @ E2                                     # ⟨z_γ σ_α σ_β⟩ by Stein
                T[l + 1] = (g * x2 * cw * Z2 + (r * g * T[l].reshape(B, B * B) @ P2.T
                                                if odd else 0.0)).reshape(B, B, B)
            if want_corr:
                mlp = ((D2 @ Kc[l].ravel()).reshape(B, B) + 0.5 * cw * avg.d2K((0, 0), V[l]))
                if odd:                                          # ⟨σσ⟩ shifted by the 3-point
                    dA = avg.dK((1, 0))                          # ∂⟨σ'_a σ_b⟩/∂K_cd
                    shift = np.einsum("acd,abcd->ab", T[l], dA)
                    mlp = mlp + cw * (shift + shift.T)
                Kc[l + 1] = r * (mlp if plain else g2 * Kc[l] + x2 * mlp)
        why = (f"K^({l + 1}) = {np.max(np.diagonal(Kl)):.3g} and the residual χ_∥ = {chi[l]:.3g}; "
               "a growing kernel or χ_∥ = γ² + ξ²χ_∥(MLP) > 1 explode geometrically with depth")
        _layers.check_layer("kernel", K[l + 1], l + 2, why)
        _layers.check_layer("four-point vertex", V[l + 1], l + 2, why)
        _layers.check_layer("three-point vertex", T[l + 1], l + 2, why)
        _layers.check_layer("1/n kernel correction", Kc[l + 1], l + 2, why)
    return K, V, T, Kc, chi


def run(act, C_b, C_W, K1, depth: int, xi=1.0, gamma=0.0, widths=None,
        correction: bool = True) -> Flow:
    """Kernel, four-point vertex and 1/n kernel correction of a residual MLP  (§B.2–B.3 of [RY]).

    The recursions of the module docstring, layer by layer; with ξ = 1, γ = 0 everywhere this
    is :func:`dlt_companion.flows.run` exactly.

    Parameters
    ----------
    act : str or Activation
        Activation σ (with a derivative that is a function).
    C_b, C_W : float or sequence of ``depth`` floats
        Bias (≥ 0) and weight (> 0) variances of the MLP blocks (entry l−1 for layer l;
        layer 1's are unused since K1 is given).
    K1 : float or array [B, B]
        First-layer kernel (one input: a number > 0; several: the Gram matrix, B ≤ 8).
    depth : int
        Number of layers L.
    xi, gamma : float or sequence of ``depth`` floats
        Residual couplings ξ^{(l)}, γ^{(l)} (layer 1's must be 1 and 0 when given per layer).
        A skip connection needs equal widths n_l = n_{l−1}; that is checked by
        :class:`dlt_companion.network.MLP`, which is the usual way in
        (:meth:`~dlt_companion.network.MLP.flow`).
    widths : sequence of int, optional
        Hidden widths n_1..n_{L−1} (or n_1..n_L); omitted: equal widths.
    correction : bool
        Compute G^{{1}} (``K_corr``); False leaves it None for several inputs.

    Returns
    -------
    Flow
        ``chi_par`` (one input) is the residual χ_∥ = γ² + ξ² C_W d⟨σ²⟩/dK with the ξ, γ, C_W
        of the next layer.

    Examples
    --------
    >>> f = run("linear", 0.0, 1.0, 1.0, 3, xi=0.6, gamma=0.8)   # ξ² + γ² = 1: critical
    >>> [round(float(v), 12) for v in f.V]                        # V' = 2ξ⁴ + 4γ²ξ² + V
    [0.0, 1.1808, 2.3616]
    """
    act = _layers.finite_width_act(act)
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    if np.ndim(xi) == 0 and np.ndim(gamma) == 0:
        xi = (1.0,) + (float(_checks.real(xi, "xi")),) * (depth - 1)
        gamma = (0.0,) + (float(_checks.real(gamma, "gamma")),) * (depth - 1)
    xi, gamma = _couplings(depth, xi, gamma)
    ratios, w = _layers.width_ratios(widths, depth)
    if w is not None:
        for l in range(1, min(depth, len(w))):          # layer l+1 maps width w[l-1] to w[l]
            if gamma[l] != 0.0 and w[l] != w[l - 1]:
                raise ValueError(f"layer {l + 1} has a skip connection (gamma = {gamma[l]}) but changes "
                                 f"width {w[l - 1]} -> {w[l]}; a skip connection needs n_l = n_(l-1)")
    scalar, K1 = _layers.initial_kernel(K1)
    if K1.shape[0] > _layers.MAX_INPUTS:
        raise ValueError(f"the finite-width flows support up to {_layers.MAX_INPUTS} inputs "
                         f"(V has B^4 entries), got {K1.shape[0]}; flows.kernel takes any number")
    K, V, T, Kc, chi = _flow(act, C_b, C_W, xi, gamma, K1, depth, ratios,
                             bool(correction) or scalar)
    if scalar:
        return ResidualFlow(act, C_b, C_W, w, K[:, 0, 0], V[:, 0, 0, 0, 0], Kc[:, 0, 0], chi,
                            T=T[:, 0, 0, 0], xi=xi, gamma=gamma)
    return ResidualFlow(act, C_b, C_W, w, K, V, Kc if correction else None, T=T, xi=xi, gamma=gamma)


def vertex(act, C_b, C_W, K1, depth: int, xi=1.0, gamma=0.0, widths=None) -> np.ndarray:
    """The residual four-point vertex V^{(l)}, l = 1..depth  (§B.3 of [RY]); see :func:`run`.

    Returns an array [depth] for one input, or [depth, B, B, B, B].
    """
    return run(act, C_b, C_W, K1, depth, xi, gamma, widths, correction=False).V


def three_point(act, C_b, C_W, K1, depth: int, xi=1.0, gamma=0.0, widths=None) -> np.ndarray:
    """The residual three-point vertex T^{(l)}, l = 1..depth  (App. B of [RY]); see :class:`ResidualFlow`.

    Returns an array [depth] for one input, or [depth, B, B, B].
    """
    return run(act, C_b, C_W, K1, depth, xi, gamma, widths, correction=False).T


def kernel_correction(act, C_b, C_W, K1, depth: int, xi=1.0, gamma=0.0, widths=None) -> np.ndarray:
    """The residual 1/n metric correction G^{{1}(l)}, l = 1..depth  (§B.3 of [RY]); see :func:`run`."""
    return run(act, C_b, C_W, K1, depth, xi, gamma, widths, correction=True).K_corr


def susceptibilities(act, C_W: float, K, xi: float, gamma: float) -> tuple[float, float]:
    """Residual susceptibilities (χ_∥, χ_⊥) = γ² + ξ² (χ_∥, χ_⊥)_MLP at kernel K  (§B.2 of [RY]).

    A perturbation δK of one input's kernel becomes (γ² + ξ² C_W d⟨σ²⟩/dK) δK in the next
    layer, and the distance between two nearby inputs is multiplied by γ² + ξ² C_W⟨σ'²⟩;
    criticality is both equal to 1.

    Parameters
    ----------
    act : str or Activation
    C_W : float > 0
    K : float > 0
    xi, gamma : float

    Returns
    -------
    chi_par, chi_perp : float
    """
    from ..criticality import susceptibilities as mlp

    xi, gamma = _checks.real(xi, "xi"), _checks.real(gamma, "gamma")
    par, perp = mlp(act, 0.0, C_W, K)
    return float(gamma ** 2 + xi ** 2 * par), float(gamma ** 2 + xi ** 2 * perp)


def effective_aspect_ratio(act, C_b, C_W, K1, depth: int, n: int, xi=1.0, gamma=0.0,
                           nu: float | None = None) -> np.ndarray:
    """The aspect ratio a plain critical MLP would need for the same non-Gaussianity  (§B.3, §A.3).

    r_eff^{(l)} = V^{(l)} / (ν n K^{(l)2}), with V, K from the residual flow and ν the plain
    network's slope V/(n K²) ≈ ν l/n at criticality (5 for ReLU, 2/3 for tanh; default from
    :func:`dlt_companion.information.nu`). A residual network is "as deep" as a plain one of
    depth-to-width ratio r_eff: Appendix A's optimum r* becomes a condition on r_eff.

    Parameters
    ----------
    act, C_b, C_W, K1, depth, xi, gamma : as in :func:`run` (one input: K1 a number)
    n : int
        Hidden width.
    nu : float, optional
        ν of the plain MLP (default :func:`dlt_companion.information.nu` of ``act``).

    Returns
    -------
    array [depth]
    """
    from ..information import nu as nu_of

    if np.ndim(K1) != 0:
        raise ValueError("effective_aspect_ratio is defined for one input: pass K1 as a number")
    n = _checks.width(n, "n")
    nu = nu_of(act) if nu is None else _checks.nonnegative(nu, "nu")
    if nu <= 0:
        raise ValueError(f"nu must be > 0, got {nu}")
    f = run(act, C_b, C_W, K1, depth, xi, gamma, correction=False)
    return f.V / (nu * n * f.K ** 2)
