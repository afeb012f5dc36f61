"""Exact statistics of deep linear networks at initialization (Chapter 3 of [RY]).

A deep linear network is the MLP of §2.1 with σ(z) = z,

    z^{(1)}_{i;α} = b^{(1)}_i + Σ_j W^{(1)}_{ij} x_{j;α},
    z^{(l+1)}_{i;α} = b^{(l+1)}_i + Σ_j W^{(l+1)}_{ij} z^{(l)}_{j;α},

with b ~ N(0, C_b) and W ~ N(0, C_W/n_{l−1}). Its statistics are known exactly at any
width. The key fact (used throughout this module) is that, *conditioned on layer l*,
the preactivations of layer l+1 are independent Gaussians across neurons with the
random covariance

    Ĝ^{(l+1)}_{αβ} = C_b + C_W (1/n_l) Σ_j z^{(l)}_{j;α} z^{(l)}_{j;β}.

Taking expectations gives closed recursions for all correlators:

* two-point (§3.1–3.2): G^{(l+1)} = C_b + C_W G^{(l)}, G^{(1)} = C_b + C_W x·x/n_0,
  exact at any width (Gram matrix of any set of inputs);
* four-point (§3.3): with F^{(l)}_{(αβ)(γδ)} ≡ E[Ĝ^{(l)}_{αβ} Ĝ^{(l)}_{γδ}]
  (= E[z_{i;α} z_{i;β} z_{j;γ} z_{j;δ}] for i ≠ j),

      F^{(l+1)}_{(αβ)(γδ)} = C_b² + C_b C_W (G^{(l)}_{αβ} + G^{(l)}_{γδ})
                             + C_W² [F^{(l)}_{(αβ)(γδ)} + (F^{(l)}_{(αγ)(βδ)} + F^{(l)}_{(αδ)(βγ)}) / n_l],

  F^{(1)} = G^{(1)} ⊗ G^{(1)}, and the same-neuron four-point function is the sum of the
  three pairings of F. The book's four-point vertex is V^{(l)} = n_{l−1}(F^{(l)} − G^{(l)}⊗G^{(l)}).
  For C_b = 0 and equal widths this solves in closed form (:func:`four_point_closed_form`);
  for one input E[z⁴] = 3 C_W^{2(l−1)} K² (1 + 2/n)^{l−1};
* 2m-point, one input, C_b = 0 (§3.4): Ĝ^{(l+1)} = C_W Ĝ^{(l)} χ²_{n_l}/n_l exactly, so
  E[z^{2m}] = (2m−1)!! (C_W^{l−1} K)^m Π_{l'<l} Π_{k=1}^{m−1} (1 + 2k/n_{l'}).

The same product structure holds for every *scale-invariant* activation (ReLU, leaky ReLU;
§2.2, §5.2) at C_b = 0, one input: σ(√G u)² = G σ(u)², so the conditional variance is a
product of independent per-layer factors, Ĝ^{(l+1)} = Ĝ^{(l)} (C_W/n_l) Σ_j σ(u_j)² with
u_j ~ N(0, 1) (Chapter 0's exact ReLU formulas). :func:`chain_moments` gives every
E[(Ĝ^{(l)})^m] exactly, and :func:`mean_estimator_skewness` the skewness of the ensemble
mean of a neuron-averaged z^{2m} — how far from Gaussian the sampling distribution of a
measured moment is, which decides where a z-score can be trusted (§3.4: the moments are
carried by ever rarer networks).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from . import _checks
from .activations import get

__all__ = ["two_point", "four_point", "four_point_same_neuron", "vertex", "four_point_closed_form",
           "fourth_moment", "fourth_moment_leading", "moment_2m", "log_kernel_moments",
           "chain_moments", "mean_estimator_skewness"]


def _gram_or_scalar(G1, what="G1"):
    if np.ndim(G1) == 0:
        return np.array([[float(_checks.kernel_scalar(G1, what))]]), True
    return _checks.gram(G1, what), False


def _widths_depth(widths) -> list:
    return _checks.widths(widths, "widths (n_1, …, n_L)")


def two_point(G1, depth: int, C_b: float = 0.0, C_W: float = 1.0) -> np.ndarray:
    """Exact metric G^{(l)} = E[z_{i;α} z_{i;β}] of a deep linear network, l = 1..depth (§3.1–3.2 of [RY]).

    Iterates G^{(l+1)} = C_b + C_W G^{(l)}, valid at any width. At criticality
    (C_b = 0, C_W = 1) the metric is the same in every layer; C_W > 1 makes it explode
    and C_W < 1 makes it vanish (to C_b/(1−C_W) if C_b > 0) geometrically in depth.

    Parameters
    ----------
    G1 : float or array [B, B]
        First-layer metric (e.g. :func:`dlt_companion.flows.first_layer_kernel`).
    depth : int ≥ 1
    C_b, C_W : float

    Returns
    -------
    array [depth] (scalar G1) or [depth, B, B]; entry l−1 is G^{(l)}.
    """
    G, scalar = _gram_or_scalar(G1)
    depth = _checks.depth(depth)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    out = np.empty((depth,) + G.shape)
    out[0] = G
    for l in range(1, depth):
        out[l] = C_b + C_W * out[l - 1]
    return out[:, 0, 0] if scalar else out


def four_point(G1, widths, C_b: float = 0.0, C_W: float = 1.0) -> np.ndarray:
    """Exact F^{(l)}_{(αβ)(γδ)} = E[z_{i;α} z_{i;β} z_{j;γ} z_{j;δ}] (i ≠ j) of a deep linear network (§3.3 of [RY]).

    Equivalently E[Ĝ^{(l)}_{αβ} Ĝ^{(l)}_{γδ}] for the conditional covariance Ĝ of layer l.
    Exact at any (also unequal) widths; see the module docstring for the recursion.

    Parameters
    ----------
    G1 : float or array [B, B]
        First-layer metric.
    widths : sequence of int (n_1, …, n_L)
        Layer widths as in :class:`dlt_companion.ensembles.MLPEnsemble`; layer l+1's
        statistics depend on n_l, so n_L itself does not enter.
    C_b, C_W : float

    Returns
    -------
    array [L] for scalar G1, or [L, B, B, B, B]; entry l−1 is F^{(l)}.
    """
    G, scalar = _gram_or_scalar(G1)
    ns = _widths_depth(widths)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    L = len(ns)
    F = np.einsum("ab,cd->abcd", G, G)
    out = np.empty((L,) + F.shape)
    out[0] = F
    for l in range(1, L):
        n = ns[l - 1]
        swap = F.transpose(0, 2, 1, 3) + F.transpose(0, 3, 2, 1)   # F_(ac)(bd) + F_(ad)(cb)
        F = (C_b ** 2 + C_b * C_W * (G[:, :, None, None] + G[None, None, :, :])
             + C_W ** 2 * (F + swap / n))
        G = C_b + C_W * G
        out[l] = F
    return out[:, 0, 0, 0, 0] if scalar else out


def four_point_same_neuron(G1, widths, C_b: float = 0.0, C_W: float = 1.0) -> np.ndarray:
    """Exact E[z_{i;α} z_{i;β} z_{i;γ} z_{i;δ}] (one neuron) = F_(αβ)(γδ) + F_(αγ)(βδ) + F_(αδ)(βγ) (§3.3 of [RY]).

    Parameters
    ----------
    G1 : float or array [B, B]
        First-layer metric.
    widths : sequence of int (n_1, …, n_L)
    C_b, C_W : float

    Returns
    -------
    array [L] (scalar G1: E[z⁴]) or [L, B, B, B, B].
    """
    F = four_point(G1, widths, C_b, C_W)
    if F.ndim == 1:
        return 3.0 * F
    return F + F.transpose(0, 1, 3, 2, 4) + F.transpose(0, 1, 4, 3, 2)


def vertex(G1, widths, C_b: float = 0.0, C_W: float = 1.0) -> np.ndarray:
    """The four-point vertex V^{(l)}_{(αβ)(γδ)} = n_{l−1} (F^{(l)} − G^{(l)} ⊗ G^{(l)}) of a deep linear network.

    In the book's normalisation (§3.3, §4.3 of [RY]) the connected four-point function of
    layer l is (1/n_{l−1}) [δ_{i1i2}δ_{i3i4} V_{(α1α2)(α3α4)} + two other pairings];
    V^{(1)} = 0 (the first layer is Gaussian). Exact at finite width (for l ≥ 2 it uses
    n_{l−1} = widths[l−2]).

    Parameters
    ----------
    G1 : float or array [B, B]
        First-layer metric.
    widths : sequence of int (n_1, …, n_L)
    C_b, C_W : float

    Returns
    -------
    array [L] or [L, B, B, B, B]; entry l−1 is V^{(l)}.
    """
    ns = _widths_depth(widths)
    F = four_point(G1, ns, C_b, C_W)
    G = two_point(G1, len(ns), C_b, C_W)
    GG = G * G if F.ndim == 1 else np.einsum("lab,lcd->labcd", G, G)
    fan_in = np.array([1.0] + [float(n) for n in ns[:-1]]).reshape((-1,) + (1,) * (F.ndim - 1))
    V = fan_in * (F - GG)
    V[0] = 0.0
    return V


def four_point_closed_form(G1, n: int, depth: int, C_W: float = 1.0) -> np.ndarray:
    """Closed-form solution of the four-point recursion for C_b = 0 and equal widths n (§3.3 of [RY]).

    Splitting F into its fully symmetric part S = F_(αβ)(γδ) + F_(αγ)(βδ) + F_(αδ)(βγ) and the
    rest, each layer multiplies S by C_W²(1 + 2/n) and F − S/3 by C_W²(1 − 1/n), so

        F^{(l)}_{(αβ)(γδ)} = C_W^{2(l−1)} [ (1 + 2/n)^{l−1} S^{(1)}/3
                                           + (1 − 1/n)^{l−1} (G_αβ G_γδ − S^{(1)}/3) ],

    with S^{(1)} = G_αβ G_γδ + G_αγ G_βδ + G_αδ G_βγ from the first-layer metric G = G^{(1)}.

    Parameters
    ----------
    G1 : float or array [B, B]
        First-layer metric.
    n : int
        The common width of every layer.
    depth : int
    C_W : float

    Returns
    -------
    array [depth] for scalar G1, or [depth, B, B, B, B].
    """
    G, scalar = _gram_or_scalar(G1)
    n, depth = _checks.width(n, "n"), _checks.depth(depth)
    C_W = _checks.C_W(C_W)
    T = np.einsum("ab,cd->abcd", G, G)
    S = T + T.transpose(0, 2, 1, 3) + T.transpose(0, 3, 2, 1)
    l = np.arange(1, depth + 1).reshape((-1,) + (1,) * 4)
    F = C_W ** (2 * (l - 1)) * ((1 + 2 / n) ** (l - 1) * S / 3 + (1 - 1 / n) ** (l - 1) * (T - S / 3))
    return F[:, 0, 0, 0, 0] if scalar else F


def fourth_moment(K1, widths, C_b: float = 0.0, C_W: float = 1.0) -> np.ndarray:
    """Exact E[(z^{(l)}_i)⁴] for one input, every layer l = 1..L (§3.3 of [RY]).

    For C_b = 0: 3 C_W^{2(l−1)} K1² Π_{l'=1}^{l−1} (1 + 2/n_{l'}).

    Parameters
    ----------
    K1 : float, first-layer kernel C_b + C_W x·x/n_0
    widths : sequence of int (n_1, …, n_L)
    C_b, C_W : float

    Returns
    -------
    array [L]
    """
    if np.ndim(K1) != 0:
        raise ValueError("fourth_moment takes one input's scalar kernel K1; use "
                         "four_point_same_neuron for a Gram matrix")
    return four_point_same_neuron(K1, widths, C_b, C_W)


def fourth_moment_leading(K1, widths, C_W: float = 1.0) -> np.ndarray:
    """The 1/n-truncated E[z⁴] = 3 C_W^{2(l−1)} K1² (1 + Σ_{l'<l} 2/n_{l'}), C_b = 0 (§3.3 of [RY]).

    For equal widths this is 3K²(1 + 2(l−1)/n): correct to first order in 1/n but
    missing every (l/n)^k, k ≥ 2, term of the exact product (1 + 2/n)^{l−1}.

    Parameters
    ----------
    K1 : float, first-layer kernel
    widths : sequence of int (n_1, …, n_L)
    C_W : float

    Returns
    -------
    array [L]
    """
    K1 = float(_checks.kernel_scalar(K1, "K1"))
    ns = _widths_depth(widths)
    C_W = _checks.C_W(C_W)
    l = np.arange(1, len(ns) + 1)
    s = np.concatenate([[0.0], np.cumsum(2.0 / np.array(ns[:-1], dtype=float))])
    return 3.0 * C_W ** (2 * (l - 1)) * K1 ** 2 * (1.0 + s)


def _m(m) -> int:
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m (half the order of the moment) must be an integer >= 1, got {m!r}")
    return int(m)


def moment_2m(K1, widths, m: int, C_W: float = 1.0) -> np.ndarray:
    """Exact E[(z^{(l)}_i)^{2m}] for one input and C_b = 0, every layer (§3.4 of [RY]).

    (2m−1)!! (C_W^{l−1} K1)^m Π_{l'=1}^{l−1} Π_{k=1}^{m−1} (1 + 2k/n_{l'}). At fixed width the
    ratio to the Gaussian value grows exponentially with depth, faster for larger m; with
    l/n fixed it tends to exp(m(m−1) l/n). The double factorial is an exact integer
    (E[z⁴⁰] = 39!! K²⁰ ≈ 3.2·10²³ K²⁰ at layer 1), converted to float once; the result
    overflows to ``inf`` only beyond float range, which raises.

    Parameters
    ----------
    K1 : float ≥ 0
        First-layer kernel C_W x·x/n_0.
    widths : sequence of int (n_1, …, n_L)
    m : int ≥ 1
        Half the order of the moment.
    C_W : float > 0

    Returns
    -------
    array [L]
        E[z^{2m}] at layers 1..L.
    """
    K1 = float(_checks.kernel_scalar(K1, "K1"))
    ns = _widths_depth(widths)
    m, C_W = _m(m), _checks.C_W(C_W)
    k = np.arange(1, m)
    l = np.arange(1, len(ns) + 1)
    double_fact = float(math.prod(range(2 * m - 1, 0, -2)))     # exact integer, then float
    with np.errstate(over="ignore", invalid="ignore"):
        per_layer = np.array([np.prod(1.0 + 2.0 * k / n) for n in ns[:-1]])
        growth = np.concatenate([[1.0], np.cumprod(per_layer)])
        out = double_fact * (C_W ** (l - 1) * K1) ** m * growth
    if not np.all(np.isfinite(out)):
        raise ValueError(f"E[z^{2 * m}] exceeds the float range (about 1.8e308) at layer "
                         f"{int(np.argmax(~np.isfinite(out))) + 1}; use a smaller m, depth or K1")
    return out


def log_kernel_moments(K1, widths, C_W: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of log Ĝ^{(l)}_emp, the log of one network's empirical kernel (§3.4 of [RY]).

    Ĝ^{(l)}_emp = (1/n_l) Σ_i (z^{(l)}_i)² for one input, C_b = 0. It is a product of
    independent scaled chi-squares, Ĝ_emp^{(l)} = C_W^{l−1} K1 Π_{l'=1}^{l} χ²_{n_{l'}}/n_{l'}, so

        E[log Ĝ_emp^{(l)}]   = log(C_W^{l−1} K1) + Σ_{l'≤l} [ψ(n_{l'}/2) + log(2/n_{l'})],
        Var[log Ĝ_emp^{(l)}] = Σ_{l'≤l} ψ'(n_{l'}/2),

    with ψ the digamma function. The typical network's kernel exp(E log Ĝ) shrinks like
    e^{−l/n} even at criticality, while the mean stays C_W^{l−1} K1.

    Parameters
    ----------
    K1 : float > 0, first-layer kernel
    widths : sequence of int (n_1, …, n_L)
    C_W : float

    Returns
    -------
    mean, var : arrays [L]
    """
    K1 = float(_checks.kernel_scalar(K1, "K1"))
    if K1 <= 0:
        raise ValueError("K1 must be > 0 for the log-kernel")
    ns = np.array(_widths_depth(widths), dtype=float)
    C_W = _checks.C_W(C_W)
    l = np.arange(1, len(ns) + 1)
    mean = (l - 1) * np.log(C_W) + np.log(K1) + np.cumsum(special.digamma(ns / 2) + np.log(2 / ns))
    var = np.cumsum(special.polygamma(1, ns / 2))
    return mean, var


