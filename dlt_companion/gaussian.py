"""Gaussian expectations ⟨F(z)⟩_K, the basic operation of every recursion in [RY].

The book writes ⟨F(z)⟩_K for the average of F over a zero-mean Gaussian with
covariance (kernel) K (§1.1 and the conventions of Chapter 4 of [RY]).
Everything the infinite-width and 1/n recursions need is such an average over one
or two jointly Gaussian preactivations, occasionally three or four.

Quadrature
----------
* **One variable** (:func:`expect`): fold the integral onto z ≥ 0,
  ⟨f⟩ = ∫_0^∞ [f(√K x) + f(−√K x)] φ(x) dx, and integrate with composite
  Gauss–Legendre panels on [0, 10] (nodes from :func:`numpy.polynomial.legendre.leggauss`).
  The fold puts the only non-smooth point of every registered activation (z = 0,
  e.g. ReLU's kink) at the edge of the domain, so the rule converges
  exponentially for ReLU-type integrands too, which plain Gauss–Hermite does not.
* **Two variables** (:func:`expect2`): Cholesky-whiten the pair,
  z = A (u, v), go to polar coordinates (u, v) = r (cos θ, sin θ), and split
  θ at the four rays where z_1 = 0 or z_2 = 0. Each arc gets Gauss–Legendre nodes
  in θ, and r gets the composite panels above. Piecewise-polynomial integrands
  (ReLU, leaky ReLU and their products) are then integrated to machine precision
  and smooth ones converge exponentially.
* **Three variables** (:func:`expect_n`): integrate one variable at a time in
  conditional (pivoted-Cholesky, :func:`scipy.linalg.lapack.dpstrf`) coordinates,
  z = L u with L lower triangular, and split each u_k where its own z_k = 0. Given
  the earlier u's the integrand is smooth on both sides of every split, so
  Gauss–Legendre on the two sides of [−8.6, 8.6] converges exponentially for
  ReLU-type integrands too. Measured with 24 nodes a side (0.05 s), equal
  correlation ρ between the three, against the ReLU arc-cosine kernel and tanh via
  :func:`expect2`: ≤ 1e-12 for |ρ| ≤ 0.8, 1e-8 at ρ = 0.9, 1e-6 at ρ = 0.99 (nearly
  collinear inputs make the kink planes nearly parallel; ``nodes=32`` gives 1e-9
  there). Singular kernels integrate over their rank.
* **Four variables** (:func:`expect_n`): the same split rule in four dimensions, with
  14 Gauss–Legendre nodes on each side of every split and a tighter cut-off |u| ≤ 6.5
  ((2·14)^4 = 614 656 points, ~0.3 s). Measured on a generic 4×4 kernel against the
  rule with 24 nodes a side: 8e-9 (ReLU), 5e-7 (tanh), 9e-9 (SWISH) relative on
  ⟨σσσσ⟩; on an ill-conditioned kernel (smallest eigenvalue 1 % of the largest) the
  polynomial ⟨z_0z_1z_2z_3⟩ is 5e-6 off Isserlis' value, and erf at large variance
  (K ≈ 3, a sharp transition in units of the rule) converges slowest: 6e-5. The connected
  part ⟨σ_0σ_1σ_2σ_3⟩ − ⟨σ_0σ_1⟩⟨σ_2σ_3⟩ is good to 1e-7 (ReLU, tanh) – 1e-4 (erf) relative,
  well inside the 0.1 % that the four-point vertex needs (tests compare it with a finer
  rule and with scrambled-Sobol quasi-Monte Carlo). (Tensor
  Gauss–Hermite, used before, was ~1e-3 for kinked integrands and lost ~1 % of the
  connected part to cancellation.)

The engine: :class:`Averages`
-----------------------------
Every recursion of the book is built from averages of products of σ and its
derivatives at a few inputs, ⟨σ^{(k1)}(z_{a1}) ⋯ σ^{(km)}(z_{am})⟩_K, and from their
derivatives with respect to the kernel. :class:`Averages` provides all of them for one
kernel K (one layer): it builds the node rule of each subset of distinct inputs once
(one, two, three or four inputs: the rules above), evaluates σ^{(k)} on its nodes once,
and memoises every average. Kernel derivatives are Gaussian averages too (Stein's lemma):
with M = K_S⁻¹ on the inputs S involved and y = M z,

    ∂⟨F⟩/∂K_cd = ½ ⟨F (y_c y_d − M_cd)⟩,      ∂²⟨F⟩/∂K_cd ∂K_ef = ¼ ⟨F H_cdef(y)⟩,

with H the fourth Hermite tensor (entries of K treated as independent, so that
Σ_cd ∂⟨F⟩/∂K_cd δK_cd is the change under a symmetric δK); no finite differences.

Degenerate kernels are handled exactly: K = 0 gives F(0); a 2x2 kernel with
K12² = K11 K22 reduces to a one-dimensional integral along the correlated line.
Reference nodes are built once per rule and cached.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import scipy.linalg

from . import _checks

__all__ = ["Averages", "expect", "expect2", "expect_n", "pair_rule", "quadrature_1d", "pairings",
           "wick_moment", "hermite4_contracted"]

# Standardised radius beyond which the Gaussian weight is below e^{-50} ~ 2e-22.
_R_MAX = 10.0
_N_PANELS = 20       # panels of width 0.5 in the radial variable
_PANEL_NODES = 10    # Gauss–Legendre nodes per panel
_ARC_NODES = 32      # Gauss–Legendre nodes per angular arc (4 arcs)
_SPLIT_NODES = 24    # Gauss–Legendre nodes on each side of a kink, per variable (three variables)
_SPLIT_NODES_4 = 14  # Gauss–Legendre nodes on each side of a kink, per variable (four variables)
_U_MAX = 8.6         # standardised cut-off of the conditional integrals (weight < 1e-16)
_U_MAX_4 = 6.5       # the same for four variables (measured optimum for 12-16 nodes, see above)
_MAX_POINTS = 20_000_000   # refuse rules larger than this (memory and minutes)


@lru_cache(maxsize=None)
def _radial_rule(n_panels: int, per_panel: int, r_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre nodes and weights for ∫_0^{r_max} g(r) dr."""
    x, w = np.polynomial.legendre.leggauss(per_panel)
    edges = np.linspace(0.0, r_max, n_panels + 1)
    half = 0.5 * np.diff(edges)
    mid = 0.5 * (edges[1:] + edges[:-1])
    r = (mid[:, None] + half[:, None] * x[None, :]).ravel()
    wr = (half[:, None] * w[None, :]).ravel()
    r.setflags(write=False)
    wr.setflags(write=False)
    return r, wr


