"""Criticality and universality of the kernel flow (Chapter 5 of [RY]).

The infinite-width kernel recursion K^{(l+1)} = C_b + C_W ⟨σ²⟩_{K^{(l)}} (§4.3) is a map
of one number (per input) to the next. Chapter 5 asks when deep networks keep their
kernel, and the distance between inputs, of order one through many layers:

* a **fixed point** K* = C_b + C_W ⟨σ²⟩_{K*};
* two **susceptibilities** (§5.1): the parallel one χ_∥(K) = C_W d⟨σ²⟩_K/dK, which
  governs how a perturbation of the kernel of one input grows or decays, and the
  perpendicular one χ_⊥(K) = C_W ⟨σ'²⟩_K, which governs how the difference between two
  nearby inputs grows or decays;
* **criticality** = χ_∥(K*) = χ_⊥(K*) = 1: then perturbations neither explode nor vanish
  exponentially, but change by power laws.

Activations fall into universality classes (§5.2–5.3) according to how criticality is
reached:

* **scale-invariant** (σ(z) = a_+ z for z ≥ 0 and a_− z for z < 0: linear, ReLU, leaky
  ReLU): C_b = 0, C_W = 2/(a_+² + a_−²); every K is a fixed point;
* **K* = 0**: σ(0) = 0 and σ'(0) = σ_1 ≠ 0 (tanh, sin, erf): C_b = 0, C_W = 1/σ_1²;
  the kernel approaches 0 as a power law when the Taylor coefficients of σ make it
  attractive (tanh: K^{(l)} ≈ 1/(2l));
* **half-stable**: a nonzero fixed point at which both susceptibilities are 1, but which
  attracts from one side only (SWISH, GELU), and a K* = 0 point that repels;
* **none**: no (C_b ≥ 0, C_W > 0) makes both susceptibilities 1 (sigmoid, softplus,
  perceptron).

The notation of the Taylor expansion (σ_1, σ_2, σ_3 and the kernel-flow coefficient
``c``) is ours; the book's §5.3 writes the same expansion with its own symbols.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from . import _checks
from .activations import Activation, get
from .gaussian import expect

__all__ = ["susceptibilities", "fixed_point", "critical_point", "Critical", "taylor",
           "asymptotics", "relu_angle_flow", "angle_asymptotic"]


def _smooth_act(act) -> Activation:
    return _checks.differentiable_activation(act, "the susceptibilities")


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
    K : float or array, > 0 (at K = 0 the K → 0 limit is returned for activations smooth at 0)

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


def fixed_point(act, C_b: float, C_W: float, K0: float = 1.0, depth: int = 10_000,
                tol: float = 1e-12) -> float:
    """The fixed point K* reached by iterating the kernel map from K0  (§5.1 of [RY]).

    Returns ``np.inf`` if the kernel grows without bound and the last value if it has not
    converged (the K* = 0 class approaches 0 only as a power law: use :func:`asymptotics`).
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
    """Taylor coefficients σ_k = σ^{(k)}(0)/k! for k = 0..order (order ≤ 3)  (§5.3 of [RY])."""
    act = get(act)
    if order not in (0, 1, 2, 3):
        raise ValueError(f"order must be 0..3, got {order!r}")
    z = np.zeros(1)
    return np.array([float(act.numpy[k](z)[0]) / math.factorial(k) for k in range(order + 1)])


