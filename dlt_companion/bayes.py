"""Bayesian inference with neural networks: infinite-width and 1/n posteriors (Chapter 6 of [RY]).

The prior over network outputs is the initialization distribution (§6.2). For a sample set
D = A ∪ B of N inputs, the first ``n_train`` of which (A) carry observed targets y and the
rest (B) are test inputs, everything here conditions the joint distribution of the outputs
z_{i;α} (components i = 1..n_out) on the observations

    y_{i;a} = z_{i;a} + ε_{i;a},   ε ~ N(0, noise),   a ∈ A,

which is the Gaussian likelihood of §6.2 (``noise = 0``: exact interpolation).

* **Infinite width** (§6.3): the prior is the Gaussian process with kernel K^{(L)}, so the
  posterior on B is Gaussian with the usual conditioning formulas (:func:`gp_posterior`),
  and the evidence is a Gaussian density (:func:`log_evidence`). The covariance is the same
  for every output component; hidden layers do not learn (their posterior equals their prior).
* **Finite width** (§6.4): the prior is nearly Gaussian, with metric G = K + G^{1}/n and the
  connected four-point function (1/n)[δδ V + two pairings] of Chapter 4. Conditioning such a
  distribution (the quartic action of §1.3, or equivalently its Edgeworth form
  p = [1 + (1/24) κ^{abcd} ∂_a∂_b∂_c∂_d] N_G) gives posterior means and covariances with
  O(1/n) corrections (:func:`finite_width_posterior`, :func:`finite_width_log_evidence`)
  and a 1/n shift of the penultimate layer's kernel, its representation learning
  (:func:`representation_shift`).

The exact posterior of real finite networks is estimated by reweighting an ensemble drawn
from the prior with the likelihood (self-normalised importance sampling): see
:func:`log_likelihood`, :func:`effective_sample_size` and :func:`posterior_average`.

Conventions: K, V and G^{1} as in :mod:`dlt_companion.flows` (``Flow.K``, ``Flow.V``,
``Flow.K_corr``) and ``BOOK_MAP.md``; n is the width n_{L−1} of the layer feeding the one
whose outputs are conditioned (equal hidden widths: the width).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import numbers
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from . import _checks
from . import stats as _stats
from .activations import get as _get_act
from .gaussian import expect, expect_n

__all__ = ["nngp_kernel", "gp_posterior", "log_evidence", "log_evidence_scan", "FiniteWidthPosterior",
           "finite_width_posterior", "finite_width_log_evidence", "representation_shift", "log_likelihood",
           "effective_sample_size", "posterior_average", "log_evidence_estimate", "pack_moments",
           "posterior_moments", "SINGULAR_RTOL"]

#: a training kernel whose smallest eigenvalue is below this fraction of its largest is
#: treated as singular when ``noise = 0``
SINGULAR_RTOL = 1e-12


def _one_blas_thread(fn):
    """Run ``fn`` with single-threaded BLAS/LAPACK (via threadpoolctl, a scikit-learn dependency).

    The dense factorisations here are of a few hundred inputs at most; measured on the shared
    2-core development machine under load, a threaded OpenBLAS ``eigh`` of a 300×300 kernel
    took 4 s against 0.13 s on one thread (threads spin while waiting for a busy core).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                                  # pragma: no cover - optional speed-up
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)
    return wrapper


# --------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------

def _n_train(n_train, N: int) -> int:
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral):
        raise ValueError(f"n_train must be an integer (the number of training inputs), got {n_train!r}")
    if not 1 <= n_train <= N - 1:
        raise ValueError(f"n_train must lie in 1..N-1 = 1..{N - 1} so that there is at least one "
                         f"training and one test input among the N = {N} inputs of K, got {n_train}")
    return int(n_train)


def _targets(y, n_train: int) -> tuple[np.ndarray, bool]:
    """y as [n_train, n_out] float array, and whether it was one-dimensional."""
    y = np.asarray(y, dtype=float)
    if y.ndim not in (1, 2) or y.shape[0] != n_train:
        raise ValueError(f"y must have shape [n_train] or [n_train, n_out] with n_train = {n_train} "
                         f"(one row per training input), got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y has no output components")
    if not np.all(np.isfinite(y)):
        raise ValueError("y must be finite")
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def _noise(noise) -> float:
    return _checks.nonnegative(noise, "noise (the observation-noise variance)")