@lru_cache(maxsize=None)
def quadrature_1d() -> tuple[np.ndarray, np.ndarray]:
    """Nodes x > 0 and weights w with Σ_i w_i [f(x_i) + f(−x_i)] ≈ E f(ξ), ξ ~ N(0, 1)  (§1.1).

    Returns
    -------
    x, w : read-only arrays [200]
    """
    r, wr = _radial_rule(_N_PANELS, _PANEL_NODES, _R_MAX)
    w = wr * np.exp(-0.5 * r * r) / np.sqrt(2.0 * np.pi)
    w = w / (2.0 * w.sum())  # absorb the ~1e-23 tail so that constants are exact
    w.setflags(write=False)
    return r, w


@lru_cache(maxsize=None)
def _unit_rule_1d() -> tuple[np.ndarray, np.ndarray]:
    """The folded rule as plain nodes ±x with weights (w, w): Σ w_p f(x_p) ≈ E f(ξ)."""
    x, w = quadrature_1d()
    z, wt = np.concatenate([x, -x]), np.concatenate([w, w])
    z.setflags(write=False)
    wt.setflags(write=False)
    return z, wt


@lru_cache(maxsize=None)
def _polar_rule() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Radial nodes/weights for (1/2π)∫ r e^{-r²/2} dr, and reference arc nodes on [-1, 1]."""
    r, wr = _radial_rule(_N_PANELS, _PANEL_NODES, _R_MAX)
    w = wr * r * np.exp(-0.5 * r * r)
    w = w / (2.0 * np.pi * w.sum())  # Σ_θ-weights = 2π, so the total mass is exactly 1
    x, wx = np.polynomial.legendre.leggauss(_ARC_NODES)
    for a in (r, w, x, wx):
        a.setflags(write=False)
    return r, w, x, wx


@lru_cache(maxsize=None)
def _hermite_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilists' Gauss–Hermite nodes and weights normalised to a probability."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return x, w / w.sum()


def _dot(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_p values[..., p] weights[p] without BLAS.

    numpy's ``@``/``dot`` of a vector go to a multi-threaded BLAS whose threads spin for
    milliseconds per call when the cores are busy; the quadratures call this thousands of
    times per flow, so they use numpy's own (single-threaded) einsum loop instead.
    """
    return np.einsum("...p,p->...", values, weights)


