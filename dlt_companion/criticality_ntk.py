"""Criticality of the neural tangent kernel and its large-depth asymptotics  (Ch. 9 of [RY]).

For one input the mean-NTK recursion (§8.3, :func:`dlt_companion.flows.ntk_mean`),

    Θ^{(l+1)} = λ_b^{(l+1)} + λ_W^{(l+1)} ⟨σ²⟩_{K^{(l)}} + χ_⊥^{(l)} Θ^{(l)},   χ_⊥ = C_W ⟨σ'²⟩_K,

is linear in Θ with the perpendicular susceptibility as its multiplier; the kernel, and with
it the source and χ_⊥, flows at the rate set by the parallel susceptibility χ_∥ (Ch. 5).
Three things follow (§9.1):

* at a kernel fixed point K* the NTK explodes as χ_⊥^l if χ_⊥ > 1, saturates at
  s/(1 − χ_⊥) if χ_⊥ < 1 (and the contribution of layer l to the output's NTK is suppressed
  by χ_⊥^{L−l}: vanishing gradients), and grows linearly if χ_⊥ = 1
  (:func:`ntk_fixed_point`, :class:`NTKFixedPoint`);
* at criticality (χ_∥ = χ_⊥ = 1 at the fixed point) the NTK and its fluctuations grow as
  power laws, and the relative fluctuations A/(nΘ²), B/(nΘ²), D/(nKΘ), F/(nKΘ) grow
  linearly in l/n (§9.2 scale-invariant class, §9.3 K* = 0 class): :func:`asymptotics`;
* the learning-rate equivalence principle (§9.4): scale λ_b^{(l)}, λ_W^{(l)} with depth so that
  every layer contributes equally to Θ^{(L)} and Θ^{(L)} stays O(1), so the output moves by
  O(1)·η per gradient step at any depth: :func:`equivalence_learning_rates` (exact, any
  activation, from the recursion) and :func:`equivalence_power_law` (the book's large-depth
  form for the two classes), with :func:`layer_contributions` to inspect any choice.

Notation: σ_k is the k-th derivative of σ at 0 (the book's Taylor coefficients). For the
K* = 0 class (σ(0) = 0, σ_1 ≠ 0, C_b = 0, C_W = 1/σ_1²) the kernel map is
K' = K + a_1 K² + …, a_1 = σ_3/σ_1 + ¾(σ_2/σ_1)², so K^{(l)} ≈ 1/(−a_1 l); χ_⊥ = 1 + b_1 K + …,
b_1 = σ_3/σ_1 + (σ_2/σ_1)², i.e. χ_⊥ ≈ 1 − p_⊥/l with p_⊥ = b_1/a_1; and χ_∥ = 1 + 2a_1K ≈ 1 − 2/l.
For the scale-invariant class σ(z) = a_± z, A_2 = (a_+² + a_−²)/2, A_4 = (a_+⁴ + a_−⁴)/2, C_W = 1/A_2.
The asymptotic coefficients below are derived in ``chapters/09_effective_theory_of_the_ntk.md``
(leading order in 1/l, constant λ's) and checked against the recursions at depth 10³ in the tests.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import _checks
from .activations import Activation
from .flows import _layers
from .flows.preactivations import kernel
from .gaussian import Averages

__all__ = ["theta_at_fixed_point", "ntk_fixed_point", "NTKFixedPoint", "scale_invariant_theta",
           "layer_contributions", "equivalence_learning_rates", "equivalence_power_law",
           "asymptotics", "NTKAsymptotics", "ntk_class"]


# --------------------------------------------------------------------------
# §9.1: the NTK at a kernel fixed point
# --------------------------------------------------------------------------

def theta_at_fixed_point(chi_perp: float, source: float, Theta1: float, depth: int) -> np.ndarray:
    """Θ^{(l)}, l = 1..depth, of the linear recursion Θ' = s + χ_⊥Θ at a kernel fixed point  (§9.1).

    Θ^{(l)} = χ_⊥^{l−1} Θ^{(1)} + s (1 − χ_⊥^{l−1})/(1 − χ_⊥), and Θ^{(1)} + s(l − 1) at χ_⊥ = 1.

    Parameters
    ----------
    chi_perp : float > 0
        Perpendicular susceptibility C_W⟨σ'²⟩_{K*}.
    source : float ≥ 0
        s = λ_b + λ_W⟨σ²⟩_{K*}.
    Theta1 : float ≥ 0
    depth : int

    Returns
    -------
    array [depth]
    """
    chi = _checks.real(chi_perp, "chi_perp")
    if not chi > 0:
        raise ValueError(f"chi_perp must be > 0, got {chi_perp!r}")
    s = _checks.nonnegative(source, "source")
    T1 = _checks.nonnegative(Theta1, "Theta1")
    m = np.arange(_layers.depth(depth), dtype=float)            # l − 1
    if abs(chi - 1.0) < 1e-12:
        return T1 + s * m
    with np.errstate(over="ignore"):
        g = chi ** m
        return g * T1 + s * (1.0 - g) / (1.0 - chi)


@dataclass(frozen=True)
class NTKFixedPoint:
    """The one-input NTK recursion linearised at a kernel fixed point K*  (§9.1 of [RY]).

    Attributes
    ----------
    K_star : float
    chi_par, chi_perp : float
        Susceptibilities at K* (with this C_W).
    source : float
        s = λ_b + λ_W⟨σ²⟩_{K*}, the NTK each layer adds.
    regime : str
        "exploding" (χ_⊥ > 1: Θ ∝ χ_⊥^l), "vanishing" (χ_⊥ < 1: Θ → s/(1 − χ_⊥) and the
        contribution of layer l to Θ^{(L)} is suppressed by χ_⊥^{L−l}) or "critical"
        (χ_⊥ = 1 within 1e-9: Θ grows linearly, every layer contributes s).
    """

    K_star: float
    chi_par: float
    chi_perp: float
    source: float
    regime: str

    def theta(self, depth: int, Theta1: float) -> np.ndarray:
        """Θ^{(l)} for l = 1..depth starting from Θ^{(1)} (:func:`theta_at_fixed_point`)."""
        return theta_at_fixed_point(self.chi_perp, self.source, Theta1, depth)

    def replace(self, **changes) -> "NTKFixedPoint":
        return dataclasses.replace(self, **changes)


def ntk_fixed_point(act, C_b: float, C_W: float, lam_b: float, lam_W: float,
                    K_star: float) -> NTKFixedPoint:
    """Susceptibilities, NTK source and regime at a kernel fixed point K*  (§9.1 of [RY]).

    Parameters
    ----------
    act : str or Activation
    C_b, C_W : float
    lam_b, lam_W : float ≥ 0
    K_star : float > 0
        A fixed point of K' = C_b + C_W⟨σ²⟩_K (checked to 1e-8 relative).

    Returns
    -------
    NTKFixedPoint
    """
    act = _checks.differentiable_activation(act, "the NTK recursions")
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    lam_b, lam_W = _checks.nonnegative(lam_b, "lam_b"), _checks.nonnegative(lam_W, "lam_W")
    K = float(_checks.kernel_scalar(K_star, "K_star"))
    if not K > 0:
        raise ValueError("K_star must be > 0 (the K* = 0 class is treated by asymptotics())")
    avg = Averages(act, K)
    s2 = avg.mean((0, 0))
    if abs(C_b + C_W * s2 - K) > 1e-8 * max(1.0, K):
        raise ValueError(f"K_star = {K:.6g} is not a fixed point: C_b + C_W⟨σ²⟩ = {C_b + C_W * s2:.6g}")
    chi_perp = C_W * avg.mean((0, 0), (1, 1))
    chi_par = C_W * float(avg.dK((0, 0))[0, 0, 0, 0])
    regime = ("critical" if abs(chi_perp - 1.0) < 1e-9 else
              "exploding" if chi_perp > 1.0 else "vanishing")
    return NTKFixedPoint(K, chi_par, chi_perp, lam_b + lam_W * s2, regime)


def _scale_invariant(act: Activation) -> tuple[float, float]:
    if act.scale_invariant is None:
        raise ValueError(f"{act.label} is not scale-invariant (σ(z) = a_+ z for z ≥ 0, a_- z for z < 0)")
    ap, am = act.scale_invariant
    return 0.5 * (ap ** 2 + am ** 2), 0.5 * (ap ** 4 + am ** 4)


def scale_invariant_theta(act, C_b: float, C_W: float, lam_b: float, lam_W: float, K1: float,
                          Theta1: float, depth: int) -> np.ndarray:
    """Closed-form mean NTK of a scale-invariant network (linear, ReLU, leaky ReLU), one input  (§9.2).

    With χ = C_W A_2 (both susceptibilities), K^{(l)} = K_∞ + (K1 − K_∞) χ^{l−1}, K_∞ = C_b/(1 − χ):

        Θ^{(l)} = χ^{l−1} Θ^{(1)} + (λ_b + λ_W A_2 K_∞) (1 − χ^{l−1})/(1 − χ)
                  + λ_W A_2 (K1 − K_∞)(l − 1) χ^{l−2},

    and at χ = 1: Θ^{(l)} = Θ^{(1)} + (l − 1)(λ_b + λ_W A_2 K1) + λ_W A_2 C_b (l − 1)(l − 2)/2.

    Parameters
    ----------
    act : str or Activation (scale-invariant)
    C_b, C_W, lam_b, lam_W : float (the same for every layer)
    K1, Theta1 : float
    depth : int

    Returns
    -------
    array [depth]
    """
    act = _checks.differentiable_activation(act, "the NTK recursions")
    A2, _ = _scale_invariant(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    lam_b, lam_W = _checks.nonnegative(lam_b, "lam_b"), _checks.nonnegative(lam_W, "lam_W")
    K1, T1 = float(_checks.kernel_scalar(K1, "K1")), float(_checks.kernel_scalar(Theta1, "Theta1"))
    m = np.arange(_layers.depth(depth), dtype=float)            # l − 1
    chi = C_W * A2
    if abs(chi - 1.0) < 1e-12:
        return T1 + m * (lam_b + lam_W * A2 * K1) + lam_W * A2 * C_b * m * (m - 1.0) / 2.0
    K_inf = C_b / (1.0 - chi)
    with np.errstate(over="ignore"):
        g = chi ** m
        return (g * T1 + (lam_b + lam_W * A2 * K_inf) * (1.0 - g) / (1.0 - chi)
                + lam_W * A2 * (K1 - K_inf) * m * chi ** (m - 1.0))


# --------------------------------------------------------------------------
# §9.4: each layer's contribution, and the learning-rate equivalence principle
# --------------------------------------------------------------------------

def _one_input_flow(act, C_b, C_W, K1, depth):
    """(C_b, C_W tuples, K [L], ⟨σ²⟩ [L], χ_⊥ [L] with the next layer's C_W)."""
    act = _checks.differentiable_activation(act, "the NTK recursions")
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    K1 = float(_checks.kernel_scalar(K1, "K1"))
    K = kernel(act, C_b, C_W, K1, depth)
    s2, pp = np.empty(depth), np.empty(depth)
    for l in range(depth):
        avg = Averages(act, np.array([[K[l]]]), _checked=True)
        s2[l], pp[l] = avg.mean((0, 0)), avg.mean((0, 0), (1, 1))
    chi = np.array([C_W[min(l + 1, depth - 1)] for l in range(depth)]) * pp
    return act, C_b, C_W, K, s2, chi


def _input_overlap(C_b, C_W, K1, x_sq):
    if x_sq is None:
        return (K1 - C_b[0]) / C_W[0]
    return _checks.nonnegative(x_sq, "x_sq")


def layer_contributions(act, C_b, C_W, lam_b, lam_W, K1, depth: int, x_sq=None) -> np.ndarray:
    """How much the biases and weights of each layer contribute to Θ^{(L)}, one input  (§9.4 of [RY]).

    Unrolling the mean-NTK recursion, Θ^{(L)} = Σ_l [λ_b^{(l)} + λ_W^{(l)} ⟨σ²⟩_{K^{(l−1)}}] Π_{m=l}^{L−1} χ_⊥^{(m)}
    (⟨σ²⟩ → x·x/n_0 for l = 1), where χ_⊥^{(m)} = C_W^{(m+1)}⟨σ'²⟩_{K^{(m)}}.

    Parameters
    ----------
    act, C_b, C_W, lam_b, lam_W : as in :func:`dlt_companion.flows.ntk_mean` (per layer allowed)
    K1 : float > 0
        First-layer kernel C_b^{(1)} + C_W^{(1)} x·x/n_0.
    depth : int
    x_sq : float, optional
        x·x/n_0 (default (K1 − C_b^{(1)})/C_W^{(1)}).

    Returns
    -------
    array [depth, 2]
        Row l−1: (biases, weights) of layer l; the total is Θ^{(L)} of :func:`~dlt_companion.flows.ntk_mean`.
    """
    act, C_b, C_W, K, s2, chi = _one_input_flow(act, C_b, C_W, K1, depth)
    lb, lw = _layers.learning_rates(len(K), lam_b, lam_W)
    L = len(K)
    overlap = np.concatenate([[_input_overlap(C_b, C_W, K[0], x_sq)], s2[:-1]])
    # carried[l] = Π_{m=l+1}^{L−1} χ_⊥^{(m)} for layer l+1 (1-based: layer l carried by χ_⊥^{(l..L−1)})
    carried = np.ones(L)
    for l in range(L - 2, -1, -1):
        carried[l] = carried[l + 1] * chi[l]
    return np.stack([np.asarray(lb) * carried, np.asarray(lw) * overlap * carried], axis=1)


def equivalence_learning_rates(act, C_b, C_W, K1, depth: int, lam_b: float = 1.0,
                               lam_W: float = 1.0, x_sq=None) -> tuple[tuple, tuple]:
    """Per-layer λ_b^{(l)}, λ_W^{(l)} that obey the learning-rate equivalence principle  (§9.4 of [RY]).

    Every layer's biases contribute λ̃_b/L and its weights λ̃_W/L to the output NTK, so that
    Θ^{(L)} = λ̃_b + λ̃_W exactly (infinite width, one input) whatever the depth, activation
    or initialization: λ_b^{(l)} = λ̃_b / (L Π_l), λ_W^{(l)} = λ̃_W / (L ⟨σ²⟩_{K^{(l−1)}} Π_l),
    with Π_l the product of χ_⊥ that carries layer l to the output (:func:`layer_contributions`).
    At criticality these approach the power laws of :func:`equivalence_power_law`.

    Parameters
    ----------
    act, C_b, C_W : activation and (per-layer) initialization
    K1 : float > 0
        First-layer kernel of the input.
    depth : int
    lam_b, lam_W : float ≥ 0
        λ̃_b, λ̃_W: what the biases and the weights of all layers contribute in total.
    x_sq : float, optional
        x·x/n_0 (default (K1 − C_b^{(1)})/C_W^{(1)}).

    Returns
    -------
    (lam_b, lam_W) : tuples of ``depth`` floats (pass them to :class:`~dlt_companion.network.MLP`).
    """
    lam_b, lam_W = _checks.nonnegative(lam_b, "lam_b"), _checks.nonnegative(lam_W, "lam_W")
    per = layer_contributions(act, C_b, C_W, 1.0, 1.0, K1, depth, x_sq)
    L = len(per)
    if np.any(per <= 0) or not np.all(np.isfinite(per)):
        raise ValueError("a layer contributes nothing to the output NTK (a zero input, a vanishing "
                         "⟨σ²⟩ or χ_⊥ = 0): no finite learning rate can make its contribution equal")
    return tuple(lam_b / (L * per[:, 0])), tuple(lam_W / (L * per[:, 1]))


def ntk_class(act) -> dict:
    """The universality class of σ for the NTK asymptotics, with its constants  (§9.2–9.3 of [RY]).

    Returns
    -------
    dict
        ``{"class": "scale-invariant", "C_b": 0, "C_W": 1/A_2, "A2", "A4"}`` or
        ``{"class": "K*=0", "C_b": 0, "C_W": 1/σ_1², "sigma": (σ_1, σ_2, σ_3), "a1", "b1",
        "p_perp", "p_par": 2}``.

    Raises
    ------
    ValueError
        For activations outside these two classes (or a K* = 0 candidate whose kernel does
        not flow to zero, a_1 ≥ 0).
    """
    act = _checks.differentiable_activation(act, "the NTK asymptotics")
    if act.scale_invariant is not None:
        A2, A4 = _scale_invariant(act)
        return {"class": "scale-invariant", "C_b": 0.0, "C_W": 1.0 / A2, "A2": A2, "A4": A4}
    z = np.zeros(1)
    s0, s1, s2, s3 = (float(act.numpy[k](z)[0]) for k in range(4))
    if abs(s0) > 1e-14 or abs(s1) < 1e-14:
        raise ValueError(f"{act.label} is in neither the scale-invariant nor the K* = 0 class "
                         f"(σ(0) = {s0:.3g}, σ'(0) = {s1:.3g}); large-depth power laws are derived "
                         "for those two classes only")
    a1 = s3 / s1 + 0.75 * (s2 / s1) ** 2
    b1 = s3 / s1 + (s2 / s1) ** 2
    if not a1 < 0:
        raise ValueError(f"{act.label}: a_1 = {a1:.3g} ≥ 0, so the kernel does not flow to K* = 0 "
                         "from above (half-stable); no power-law asymptotics")
    return {"class": "K*=0", "C_b": 0.0, "C_W": 1.0 / s1 ** 2, "sigma": (s1, s2, s3),
            "a1": a1, "b1": b1, "p_perp": b1 / a1, "p_par": 2.0}


def equivalence_power_law(act, depth: int, lam_b: float = 1.0, lam_W: float = 1.0,
                          K_star: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The book's large-depth learning rates at criticality (equivalence principle, §9.4 of [RY]).

    * scale-invariant: λ_b^{(l)} = λ̃_b/L, λ_W^{(l)} = λ̃_W/(A_2 K* L) (every layer adds the same);
    * K* = 0: λ_b^{(l)} = λ̃_b L^{p_⊥−1}/l^{p_⊥}, λ_W^{(l)} = λ̃_W (−a_1/σ_1²)(L/l)^{p_⊥−1}
      (for tanh, p_⊥ = 1: λ_b ∝ 1/l, λ_W constant).

    Each layer then contributes ≈ (λ̃_b + λ̃_W)/L to Θ^{(L)} at large depth. Our normalisation of
    λ_W (divided by ⟨σ²⟩ at the layer below) makes λ̃_W the weights' total contribution.

    Parameters
    ----------
    act : str or Activation (scale-invariant or K* = 0 class)
    depth : int
    lam_b, lam_W : float ≥ 0
    K_star : float, optional
        The (conserved) kernel of the scale-invariant class; required there.

    Returns
    -------
    (lam_b [depth], lam_W [depth]) arrays.
    """
    info = ntk_class(act)
    L = _layers.depth(depth)
    lam_b, lam_W = _checks.nonnegative(lam_b, "lam_b"), _checks.nonnegative(lam_W, "lam_W")
    l = np.arange(1, L + 1, dtype=float)
    if info["class"] == "scale-invariant":
        if K_star is None:
            raise ValueError("the scale-invariant class needs K_star (its kernel is conserved)")
        K = float(_checks.kernel_scalar(K_star, "K_star"))
        return np.full(L, lam_b / L), np.full(L, lam_W / (info["A2"] * K * L))
    p, s1 = info["p_perp"], info["sigma"][0]
    return lam_b * L ** (p - 1.0) / l ** p, lam_W * (-info["a1"] / s1 ** 2) * (L / l) ** (p - 1.0)


# --------------------------------------------------------------------------
# §9.2–9.3: large-depth asymptotics of Θ and of the relative fluctuations
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class NTKAsymptotics:
    """Leading large-depth behaviour at criticality, constant λ's, one input  (§9.2–9.3 of [RY]).

    At layer l, Θ^{(l)} ≈ ``theta_coef`` · l^``theta_power`` and the relative fluctuations grow
    linearly: A/Θ² ≈ ``a_A`` l, B/Θ² ≈ ``a_B`` l, D/(KΘ) ≈ ``a_D`` l, F/(KΘ) ≈ ``a_F`` l (divide by
    n for the size of the fluctuations: the aspect ratio l/n). A coefficient 0 means that
    quantity does not grow linearly (its growth is of lower order).

    Attributes
    ----------
    universality : str
    theta_coef, theta_power : float
    a_A, a_B, a_D, a_F : float
    constants : dict
        The class constants used (:func:`ntk_class`).
    """

    universality: str
    theta_coef: float
    theta_power: float
    a_A: float
    a_B: float
    a_D: float
    a_F: float
    constants: dict

    def theta(self, l) -> np.ndarray:
        """Θ^{(l)} at large l."""
        return self.theta_coef * np.asarray(l, dtype=float) ** self.theta_power

    def relative(self, l) -> dict:
        """{"A": A/Θ², "B": B/Θ², "D": D/(KΘ), "F": F/(KΘ)} at large l (arrays like l)."""
        l = np.asarray(l, dtype=float)
        return {"A": self.a_A * l, "B": self.a_B * l, "D": self.a_D * l, "F": self.a_F * l}

    def replace(self, **changes) -> "NTKAsymptotics":
        return dataclasses.replace(self, **changes)


def asymptotics(act, lam_b: float = 1.0, lam_W: float = 1.0, K_star: float | None = None) -> NTKAsymptotics:
    """Large-depth power laws of Θ and of A, B, D, F at criticality  (§9.2–9.3 of [RY]).

    Leading order in 1/l with constant λ_b, λ_W (the scale-invariant class's equivalence
    principle λ ∝ 1/L is a constant too). Every coefficient follows from the one-input
    recursions of :func:`dlt_companion.flows.ntk_fluctuations` with the rule that
    X' − X = s l^m − (p/l) X is solved at large l by X ≈ s l^{m+1}/(m + 1 + p).

    * scale-invariant (κ = A_4/A_2², w = λ_W A_2 K*/(λ_b + λ_W A_2 K*)):
      Θ ≈ (λ_b + λ_W A_2 K*) l, A/Θ² ≈ [(κ − 1)(1 + w) + (3κ − 1) w²] l/3, B/Θ² ≈ κ l/3,
      D/(KΘ) ≈ [(κ − 1) + (3κ − 1) w] l/2, F/(KΘ) ≈ κ l/2 (ReLU: κ = 2).
    * K* = 0 with λ_b > 0 (p = p_⊥): Θ ≈ λ_b l/(1 + p), A/Θ² ≈ 4p² l/(3(3 + p)(3 + 2p)),
      B/Θ² ≈ l/(3 + 2p), D/(KΘ) ≈ −2p l/(3(3 + p)), F/(KΘ) ≈ l/5 (tanh, p = 1: l/15, l/5, −l/6, l/5).
    * K* = 0 with λ_b = 0: Θ → λ_W σ_1²/(−b_1) (constant), B/Θ² ≈ l/(1 + 2p), F/(KΘ) ≈ l/4,
      and A/Θ², D/(KΘ) do not grow linearly (the NTK's source and its kernel derivative
      cancel: ∂⟨Ω⟩/∂K → λ_W σ_1² + b_1 Θ = 0).

    Parameters
    ----------
    act : str or Activation (scale-invariant or K* = 0 class)
    lam_b, lam_W : float ≥ 0 (not both 0)
    K_star : float, optional
        The conserved kernel of the scale-invariant class (required there).

    Returns
    -------
    NTKAsymptotics
    """
    info = ntk_class(act)
    lam_b, lam_W = _checks.nonnegative(lam_b, "lam_b"), _checks.nonnegative(lam_W, "lam_W")
    if lam_b == 0 and lam_W == 0:
        raise ValueError("lam_b and lam_W are both 0: the NTK vanishes")
    if info["class"] == "scale-invariant":
        if K_star is None:
            raise ValueError("the scale-invariant class needs K_star (its kernel is conserved)")
        K = float(_checks.kernel_scalar(K_star, "K_star"))
        if not K > 0:
            raise ValueError("K_star must be > 0")
        kappa = info["A4"] / info["A2"] ** 2
        step = lam_b + lam_W * info["A2"] * K
        w = lam_W * info["A2"] * K / step
        return NTKAsymptotics("scale-invariant", step, 1.0,
                              ((kappa - 1) * (1 + w) + (3 * kappa - 1) * w * w) / 3.0,
                              kappa / 3.0, ((kappa - 1) + (3 * kappa - 1) * w) / 2.0, kappa / 2.0, info)
    p, s1, b1 = info["p_perp"], info["sigma"][0], info["b1"]
    if lam_b > 0:
        return NTKAsymptotics("K*=0", lam_b / (1 + p), 1.0, 4 * p * p / (3 * (3 + p) * (3 + 2 * p)),
                              1.0 / (3 + 2 * p), -2 * p / (3 * (3 + p)), 1.0 / 5.0, info)
    if not b1 < 0:
        raise ValueError(f"b_1 = {b1:.3g} ≥ 0: with λ_b = 0 the NTK has no finite large-depth limit")
    return NTKAsymptotics("K*=0", lam_W * s1 ** 2 / (-b1), 0.0, 0.0, 1.0 / (1 + 2 * p), 0.0, 0.25, info)