def _train_factor(K_AA: np.ndarray, noise: float):
    """Cholesky factor of K_AA + noise·1, with a clear error when it is singular."""
    Kt = K_AA + noise * np.eye(len(K_AA))
    if noise == 0.0:
        eig = np.linalg.eigvalsh(K_AA)
        scale = max(float(np.abs(eig).max(initial=0.0)), np.finfo(float).tiny)
    if noise == 0.0 and eig.min() <= SINGULAR_RTOL * scale:
        raise ValueError(f"the training kernel K_AA is singular (smallest eigenvalue {eig.min():.3g}, "
                         f"largest {scale:.3g}): with noise = 0 the posterior conditions on an exactly "
                         "degenerate Gaussian (e.g. repeated or collinear training inputs); pass "
                         "noise > 0 or remove the redundant inputs")
    try:
        return scipy.linalg.cho_factor(Kt, lower=True)
    except np.linalg.LinAlgError:
        raise ValueError("K_AA + noise is not positive definite; pass a larger noise") from None


def _setup(K, y, n_train, noise):
    K = _checks.gram(K, "K")
    N = K.shape[0]
    if N < 2:
        raise ValueError(f"K must cover at least one training and one test input (N >= 2), got N = {N}")
    nA = _n_train(n_train, N)
    y, flat = _targets(y, nA)
    noise = _noise(noise)
    cho = _train_factor(K[:nA, :nA], noise)
    return K, nA, y, flat, noise, cho


# --------------------------------------------------------------------------
# infinite width: the Gaussian process posterior and evidence (§6.3)
# --------------------------------------------------------------------------

def _relu_pairs(K: np.ndarray) -> np.ndarray:
    """⟨relu(z_α) relu(z_β)⟩_K for every pair: the arc-cosine kernel (Cho & Saul 2009)."""
    d = np.sqrt(np.clip(np.diagonal(K), 0.0, None))
    norm = np.outer(d, d)
    safe = np.where(norm > 0, norm, 1.0)
    theta = np.arccos(np.clip(K / safe, -1.0, 1.0))
    return np.where(norm > 0, norm * (np.sin(theta) + (np.pi - theta) * np.cos(theta)) / (2 * np.pi), 0.0)


def _erf_pairs(K: np.ndarray) -> np.ndarray:
    """⟨erf(z_α) erf(z_β)⟩_K = (2/π) arcsin(2K_αβ / √((1+2K_αα)(1+2K_ββ))) (Williams 1997)."""
    d = 1.0 + 2.0 * np.diagonal(K)
    return (2.0 / np.pi) * np.arcsin(np.clip(2.0 * K / np.sqrt(np.outer(d, d)), -1.0, 1.0))


_CLOSED_FORMS = {"relu": _relu_pairs, "erf": _erf_pairs, "linear": lambda K: K}


def nngp_kernel(act, C_b: float, C_W: float, x, depth: int) -> np.ndarray:
    """The kernels K^{(l)} of many inputs, for Gaussian-process regression  (§4.1, §6.3 of [RY]).

    The recursion K^{(l+1)} = C_b + C_W ⟨σσ⟩_{K^{(l)}} of :func:`dlt_companion.flows.kernel`,
    with the pair averages in closed form where one exists: the arc-cosine kernel for ReLU,
    the arcsine kernel for erf, and K itself for the linear activation. These make kernels of
    hundreds of inputs (data sets) cost milliseconds; any other activation falls back to
    :func:`dlt_companion.flows.kernel` (a 2-d quadrature per pair and layer: slow for
    hundreds of inputs).

    Parameters
    ----------
    act : str or Activation
    C_b, C_W : float
        Bias and weight variance of every layer.
    x : array [B, n_0]
        Inputs.
    depth : int
        Number of layers L ≥ 1.

    Returns
    -------
    array [depth, B, B]
        K^{(l)} for l = 1..L (entry l−1), as :func:`dlt_companion.flows.kernel` returns it.
    """
    from . import flows

    act = _get_act(act)
    depth = _checks.depth(depth)
    K = flows.first_layer_kernel(x, C_b, C_W)
    pairs = _CLOSED_FORMS.get(act.name) if not act.params else None
    if pairs is None:
        return flows.kernel(act, C_b, C_W, K, depth)
    out = np.empty((depth,) + K.shape)
    out[0] = K
    for l in range(1, depth):
        K = C_b + C_W * pairs(K)
        out[l] = K = 0.5 * (K + K.T)
    return out