@dataclass(frozen=True)
class Critical:
    """Result of :func:`critical_point`.

    Attributes
    ----------
    activation : str
    universality : str
        "scale-invariant", "K*=0", "half-stable" or "none".
    exists : bool
        Whether a critical (C_b, C_W) exists.
    C_b, C_W : float or None
        The critical initialization (the first candidate, None if none exists).
    K_star : float or None
        The critical fixed point (None for scale-invariant: every K is one).
    candidates : tuple of dict
        Every critical point found (K*, C_b, C_W, stability).
    taylor : tuple or None
        (σ_0, σ_1, σ_2, σ_3) for activations smooth at 0.
    coefficients : dict
        Class-specific numbers: for "K*=0", ``c`` and ``b`` in K^{(l+1)} ≈ K + cK² and
        χ_⊥ ≈ 1 + bK; for scale-invariant, ``V_slope`` in V^{(l)}/K² = V_slope (l − 1).
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
    coefficients: dict = field(default_factory=dict)
    reason: str = ""

    def __str__(self):
        if not self.exists:
            return f"{self.activation}: no criticality ({self.reason})"
        ks = "any K" if self.K_star is None else f"K* = {self.K_star:.4g}"
        return (f"{self.activation}: {self.universality} class, C_b = {self.C_b:.4g}, "
                f"C_W = {self.C_W:.4g}, {ks}")


def _kstar0_coefficients(s):
    s0, s1, s2, s3 = s
    c = 3.0 * ((s2 / s1) ** 2 + 2.0 * s3 / s1)   # K' = K + c K² + O(K³) at C_W = 1/σ_1²
    b = (6.0 * s1 * s3 + 4.0 * s2 ** 2) / s1 ** 2  # χ_⊥ = 1 + b K + O(K²)
    return {"c": c, "b": b}


def critical_point(act, K_range=(1e-4, 1e3), n_grid: int = 400, **params) -> Critical:
    """Critical initialization (C_b, C_W) of an activation and its universality class  (§5.1–5.3).

    Solves K* = C_b + C_W⟨σ²⟩_{K*}, χ_∥(K*) = 1, χ_⊥(K*) = 1 for C_b ≥ 0, C_W > 0:
    for K* > 0, χ_⊥ = 1 fixes C_W = 1/⟨σ'²⟩_{K*}, χ_∥ = 1 is then a scalar equation in K*
    (bracketed on a log grid of ``K_range`` and refined with :func:`scipy.optimize.brentq`),
    and C_b = K* − C_W⟨σ²⟩_{K*} must come out ≥ 0. K* = 0 is checked separately from the
    Taylor coefficients at the origin.

    Parameters
    ----------
    act : str or Activation
    K_range : (float, float)
        Where to look for nonzero fixed points.
    n_grid : int
        Grid points for bracketing.
    **params
        Activation parameters, e.g. ``slope=0.1`` for leaky ReLU.

    Returns
    -------
    Critical
    """
    act = get(act, **params) if isinstance(act, str) else get(act)
    lo, hi = (float(v) for v in K_range)
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"K_range must be (low, high) with 0 < low < high, got {K_range!r}")
    name = act.label
    if act.name == "perceptron":
        return Critical(name, "none", False, None, None, None,
                        reason="the step function has ⟨σ²⟩_K = 1/2 for all K, so χ_∥ = 0")
    if act.scale_invariant is not None:
        ap, am = act.scale_invariant
        A2 = 0.5 * (ap ** 2 + am ** 2)
        C_W = 1.0 / A2
        slope = C_W ** 2 * 3.0 * 0.5 * (ap ** 4 + am ** 4) - 1.0
        return Critical(name, "scale-invariant", True, 0.0, C_W, None,
                        candidates=({"K_star": None, "C_b": 0.0, "C_W": C_W, "stability": "marginal"},),
                        coefficients={"V_slope": slope},
                        reason="⟨σ²⟩_K ∝ K: χ_∥ = χ_⊥ = C_W (a_+² + a_−²)/2 for every K")
    s = taylor(act)
    cands = []
    # K* = 0 candidate
    coeffs = {}
    if abs(s[0]) < 1e-14 and abs(s[1]) > 1e-14:
        coeffs = _kstar0_coefficients(s)
        stab = "stable" if coeffs["c"] < 0 else ("half-stable" if coeffs["c"] > 0 else "marginal")
        cands.append({"K_star": 0.0, "C_b": 0.0, "C_W": float(1.0 / s[1] ** 2), "stability": stab})
    # nonzero K* candidates: h(K) = χ_∥/χ_⊥ − 1 at C_W = 1/⟨σ'²⟩_K
    grid = np.geomspace(lo, hi, n_grid)

    def h(K):
        par, perp = susceptibilities(act, 0.0, 1.0, K)
        return par / perp - 1.0
    hv = h(grid)
    for i in np.nonzero(np.sign(hv[:-1]) * np.sign(hv[1:]) < 0)[0]:
        K = optimize.brentq(h, grid[i], grid[i + 1], xtol=1e-14, rtol=1e-13)
        C_W = 1.0 / susceptibilities(act, 0.0, 1.0, K)[1]
        C_b = K - C_W * expect(lambda z: act(z) ** 2, K)
        if C_b >= -1e-12:
            cands.append({"K_star": float(K), "C_b": max(0.0, float(C_b)), "C_W": float(C_W),
                          "stability": "half-stable"})
    stable0 = [c for c in cands if c["K_star"] == 0.0 and c["stability"] == "stable"]
    if stable0:
        best, cls = stable0[0], "K*=0"
        reason = "σ(0) = 0, σ'(0) ≠ 0 and the kernel flows to 0 from above as a power law"
    elif cands:
        nonzero = [c for c in cands if c["K_star"] > 0]
        best = nonzero[0] if nonzero else cands[0]
        cls = "half-stable"
        reason = "the critical fixed point attracts the kernel from one side only"
    else:
        why = ("σ(0) ≠ 0 rules out K* = 0, and χ_∥ ≠ χ_⊥ at every K > 0 with C_b ≥ 0"
               if abs(s[0]) > 1e-14 else "no K* with χ_∥ = χ_⊥ = 1 and C_b ≥ 0")
        return Critical(name, "none", False, None, None, None, taylor=tuple(s), reason=why)
    return Critical(name, cls, True, best["C_b"], best["C_W"], best["K_star"],
                    candidates=tuple(cands), taylor=tuple(s), coefficients=coeffs, reason=reason)


def asymptotics(act, depth, **params) -> dict:
    """Large-depth behaviour at criticality  (§5.2–5.4 of [RY]).

    Parameters
    ----------
    act : str or Activation (scale-invariant or K* = 0 class)
    depth : int or array of layer indices l ≥ 1

    Returns
    -------
    dict with
    ``K`` : K^{(l)} at large l — constant K^{(1)} is not known here, so for the
        scale-invariant class this entry is None; for K* = 0 it is 1/(−c l);
    ``V_over_K2`` : V^{(l)}/(K^{(l)})², i.e. n times the dimensionless vertex: V_slope (l−1)
        for scale-invariant (5(l−1) for ReLU), and (2/3) l for the K* = 0 class;
    ``p_perp`` : for K* = 0, the power in δK_⊥ ∝ l^{−p_perp} (= b/c; 1 for tanh);
    ``critical`` : the :class:`Critical` result used.
    """
    crit = critical_point(act, **params) if isinstance(act, str) else critical_point(act)
    l = np.asarray(depth, dtype=float)
    if np.any(l < 1):
        raise ValueError("layer indices must be >= 1")
    if crit.universality == "scale-invariant":
        return {"K": None, "V_over_K2": crit.coefficients["V_slope"] * (l - 1.0), "p_perp": 0.0,
                "critical": crit}
    if crit.universality == "K*=0":
        c, b = crit.coefficients["c"], crit.coefficients["b"]
        return {"K": 1.0 / (-c * l), "V_over_K2": 2.0 / 3.0 * l, "p_perp": b / c, "critical": crit}
    raise ValueError(f"{crit.activation} is in the '{crit.universality}' class; large-depth power "
                     "laws are derived here for the scale-invariant and K*=0 classes only")


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
    """Large-depth angle θ^{(l)} ≈ 3π(1 + a²)/((1 − a)² l) (3π/l for ReLU)  (§5.5 of [RY])."""
    a = float(slope)
    if a == 1.0:
        raise ValueError("slope 1 is the linear network: the angle does not flow")
    return 3.0 * np.pi * (1.0 + a * a) / ((1.0 - a) ** 2 * np.asarray(l, dtype=float))