def _double_factorial(k: int) -> int:
    return math.prod(range(k, 0, -2)) if k > 0 else 1


def _moments_from_cumulants(kappa: list) -> list:
    """Raw moments m_0..m_K of one variable from κ_1..κ_K (m_n = Σ C(n−1, k−1) κ_k m_{n−k})."""
    m = [1.0]
    for n in range(1, len(kappa) + 1):
        m.append(sum(math.comb(n - 1, k - 1) * kappa[k - 1] * m[n - k] for k in range(1, n + 1)))
    return m


def _layer_factor_moments(a_plus: float, a_minus: float, C_W: float, n: int, m_max: int) -> list:
    """E[R^m], m = 0..m_max, for R = (C_W/n) Σ_{j≤n} σ(u_j)², u_j ~ N(0,1), σ scale-invariant."""
    # moments of X = C_W σ(u)²: E[X^k] = C_W^k (2k−1)!! (a_+^{2k} + a_−^{2k})/2
    raw = [1.0] + [C_W ** k * _double_factorial(2 * k - 1) * 0.5 * (a_plus ** (2 * k) + a_minus ** (2 * k))
                   for k in range(1, m_max + 1)]
    kappa = []                                              # cumulants of X from its moments
    for k in range(1, m_max + 1):
        kappa.append(raw[k] - sum(math.comb(k - 1, j - 1) * kappa[j - 1] * raw[k - j] for j in range(1, k)))
    mean_cumulants = [kappa[k - 1] / n ** (k - 1) for k in range(1, m_max + 1)]   # of (1/n) Σ X_j
    return _moments_from_cumulants(mean_cumulants)


