"""Criticality and universality of the kernel flow (Chapter 5 of [RY]).

The infinite-width kernel recursion K^{(l+1)} = f(K^{(l)}) with the *kernel map*
f(K) = C_b + C_W ⟨σ²⟩_K (§4.3) sends one number (per input) to the next. Chapter 5 asks
when deep networks keep their kernel, and the distance between inputs, of order one
through many layers:

* a **fixed point** K* = f(K*); its stability follows from the derivatives of the map:
  |f'(K*)| < 1 attracts, > 1 repels, and at f'(K*) = 1 the sign of f''(K*) decides
  (f'' < 0: attracts from above and repels below — *half-stable*; f'' > 0 the reverse);
  see :func:`classify_fixed_point`, :func:`fixed_points`;
* two **susceptibilities** (§5.1): the parallel one χ_∥(K) = f'(K) = C_W d⟨σ²⟩_K/dK, which
  multiplies a perturbation of the kernel of one input, and the perpendicular one
  χ_⊥(K) = C_W ⟨σ'²⟩_K, which multiplies the squared distance between two nearby inputs;
* the **δ-expansion** for two nearby inputs x_± = x_0 ± δx/2 (§5.1): writing their 2×2
  kernel as K_{±±} = K_[0] ± K_[1] + K_[2], K_{±∓} = K_[0] − K_[2] with K_[n] = O(δⁿ),

      K_[0]' = C_b + C_W ⟨σ²⟩_{K_[0]},  K_[1]' = χ_∥(K_[0]) K_[1],
      K_[2]' = χ_⊥(K_[0]) K_[2] + h(K_[0]) K_[1]²,  h = ½ dχ_⊥/dK,

  to leading order in δ for each component (:func:`delta_flow`);
* **criticality** = χ_∥(K*) = χ_⊥(K*) = 1: then perturbations neither explode nor vanish
  exponentially, but change by power laws.

Activations fall into universality classes (§5.2–5.3) according to how criticality is
reached:

* **scale-invariant** (σ(z) = a_+ z for z ≥ 0 and a_− z for z < 0: linear, ReLU, leaky
  ReLU): C_b = 0, C_W = 2/(a_+² + a_−²); every K is a (marginal) fixed point;
* **K* = 0**: σ(0) = 0 and σ'(0) = σ_1 ≠ 0 (tanh, sin, erf): C_b = 0, C_W = 1/σ_1²; near 0
  the map is f(K) = K + cK² + O(K³), and K* = 0 attracts when c < 0: the kernel decays as
  the power law K^{(l)} ≈ 1/(−c l) (tanh: 1/(2l)), K_[1] ∝ l^{−p_∥} with p_∥ = 2 and
  K_[2] ∝ l^{−p_⊥} with p_⊥ = b/c, where χ_⊥ = 1 + bK + O(K²);
* **half-stable**: a nonzero critical fixed point at which f'' ≠ 0, so it attracts from one
  side only (SWISH, GELU; their K* = 0 point has c > 0 and repels);
* **none**: no (C_b ≥ 0, C_W > 0) makes both susceptibilities 1 (sigmoid, softplus,
  perceptron).

The notation of the Taylor expansion (σ_1, σ_2, σ_3 and the coefficients ``c``, ``b``)
is ours; the book's §5.3 writes the same expansion with its own symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize

from . import _checks
from .activations import Activation, get
from .gaussian import expect

__all__ = ["susceptibilities", "kernel_map_derivatives", "fixed_point", "fixed_points",
           "classify_fixed_point", "FixedPoint", "critical_point", "Critical", "Coefficients",
           "taylor", "asymptotics", "Asymptotics", "delta_components", "delta_flow", "DeltaFlow",
           "relu_angle_flow", "angle_asymptotic", "STABILITIES"]

#: the stability labels of :class:`FixedPoint`
STABILITIES = ("stable", "unstable", "half-stable", "marginal")

# |f'(K*) − 1| below this counts as "f' = 1" (critical); roots are solved to ~1e-13
_LINEAR_TOL = 1e-7
# |f''(K*)| · max(K*, 1) below this counts as "f'' = 0"
_CURVATURE_TOL = 1e-9


def _smooth_act(act, params=None) -> Activation:
    act = get(act, **(params or {}))
    return _checks.differentiable_activation(act, "the susceptibilities")


def _grid_size(n_grid) -> int:
    if isinstance(n_grid, bool) or not isinstance(n_grid, (int, np.integer)) or n_grid < 3:
        raise ValueError(f"n_grid must be an integer >= 3 (grid points for bracketing roots), "
                         f"got {n_grid!r}")
    return int(n_grid)


def _K_range(K_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in K_range)
    except (TypeError, ValueError):
        raise ValueError(f"K_range must be (low, high) with 0 < low < high, got {K_range!r}") from None
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"K_range must be (low, high) with 0 < low < high, got {K_range!r}")
    return lo, hi


def susceptibilities(act, C_b: float, C_W: float, K):
    """Parallel and perpendicular susceptibilities (χ_∥, χ_⊥) at kernel value(s) K  (§5.1 of [RY]).

    χ_∥(K) = C_W d⟨σ²⟩_K/dK = C_W ⟨σ² (z² − K)⟩_K / (2K²) (Stein's lemma), and
    χ_⊥(K) = C_W ⟨σ'(z)²⟩_K.

    Parameters
    ----------
    act : str or Activation
    C_b : float ≥ 0
        Not used by the formulas (the susceptibilities depend on K and C_W) but checked,
        so that one set of initialization parameters can be passed everywhere.
    C_W : float > 0
    K : float or array, ≥ 0
        At K = 0 the K → 0 limit is returned (for activations smooth at 0, or scale-invariant).

    Returns
    -------
    chi_par, chi_perp : floats or arrays of K's shape
    """
    act = _smooth_act(act)
    _checks.C_b(C_b)
    C_W = _checks.C_W(C_W)
    K = _checks.kernel_scalar(K)
    Ks = np.where(K > 0, K, 1.0)
    par = expect(lambda z: act(z) ** 2 * (z * z), Ks)
    par = C_W * (par - Ks * expect(lambda z: act(z) ** 2, Ks)) / (2.0 * Ks ** 2)
    perp = C_W * expect(lambda z: act.numpy[1](z) ** 2, Ks)
    if np.any(K == 0):
        if act.scale_invariant is not None:
            ap, am = act.scale_invariant
            lim_par = lim_perp = C_W * 0.5 * (ap ** 2 + am ** 2)
        elif act.kinks:
            raise ValueError(f"{act.name} is not smooth at 0: susceptibilities need K > 0")
        else:
            s0, s1, s2 = (float(act.numpy[k](np.zeros(1))[0]) for k in range(3))
            lim_par, lim_perp = C_W * (s1 ** 2 + s0 * s2), C_W * s1 ** 2
        par = np.where(K > 0, par, lim_par)
        perp = np.where(K > 0, perp, lim_perp)
    if np.ndim(K) == 0:
        return float(par), float(perp)
    return par, perp


def kernel_map_derivatives(act, C_W: float, K):
    """f'(K) = χ_∥ and f''(K) of the kernel map f(K) = C_b + C_W⟨σ²⟩_K, and h = ½ dχ_⊥/dK  (§5.1).

    All three are Gaussian averages (Stein's lemma, no finite differences):
    f'' = C_W ⟨σ² (z⁴ − 6Kz² + 3K²)⟩_K / (4K⁴) and h = C_W (⟨σ'² z²⟩_K − K⟨σ'²⟩_K)/(4K²).

    Parameters
    ----------
    act : str or Activation (with a function derivative)
    C_W : float > 0
    K : float or array, > 0

    Returns
    -------
    d1, d2, h : floats or arrays of K's shape
    """
    act = _smooth_act(act)
    C_W = _checks.C_W(C_W)
    K = _checks.kernel_scalar(K)
    if np.any(K <= 0):
        raise ValueError("kernel_map_derivatives needs K > 0 (use the Taylor coefficients at K = 0)")
    s2 = lambda z: act(z) ** 2                       # noqa: E731
    d2 = lambda z: act.numpy[1](z) ** 2              # noqa: E731
    m0, m2, m4 = (expect(lambda z, p=p: s2(z) * z ** p, K) for p in (0, 2, 4))
    d1 = C_W * (m2 - K * m0) / (2.0 * K ** 2)
    dd = C_W * (m4 - 6.0 * K * m2 + 3.0 * K ** 2 * m0) / (4.0 * K ** 4)
    h = C_W * (expect(lambda z: d2(z) * z * z, K) - K * expect(d2, K)) / (4.0 * K ** 2)
    if np.ndim(K) == 0:
        return float(d1), float(dd), float(h)
    return d1, dd, h


def fixed_point(act, C_b: float, C_W: float, K0: float = 1.0, depth: int = 10_000,
                tol: float = 1e-12) -> float:
    """The fixed point K* reached by iterating the kernel map from K0  (§5.1 of [RY]).

    Parameters
    ----------
    act : str or Activation
    C_b, C_W : float
    K0 : float ≥ 0, starting kernel
    depth : int ≥ 1, most iterations
    tol : float, relative change at which the iteration stops

    Returns
    -------
    float
        K*; ``np.inf`` if the kernel grows without bound, and the last value if it has not
        converged (the K* = 0 class approaches 0 only as a power law: see :func:`asymptotics`).
    """
    act = get(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    K = float(_checks.kernel_scalar(K0, "K0"))
    for _ in range(_checks.depth(depth)):
        new = C_b + C_W * expect(lambda z: act(z) ** 2, K)
        if not np.isfinite(new) or new > 1e12:
            return np.inf
        if abs(new - K) <= tol * max(1.0, K):
            return float(new)
        K = new
    return float(K)


def taylor(act, order: int = 3) -> np.ndarray:
    """Taylor coefficients σ_k = σ^{(k)}(0)/k! for k = 0..order (order ≤ 3)  (§5.3 of [RY]).

    Parameters
    ----------
    act : str or Activation
    order : int in 0..3

    Returns
    -------
    array [order + 1]
    """
    act = get(act)
    if isinstance(order, bool) or order not in (0, 1, 2, 3):
        raise ValueError(f"order must be 0..3, got {order!r}")
    z = np.zeros(1)
    return np.array([float(act.numpy[k](z)[0]) / math.factorial(k) for k in range(order + 1)])


@dataclass(frozen=True)
class FixedPoint:
    """A fixed point K* = f(K*) of the kernel map and its stability  (§5.1 of [RY]).

    Attributes
    ----------
    K_star : float or None
        The fixed point; None for a line of fixed points (every K ≥ 0: scale-invariant
        activations at criticality).
    C_b, C_W : float
        The initialization it belongs to.
    chi_par : float
        χ_∥(K*) = f'(K*), the per-layer factor of a small kernel perturbation.
    chi_perp : float
        χ_⊥(K*), the per-layer factor of the squared distance of two nearby inputs.
    curvature : float
        f''(K*): decides stability when f'(K*) = 1.
    stability : str
        "stable" (attracts from every side the kernel can come from), "unstable" (repels),
        "half-stable" (attracts from one side, repels from the other) or "marginal"
        (neither at second order, e.g. every point of a line of fixed points).
    attracts_from : str
        "both", "above", "below" or "none". A fixed point at K* = 0 can only be reached
        from above, so it is "stable" when it attracts from above.
    """

    K_star: float | None
    C_b: float
    C_W: float
    chi_par: float
    chi_perp: float
    curvature: float
    stability: str
    attracts_from: str

    def __str__(self):
        where = "every K" if self.K_star is None else f"K* = {self.K_star:.4g}"
        side = "" if self.attracts_from in ("both", "none") else f", attracts from {self.attracts_from}"
        return (f"{where}: {self.stability}{side} (χ∥ = {self.chi_par:.4g}, χ⊥ = {self.chi_perp:.4g}, "
                f"f'' = {self.curvature:.3g})")


def _stability(K_star: float, d1: float, d2: float) -> tuple[str, str]:
    """(stability, attracts_from) from f'(K*) = d1 and f''(K*) = d2."""
    at_zero = K_star == 0.0
    if abs(d1 - 1.0) > _LINEAR_TOL:
        if abs(d1) < 1.0:
            return "stable", ("above" if at_zero else "both")
        return "unstable", "none"
    if abs(d2) * max(K_star, 1.0) <= _CURVATURE_TOL:
        return "marginal", "none"
    if d2 < 0:          # δ' = δ + ½ f'' δ²: positive δ shrinks, negative δ grows in size
        return ("stable", "above") if at_zero else ("half-stable", "above")
    return ("unstable", "none") if at_zero else ("half-stable", "below")


def _zero_derivatives(act: Activation, C_W: float) -> tuple[float, float, float]:
    """f'(0), f''(0), χ_⊥(0) from the Taylor coefficients (σ(0) = 0 assumed)."""
    s0, s1, s2, s3 = taylor(act)
    d1 = C_W * s1 ** 2
    d2 = C_W * 6.0 * (s2 ** 2 + 2.0 * s1 * s3)    # ⟨σ²⟩ = σ1² K + 3(σ2² + 2σ1σ3) K² + …
    return d1, d2, C_W * s1 ** 2


def classify_fixed_point(act, C_b: float, C_W: float, K_star: float) -> FixedPoint:
    """Stability of a fixed point from the derivatives of the kernel map  (§5.1 of [RY]).

    |f'(K*)| < 1: stable; > 1: unstable; f'(K*) = 1 (to 1e-7): the sign of f''(K*)
    decides: f'' < 0 attracts from above and repels below (half-stable; at K* = 0 only the
    side above exists, so there it is stable), f'' > 0 the reverse (at K* = 0: unstable).

    Parameters
    ----------
    act : str or Activation (with a function derivative)
    C_b, C_W : float
    K_star : float ≥ 0
        A fixed point of K ↦ C_b + C_W⟨σ²⟩_K (checked to 1e-8 relative).

    Returns
    -------
    FixedPoint
    """
    act = _smooth_act(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    K_star = float(_checks.kernel_scalar(K_star, "K_star"))
    image = C_b + C_W * float(expect(lambda z: act(z) ** 2, K_star))
    if abs(image - K_star) > 1e-8 * max(1.0, K_star):
        raise ValueError(f"K* = {K_star!r} is not a fixed point of the kernel map: "
                         f"C_b + C_W⟨σ²⟩ = {image!r}")
    if K_star == 0.0:
        if act.scale_invariant is not None:
            ap, am = act.scale_invariant
            d1 = perp = C_W * 0.5 * (ap ** 2 + am ** 2)
            d2 = 0.0
        elif act.kinks:
            raise ValueError(f"{act.name} is not smooth at 0: stability at K* = 0 needs K > 0")
        else:
            d1, d2, perp = _zero_derivatives(act, C_W)
    else:
        d1, d2, _ = kernel_map_derivatives(act, C_W, K_star)
        perp = susceptibilities(act, C_b, C_W, K_star)[1]
    stab, side = _stability(K_star, d1, d2)
    return FixedPoint(K_star, C_b, C_W, float(d1), float(perp), float(d2), stab, side)


def fixed_points(act, C_b: float, C_W: float, K_range=(1e-6, 1e6), n_grid: int = 600,
                 **params) -> tuple:
    """Every fixed point of the kernel map in ``K_range`` (and K* = 0), with its stability  (§5.1).

    Roots of g(K) = C_b + C_W⟨σ²⟩_K − K are bracketed on a log grid and refined with
    :func:`scipy.optimize.brentq`; double roots (where g touches zero without changing
    sign, as at a half-stable critical point) are the roots of g' = χ_∥ − 1 at which g
    vanishes too, bracketed on a ten times finer grid inside the cells where |g|/K < 10⁻²
    (SWISH's critical tangency lies 2 % from a crossing) and refined the same way. Scale-invariant activations are solved in
    closed form (f is linear). Each point is classified by :func:`classify_fixed_point`.

    Parameters
    ----------
    act : str or Activation (with a function derivative)
    C_b, C_W : float
    K_range : (float, float), 0 < low < high
    n_grid : int ≥ 3
    **params
        Activation parameters with a registry name (e.g. ``slope=0.1``).

    Returns
    -------
    tuple of FixedPoint, in increasing K* (a line of fixed points is one entry with K* None).
    """
    act = _smooth_act(act, params)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    lo, hi = _K_range(K_range)
    n_grid = _grid_size(n_grid)
    if act.scale_invariant is not None:
        ap, am = act.scale_invariant
        slope = C_W * 0.5 * (ap ** 2 + am ** 2)          # f(K) = C_b + slope K
        if abs(slope - 1.0) <= _LINEAR_TOL:
            return (FixedPoint(None, C_b, C_W, slope, slope, 0.0, "marginal", "none"),) if C_b == 0 else ()
        K = C_b / (1.0 - slope) + 0.0          # + 0.0: no negative zero
        if K < 0:
            return ()
        return (classify_fixed_point(act, C_b, C_W, K),)
    found = []
    if C_b == 0.0 and abs(float(act(np.zeros(1))[0])) < 1e-14 and not act.kinks:
        found.append(0.0)
    grid = np.geomspace(lo, hi, n_grid)

    def g(K):
        return C_b + C_W * expect(lambda z: act(z) ** 2, K) - K
    gv = g(grid) / grid
    for i in np.nonzero(np.sign(gv[:-1]) * np.sign(gv[1:]) < 0)[0]:
        found.append(float(optimize.brentq(g, grid[i], grid[i + 1], xtol=1e-14, rtol=1e-13)))
    # tangencies (double roots, where g touches zero without changing sign): roots of
    # g' = χ_∥ − 1 at which g itself vanishes
    def dg(K):
        return kernel_map_derivatives(act, C_W, K)[0] - 1.0
    near = np.nonzero(np.minimum(np.abs(gv[:-1]), np.abs(gv[1:])) < 1e-2)[0]   # cells where g is small
    for i in near:
        fine = np.geomspace(grid[i], grid[i + 1], 11)  # a tangency can sit within 1 % of a crossing
        dv = dg(fine)
        for j in np.nonzero(np.sign(dv[:-1]) * np.sign(dv[1:]) < 0)[0]:
            K = float(optimize.brentq(dg, fine[j], fine[j + 1], xtol=1e-14, rtol=1e-13))
            if abs(float(g(K))) <= 1e-9 * max(1.0, K) and all(abs(K - f) > 1e-6 * K for f in found):
                found.append(K)
    out = []
    for K in sorted(found):
        try:
            out.append(classify_fixed_point(act, C_b, C_W, K))
        except ValueError:          # a tangency refined only to ~1e-9: accept it as it is
            d1, d2, _ = kernel_map_derivatives(act, C_W, K)
            stab, side = _stability(K, d1, d2)
            out.append(FixedPoint(K, C_b, C_W, d1, susceptibilities(act, C_b, C_W, K)[1], d2,
                                  stab, side))
    return tuple(out)


@dataclass(frozen=True)
class Coefficients:
    """Class-specific numbers of a critical point  (§5.2–5.3 of [RY]).

    Attributes
    ----------
    c : float or None
        K* = 0 class: the kernel map at criticality is f(K) = K + cK² + O(K³),
        c = 3[(σ_2/σ_1)² + 2σ_3/σ_1].
    b : float or None
        K* = 0 class: χ_⊥(K) = 1 + bK + O(K²), b = (6σ_1σ_3 + 4σ_2²)/σ_1².
    V_slope : float or None
        Scale-invariant class: V^{(l)}/K² = V_slope · (l − 1) (5 for ReLU, 2 for linear).
    """

    c: float | None = None
    b: float | None = None
    V_slope: float | None = None


@dataclass(frozen=True)
class Critical:
    """Result of :func:`critical_point`  (§5.1–5.3 of [RY]).

    Attributes
    ----------
    activation : str
    universality : str
        "scale-invariant", "K*=0", "half-stable" or "none".
    exists : bool
        Whether a critical (C_b, C_W) exists.
    C_b, C_W : float or None
        The critical initialization (of the candidate that defines the class; None if none).
    K_star : float or None
        The critical fixed point (None for scale-invariant: every K is one).
    candidates : tuple of FixedPoint
        Every critical point found (χ_∥ = χ_⊥ = 1, C_b ≥ 0), each with its stability
        classified from f''(K*).
    taylor : tuple or None
        (σ_0, σ_1, σ_2, σ_3) for activations smooth at 0.
    coefficients : Coefficients
        c and b (K* = 0 candidates) or V_slope (scale-invariant).
    reason : str
        One line saying why (especially why none exists).
    """

    activation: str
    universality: str
    exists: bool
    C_b: float | None
    C_W: float | None
    K_star: float | None
    candidates: tuple = ()
    taylor: tuple | None = None
    coefficients: Coefficients = Coefficients()
    reason: str = ""

    def replace(self, **changes) -> "Critical":
        """A copy with some fields replaced (e.g. a deliberately wrong class for a power check, §5.3).

        Parameters
        ----------
        **changes
            Field names and their new values.

        Returns
        -------
        Critical
        """
        return replace(self, **changes)

    def __str__(self):
        if not self.exists:
            return f"{self.activation}: no criticality ({self.reason})"
        ks = "any K" if self.K_star is None else f"K* = {self.K_star:.4g}"
        return (f"{self.activation}: {self.universality} class, C_b = {self.C_b:.4g}, "
                f"C_W = {self.C_W:.4g}, {ks}")


def _kstar0_coefficients(s) -> Coefficients:
    s0, s1, s2, s3 = s
    c = 3.0 * ((s2 / s1) ** 2 + 2.0 * s3 / s1)   # f(K) = K + c K² + O(K³) at C_W = 1/σ_1²
    b = (6.0 * s1 * s3 + 4.0 * s2 ** 2) / s1 ** 2  # χ_⊥ = 1 + b K + O(K²)
    return Coefficients(c=float(c), b=float(b))


def critical_point(act, K_range=(1e-4, 1e3), n_grid: int = 400, **params) -> Critical:
    """Critical initialization (C_b, C_W) of an activation and its universality class  (§5.1–5.3).

    Solves K* = C_b + C_W⟨σ²⟩_{K*}, χ_∥(K*) = 1, χ_⊥(K*) = 1 for C_b ≥ 0, C_W > 0:
    for K* > 0, χ_⊥ = 1 fixes C_W = 1/⟨σ'²⟩_{K*}, χ_∥ = 1 is then a scalar equation in K*
    (bracketed on a log grid of ``K_range`` and refined with :func:`scipy.optimize.brentq`),
    and C_b = K* − C_W⟨σ²⟩_{K*} must come out ≥ 0. K* = 0 is checked separately from the
    Taylor coefficients at the origin. Every candidate's stability is classified from
    f''(K*) (:func:`classify_fixed_point`): at a critical point f'(K*) = 1, so the
    curvature decides; no candidate is assumed to be half-stable.

    Parameters
    ----------
    act : str or Activation
    K_range : (float, float), 0 < low < high
        Where to look for nonzero fixed points.
    n_grid : int ≥ 3
        Grid points for bracketing.
    **params
        Activation parameters, with a registry name only (e.g. ``"leaky_relu", slope=0.1``);
        with an :class:`Activation` object they are refused.

    Returns
    -------
    Critical
    """
    act = get(act, **params)
    lo, hi = _K_range(K_range)
    n_grid = _grid_size(n_grid)
    name = act.label
    if act.name == "perceptron":
        return Critical(name, "none", False, None, None, None,
                        reason="the step function has ⟨σ²⟩_K = 1/2 for all K, so χ_∥ = 0")
    if act.scale_invariant is not None:
        ap, am = act.scale_invariant
        A2 = 0.5 * (ap ** 2 + am ** 2)
        C_W = 1.0 / A2
        slope = C_W ** 2 * 3.0 * 0.5 * (ap ** 4 + am ** 4) - 1.0
        line = FixedPoint(None, 0.0, C_W, 1.0, 1.0, 0.0, "marginal", "none")
        return Critical(name, "scale-invariant", True, 0.0, C_W, None, candidates=(line,),
                        coefficients=Coefficients(V_slope=float(slope)),
                        reason="⟨σ²⟩_K ∝ K: χ_∥ = χ_⊥ = C_W (a_+² + a_−²)/2 for every K")
    s = taylor(act)
    cands = []
    coeffs = Coefficients()
    if abs(s[0]) < 1e-14 and abs(s[1]) > 1e-14 and not act.kinks:
        coeffs = _kstar0_coefficients(s)
        cands.append(classify_fixed_point(act, 0.0, float(1.0 / s[1] ** 2), 0.0))
    # nonzero K* candidates: h(K) = χ_∥/χ_⊥ − 1 at C_W = 1/⟨σ'²⟩_K
    grid = np.geomspace(lo, hi, n_grid)

    def ratio(K):
        par, perp = susceptibilities(act, 0.0, 1.0, K)
        return par / perp - 1.0
    hv = ratio(grid)
    for i in np.nonzero(np.sign(hv[:-1]) * np.sign(hv[1:]) < 0)[0]:
        K = optimize.brentq(ratio, grid[i], grid[i + 1], xtol=1e-14, rtol=1e-13)
        C_W = 1.0 / susceptibilities(act, 0.0, 1.0, K)[1]
        C_b = K - C_W * expect(lambda z: act(z) ** 2, K)
        if C_b >= -1e-12:
            cands.append(classify_fixed_point(act, max(0.0, float(C_b)), float(C_W), float(K)))
    zero = [c for c in cands if c.K_star == 0.0]
    nonzero = [c for c in cands if c.K_star > 0.0]
    if zero and zero[0].stability == "stable":
        best, cls = zero[0], "K*=0"
        reason = "σ(0) = 0, σ'(0) ≠ 0 and f'' < 0: the kernel flows to 0 from above as a power law"
    elif nonzero:
        best = nonzero[0]
        cls = "half-stable" if best.stability == "half-stable" else f"K*>0 ({best.stability})"
        reason = (f"the critical fixed point attracts the kernel from {best.attracts_from} only"
                  if best.stability == "half-stable" else
                  f"the critical fixed point is {best.stability} (f'' = {best.curvature:.3g})")
        if zero:
            reason += f"; K* = 0 is {zero[0].stability} (c = {coeffs.c:.3g})"
    elif zero:
        best, cls = zero[0], f"K*=0 ({zero[0].stability})"
        reason = f"K* = 0 is the only critical point and it is {zero[0].stability} (c = {coeffs.c:.3g})"
    else:
        why = ("σ(0) ≠ 0 rules out K* = 0, and χ_∥ ≠ χ_⊥ at every K > 0 with C_b ≥ 0"
               if abs(s[0]) > 1e-14 else "no K* with χ_∥ = χ_⊥ = 1 and C_b ≥ 0")
        return Critical(name, "none", False, None, None, None, taylor=tuple(s), reason=why)
    return Critical(name, cls, True, best.C_b, best.C_W, best.K_star, candidates=tuple(cands),
                    taylor=tuple(s), coefficients=coeffs, reason=reason)


@dataclass(frozen=True)
class Asymptotics:
    """Large-depth power laws at criticality  (§5.2–5.4 of [RY]).

    Attributes
    ----------
    layers : array [D]
        The layer indices l asked for.
    K : array [D] or None
        K^{(l)} ≈ 1/(−c l) for the K* = 0 class; None for the scale-invariant class, whose
        kernel K^{(l)} = K^{(1)} does not flow.
    V_over_K2 : array [D]
        V^{(l)}/(K^{(l)})², n times the dimensionless vertex: V_slope·(l − 1) for
        scale-invariant (5(l − 1) for ReLU), and (2/3) l for every member of the K* = 0 class.
    p_par : float
        K_[1] ∝ l^{−p_∥} (a perturbation of one input's kernel): 2 for the K* = 0 class,
        0 for scale-invariant (preserved).
    p_perp : float
        K_[2] ∝ l^{−p_⊥} (squared distance of nearby inputs): b/c for the K* = 0 class
        (1 for tanh, sin, erf), 0 for scale-invariant.
    critical : Critical
        The critical point these hold at.
    """

    layers: np.ndarray
    K: np.ndarray | None
    V_over_K2: np.ndarray
    p_par: float
    p_perp: float
    critical: Critical


def asymptotics(act, depth, **params) -> Asymptotics:
    """Large-depth behaviour at criticality  (§5.2–5.4 of [RY]).

    Parameters
    ----------
    act : str or Activation (scale-invariant or K* = 0 class)
    depth : int or array of layer indices l ≥ 1
    **params
        Activation parameters with a registry name.

    Returns
    -------
    Asymptotics
    """
    crit = critical_point(act, **params)
    l = np.asarray(depth, dtype=float)
    if l.size == 0 or not np.all(np.isfinite(l)) or np.any(l < 1) or np.any(l != np.round(l)):
        raise ValueError(f"layer indices must be integers >= 1, got {depth!r}")
    if crit.universality == "scale-invariant":
        return Asymptotics(l, None, crit.coefficients.V_slope * (l - 1.0), 0.0, 0.0, crit)
    if crit.universality == "K*=0":
        c, b = crit.coefficients.c, crit.coefficients.b
        return Asymptotics(l, 1.0 / (-c * l), 2.0 / 3.0 * l, 2.0, b / c, crit)
    raise ValueError(f"{crit.activation} is in the '{crit.universality}' class; large-depth power "
                     "laws are derived here for the scale-invariant and K*=0 classes only")


# --------------------------------------------------------------------------
# the δ-expansion for two nearby inputs (§5.1)
# --------------------------------------------------------------------------

def delta_components(K) -> tuple:
    """(K_[0], K_[1], K_[2]) of the 2×2 kernel of inputs x_± = x_0 ± δx/2  (§5.1 of [RY]).

    K_[0] = (K_{++} + K_{−−} + 2K_{+−})/4, K_[1] = (K_{++} − K_{−−})/2,
    K_[2] = (K_{++} + K_{−−} − 2K_{+−})/4 = E[(z_+ − z_−)²]/4, so that
    K_{±±} = K_[0] ± K_[1] + K_[2] and K_{±∓} = K_[0] − K_[2]; K_[n] = O(δⁿ).

    Parameters
    ----------
    K : array [..., 2, 2]
        Kernels with input 0 = x_+ and input 1 = x_−.

    Returns
    -------
    K0, K1, K2 : arrays [...]
    """
    K = np.asarray(K, dtype=float)
    if K.shape[-2:] != (2, 2):
        raise ValueError(f"K must end in a 2x2 kernel of the two inputs x_+ and x_-, got {K.shape}")
    pp, mm, pm = K[..., 0, 0], K[..., 1, 1], K[..., 0, 1]
    return (pp + mm + 2 * pm) / 4, (pp - mm) / 2, (pp + mm - 2 * pm) / 4


@dataclass(frozen=True)
class DeltaFlow:
    """The δ-expansion of the two-input kernel, layer by layer  (§5.1 of [RY]).

    Attributes
    ----------
    K0, K1, K2 : arrays [L]
        K_[0] (the midpoint kernel), K_[1] = O(δ) and K_[2] = O(δ²) at l = 1..L.
    chi_par, chi_perp, h : arrays [L]
        χ_∥(K_[0]), χ_⊥(K_[0]) and h(K_[0]) = ½ dχ_⊥/dK at each layer.
    """

    K0: np.ndarray
    K1: np.ndarray
    K2: np.ndarray
    chi_par: np.ndarray
    chi_perp: np.ndarray
    h: np.ndarray

    def kernel(self) -> np.ndarray:
        """The 2×2 kernels these components stand for (input 0 = x_+, 1 = x_−)  (§5.1 of [RY]).

        Returns
        -------
        array [L, 2, 2]
            K_{±±} = K_[0] ± K_[1] + K_[2], K_{±∓} = K_[0] − K_[2].
        """
        out = np.empty((len(self.K0), 2, 2))
        out[:, 0, 0] = self.K0 + self.K1 + self.K2
        out[:, 1, 1] = self.K0 - self.K1 + self.K2
        out[:, 0, 1] = out[:, 1, 0] = self.K0 - self.K2
        return out


def delta_flow(act, C_b: float, C_W: float, K1, depth: int) -> DeltaFlow:
    """Flow of K_[0], K_[1], K_[2] for two nearby inputs at infinite width  (§5.1 of [RY]).

    K_[0]' = C_b + C_W⟨σ²⟩_{K_[0]}, K_[1]' = χ_∥(K_[0]) K_[1],
    K_[2]' = χ_⊥(K_[0]) K_[2] + h(K_[0]) K_[1]², each to leading order in δ (the neglected
    terms are smaller by O(δ²) relative). Derivation: write z_± = u ± w with Var u = K_[0],
    Cov(u, w) = K_[1]/2, Var w = K_[2], and expand σ(u ± w) in w.

    Parameters
    ----------
    act : str or Activation (with a function derivative)
    C_b, C_W : float
    K1 : array [2, 2] or (K0, K1, K2)
        First-layer kernel of x_+ (index 0) and x_− (index 1), or its components.
    depth : int ≥ 1

    Returns
    -------
    DeltaFlow
    """
    act = _smooth_act(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    depth = _checks.depth(depth)
    if np.shape(K1) == (2, 2):
        k0, k1, k2 = (float(v) for v in delta_components(_checks.gram(K1, "K1")))
    elif np.shape(K1) == (3,):
        k0, k1, k2 = (float(v) for v in K1)
    else:
        raise ValueError(f"K1 must be a 2x2 kernel or the triple (K_[0], K_[1], K_[2]), got shape "
                         f"{np.shape(K1)}")
    if not (np.isfinite([k0, k1, k2]).all() and k0 > 0 and k2 >= 0):
        raise ValueError(f"need finite K_[0] > 0 and K_[2] >= 0, got {(k0, k1, k2)}")
    K0, K1_, K2 = (np.empty(depth) for _ in range(3))
    chi_par, chi_perp, h = (np.empty(depth) for _ in range(3))
    K0[0], K1_[0], K2[0] = k0, k1, k2
    for l in range(depth):
        if not (np.isfinite(K0[l]) and K0[l] > 0):
            raise ValueError(f"the midpoint kernel K_[0] left (0, ∞) at layer {l + 1} "
                             f"({K0[l]!r}): the δ-expansion needs K_[0] > 0")
        d1, _, hh = kernel_map_derivatives(act, C_W, K0[l])
        chi_par[l], h[l] = d1, hh
        chi_perp[l] = susceptibilities(act, C_b, C_W, K0[l])[1]
        if l + 1 == depth:
            break
        K0[l + 1] = C_b + C_W * float(expect(lambda z: act(z) ** 2, K0[l]))
        K1_[l + 1] = chi_par[l] * K1_[l]
        K2[l + 1] = chi_perp[l] * K2[l] + h[l] * K1_[l] ** 2
    return DeltaFlow(K0, K1_, K2, chi_par, chi_perp, h)


# --------------------------------------------------------------------------
# finite angles for the scale-invariant class (§5.5)
# --------------------------------------------------------------------------

def relu_angle_flow(theta1, depth: int, slope: float = 0.0) -> np.ndarray:
    """Exact flow of the angle between two inputs for (leaky) ReLU at criticality  (§5.5 of [RY]).

    With equal norms K_11 = K_22 = K (preserved at criticality, C_b = 0, C_W = 2/(1 + a²)),
    cos θ^{(l+1)} = [2/(1 + a²)] [a cos θ + (1 − a)² (sin θ + (π − θ) cos θ)/(2π)]
    (the arc-cosine kernel for a = 0).

    Parameters
    ----------
    theta1 : float or array in [0, π]
        First-layer angle(s), cos θ^{(1)} = K^{(1)}_{12}/K^{(1)}.
    depth : int
    slope : float
        Leaky-ReLU slope a (0 for ReLU).

    Returns
    -------
    array [depth, ...]: θ^{(l)} for l = 1..depth.
    """
    depth = _checks.depth(depth)
    a = float(slope)
    if not np.isfinite(a):
        raise ValueError(f"slope must be finite, got {slope!r}")
    th = np.asarray(theta1, dtype=float)
    if np.any((th < 0) | (th > np.pi)) or not np.all(np.isfinite(th)):
        raise ValueError("angles must lie in [0, π]")
    out = np.empty((depth,) + th.shape)
    out[0] = th
    for l in range(1, depth):
        t = out[l - 1]
        c = 2.0 / (1.0 + a * a) * (a * np.cos(t) + (1 - a) ** 2 * (np.sin(t) + (np.pi - t) * np.cos(t))
                                   / (2.0 * np.pi))
        out[l] = np.arccos(np.clip(c, -1.0, 1.0))
    return out


def angle_asymptotic(l, slope: float = 0.0) -> np.ndarray:
    """Large-depth angle θ^{(l)} ≈ 3π(1 + a²)/((1 − a)² l) (3π/l for ReLU)  (§5.5 of [RY]).

    Parameters
    ----------
    l : int or array of layer indices
    slope : float, leaky-ReLU slope a ≠ 1

    Returns
    -------
    array of l's shape
    """
    a = float(slope)
    if a == 1.0 or not np.isfinite(a):
        raise ValueError("slope must be finite and not 1 (slope 1 is the linear network: the "
                         "angle does not flow)")
    return 3.0 * np.pi * (1.0 + a * a) / ((1.0 - a) ** 2 * np.asarray(l, dtype=float))