@_one_blas_thread
def gp_posterior(K, y, n_train: int, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The infinite-width (NNGP) posterior on the test inputs  (§6.3 of [RY]).

    With A the first ``n_train`` inputs and B the rest,

        mean = K_BA (K_AA + noise·1)⁻¹ y,   cov = K_BB − K_BA (K_AA + noise·1)⁻¹ K_AB .

    Parameters
    ----------
    K : array [N, N]
        Kernel K^{(L)} over all N inputs, training inputs first (symmetric PSD).
    y : array [n_train] or [n_train, n_out]
        Observed outputs on the training inputs.
    n_train : int in 1..N−1
        Number of training inputs.
    noise : float ≥ 0
        Observation-noise variance added to the training block.

    Returns
    -------
    mean : array [N − n_train] or [N − n_train, n_out] (like y's trailing dims)
    cov : array [N − n_train, N − n_train]
        Posterior covariance, the same for every output component.

    Raises
    ------
    ValueError
        Bad shapes, n_train outside 1..N−1, negative noise, a kernel that is not PSD, or
        a singular training kernel with ``noise = 0``.
    """
    K, nA, y, flat, noise, cho = _setup(K, y, n_train, noise)
    K_BA, K_BB = K[nA:, :nA], K[nA:, nA:]
    mean = K_BA @ scipy.linalg.cho_solve(cho, y)
    cov = K_BB - K_BA @ scipy.linalg.cho_solve(cho, K_BA.T)
    cov = 0.5 * (cov + cov.T)
    return (mean[:, 0] if flat else mean), cov


@_one_blas_thread
def log_evidence(K_train, y, noise: float = 0.0) -> float:
    """log p(y) of the infinite-width prior, summed over output components  (§6.2–6.3 of [RY]).

    log p(y) = Σ_i [−½ y_iᵀ (K + noise·1)⁻¹ y_i − ½ log det(2π (K + noise·1))].

    Parameters
    ----------
    K_train : array [n_train, n_train]
        Kernel on the training inputs.
    y : array [n_train] or [n_train, n_out]
    noise : float ≥ 0

    Returns
    -------
    float
    """
    K = _checks.gram(K_train, "K_train")
    if K.shape[0] == 0:
        raise ValueError("K_train must cover at least one training input")
    y, _ = _targets(y, K.shape[0])
    noise = _noise(noise)
    cho = _train_factor(K, noise)
    quad = float(np.sum(y * scipy.linalg.cho_solve(cho, y)))
    logdet = 2.0 * float(np.sum(np.log(np.diag(cho[0]))))
    n_out = y.shape[1]
    return -0.5 * quad - 0.5 * n_out * (logdet + K.shape[0] * np.log(2.0 * np.pi))


@_one_blas_thread
def log_evidence_scan(K_train, y, noises) -> np.ndarray:
    """:func:`log_evidence` for many noise variances at once (one eigendecomposition of K).

    For model comparison with the noise variance as a hyperparameter (type-II maximum
    likelihood: take the largest value over a grid).

    Parameters
    ----------
    K_train : array [n_train, n_train]
    y : array [n_train] or [n_train, n_out]
    noises : array [S] of floats > 0

    Returns
    -------
    array [S]
        log p(y) for each noise variance.
    """
    K = _checks.gram(K_train, "K_train")
    y, _ = _targets(y, K.shape[0])
    noises = np.atleast_1d(np.asarray(noises, dtype=float))
    if noises.ndim != 1 or not np.all(np.isfinite(noises)) or np.any(noises <= 0):
        raise ValueError("noises must be a 1-d array of positive noise variances")
    lam, U = np.linalg.eigh(K)
    lam = np.clip(lam, 0.0, None)
    u2 = ((U.T @ y) ** 2).sum(axis=1)                           # [n_train], summed over components
    s = lam[None, :] + noises[:, None]                           # [S, n_train]
    n_out = y.shape[1]
    return (-0.5 * (u2 / s).sum(axis=1) - 0.5 * n_out * np.log(s).sum(axis=1)
            - 0.5 * n_out * K.shape[0] * np.log(2.0 * np.pi))


# --------------------------------------------------------------------------
# finite width: conditioning the nearly-Gaussian prior (§6.4)
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class FiniteWidthPosterior:
    """Posterior on the test inputs to first order in 1/n  (§6.4 of [RY]).

    mean = mean_inf + mean_1 / n,   cov = cov_inf ⊗ 1 + cov_1 / n   (+ O(1/n²)).

    Attributes
    ----------
    mean_inf : array [N_B, n_out]
        Infinite-width posterior mean (:func:`gp_posterior`).
    mean_1 : array [N_B, n_out]
        Coefficient of 1/n in the mean: the metric-correction part ``mean_G1`` plus the
        four-point-vertex part ``mean_V``.
    mean_G1, mean_V : arrays [N_B, n_out]
    cov_inf : array [N_B, N_B]
        Infinite-width posterior covariance (the same for every component).
    cov_G1, cov_V : arrays [N_B, n_out, N_B, n_out]
        The metric-correction and four-point-vertex parts of the coefficient of 1/n in the
        covariance of (test input, component) pairs (property ``cov_1`` is their sum); unlike
        the infinite-width covariance the vertex part couples components through the targets.
    squeeze : bool
        y was one-dimensional: :meth:`mean` returns [N_B] and :meth:`cov` [N_B, N_B].
    """

    mean_inf: np.ndarray
    mean_G1: np.ndarray
    mean_V: np.ndarray
    cov_inf: np.ndarray
    cov_G1: np.ndarray
    cov_V: np.ndarray
    squeeze: bool = False

    def replace(self, **changes) -> "FiniteWidthPosterior":
        """A copy with some fields replaced (e.g. a deliberately wrong theory)."""
        return dataclasses.replace(self, **changes)

    @property
    def mean_1(self) -> np.ndarray:
        return self.mean_G1 + self.mean_V

    @property
    def cov_1(self) -> np.ndarray:
        """Coefficient of 1/n in the covariance, [N_B, n_out, N_B, n_out]."""
        return self.cov_G1 + self.cov_V

    @property
    def n_out(self) -> int:
        return self.mean_inf.shape[1]

    def mean(self, n: float | None = None) -> np.ndarray:
        """Posterior mean at width n (None: infinite width); shaped like y's trailing dims."""
        m = self.mean_inf if n is None else self.mean_inf + self.mean_1 / _width(n)
        return m[:, 0] if self.squeeze else m

    def cov(self, n: float | None = None) -> np.ndarray:
        """Posterior covariance at width n (None: infinite width).

        Returns [N_B, N_B] if y was one-dimensional, else [N_B, n_out, N_B, n_out].
        """
        nB, k = self.cov_inf.shape[0], self.n_out
        full = np.einsum("bc,ij->bicj", self.cov_inf, np.eye(k))
        if n is not None:
            full = full + self.cov_1 / _width(n)
        return full[:, 0, :, 0] if self.squeeze else full


def _width(n) -> float:
    v = float(n)
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"the width n must be a positive number, got {n!r}")
    return v


def _four_tensor(V, N: int, what: str = "V") -> np.ndarray:
    V = np.asarray(V, dtype=float)
    if V.shape != (N,) * 4:
        raise ValueError(f"{what} must be the four-point vertex V_(a1a2)(a3a4) over the same N = {N} "
                         f"inputs as K, shape [N, N, N, N], got {V.shape}")
    if not np.all(np.isfinite(V)):
        raise ValueError(f"{what} must be finite")
    sym = (np.allclose(V, V.transpose(1, 0, 2, 3), atol=1e-12 * max(1.0, np.abs(V).max()))
           and np.allclose(V, V.transpose(2, 3, 0, 1), atol=1e-12 * max(1.0, np.abs(V).max())))
    if not sym:
        raise ValueError(f"{what} must have the symmetries of a four-point vertex: "
                         "V_(ab)(cd) = V_(ba)(cd) = V_(cd)(ab)")
    return V


def _metric_correction(G1, N: int) -> np.ndarray:
    if G1 is None:
        return np.zeros((N, N))
    G1 = np.asarray(G1, dtype=float)
    if G1.shape != (N, N) or not np.all(np.isfinite(G1)):
        raise ValueError(f"G1 must be a finite [N, N] = [{N}, {N}] matrix (the 1/n correction "
                         f"to the kernel over the same inputs as K), got shape {G1.shape}")
    if not np.allclose(G1, G1.T, atol=1e-12 * max(1.0, np.abs(G1).max())):
        raise ValueError("G1 must be symmetric")
    return 0.5 * (G1 + G1.T)


def _residualize(V: np.ndarray, R: np.ndarray, nA: int) -> np.ndarray:
    """V in the variables (z_A, w_B = z_B − R z_A): every slot contracted with P = [[1, 0], [−R, 1]]."""
    N = V.shape[0]
    P = np.eye(N)
    P[nA:, :nA] = -R
    out = V
    for axis in range(4):            # one slot at a time: O(N⁵), not O(N⁸)
        out = np.moveaxis(np.tensordot(P, out, axes=([1], [axis])), 0, axis)
    return out


@_one_blas_thread
def finite_width_posterior(K, V, y, n_train: int, G1=None, noise: float = 0.0) -> FiniteWidthPosterior:
    """The posterior of a finite-width network's outputs on test inputs, to O(1/n)  (§6.4 of [RY]).

    The prior is the nearly-Gaussian output distribution of Chapter 4: components i are
    independent at infinite width, the metric is δ_ij (K + G^{1}/n), and the connected
    four-point function is (1/n)[δ_{i1i2}δ_{i3i4} V_{(α1α2)(α3α4)} + two pairings]. Write
    Ǩ = K_AA + noise·1, g = Ǩ⁻¹, ŷ_i = g y_i, Y = Σ_i ŷ_i ŷ_iᵀ, R = K_BA g, and let V' be V
    with every test slot b replaced by the residual b − R (the regression of z_B on the
    observations). Conditioning the Edgeworth form of the prior on the observations gives

        mean_{b;i} = K_BA ŷ_i + (1/n) [G1_BA ŷ_i − R G1_AA ŷ_i
                     + ½ Σ_{acd} V'_{(ba)(cd)} (ŷ_{a;i} (Y − n_out g)_{cd} − 2 g_{ac} ŷ_{d;i})],

        cov_{(b;i)(b';i')} = δ_ii' (K_BB − R K_AB) + (1/n) [δ_ii' (G1_BB − G1_BA Rᵀ − R G1_AB
                     + R G1_AA Rᵀ) + ½ δ_ii' Σ_{ac} V'_{(bb')(ac)} (Y − n_out g)_{ac}
                     + Σ_{ac} V'_{(ba)(b'c)} (ŷ_{a;i} ŷ_{c;i'} − δ_ii' g_ac)].

    The derivation is in ``chapters/06_bayesian_learning``; every quantity on the right is
    evaluated with the infinite-width kernel, so the result is exact at O(1/n).

    Parameters
    ----------
    K : array [N, N]
        Kernel K^{(L)} over all inputs, training inputs first.
    V : array [N, N, N, N]
        Four-point vertex V^{(L)} over the same inputs (``Flow.V[L-1]``).
    y : array [n_train] or [n_train, n_out]
    n_train : int in 1..N−1
    G1 : array [N, N], optional
        The 1/n correction to the metric, G^{1(L)} (``Flow.K_corr[L-1]``); default zero.
    noise : float ≥ 0

    Returns
    -------
    FiniteWidthPosterior
    """
    K, nA, y, flat, noise, cho = _setup(K, y, n_train, noise)
    N = K.shape[0]
    V = _four_tensor(V, N)
    G1 = _metric_correction(G1, N)
    k = y.shape[1]
    g = scipy.linalg.cho_solve(cho, np.eye(nA))
    g = 0.5 * (g + g.T)
    yh = g @ y                                               # ŷ [nA, k]
    K_BA, K_BB = K[nA:, :nA], K[nA:, nA:]
    R = K_BA @ g                                             # [nB, nA]
    mean_inf = K_BA @ yh
    cov_inf = K_BB - R @ K_BA.T
    cov_inf = 0.5 * (cov_inf + cov_inf.T)
    # metric correction G1: first-order change of the Gaussian conditioning formulas
    G_BA, G_AA, G_BB = G1[nA:, :nA], G1[:nA, :nA], G1[nA:, nA:]
    mean_G1 = G_BA @ yh - R @ (G_AA @ yh)
    cov_G1 = G_BB - G_BA @ R.T - R @ G_BA.T + R @ G_AA @ R.T
    # four-point vertex: conditioning the Edgeworth term
    Vr = _residualize(V, R, nA)
    Y = yh @ yh.T                                            # Σ_i ŷ_i ŷ_iᵀ
    Q = Y - k * g
    V_BAAA = Vr[nA:, :nA, :nA, :nA]
    mean_V = 0.5 * (np.einsum("bacd,ai,cd->bi", V_BAAA, yh, Q)
                    - 2.0 * np.einsum("bacd,ac,di->bi", V_BAAA, g, yh))
    V_BBAA = Vr[nA:, nA:, :nA, :nA]
    V_BABA = Vr[nA:, :nA, nA:, :nA]
    eye = np.eye(k)
    cov_V = (0.5 * np.einsum("bcae,ae,ij->bicj", V_BBAA, Q, eye)
             + np.einsum("bace,ai,ej->bicj", V_BABA, yh, yh)
             - np.einsum("bace,ae,ij->bicj", V_BABA, g, eye))
    cov_V = 0.5 * (cov_V + cov_V.transpose(2, 3, 0, 1))
    cov_G1 = np.einsum("bc,ij->bicj", 0.5 * (cov_G1 + cov_G1.T), eye)
    return FiniteWidthPosterior(mean_inf, mean_G1, mean_V, cov_inf, cov_G1, cov_V, squeeze=flat)


@_one_blas_thread
def finite_width_log_evidence(K_train, V_train, y, G1_train=None, noise: float = 0.0
                              ) -> tuple[float, float]:
    """log p(y) of the nearly-Gaussian prior to O(1/n): (infinite-width value, 1/n coefficient)  (§6.4).

    log p(y) = log_evidence(K, y, noise) + (1/n) [½ tr(G1 (Y − n_out g))
               + ⅛ Σ V_{(ab)(cd)} ((Y − n_out g)_{ab} (Y − n_out g)_{cd} − 2 g_{ac} (2Y − n_out g)_{bd})],

    with g = (K + noise·1)⁻¹ and Y = Σ_i (g y_i)(g y_i)ᵀ: the Edgeworth term of the prior,
    (1/24) κ^{abcd} H_abcd(y), with the Hermite tensor of Ǩ.

    Returns
    -------
    (log_ev_inf, coeff) : floats, so that log p(y) ≈ log_ev_inf + coeff / n.
    """
    K = _checks.gram(K_train, "K_train")
    nA = K.shape[0]
    y, _ = _targets(y, nA)
    noise = _noise(noise)
    V = _four_tensor(V_train, nA, "V_train")
    G1 = _metric_correction(G1_train, nA)
    cho = _train_factor(K, noise)
    g = scipy.linalg.cho_solve(cho, np.eye(nA))
    g = 0.5 * (g + g.T)
    yh = g @ y
    k = y.shape[1]
    Y = yh @ yh.T
    Q = Y - k * g
    coeff = (0.5 * float(np.sum(G1 * Q))
             + 0.125 * (float(np.einsum("abcd,ab,cd->", V, Q, Q))
                        - 2.0 * float(np.einsum("abcd,ac,bd->", V, g, 2.0 * Y - k * g))))
    return log_evidence(K, y, noise), coeff


# --------------------------------------------------------------------------
# representation learning: the penultimate layer's posterior (§6.4)
# --------------------------------------------------------------------------

def _cov_zz_ss(act, K: np.ndarray, al: tuple, ab: tuple) -> float:
    """Cov_K(z_α1 z_α2, σ_a σ_b) = ⟨z_α1 z_α2 σ_a σ_b⟩_K − K_α1α2 ⟨σ_a σ_b⟩_K."""
    idx = sorted(set(al) | set(ab))
    sub = K[np.ix_(idx, idx)]
    p = [idx.index(i) for i in (*al, *ab)]

    def f4(z):
        return z[..., p[0]] * z[..., p[1]] * act(z[..., p[2]]) * act(z[..., p[3]])
    s_ab = (expect(lambda z: act(z) ** 2, K[ab[0], ab[0]]) if ab[0] == ab[1] else
            expect_n(lambda z: act(z[..., 0]) * act(z[..., 1]), K[np.ix_(ab, ab)]))
    return expect_n(f4, sub) - K[al[0], al[1]] * s_ab


def _dss_dK(act, K: np.ndarray, a: int, b: int) -> dict:
    """∂⟨σ_a σ_b⟩_K / ∂K_{β1β2} over ordered pairs β (Stein/Hermite form, no σ'')."""
    if a == b:
        Kaa = K[a, a]
        d = expect(lambda z: act(z) ** 2 * (z * z - Kaa), Kaa) / (2.0 * Kaa * Kaa)
        return {(a, a): d}
    S = K[np.ix_([a, b], [a, b])]
    Si = np.linalg.inv(S)

    def grad(i, j):
        def f(z):
            u = z @ Si
            return act(z[..., 0]) * act(z[..., 1]) * (u[..., i] * u[..., j] - Si[i, j])
        return expect_n(f, S)
    # ∂/∂Σ_ii = ½⟨F((Σ⁻¹z)_i² − Σ⁻¹_ii)⟩; the symmetric off-diagonal derivative ⟨F(u_a u_b − Σ⁻¹_ab)⟩
    # is split equally over the two ordered entries (a, b) and (b, a)
    off = 0.5 * grad(0, 1)
    return {(a, a): 0.5 * grad(0, 0), (b, b): 0.5 * grad(1, 1), (a, b): off, (b, a): off}


def representation_shift(act, C_b: float, C_W: float, K_hidden, y, n_train: int,
                         noise: float = 0.0, V_hidden=None) -> np.ndarray:
    """The O(1/n) posterior change of the penultimate layer's kernel: representation learning  (§6.4).

    Given layer L−1 (width n), the outputs are exactly Gaussian with the stochastic metric
    Ĝ = C_b + (C_W/n) Σ_j σ(z_j) σ(z_j), so the likelihood of the observations depends on the
    hidden layer only through Ĝ. Expanding it to first order in Ĝ − E[Ĝ] gives, for every pair
    of inputs (α1, α2) in D,

        E[(1/n) Σ_j z_{j;α1} z_{j;α2} | y] − E[(1/n) Σ_j z_{j;α1} z_{j;α2}] = ΔG_{α1α2} / n + O(1/n²),

        ΔG_{α1α2} = ½ Σ_{a,b ∈ A} (Y − n_out g)_{ab} C_W [Cov_K(z_α1 z_α2, σ_a σ_b)
                    + Σ_{β1β2} V_{(α1α2)(β1β2)} ∂⟨σ_a σ_b⟩_K/∂K_{β1β2}],

    with g = (K^{(L)}_AA + noise·1)⁻¹, Y = Σ_i (g y_i)(g y_i)ᵀ and K, V those of layer L−1.
    The first term is Hebbian: the hidden two-point function grows along directions in which
    the targets are larger than the prior expects ((Y − g)_ab > 0). At infinite width ΔG/n → 0:
    no representation learning.

    Parameters
    ----------
    act : str or Activation
    C_b, C_W : float
        Bias and weight variance of the output layer L.
    K_hidden : array [N, N]
        Kernel K^{(L−1)} over all inputs, training inputs first.
    y : array [n_train] or [n_train, n_out]
    n_train : int in 1..N (all inputs may be training inputs here)
    noise : float ≥ 0
    V_hidden : array [N, N, N, N], optional
        Four-point vertex V^{(L−1)} (zero for L − 1 = 1, the default), normalised by
        n_{L−2} = n (equal widths).

    Returns
    -------
    array [N, N]
        ΔG, the coefficient of 1/n.
    """
    act = _checks.differentiable_activation(act, "the representation shift")
    act = _get_act(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    K = _checks.gram(K_hidden, "K_hidden")
    N = K.shape[0]
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or not 1 <= n_train <= N:
        raise ValueError(f"n_train must be an integer in 1..N = 1..{N}, got {n_train!r}")
    nA = int(n_train)
    y, _ = _targets(y, nA)
    noise = _noise(noise)
    V = None if V_hidden is None else _four_tensor(V_hidden, N, "V_hidden")
    if np.any(np.diagonal(K) <= 0):
        raise ValueError("K_hidden needs K_αα > 0 for every input")
    # output-layer kernel on the training inputs, and the likelihood's first derivative
    K_out = np.empty((nA, nA))
    for a, b in itertools.combinations_with_replacement(range(nA), 2):
        s = (expect(lambda z: act(z) ** 2, K[a, a]) if a == b else
             expect_n(lambda z: act(z[..., 0]) * act(z[..., 1]), K[np.ix_([a, b], [a, b])]))
        K_out[a, b] = K_out[b, a] = C_b + C_W * s
    cho = _train_factor(K_out, noise)
    g = scipy.linalg.cho_solve(cho, np.eye(nA))
    yh = g @ y
    Q = 0.5 * (yh @ yh.T - y.shape[1] * g)
    grads = {}
    if V is not None:
        for a, b in itertools.combinations_with_replacement(range(nA), 2):
            grads[(a, b)] = _dss_dK(act, K, a, b)
    out = np.zeros((N, N))
    for al in itertools.combinations_with_replacement(range(N), 2):
        total = 0.0
        for a, b in itertools.combinations_with_replacement(range(nA), 2):
            weight = Q[a, b] * (1.0 if a == b else 2.0)
            term = _cov_zz_ss(act, K, al, (a, b))
            if V is not None:
                term += sum(d * V[al[0], al[1], b1, b2] for (b1, b2), d in grads[(a, b)].items())
            total += weight * C_W * term
        out[al] = out[al[::-1]] = total
    return out


# --------------------------------------------------------------------------
# the exact posterior of real networks: reweighting a prior ensemble
# --------------------------------------------------------------------------

def log_likelihood(z_train, y, noise: float) -> np.ndarray:
    """log p(y | z) of the Gaussian observation model, per network  (§6.2 of [RY]).

    Parameters
    ----------
    z_train : array [M, n_train] or [M, n_train, n_out] (numpy or torch)
        Each network's outputs on the training inputs.
    y : array [n_train] or [n_train, n_out]
    noise : float > 0
        Observation-noise variance (must be positive: an ensemble never hits y exactly).

    Returns
    -------
    array [M]
        Σ_{a,i} [−(y_{a;i} − z_{a;i})²/(2·noise) − ½ log(2π·noise)].
    """
    z = _stats._np(z_train)
    noise = _noise(noise)
    if noise <= 0:
        raise ValueError("the likelihood of a sampled ensemble needs noise > 0")
    y = np.asarray(y, dtype=float)
    if z.ndim == 2:
        z = z[:, :, None]
    if y.ndim == 1:
        y = y[:, None]
    if z.ndim != 3 or z.shape[1:] != y.shape:
        raise ValueError(f"z_train must be [M, n_train, n_out] matching y {y.shape}, got {z.shape}")
    r = (z - y) ** 2
    return -0.5 * r.sum(axis=(1, 2)) / noise - 0.5 * y.size * np.log(2.0 * np.pi * noise)


def effective_sample_size(log_w) -> float:
    """Kish's effective sample size (Σ w)²/Σ w² of importance weights w = exp(log_w)."""
    lw = np.asarray(log_w, dtype=float).ravel()
    if lw.size == 0 or not np.all(np.isfinite(lw)):
        raise ValueError("log_w must be a non-empty array of finite log-weights")
    w = np.exp(lw - lw.max())
    return float(w.sum() ** 2 / (w * w).sum())


def posterior_average(log_w, values, estimator=None, n_blocks: int | None = None
                      ) -> tuple[_stats.Estimate, np.ndarray]:
    """Posterior expectation by self-normalised importance sampling, with jackknife errors.

    E_post[f] ≈ Σ_m w_m f_m / Σ_m w_m over networks m drawn from the prior, w = p(y | network).
    The ratio is a function of two means over networks, so a delete-a-block jackknife over
    networks (:func:`dlt_companion.stats.jackknife`) gives an error bar that accounts for the
    fluctuations of the weights as well as of f.

    Parameters
    ----------
    log_w : array [M]
        Log importance weights (e.g. :func:`log_likelihood`); a common constant is irrelevant.
    values : array [M, ...]
        Per-network values f_m.
    estimator : callable, optional
        Maps the array of posterior averages (shape [...]) to the reported statistic (e.g. a
        covariance from first and second moments); default: the averages themselves.
    n_blocks : int, optional
        Jackknife blocks (default as in :func:`dlt_companion.stats.jackknife`).

    Returns
    -------
    (Estimate, cov)
        The statistic with its jackknife standard error, and the jackknife covariance
        [P, P] of its P flattened entries (pass to ``stats.assert_agree(cov=...)``).
    """
    lw = np.asarray(log_w, dtype=float).ravel()
    f = _stats._np(values)
    if f.shape[0] != lw.size:
        raise ValueError(f"values must have one row per network: {lw.size} log-weights but "
                         f"values of shape {f.shape}")
    if not np.all(np.isfinite(lw)):
        raise ValueError("log_w must be finite")
    w = np.exp(lw - lw.max())
    shape = f.shape[1:]
    flat = f.reshape(len(lw), -1)
    packed = np.concatenate([w[:, None], w[:, None] * flat], axis=1)
    est = (lambda m: m) if estimator is None else estimator

    def ratio(m):
        return np.asarray(est((m[1:] / m[0]).reshape(shape)))
    value, err = _stats.jackknife(packed, ratio, n_blocks)
    cov = _stats.covariance(packed, lambda m: ratio(m).ravel(), n_blocks)
    return _stats.Estimate(value, err), cov


def log_evidence_estimate(log_w, n_blocks: int | None = None) -> _stats.Estimate:
    """log p(y) = log E_prior[p(y | network)] from a prior ensemble, with a jackknife error.

    Parameters
    ----------
    log_w : array [M]
        log p(y | network m) for networks drawn from the prior (:func:`log_likelihood`).
    n_blocks : int, optional
        Jackknife blocks.

    Returns
    -------
    Estimate
        log of the mean likelihood and its standard error.
    """
    lw = np.asarray(log_w, dtype=float).ravel()
    if lw.size < 2 or not np.all(np.isfinite(lw)):
        raise ValueError("log_w must hold at least two finite log-likelihoods")
    top = lw.max()
    value, err = _stats.jackknife(np.exp(lw - top)[:, None], lambda m: np.log(m[0]) + top, n_blocks)
    return _stats.Estimate(float(value), float(err))


def pack_moments(mean, cov) -> np.ndarray:
    """One vector of posterior moments: the P means, then the upper triangle of the [P, P] covariance.

    ``mean`` may be [N_B] or [N_B, n_out] and ``cov`` [N_B, N_B] or [N_B, n_out, N_B, n_out]
    (as :meth:`FiniteWidthPosterior.mean` / ``.cov`` return them); the (input, component)
    pairs are flattened in row-major order, P = N_B · n_out. The same layout as
    :func:`posterior_moments`, so theory and measurement compare entry by entry.
    """
    m = np.asarray(mean, dtype=float).ravel()
    P = m.size
    c = np.asarray(cov, dtype=float).reshape(P, P)
    return np.concatenate([m, c[np.triu_indices(P)]])


def posterior_moments(log_w, z_test, n_blocks: int | None = None) -> tuple[_stats.Estimate, np.ndarray]:
    """Posterior means and covariance of test outputs from a reweighted prior ensemble.

    Parameters
    ----------
    log_w : array [M]
        Log importance weights (:func:`log_likelihood` of each network's training outputs).
    z_test : array [M, N_B] or [M, N_B, n_out]
        Each network's outputs on the test inputs.
    n_blocks : int, optional
        Jackknife blocks.

    Returns
    -------
    (Estimate, cov)
        The moments packed as in :func:`pack_moments` with jackknife errors, and their
        jackknife covariance (for ``stats.assert_agree(cov=...)``).
    """
    z = _stats._np(z_test)
    M = z.shape[0]
    z = z.reshape(M, -1)
    P = z.shape[1]
    iu = np.triu_indices(P)
    values = np.concatenate([z, (z[:, :, None] * z[:, None, :]).reshape(M, -1)], axis=1)

    def moments(m):
        mu = m[:P]
        second = m[P:].reshape(P, P)
        return np.concatenate([mu, (second - np.outer(mu, mu))[iu]])
    return posterior_average(log_w, values, moments, n_blocks)
