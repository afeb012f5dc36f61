"""Entropy and mutual information of (nearly-)Gaussian preactivations, and the optimal aspect ratio  (App. A of [RY]).

Entropy (§A.1) of a density p is S[p] = −∫ p log p (nats), and the mutual information of
two sets of variables A, B is I(A; B) = S[A] + S[B] − S[A, B] ≥ 0: the Kullback–Leibler
divergence of p(A, B) from p(A) p(B), zero exactly when A and B are independent.

* **Infinite width** (§A.2). Preactivations are Gaussian: n independent neurons with kernel K
  over a set of inputs have S = (n/2) log det(2πe K) (:func:`gaussian_entropy`), different
  neurons share no information, and the information the outputs on two inputs share is
  (n/2) log[K_AA K_BB / det K] (:func:`gaussian_mutual_information`).
* **Nearly-Gaussian** (§A.1, §A.3). With third and fourth cumulants κ₃, κ₄ small, the
  entropy falls below the Gaussian one of the same covariance by the negentropy
  J = (1/12) Σ κ̃_{abc}² + (1/48) Σ κ̃_{abcd}² + … (κ̃: cumulants of the whitened variables,
  sums over all ordered indices; Comon 1994) (:func:`nearly_gaussian_entropy`,
  :func:`nearly_gaussian_mutual_information`).
* **Output neurons at finite width** (§A.3). Given the previous layer, the n_L output
  preactivations of an MLP are exactly Gaussian, i.i.d., with the *random* variance Ĝ (the
  stochastic metric of Ch. 4): a Gaussian scale mixture. With ε = Var(Ĝ)/E[Ĝ]² (= V/(n K²) at
  leading order) the information two groups of n_A and n_B output neurons share is

      I(A; B) = (n_A n_B / 8) ε² [1 − (20 + 3 n_L) ε / 6] + O(ε⁴),   n_L = n_A + n_B,

  the second term from the log-normal law that Ĝ takes when many layers multiply it by
  independent factors 1 + O(1/√n) (:func:`neuron_mutual_information`). Maximising the truncated
  series gives ε* = 4/(20 + 3n_L), and with ε ≈ ν L/n at criticality the optimal aspect ratio
  r* = 4/[(20 + 3 n_L) ν] (:func:`optimal_aspect_ratio`, :func:`nu`).
* **Exact** (any ε): :func:`scale_mixture_information` computes the entropy and mutual
  information of output neurons from the law of Ĝ (measured Ĝ of real networks, or
  :func:`critical_relu_log_metric`, the exact law for ReLU at criticality) by one-dimensional
  quadrature, using that |z_A|² is a sufficient statistic for Ĝ.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
P. Comon, Independent component analysis, a new concept?, Signal Processing 36 (1994) 287.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import signal, special, stats as sps

from . import _checks

__all__ = ["gaussian_entropy", "gaussian_mutual_information", "negentropy",
           "nearly_gaussian_entropy", "nearly_gaussian_mutual_information",
           "neuron_entropy_deficit", "neuron_mutual_information", "optimal_epsilon",
           "optimal_aspect_ratio", "nu", "ScaleMixtureInformation", "scale_mixture_information",
           "critical_relu_log_metric", "knn_mutual_information", "stochastic_metric",
           "entropy_estimate", "mixture_information_estimate"]

#: grid spacing (in log Ĝ) of the exact scale-mixture quadrature
GRID_STEP = 0.01


# --------------------------------------------------------------------------
# Gaussian (infinite width)
# --------------------------------------------------------------------------

def _kernel(K, what: str = "K") -> np.ndarray:
    if np.ndim(K) == 0:
        K = np.array([[float(_checks.kernel_scalar(K, what))]])
    else:
        K = _checks.gram(K, what)
    if np.linalg.eigvalsh(K).min() <= 0:
        raise ValueError(f"{what} must be positive definite (a singular Gaussian has entropy −∞), "
                         f"got eigenvalues {np.round(np.linalg.eigvalsh(K), 6).tolist()}")
    return K


def gaussian_entropy(K, n: int = 1) -> float:
    """S = (n/2) log det(2πe K): n independent Gaussian neurons with kernel K  (§A.1–A.2 of [RY]).

    Parameters
    ----------
    K : float > 0 or array [B, B] positive definite
        Kernel (covariance over B inputs) of one neuron.
    n : int ≥ 1
        Number of independent neurons (an infinite-width layer of n neurons).

    Returns
    -------
    float (nats)
    """
    K = _kernel(K)
    n = _checks.width(n, "n")
    sign, logdet = np.linalg.slogdet(2 * np.pi * np.e * K)
    return 0.5 * n * float(logdet)


def _sets(A, B, d: int) -> tuple[list, list]:
    try:
        A, B = [int(a) for a in A], [int(b) for b in B]
    except TypeError:
        raise ValueError(f"A and B must be sequences of indices, got {A!r} and {B!r}") from None
    if not A or not B or set(A) & set(B) or min(A + B) < 0 or max(A + B) >= d:
        raise ValueError(f"A and B must be non-empty, disjoint sets of indices in 0..{d - 1}, "
                         f"got {A} and {B}")
    return A, B


def gaussian_mutual_information(K, A, B, n: int = 1) -> float:
    """I(A; B) = (n/2) log[det K_AA det K_BB / det K_{A∪B}] for Gaussian variables  (§A.1–A.2 of [RY]).

    Parameters
    ----------
    K : array [d, d] positive definite
        Covariance of the variables (e.g. one neuron's kernel over d inputs).
    A, B : sequences of int
        Disjoint index sets.
    n : int ≥ 1
        Independent copies (neurons); the information adds.

    Returns
    -------
    float (nats)
    """
    K = _kernel(K)
    A, B = _sets(A, B, K.shape[0])
    AB = A + B
    ld = lambda idx: np.linalg.slogdet(K[np.ix_(idx, idx)])[1]   # noqa: E731
    return 0.5 * _checks.width(n, "n") * float(ld(A) + ld(B) - ld(AB))


# --------------------------------------------------------------------------
# Nearly-Gaussian (perturbative)
# --------------------------------------------------------------------------

def _whiten(K: np.ndarray, kappa, order: int, what: str) -> np.ndarray:
    d = K.shape[0]
    kappa = np.asarray(kappa, dtype=float)
    if kappa.shape != (d,) * order:
        raise ValueError(f"{what} must have shape {(d,) * order} to match the {d}x{d} covariance, "
                         f"got {kappa.shape}")
    if not np.all(np.isfinite(kappa)):
        raise ValueError(f"{what} must be finite")
    w, U = np.linalg.eigh(K)
    W = U @ np.diag(w ** -0.5) @ U.T
    out = kappa
    for axis in range(order):
        out = np.moveaxis(np.tensordot(W, out, axes=([1], [axis])), 0, axis)
    return out


def negentropy(K, kappa4=None, kappa3=None) -> float:
    """J = (1/12) Σ κ̃₃² + (1/48) Σ κ̃₄²: the entropy deficit of a nearly-Gaussian law  (§A.1 of [RY]).

    Second order in the cumulants (Edgeworth expansion; Comon 1994), with κ̃ the cumulants of
    the whitened variables K^{-1/2} z, summed over all ordered index tuples. One variable:
    J = skew²/12 + (excess kurtosis)²/48.

    Parameters
    ----------
    K : float or array [d, d]
        Covariance (the full one, including any 1/n shift).
    kappa4 : array [d, d, d, d], optional
        Fourth cumulants κ_{abcd} (connected four-point functions).
    kappa3 : array [d, d, d], optional
        Third cumulants.

    Returns
    -------
    float ≥ 0 (nats)
    """
    K = _kernel(K)
    J = 0.0
    if kappa3 is not None:
        J += float(np.sum(_whiten(K, kappa3, 3, "kappa3") ** 2)) / 12.0
    if kappa4 is not None:
        J += float(np.sum(_whiten(K, kappa4, 4, "kappa4") ** 2)) / 48.0
    return J


def nearly_gaussian_entropy(K, kappa4=None, kappa3=None) -> float:
    """S = ½ log det(2πe K) − J(κ₃, κ₄) to second order in the cumulants  (§A.1, §A.3 of [RY]).

    Parameters are those of :func:`negentropy`; returns nats.
    """
    return gaussian_entropy(K) - negentropy(K, kappa4, kappa3)


def nearly_gaussian_mutual_information(K, A, B, kappa4=None, kappa3=None) -> float:
    """I(A; B) = S_A + S_B − S_AB with :func:`nearly_gaussian_entropy` for each  (§A.3 of [RY]).

    The Gaussian part gives (1/2) log[det K_AA det K_BB/det K]; the cumulants that connect A
    with B add (to this order) (1/48) Σ_cross κ̃₄² + (1/12) Σ_cross κ̃₃² when A and B are
    uncorrelated, e.g. (1/8)(κ_{aabb}/(K_aa K_bb))² for one variable on each side.

    Parameters
    ----------
    K : array [d, d]
    A, B : disjoint index sets
    kappa4 : array [d, d, d, d], optional
    kappa3 : array [d, d, d], optional

    Returns
    -------
    float (nats)
    """
    K = _kernel(K)
    A, B = _sets(A, B, K.shape[0])

    def S(idx):
        sub = np.ix_(*(idx,) * 2)
        k4 = None if kappa4 is None else np.asarray(kappa4, float)[np.ix_(*(idx,) * 4)]
        k3 = None if kappa3 is None else np.asarray(kappa3, float)[np.ix_(*(idx,) * 3)]
        return nearly_gaussian_entropy(K[sub], k4, k3)
    if kappa4 is not None:
        _whiten(K, kappa4, 4, "kappa4")
    if kappa3 is not None:
        _whiten(K, kappa3, 3, "kappa3")
    return S(A) + S(B) - S(A + B)


def _eps(eps) -> np.ndarray:
    e = np.asarray(eps, dtype=float)
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise ValueError(f"eps = Var(Ĝ)/E[Ĝ]² (≈ V/(n K²)) must be finite and >= 0, got {eps!r}")
    return e


def neuron_entropy_deficit(eps, n_A: int = 1) -> np.ndarray:
    """Negentropy n_A(n_A + 2) ε²/16 of n_A output neurons of one input  (§A.3 of [RY]).

    From :func:`negentropy` with the network's cumulants: κ_{iiii} = 3ε G², κ_{iijj} = ε G²
    (i ≠ j). Their entropy is (n_A/2) log(2πe G) minus this, G = E[z²].

    Parameters
    ----------
    eps : float or array ≥ 0
        ε = Var(Ĝ)/E[Ĝ]², at leading order V^{(L)}/(n_{L−1} K^{(L)2}).
    n_A : int ≥ 1

    Returns
    -------
    float or array (nats)
    """
    e = _eps(eps)
    n_A = _checks.width(n_A, "n_A")
    out = n_A * (n_A + 2) * e ** 2 / 16.0
    return float(out) if out.ndim == 0 else out


def neuron_mutual_information(eps, n_A: int = 1, n_B: int = 1, order: int = 2) -> np.ndarray:
    """Information shared by n_A and n_B output neurons of one input at finite width  (§A.3 of [RY]).

    I = (n_A n_B/8) ε² [1 − (20 + 3 n_L) ε/6], n_L = n_A + n_B; ``order=1`` keeps the leading
    (n_A n_B/8) ε² only. The leading term is :func:`nearly_gaussian_mutual_information` with the
    network's four-point function (zero at infinite width: neurons then share nothing); the
    correction is the O(ε³) term of the exact information of a log-normal scale mixture,
    written in ε = Var(Ĝ)/E[Ĝ]² (see the module docstring).

    Parameters
    ----------
    eps : float or array ≥ 0
        ε = Var(Ĝ)/E[Ĝ]²; at leading order in 1/n, V^{(L)}/(n_{L−1} K^{(L)2}).
    n_A, n_B : int ≥ 1
    order : 1 or 2

    Returns
    -------
    float or array (nats)
    """
    e = _eps(eps)
    n_A, n_B = _checks.width(n_A, "n_A"), _checks.width(n_B, "n_B")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (leading, ε²) or 2 (with the ε³ term), got {order!r}")
    out = n_A * n_B / 8.0 * e ** 2
    if order == 2:
        out = out * (1.0 - (20.0 + 3.0 * (n_A + n_B)) * e / 6.0)
    return float(out) if out.ndim == 0 else out


def optimal_epsilon(n_L: int = 2) -> float:
    """ε* = 4/(20 + 3 n_L): where the truncated series of :func:`neuron_mutual_information` peaks  (§A.3)."""
    n_L = _checks.width(n_L, "n_L")
    if n_L < 2:
        raise ValueError(f"n_L must be >= 2 (the information between two groups of output neurons), "
                         f"got {n_L}")
    return 4.0 / (20.0 + 3.0 * n_L)


def nu(act) -> float:
    """ν of the critical four-point vertex, V^{(l)}/(n K^{(l)2}) ≈ ν l/n at large depth  (§5.4, §A.3 of [RY]).

    Scale-invariant class: ν = 3A₄/A₂² − 1 with A_k = (a_+^k + a_−^k)/2 (ReLU 5, linear 2);
    K* = 0 class (tanh, sin, erf): ν = 2/3. Other classes raise ``ValueError``.

    Parameters
    ----------
    act : str or Activation

    Returns
    -------
    float
    """
    from .criticality import critical_point

    crit = critical_point(act)
    if crit.universality == "scale-invariant":
        return float(crit.coefficients.V_slope)
    if crit.universality == "K*=0":
        return 2.0 / 3.0
    raise ValueError(f"{crit.activation} is in the '{crit.universality}' class; ν (the slope of "
                     "V/(nK²) with depth at criticality) is derived for the scale-invariant and "
                     "K*=0 classes")


def optimal_aspect_ratio(act=None, n_L: int = 2, nu_value: float | None = None) -> float:
    """The book's optimal aspect ratio r* = (L/n)* = 4/[(20 + 3 n_L) ν]  (§A.3 of [RY]).

    Parameters
    ----------
    act : str or Activation, optional
        Activation at criticality (ν from :func:`nu`); or give ``nu_value``.
    n_L : int ≥ 2
        Output neurons (split into the two groups whose information is maximised).
    nu_value : float > 0, optional

    Returns
    -------
    float
    """
    if (act is None) == (nu_value is None):
        raise ValueError("give exactly one of act or nu_value")
    v = nu(act) if nu_value is None else float(_checks.nonnegative(nu_value, "nu_value"))
    if v <= 0:
        raise ValueError(f"nu must be > 0, got {v}")
    return optimal_epsilon(n_L) / v


# --------------------------------------------------------------------------
# Exact information of output neurons from the law of the stochastic metric
# --------------------------------------------------------------------------

class ScaleMixtureInformation(NamedTuple):
    """Exact information of output neurons z = √Ĝ u (u ~ N(0, 1)), per input  (§A.3).

    Attributes
    ----------
    mutual_information : float
        I(z_A; z_B) for groups of n_A, n_B neurons (nats).
    negentropy : float
        ½ n_A log(2πe E[z²]) − S(z_A): how far n_A neurons are from Gaussian (nats).
    eps : float
        Var(Ĝ)/E[Ĝ]² of the law used.
    """

    mutual_information: float
    negentropy: float
    eps: float


def _log_chi2_density(t: np.ndarray, m: int) -> np.ndarray:
    """Density of log χ²_m at t."""
    return np.exp(sps.chi2.logpdf(np.exp(t), m) + t)


def _entropy_on_grid(p: np.ndarray, h: float) -> float:
    p = np.clip(p, 0.0, None)
    p = p / (p.sum() * h)
    nz = p > 0
    return float(-np.sum(p[nz] * np.log(p[nz])) * h)


def _info_from_density(g_grid: np.ndarray, pg: np.ndarray, n_A: int, n_B: int):
    """(I(A;B), negentropy of A, ε) from a density of g = log Ĝ on a uniform grid."""
    h = g_grid[1] - g_grid[0]
    pg = pg / (pg.sum() * h)
    # log χ²_m lives within [-50, 6] (left tail e^{t m/2}); same grid step
    lo, hi = -60.0 if min(n_A, n_B) == 1 else -40.0, 6.0
    t = np.arange(lo, hi + h / 2, h)

    def I_g(m):       # I(g; log|z|²) for m neurons = h(g + E_m) − h(E_m), on one grid
        f = _log_chi2_density(t, m)
        f = f / (f.sum() * h)
        conv = signal.fftconvolve(pg, f) * h
        conv[conv < conv.max() * 1e-15] = 0.0   # FFT round-off
        return _entropy_on_grid(conv, h) - _entropy_on_grid(f, h)
    mi = I_g(n_A) + I_g(n_B) - I_g(n_A + n_B)
    # entropy of n_A neurons: S(z_A) = S(log r²) + (n_A/2) E[log r²] + log(area)/… via the radial law
    f = _log_chi2_density(t, n_A)
    f = f / (f.sum() * h)
    conv = signal.fftconvolve(pg, f) * h
    grid = g_grid[0] + t[0] + h * np.arange(conv.size)
    S_T = _entropy_on_grid(conv, h)
    ET = float(np.sum(conv * grid) * h / (conv.sum() * h))
    # z_A = r ω with r² = e^T: S(z_A) = S(T) + (n_A/2) E[T] + log(π^{n/2}/Γ(n/2))
    S_z = S_T + 0.5 * n_A * ET + 0.5 * n_A * np.log(np.pi) - special.gammaln(0.5 * n_A)
    EG = float(np.sum(pg * np.exp(g_grid)) * h)
    EG2 = float(np.sum(pg * np.exp(2 * g_grid)) * h)
    J = 0.5 * n_A * np.log(2 * np.pi * np.e * EG) - S_z
    return float(mi), float(J), EG2 / EG ** 2 - 1.0


def _grid_density(log_G: np.ndarray, weights: np.ndarray, step: float):
    """Cloud-in-cell histogram of log Ĝ samples on a uniform grid (mean preserving)."""
    lo = np.floor(log_G.min() / step) * step - 2 * step
    n = int(np.ceil((log_G.max() - lo) / step)) + 3
    grid = lo + step * np.arange(n)
    pos = (log_G - lo) / step
    i = np.floor(pos).astype(int)
    frac = pos - i
    p = np.bincount(i, weights * (1 - frac), minlength=n) + np.bincount(i + 1, weights * frac,
                                                                         minlength=n)
    return grid, p[:n] / step


def scale_mixture_information(G=None, n_A: int = 1, n_B: int = 1, log_density=None,
                              weights=None) -> ScaleMixtureInformation:
    """Exact information of output neurons from the law of the stochastic metric Ĝ  (§A.3 of [RY]).

    Given the previous layer, the output preactivations of one input are i.i.d. N(0, Ĝ), and
    rotating the output neurons leaves their law unchanged; so |z_A|² is a sufficient statistic
    for Ĝ and I(z_A; z_B) = I(|z_A|²; |z_B|²) = I_A + I_B − I_{A∪B}, with I_m = I(log Ĝ; log|z|²)
    for m neurons = S(log Ĝ + log χ²_m) − S(log χ²_m): one-dimensional entropies, computed by
    FFT convolution on a grid of step :data:`GRID_STEP` (accuracy ~1e-7 nats).

    Parameters
    ----------
    G : array [M] > 0, optional
        Samples of Ĝ (e.g. C_b + C_W mean_j σ(z_j^{(L−1)})² of M real networks); only the law
        of Ĝ/E[Ĝ] matters (information does not change under rescaling).
    n_A, n_B : int ≥ 1
        Sizes of the two groups of output neurons.
    log_density : tuple (grid, density), optional
        Instead of samples: a density of log Ĝ on a uniform grid (e.g.
        :func:`critical_relu_log_metric`).
    weights : array [M] ≥ 0, optional
        Weights of the samples.

    Returns
    -------
    ScaleMixtureInformation
    """
    n_A, n_B = _checks.width(n_A, "n_A"), _checks.width(n_B, "n_B")
    if (G is None) == (log_density is None):
        raise ValueError("give exactly one of G (samples of the stochastic metric) or log_density")
    if G is not None:
        G = np.asarray(G, dtype=float).ravel()
        if G.size < 2 or not np.all(np.isfinite(G)) or np.any(G <= 0):
            raise ValueError("G must hold at least 2 finite samples > 0 of the stochastic metric")
        w = np.ones_like(G) if weights is None else np.asarray(weights, float).ravel()
        if w.shape != G.shape or np.any(w < 0) or not w.sum() > 0:
            raise ValueError("weights must be one non-negative number per sample, not all zero")
        logG = np.log(G / np.average(G, weights=w))
        grid, p = _grid_density(logG, w / w.sum(), GRID_STEP)
    else:
        grid, p = (np.asarray(a, dtype=float) for a in log_density)
        if grid.ndim != 1 or grid.shape != p.shape or grid.size < 3:
            raise ValueError("log_density must be (grid, density) of equal 1-d shapes")
        step = np.diff(grid)
        if not np.allclose(step, GRID_STEP, rtol=1e-6):
            raise ValueError(f"log_density's grid must be uniform with step {GRID_STEP}")
    return ScaleMixtureInformation(*_info_from_density(grid, p, n_A, n_B))


def critical_relu_log_metric(n: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact density of log(Ĝ^{(l)}/K) for a ReLU MLP at criticality (C_b = 0, C_W = 2)  (§5.2, §A.3).

    Given layer l−1, Ĝ^{(l)} = (2/n) Σ_j relu(z_j)² with z_j i.i.d. N(0, Ĝ^{(l−1)}), i.e.
    Ĝ^{(l)} = Ĝ^{(l−1)} Y with Y = (2/n) χ²_N, N ~ Binomial(n, ½), independent of the past; the
    first layer's Ĝ^{(1)} = K is fixed. So log(Ĝ^{(l)}/K) is a sum of l − 1 independent copies of
    log Y: its density is a convolution power. (N = 0, probability 2^{−n} per layer, kills the
    signal exactly; that atom is left out and the rest renormalised.)

    Parameters
    ----------
    n : int ≥ 2
        Width of the hidden layers.
    layer : int ≥ 2
        l (the law of the output of a depth-l network).

    Returns
    -------
    grid, density : arrays (grid step :data:`GRID_STEP`)
    """
    n = _checks.width(n, "n")
    layer = _checks.width(layer, "layer")
    if n < 2 or layer < 2:
        raise ValueError(f"need n >= 2 and layer >= 2, got n = {n}, layer = {layer}")
    h = GRID_STEP
    t = np.arange(-40.0, 6.0 + h / 2, h)
    f = np.zeros_like(t)
    N = np.arange(1, n + 1)
    pN = sps.binom.pmf(N, n, 0.5)
    for k, w in zip(N, pN):              # log Y = log χ²_k + log(2/n)
        f += w * _log_chi2_density(t - np.log(2.0 / n), k)
    f /= f.sum() * h
    out, grid0 = f.copy(), t[0]
    for _ in range(layer - 2):
        out = signal.fftconvolve(out, f) * h
        grid0 += t[0]
        keep = out > out.max() * 1e-13        # below: FFT round-off, which e^{2 log Ĝ} would amplify
        out = np.where(keep, out, 0.0)
        first, last = np.argmax(keep), len(keep) - np.argmax(keep[::-1])
        out, grid0 = out[first:last], grid0 + first * h
    grid = grid0 + h * np.arange(out.size)
    return grid, out / (out.sum() * h)


def knn_mutual_information(a, b, n_blocks: int = 10, k: int = 3, seed: int = 0):
    """Nonparametric k-NN (Kraskov–Stögbauer–Grassberger) estimate of I(a; b) with an error bar.

    scikit-learn's :func:`sklearn.feature_selection.mutual_info_regression` on all samples;
    the error bar is the spread of the estimates on ``n_blocks`` disjoint blocks divided by
    √n_blocks. The estimator is nearly unbiased for weakly dependent variables and biased low
    for strongly dependent ones (I of several nats); its noise is ~0.1/√N nats (measured in
    the tests), so informations below ~3 × that are not resolved.

    Parameters
    ----------
    a, b : arrays [N] (one sample per network)
    n_blocks : int ≥ 2
    k : int
        Neighbours (scikit-learn's default 3).
    seed : int
        scikit-learn adds 1e-10-scale noise to break ties; fixed for reproducibility.

    Returns
    -------
    stats.Estimate (nats)
    """
    from sklearn.feature_selection import mutual_info_regression

    from .stats import Estimate

    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape or a.size < 20 * max(2, n_blocks):
        raise ValueError(f"a and b must be 1-d of equal length, at least {20 * max(2, n_blocks)} "
                         f"samples, got {a.shape} and {b.shape}")
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 2:
        raise ValueError(f"n_blocks must be an integer >= 2, got {n_blocks!r}")

    def est(x, y):
        return float(mutual_info_regression(x[:, None], y, n_neighbors=k, random_state=seed)[0])
    full = est(a, b)
    edges = np.linspace(0, a.size, n_blocks + 1).astype(int)
    parts = np.array([est(a[i:j], b[i:j]) for i, j in zip(edges[:-1], edges[1:])])
    return Estimate(full, float(parts.std(ddof=1) / np.sqrt(n_blocks)))


def stochastic_metric(ens, x):
    """Ĝ^{(l)} = C_b^{(l)} + C_W^{(l)} (1/n_{l−1}) Σ_j σ(z_j^{(l−1)})² of every network, l = 2..L  (§4.2, §A.3).

    Given layer l−1, the preactivations of a plain layer l are exactly i.i.d. N(0, Ĝ^{(l)}) (one
    input): this is the variance whose law fixes the information of the layer's neurons
    (:func:`scale_mixture_information`). For a residual layer the conditional law is
    N(γ z^{(l−1)}, ξ² Ĝ^{(l)}) instead, and this is not the output's law.

    Parameters
    ----------
    ens : MLPEnsemble
    x : array [1, n_0]
        One input.

    Returns
    -------
    torch tensor [M, L−1] (use inside :func:`dlt_companion.ensembles.map_networks`)
    """
    import torch

    net = ens.net
    x = np.asarray(x, dtype=float)
    if x.shape != (1, net.n_in):
        raise ValueError(f"stochastic_metric takes one input of shape [1, {net.n_in}], got {x.shape}")
    sigma = net.act.torch[0]
    zs = ens(x)
    return torch.stack([net.C_b[l] + net.C_W[l] * (sigma(zs[l - 1][:, 0, :]) ** 2).mean(-1)
                        for l in range(1, net.depth)], 1)


def entropy_estimate(samples, n_blocks: int = 10):
    """Differential entropy of one variable from samples, with a delete-a-block jackknife  (§A.1).

    :func:`scipy.stats.differential_entropy` (Vasicek's spacing estimator) on all samples,
    bias-corrected and given an error bar by leaving out each of ``n_blocks`` contiguous blocks
    in turn (the spacing estimator's bias falls with the sample size, which the jackknife removes
    to first order).

    Parameters
    ----------
    samples : array [N] (independent draws, e.g. one output per network)
    n_blocks : int ≥ 2

    Returns
    -------
    stats.Estimate (nats)
    """
    from .stats import Estimate

    x = np.asarray(samples, dtype=float).ravel()
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 2:
        raise ValueError(f"n_blocks must be an integer >= 2, got {n_blocks!r}")
    if x.size < 50 * n_blocks or not np.all(np.isfinite(x)):
        raise ValueError(f"need at least {50 * n_blocks} finite samples, got {x.size}")
    full = float(sps.differential_entropy(x))
    edges = np.linspace(0, x.size, n_blocks + 1).astype(int)
    loo = np.array([sps.differential_entropy(np.concatenate([x[:i], x[j:]]))
                    for i, j in zip(edges[:-1], edges[1:])])
    G = n_blocks
    value = G * full - (G - 1) * loo.mean()
    return Estimate(float(value), float(np.sqrt((G - 1) / G * np.sum((loo - loo.mean()) ** 2))))


def _influence(logG: np.ndarray, n_A: int, n_B: int) -> tuple[float, np.ndarray]:
    """I(z_A; z_B) of the empirical law of log Ĝ and its influence function at every sample.

    I = Σ_m ± S[p_g ∗ f_m] (+ constants), m ∈ {n_A, n_B, n_A + n_B}; the derivative of S[p_T] in the
    direction δ_{g_j} − p_g is −∫ f_m(t − g_j) log p_T(t) dt − S[p_T] (a cross-correlation on the grid).
    """
    step = GRID_STEP
    grid, pg = _grid_density(logG, np.full(logG.size, 1.0 / logG.size), step)
    pg = pg / (pg.sum() * step)
    lo = -60.0 if min(n_A, n_B) == 1 else -40.0
    t = np.arange(lo, 6.0 + step / 2, step)
    total, infl = 0.0, np.zeros(logG.size)
    pos = (logG - grid[0]) / step
    for m, sign in ((n_A, 1.0), (n_B, 1.0), (n_A + n_B, -1.0)):
        f = _log_chi2_density(t, m)
        f = f / (f.sum() * step)
        conv = signal.fftconvolve(pg, f) * step
        conv[conv < conv.max() * 1e-15] = 0.0
        S = _entropy_on_grid(conv, step)
        logp = np.log(np.maximum(conv / (conv.sum() * step), 1e-300))
        c = signal.fftconvolve(logp, f[::-1], mode="valid") * step    # c[k] = ∫ f(t) log p_T(t + g_k)
        total += sign * (S - _entropy_on_grid(f, step))
        infl += sign * (-np.interp(pos, np.arange(c.size), c) - S)
    return float(total), infl


def mixture_information_estimate(G, n_A: int = 1, n_B: int = 1):
    """Measured information of output neurons from measured Ĝ, with errors and covariance  (§A.3).

    For each column of ``G`` (e.g. each layer) the exact I(z_A; z_B) of the *empirical* law of the
    measured stochastic metric (:func:`scale_mixture_information`): the ensemble's neurons are exactly
    conditionally Gaussian, so this is the information of the real networks, without expansion.
    Errors by the delta method (the estimate's influence function at each network, the infinitesimal
    jackknife): since all columns come from the same networks, their covariance is
    cov(influence)/M, well conditioned for many correlated columns (pass it as ``cov=`` to
    :func:`dlt_companion.stats.assert_agree`).

    Parameters
    ----------
    G : array [M, P] > 0 (or [M])
        Per-network Ĝ (M networks, P columns), e.g. from :func:`stochastic_metric`.
    n_A, n_B : int ≥ 1

    Returns
    -------
    (stats.Estimate, cov) : the information [P] with standard errors, and its [P, P] covariance
    """
    from .stats import Estimate

    n_A, n_B = _checks.width(n_A, "n_A"), _checks.width(n_B, "n_B")
    G = np.asarray(G, dtype=float)
    if G.ndim == 1:
        G = G[:, None]
    if G.ndim != 2 or G.shape[0] < 10 or not np.all(np.isfinite(G)) or np.any(G <= 0):
        raise ValueError(f"G must be [M, P] with M >= 10 finite values > 0, got shape {G.shape}")
    vals, infl = [], []
    for p in range(G.shape[1]):
        v, i = _influence(np.log(G[:, p] / G[:, p].mean()), n_A, n_B)
        vals.append(v)
        infl.append(i)
    infl = np.stack(infl, 1)
    cov = np.atleast_2d(np.cov(infl, rowvar=False)) / G.shape[0]
    return Estimate(np.array(vals), np.sqrt(np.diag(cov))), cov