def _as_output(values, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(values, dtype=float), shape)


def expect(f: Callable, K) -> np.ndarray | float:
    """⟨f(z)⟩_K for a zero-mean Gaussian z with variance K (the book's ⟨·⟩_K, §1.1, §4.1).

    Parameters
    ----------
    f : callable
        Vectorised numpy function of z (e.g. an :class:`~dlt_companion.activations.Activation`,
        or ``lambda z: act(z)**2``). May be non-smooth at z = 0 only.
    K : float or array of shape S
        Variance(s) K ≥ 0; an array evaluates all of them at once.

    Returns
    -------
    float or array of shape S

    Notes
    -----
    Accuracy ~1e-14 relative for polynomial, ReLU-type and erf/tanh integrands at
    K = O(1). K = 0 returns f(0) exactly.
    """
    K = _checks.kernel_scalar(K)
    x, w = quadrature_1d()
    s = np.sqrt(K)[..., None]
    z = s * x
    vals = _as_output(f(z), z.shape) + _as_output(f(-z), z.shape)
    out = _dot(vals, w)
    return float(out) if out.ndim == 0 else out


def _pair_factor(K11, K12, K22):
    """Lower-triangular A with A Aᵀ = [[K11, K12], [K12, K22]] (exact for singular K)."""
    a = np.sqrt(K11)
    safe_a = np.where(a > 0, a, 1.0)
    b = np.where(a > 0, K12 / safe_a, 0.0)
    c2 = np.where(a > 0, (K11 * K22 - K12 * K12) / np.where(K11 > 0, K11, 1.0), K22)
    # perfectly correlated inputs: remove the rounding residue so the reduction is exact
    c2 = np.where(c2 <= 1e-13 * np.maximum(K22, np.finfo(float).tiny), 0.0, c2)
    return a, b, np.sqrt(c2)


def _pair_nodes(K11, K12, K22):
    """Polar-rule nodes z1, z2 [S + (T, R)] and weights (w_θ [S + (T,)], w_r [R]) for a pair."""
    K11, K12, K22 = _checks.kernel_pair(K11, K12, K22)
    a, b, c = _pair_factor(K11, K12, K22)
    r, wr, x, wx = _polar_rule()
    # rays where z1 = 0 (θ = π/2 mod π) and z2 = b cosθ + c sinθ = 0
    t1 = np.full(a.shape, 0.5 * np.pi)
    t2 = np.mod(np.arctan2(-b, c), np.pi)
    rays = np.sort(np.stack([t1, t2, t1 + np.pi, t2 + np.pi], axis=-1), axis=-1)
    ends = np.concatenate([rays[..., 1:], rays[..., :1] + 2.0 * np.pi], axis=-1)
    half = 0.5 * (ends - rays)                                      # S + (4,)
    theta = (rays + half)[..., None] + half[..., None] * x          # S + (4, nθ)
    wtheta = (half[..., None] * wx).reshape(a.shape + (-1,))        # S + (4nθ,)
    theta = theta.reshape(a.shape + (-1,))
    cos, sin = np.cos(theta), np.sin(theta)
    u1 = (a[..., None] * cos)[..., None]                            # S + (4nθ, 1)
    u2 = (b[..., None] * cos + c[..., None] * sin)[..., None]
    return u1 * r, u2 * r, wtheta, wr