def chain_moments(widths, m_max: int, act="linear", C_W: float | None = None, K1: float = 1.0) -> np.ndarray:
    """E[(Ĝ^{(l)})^m] exactly, m = 0..m_max, for a scale-invariant network with C_b = 0 (§3.4, §5.2 of [RY]).

    Ĝ^{(l)} is the variance of layer l's preactivations *given* layer l−1 (Ĝ^{(1)} = K1), so
    E[z^{2m}] = (2m−1)!! E[Ĝ^m]. For the linear network E[Ĝ^m] = K1^m C_W^{m(l−1)} Π Π (1 + 2k/n);
    for ReLU at C_W = 2 the per-layer factor of E[Ĝ²] is 1 + 5/n (Chapter 0).

    Parameters
    ----------
    widths : sequence of int (n_1, …, n_L)
    m_max : int ≥ 1
    act : str or Activation, scale-invariant (linear, relu, leaky_relu)
    C_W : float > 0, optional
        Default: the critical 2/(a_+² + a_−²).
    K1 : float ≥ 0, first-layer kernel

    Returns
    -------
    array [L, m_max + 1]
        Entry [l−1, m] is E[(Ĝ^{(l)})^m].
    """
    act = get(act)
    if act.scale_invariant is None:
        raise ValueError(f"chain_moments needs a scale-invariant activation (linear, relu, "
                         f"leaky_relu), got {act.name}")
    ap, am = act.scale_invariant
    C_W = 2.0 / (ap ** 2 + am ** 2) if C_W is None else _checks.C_W(C_W)
    ns = _widths_depth(widths)
    m_max = _m(m_max)
    K1 = float(_checks.kernel_scalar(K1, "K1"))
    out = np.empty((len(ns), m_max + 1))
    out[0] = K1 ** np.arange(m_max + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(1, len(ns)):
            out[l] = out[l - 1] * np.array(_layer_factor_moments(ap, am, C_W, ns[l - 1], m_max))
    if not np.all(np.isfinite(out)):
        raise ValueError("the moments exceed the float range; use a smaller m_max or depth")
    return out


def mean_estimator_skewness(widths, m: int, n_networks: int, act="linear",
                            C_W: float | None = None) -> np.ndarray:
    """Skewness of the ensemble mean of the per-network neuron average of z^{2m}, every layer (§3.4).

    The per-network statistic is Y = (1/n_l) Σ_i (z^{(l)}_i)^{2m} = Ĝ^m S with
    S = (1/n_l) Σ_i u_i^{2m}, u_i ~ N(0, 1) independent of Ĝ (layer l is Gaussian given layer
    l−1), so E[Y^k] = E[Ĝ^{mk}] E[S^k] exactly. The skewness of the mean over M networks is
    κ_3(Y)/(κ_2(Y)^{3/2} √M). A z-score means what it says only while this is small: its
    Edgeworth correction to the probability of a −3σ fluctuation is −φ(3)·γ·(3² − 1)/6, which
    reaches 40 % of the Gaussian value at γ = 0.1.

    Parameters
    ----------
    widths : sequence of int (n_1, …, n_L)
    m : int ≥ 1
    n_networks : int ≥ 2
    act : str or Activation, scale-invariant
    C_W : float, optional (default critical)

    Returns
    -------
    array [L]
        Skewness of the mean at each layer (K1 drops out).
    """
    ns = _widths_depth(widths)
    m = _m(m)
    M = _checks.width(n_networks, "n_networks")
    G = chain_moments(ns, 3 * m, act, C_W)                      # E[Ĝ^j], j = 0..3m
    out = np.empty(len(ns))
    dm = _double_factorial(2 * m - 1)
    for l, n in enumerate(ns):
        X = [1.0] + [_double_factorial(2 * m * k - 1) / dm ** k for k in (1, 2, 3)]   # E[(u^{2m}/(2m−1)!!)^k]
        k2, k3 = X[2] - 1.0, X[3] - 3.0 * X[2] + 2.0
        S = _moments_from_cumulants([1.0, k2 / n, k3 / n ** 2])                      # E[S^k]
        Y = [G[l, m * k] * S[k] for k in range(4)]
        var = Y[2] - Y[1] ** 2
        third = Y[3] - 3.0 * Y[1] * Y[2] + 2.0 * Y[1] ** 3
        out[l] = third / var ** 1.5 / np.sqrt(M) if var > 0 else 0.0
    return out