def pair_rule(K11: float, K12: float, K22: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes and weights of the two-variable rule behind :func:`expect2`, for one kernel  (§4.3).

    Parameters
    ----------
    K11, K12, K22 : float
        Entries of a positive semidefinite 2x2 kernel.

    Returns
    -------
    z1, z2, w : arrays [P]
        Σ_p w_p F(z1_p, z2_p) ≈ ⟨F(z1, z2)⟩; useful when many averages share one kernel.
    """
    z1, z2, wtheta, wr = _pair_nodes(float(K11), float(K12), float(K22))
    return z1.ravel(), z2.ravel(), np.multiply.outer(wtheta, wr).ravel()


def _expect_pair(F: Callable, K11, K12, K22) -> np.ndarray:
    """⟨F(z1, z2)⟩ for (z1, z2) ~ N(0, [[K11, K12], [K12, K22]]), F non-smooth only where z_i = 0."""
    z1, z2, wtheta, wr = _pair_nodes(K11, K12, K22)
    vals = _as_output(F(z1, z2), z1.shape)
    out = np.einsum("...tr,...t,r->...", vals, wtheta, wr)
    return float(out) if out.ndim == 0 else out


def expect2(f: Callable, g: Callable, K11, K12, K22) -> np.ndarray | float:
    """⟨f(z1) g(z2)⟩ for the bivariate Gaussian with kernel [[K11, K12], [K12, K22]].

    This is the two-input average ⟨σ_α σ_β⟩_K that drives the kernel recursion
    of §4.3 and its relatives.

    Parameters
    ----------
    f, g : callable
        Vectorised numpy functions, smooth except possibly at 0.
    K11, K12, K22 : float or arrays broadcastable to a common shape S
        Kernel entries; K12² ≤ K11 K22 is required.

    Returns
    -------
    float or array of shape S

    Raises
    ------
    ValueError
        If a kernel is not positive semidefinite.
    """
    return _expect_pair(lambda z1, z2: f(z1) * g(z2), K11, K12, K22)


def _split_rule(L: np.ndarray, n: int, U: float = _U_MAX) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z [P, d] and weights [P] for z = L u, u ~ N(0, 1_r), split where each z_k = 0.

    ``L`` is [d, r] lower trapezoidal with L[k, k] > 0 for k < r (rows in integration
    order). Level k integrates u_k over [−U, t] and [t, U] with t = −(Σ_{j<k} L_kj u_j)/L_kk,
    the value at which z_k changes sign; n Gauss–Legendre nodes on each side.
    """
    x, w = np.polynomial.legendre.leggauss(n)
    u = np.zeros((1, 0))
    weights = np.ones(1)
    for k in range(L.shape[1]):
        t = np.clip(-(u @ L[k, :k]) / L[k, k], -U, U)                            # [P]
        edges = np.stack([np.full_like(t, -U), t, np.full_like(t, U)], axis=1)
        half = 0.5 * np.diff(edges, axis=1)                                     # [P, 2]
        mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
        uk = (mid[..., None] + half[..., None] * x).reshape(len(t), -1)         # [P, 2n]
        wk = (half[..., None] * w).reshape(len(t), -1) * np.exp(-0.5 * uk * uk) / np.sqrt(2 * np.pi)
        u = np.concatenate([np.repeat(u, uk.shape[1], axis=0), uk.reshape(-1, 1)], axis=1)
        weights = (weights[:, None] * wk).ravel()
    return u @ L.T, weights


def _nodes_per_side(nodes, d: int) -> int:
    default = _SPLIT_NODES if d == 3 else _SPLIT_NODES_4
    if nodes is None:
        return default
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 2:
        raise ValueError(f"nodes must be an integer >= 2 (Gauss–Legendre nodes on each side of a "
                         f"split), got {nodes!r}")
    if (2 * int(nodes)) ** d > _MAX_POINTS:
        raise ValueError(f"nodes = {nodes} in {d} variables is a rule of (2·{nodes})^{d} = "
                         f"{(2 * int(nodes)) ** d:.3g} points, more than {_MAX_POINTS:.0e} "
                         f"(minutes and gigabytes); the default {default} is accurate to ~1e-6")
    return int(nodes)


def _split_nodes(K: np.ndarray, nodes=None) -> tuple[np.ndarray, np.ndarray]:
    """Nodes z [P, d] and weights [P] of the split rule for a 3x3 or 4x4 covariance."""
    d = K.shape[0]
    n = _nodes_per_side(nodes, d)
    c, piv, rank, info = scipy.linalg.lapack.dpstrf(K, lower=1, tol=-1.0)
    if rank == 0:
        return np.zeros((1, d)), np.ones(1)
    z_ordered, weights = _split_rule(np.tril(c)[:, :rank], n, _U_MAX if d == 3 else _U_MAX_4)
    z = np.empty_like(z_ordered)
    z[:, piv - 1] = z_ordered                   # undo LAPACK's (1-based) pivoting
    return z, weights


def expect_n(fn: Callable, K, nodes: int | None = None) -> float:
    """⟨fn(z)⟩ for z ~ N(0, K) in d = 1..4 dimensions  (§1.1 of [RY]).

    Parameters
    ----------
    fn : callable
        Takes an array of shape [..., d] (last axis: the d variables) and returns [...].
    K : array [d, d]
        Positive semidefinite covariance.
    nodes : int, optional
        d = 3, 4: Gauss–Legendre nodes on each side of every split, per variable
        (default 24 for d = 3, 14 for d = 4); rules of more than 2·10⁷ points are refused.

    Returns
    -------
    float

    Notes
    -----
    d = 1 and d = 2 dispatch to :func:`expect` and the polar rule of :func:`expect2`
    (~1e-14). d = 3 and 4 integrate variable by variable in pivoted-Cholesky coordinates,
    splitting each where its own z_k = 0, so ReLU-type kinks sit at panel edges
    (d = 3: ≤ 1e-12 relative for correlations up to 0.8, 1e-6 at 0.99; d = 4: 1e-8 to 5e-6).
    The module docstring has the measurements.
    """
    K = _checks.gram(K, "covariance K")
    d = K.shape[0]
    if d == 0 or d > 4:
        raise ValueError(f"expect_n supports 1 to 4 variables, got a {d}x{d} covariance")
    if d == 1:
        return expect(lambda z: fn(z[..., None]), K[0, 0])
    if d == 2:
        return _expect_pair(lambda z1, z2: fn(np.stack([z1, z2], axis=-1)), K[0, 0], K[0, 1], K[1, 1])
    z, weights = _split_nodes(K, nodes)
    return float(_dot(_as_output(fn(z), z.shape[:-1]), weights))


def hermite4_contracted(M: np.ndarray, V: np.ndarray) -> Callable:
    """z ↦ Σ_ijkl V_ijkl H_ijkl(z): the fourth Hermite tensor for K⁻¹ = M contracted with V  (§4.5).

    H_ijkl(z) = y_i y_j y_k y_l − (six terms M_ij y_k y_l) + (three terms M_ij M_kl), y = M z,
    so that ⟨∂_i∂_j∂_k∂_l F⟩_K = ⟨F H_ijkl⟩_K (Stein's lemma applied four times). Contracting
    with V first leaves a quartic, a quadratic form and a constant in y: cheap per node.

    Parameters
    ----------
    M : array [s, s]
        Inverse covariance.
    V : array [s, s, s, s]

    Returns
    -------
    callable mapping z [..., s] to [...]
    """
    e = np.einsum
    A = (e("ij,ijkl->kl", M, V) + e("ik,ijkl->jl", M, V) + e("il,ijkl->jk", M, V)
         + e("jk,ijkl->il", M, V) + e("jl,ijkl->ik", M, V) + e("kl,ijkl->ij", M, V))
    c = e("ij,kl,ijkl->", M, M, V) + e("ik,jl,ijkl->", M, M, V) + e("il,jk,ijkl->", M, M, V)
    s = M.shape[0]
    V2 = V.reshape(s * s, s * s)

    def q(z):
        y = np.einsum("...i,ij->...j", z, M)                         # [..., s]
        yy = (y[..., :, None] * y[..., None, :]).reshape(*y.shape[:-1], s * s)
        quartic = np.einsum("...i,ij,...j->...", yy, V2, yy)         # Σ V_ijkl y_i y_j y_k y_l
        return quartic - np.einsum("...i,ij,...j->...", y, A, y) + c
    return q


class Averages:
    """Gaussian averages of products of σ^{(k)} over one kernel, memoised  (§1.1, Ch. 4–11 of [RY]).

    The one engine behind every recursion in :mod:`dlt_companion.flows`: for a kernel
    K [B, B] (one layer), it returns

    * :meth:`mean` — ⟨σ^{(k1)}(z_{a1}) ⋯ σ^{(km)}(z_{am})⟩_K for any slots (input a_j,
      derivative order k_j ≤ 3), over 1–4 distinct inputs;
    * :meth:`tensor` — the same for every assignment of inputs to the slots, an array
      [B]*m (e.g. ``tensor((0, 0))`` is ⟨σ_α σ_β⟩, ``tensor((1, 1, 0, 0))`` is
      ⟨σ'_α1 σ'_α2 σ_α3 σ_α4⟩);
    * :meth:`dK` and :meth:`d2K` — their first and (contracted) second derivatives with
      respect to the kernel, by Stein's lemma (module docstring).

    Each subset of distinct inputs gets its node rule once (1 input: folded
    Gauss–Legendre; 2: the polar rule; 3, 4: the split rule), σ^{(k)} is evaluated on its
    nodes once, and every average is cached, so a layer's recursions cost one quadrature
    pass per subset.

    Parameters
    ----------
    act : str or Activation
    K : float or array [B, B]
        Kernel (a number is one input); positive semidefinite.

    Examples
    --------
    >>> avg = Averages("relu", [[1.0]])
    >>> round(avg.mean((0, 0)), 12)          # ⟨σ²⟩ = K/2 for ReLU
    0.5
    >>> round(float(avg.dK((0, 0))[0, 0, 0, 0]), 12)   # d⟨σ²⟩/dK = 1/2
    0.5
    """

    def __init__(self, act, K, _checked: bool = False):
        from .activations import get

        self.act = get(act)
        if _checked:                     # a kernel the recursions built: already a Gram matrix
            self.K = np.asarray(K, dtype=float)
        else:
            self.K = _checks.scalar_or_gram(K, "K")[1]
        self.B = self.K.shape[0]
        self._rules: dict = {}
        self._values: dict = {}
        self._inverse: dict = {}
        self._cache: dict = {}

    # -- node rules ---------------------------------------------------------------------------
    def rule(self, inputs: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Nodes z [P, s] and weights [P] of the quadrature over the distinct ``inputs``.

        Parameters
        ----------
        inputs : tuple of int
            Sorted distinct input indices, 1 to 4 of them.

        Returns
        -------
        z : array [P, s]
        weights : array [P]
            Σ_p w_p F(z_p) ≈ ⟨F⟩ over the Gaussian of those inputs (module docstring).
        """
        if inputs not in self._rules:
            s = len(inputs)
            if s == 1:
                z0, wt = _unit_rule_1d()
                z = (np.sqrt(self.K[inputs[0], inputs[0]]) * z0)[:, None]
                self._rules[inputs] = (z, wt)
                return z, wt
            sub = self.K[np.ix_(inputs, inputs)]
            if s == 2:
                z1, z2, wt = pair_rule(sub[0, 0], sub[0, 1], sub[1, 1])
                z = np.stack([z1, z2], axis=-1)
            elif s <= 4:
                z, wt = _split_nodes(sub)
            else:
                raise ValueError(f"averages involve at most 4 distinct inputs, got {s}")
            self._rules[inputs] = (z, wt)
        return self._rules[inputs]

    def _sigma(self, inputs: tuple, pos: int, order: int) -> np.ndarray:
        key = (inputs, pos, order)
        if key not in self._values:
            if order not in (0, 1, 2, 3):
                raise ValueError(f"derivative orders must be 0..3, got {order!r}")
            z, _ = self.rule(inputs)
            self._values[key] = np.asarray(self.act.numpy[order](z[:, pos]), dtype=float)
        return self._values[key]

    def _y(self, inputs: tuple) -> tuple[np.ndarray, np.ndarray]:
        """y = K_S⁻¹ z on the nodes of ``inputs`` and M = K_S⁻¹."""
        if inputs not in self._inverse and len(inputs) == 1:        # one input: M = 1/K
            k = self.K[inputs[0], inputs[0]]
            if not k > 0:
                raise ValueError(f"kernel derivatives need K > 0, but input {inputs[0]} has "
                                 f"variance {k:.3g}")
            z, _ = self.rule(inputs)
            self._inverse[inputs] = (z / k, np.array([[1.0 / k]]))
        if inputs not in self._inverse:
            sub = self.K[np.ix_(inputs, inputs)]
            diag = np.sqrt(np.diag(sub))
            with np.errstate(divide="ignore", invalid="ignore"):
                corr = sub / np.outer(diag, diag)
            cond = np.linalg.cond(corr) if np.all(diag > 0) else np.inf
            if not np.isfinite(cond) or cond > 1e12:
                raise ValueError(f"kernel derivatives need the kernel of inputs {list(inputs)} to be "
                                 f"invertible, but it is singular (condition number {cond:.2g}): "
                                 "a variance is 0 or two inputs are perfectly correlated")
            M = np.linalg.inv(sub)
            M = 0.5 * (M + M.T)
            z, _ = self.rule(inputs)
            self._inverse[inputs] = (np.einsum("pi,ij->pj", z, M), M)
        return self._inverse[inputs]

    # -- averages -----------------------------------------------------------------------------
    def _key(self, idx: tuple, orders: tuple):
        """(distinct inputs, canonical slot key) for trusted integer tuples (no validation)."""
        key = tuple(sorted(zip(idx, orders)))
        return tuple(sorted(set(idx))), key

    def _slots(self, inputs, orders):
        inputs = tuple(int(a) for a in inputs)
        orders = (0,) * len(inputs) if orders is None else tuple(int(o) for o in orders)
        if len(orders) != len(inputs) or not inputs:
            raise ValueError("give one derivative order per input slot (and at least one slot)")
        for a in inputs:
            if not 0 <= a < self.B:
                raise ValueError(f"input indices must be in 0..{self.B - 1}, got {a}")
        distinct = tuple(sorted(set(inputs)))
        key = tuple(sorted(zip(inputs, orders)))
        return distinct, key

    def _product(self, distinct: tuple, key: tuple) -> np.ndarray:
        f = None
        for a, o in key:
            v = self._sigma(distinct, distinct.index(a), o)
            f = v if f is None else f * v
        return f

    def mean(self, inputs, orders=None) -> float:
        """⟨Π_j σ^{(orders[j])}(z_{inputs[j]})⟩_K (orders default 0: σ itself)  (§4.3, §8.2).

        Parameters
        ----------
        inputs : sequence of int
            Input index of each slot (repeats allowed), 1–4 distinct.
        orders : sequence of int, optional
            Derivative order 0..3 of each slot.

        Returns
        -------
        float
        """
        distinct, key = self._slots(inputs, orders)
        ck = ("mean", key)
        if ck not in self._cache:
            _, w = self.rule(distinct)
            self._cache[ck] = float(_dot(self._product(distinct, key), w))
        return self._cache[ck]

    def tensor(self, orders) -> np.ndarray:
        """T[a1, …, am] = ⟨Π_j σ^{(orders[j])}(z_{a_j})⟩_K for every assignment of inputs  (Ch. 4, 8).

        Parameters
        ----------
        orders : sequence of int
            Derivative order 0..3 of each of the m slots, e.g. ``(1, 1, 0, 0)`` for
            ⟨σ'_α1 σ'_α2 σ_α3 σ_α4⟩.

        Returns
        -------
        array [B]*m
        """
        orders = tuple(int(o) for o in orders)
        ck = ("tensor", orders)
        if ck not in self._cache:
            T = np.empty((self.B,) * len(orders))
            for idx in np.ndindex(*T.shape):
                distinct, key = self._key(idx, orders)
                mk = ("mean", key)
                if mk not in self._cache:
                    _, w = self.rule(distinct)
                    self._cache[mk] = float(_dot(self._product(distinct, key), w))
                T[idx] = self._cache[mk]
            self._cache[ck] = T
        return self._cache[ck]

    def dK(self, orders) -> np.ndarray:
        """∂T[a…]/∂K_cd for T = :meth:`tensor` (orders)  (§4.3; §5.1: the susceptibilities).

        Entries of K are independent variables here (Σ_cd dK[…, c, d] δK_cd is the change
        under a symmetric δK); Stein's lemma: ½⟨F (y_c y_d − M_cd)⟩ with y = K_S⁻¹ z.

        Parameters
        ----------
        orders : sequence of int
            As in :meth:`tensor`.

        Returns
        -------
        array [B]*m + [B, B]
        """
        orders = tuple(int(o) for o in orders)
        ck = ("dK", orders)
        if ck not in self._cache:
            out = np.zeros((self.B,) * len(orders) + (self.B, self.B))
            done: dict = {}
            for idx in np.ndindex(*(self.B,) * len(orders)):
                distinct, key = self._key(idx, orders)
                if key not in done:
                    _, w = self.rule(distinct)
                    y, M = self._y(distinct)
                    wf = w * self._product(distinct, key)
                    done[key] = 0.5 * (np.einsum("pi,p,pj->ij", y, wf, y) - M * wf.sum())
                if self.B == 1:
                    out[idx] = done[key]
                else:
                    out[idx + np.ix_(distinct, distinct)] = done[key]
            self._cache[ck] = out
        return self._cache[ck]

    def d2K(self, orders, V) -> np.ndarray:
        """Σ_cdef ∂²T[a…]/∂K_cd∂K_ef V_cdef for T = :meth:`tensor` (orders)  (§4.5).

        Stein's lemma: ¼⟨F Σ V H_cdef⟩ over the inputs S that F involves.

        Parameters
        ----------
        orders : sequence of int
            As in :meth:`tensor`.
        V : array [B, B, B, B]
            Symmetric under c↔d, e↔f and (cd)↔(ef), as the four-point vertex is.

        Returns
        -------
        array [B]*m
        """
        orders = tuple(int(o) for o in orders)
        V = np.asarray(V, dtype=float)
        if V.shape != (self.B,) * 4:
            raise ValueError(f"V must have shape {(self.B,) * 4}, got {V.shape}")
        out = np.empty((self.B,) * len(orders))
        done: dict = {}
        for idx in np.ndindex(*out.shape):
            distinct, key = self._key(idx, orders)
            if key not in done:
                VS = V if self.B == 1 else V[np.ix_(distinct, distinct, distinct, distinct)]
                if not np.any(VS):
                    done[key] = 0.0
                    out[idx] = 0.0
                    continue
                z, w = self.rule(distinct)
                y, M = self._y(distinct)
                if len(distinct) == 1:                 # H = y⁴ − 6 M y² + 3 M²
                    m, yy = M[0, 0], y[:, 0] * y[:, 0]
                    q = VS.item() * (yy * yy - 6.0 * m * yy + 3.0 * m * m)
                else:
                    q = hermite4_contracted(M, VS)(z)
                done[key] = 0.25 * float(_dot(w * self._product(distinct, key), q))
            out[idx] = done[key]
        return out


# --------------------------------------------------------------------------
# Wick's theorem (§1.1 of [RY]): moments of a zero-mean Gaussian as pairings.
# --------------------------------------------------------------------------

def pairings(k: int):
    """All perfect matchings of the positions 0..k−1, as tuples of pairs (§1.1 of [RY]).

    A pairing of 2m positions is a way of splitting them into m unordered pairs;
    there are (2m−1)!! = (2m−1)(2m−3)···1 of them, and none for odd k.

    Parameters
    ----------
    k : int
        Number of positions (k ≥ 0).

    Yields
    ------
    tuple of (int, int)
        One pairing, each pair ``(a, b)`` with a < b, pairs in increasing order of a.
        ``k = 0`` yields the single empty pairing ``()``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"the number of positions k must be an integer >= 0, got {k!r}")
    k = int(k)
    if k % 2:
        return

    def rec(rest):
        if not rest:
            yield ()
            return
        first, others = rest[0], rest[1:]
        for j, partner in enumerate(others):
            for tail in rec(others[:j] + others[j + 1:]):
                yield ((first, partner),) + tail

    yield from rec(tuple(range(k)))


def _wick_indices(indices, d: int) -> tuple:
    try:
        idx = tuple(indices)
    except TypeError:
        raise ValueError(f"indices must be a sequence of variable indices, got {indices!r}") from None
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < d:
            raise ValueError(f"every index must be an integer in 0..{d - 1} (the covariance is "
                             f"{d}x{d}), got {indices!r}")
    return tuple(int(i) for i in idx)


def wick_moment(indices, cov) -> float:
    """E[z_{i1} z_{i2} ⋯ z_{ik}] for z ~ N(0, cov), by Wick's theorem (§1.1 of [RY]).

    The moment is the sum over all pairings of the k positions of the product of
    the covariances of the paired variables, Σ_pairings Π_{(a,b)} cov[i_a, i_b];
    it vanishes for odd k. Pairings that differ only by which copy of a repeated
    variable is used give equal terms, so the sum is evaluated over multisets of
    remaining variables (pair one copy of the first variable with each variable j,
    weighted by how many copies of j remain), memoised: the cost is
    Π_v (c_v + 1) states for c_v copies of variable v, not (k−1)!! pairings
    (E[z^40] is 21 states, not 10^23 pairings).

    Parameters
    ----------
    indices : sequence of int, length k
        Which variable sits at each position (repeats allowed), e.g. ``(0, 0, 1, 1)``
        for E[z_0² z_1²].
    cov : array [d, d]
        Symmetric positive semidefinite covariance of the zero-mean Gaussian.

    Returns
    -------
    float

    Examples
    --------
    >>> wick_moment((0, 0, 0, 0), [[2.0]])            # 3 K² with K = 2
    12.0
    >>> wick_moment((0, 1, 0, 1), [[1.0, 0.5], [0.5, 1.0]])   # K00 K11 + 2 K01²
    1.5
    """
    cov = _checks.gram(cov, "covariance cov")
    idx = _wick_indices(indices, cov.shape[0])
    if len(idx) % 2:
        return 0.0
    d = cov.shape[0]
    counts = tuple(idx.count(v) for v in range(d))
    states = 1
    for c in counts:
        states *= c + 1
    if states > 5_000_000:
        raise ValueError(f"this moment has {len(idx)} positions over {sum(c > 0 for c in counts)} "
                         f"variables: {states:.3g} intermediate states, too many to sum")

    @lru_cache(maxsize=None)
    def rec(c: tuple) -> float:
        if not any(c):
            return 1.0
        a = next(v for v, n in enumerate(c) if n)
        rest = list(c)
        rest[a] -= 1
        total = 0.0
        for j, n in enumerate(rest):
            if n and cov[a, j] != 0.0:
                nxt = list(rest)
                nxt[j] -= 1
                total += n * cov[a, j] * rec(tuple(nxt))
        return total

    return float(rec(counts))
