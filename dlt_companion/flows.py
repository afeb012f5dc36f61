"""Layer-to-layer flows (the book's RG flow of preactivation statistics, Chapter 4 of [RY]).

At infinite width the only statistic that flows is the kernel, the layer-l
covariance of preactivations for a set of inputs,

    K^{(1)}_{αβ}   = C_b + C_W (1/n_0) Σ_j x_{j;α} x_{j;β}            (§4.1),
    K^{(l+1)}_{αβ} = C_b + C_W ⟨σ(z_α) σ(z_β)⟩_{K^{(l)}}              (§4.3),

where the average is over a zero-mean Gaussian with covariance K^{(l)}.

At finite width two more statistics flow alongside it (§4.3, §4.5):

* the **four-point vertex** V^{(l)}, normalised as in the book so that the connected
  four-point function of layer-l preactivations is
  (1/n_{l−1}) [δ_{i1i2}δ_{i3i4} V_{(α1α2)(α3α4)} + δ_{i1i3}δ_{i2i4} V_{(α1α3)(α2α4)}
  + δ_{i1i4}δ_{i2i3} V_{(α1α4)(α2α3)}]; V^{(1)} = 0, and

      V^{(l+1)}_{(α1α2)(α3α4)} = C_W² [⟨σ_α1σ_α2σ_α3σ_α4⟩ − ⟨σ_α1σ_α2⟩⟨σ_α3σ_α4⟩]
                                + (n_l/n_{l−1}) Σ_{β's} D_{α1α2}^{β1β2} D_{α3α4}^{β3β4} V^{(l)}_{(β1β2)(β3β4)},

  with D_{α1α2}^{β1β2} = C_W ∂⟨σ_α1σ_α2⟩_K/∂K_{β1β2} (the sum runs over ordered pairs;
  for one input D is the parallel susceptibility χ_∥);
* the **1/n correction to the kernel** K^{{1}(l)}: the metric is
  G^{(l)} = E[z_i z_i] = K^{(l)} + K^{{1}(l)}/n_{l−1} + O(1/n²), K^{{1}(1)} = K^{{1}(2)} = 0, and

      K^{{1}(l+1)}_{α1α2} = (n_l/n_{l−1}) [ Σ_β D_{α1α2}^{β1β2} K^{{1}(l)}_{β1β2}
                             + (C_W/2) Σ_β ∂²⟨σ_α1σ_α2⟩_K/∂K_{β1β2}∂K_{β3β4} V^{(l)}_{(β1β2)(β3β4)} ].

Both follow from one observation: given layer l, the preactivations of layer l+1 are
exactly Gaussian with the *random* covariance Ĝ^{(l+1)} = C_b + C_W (1/n_l) Σ_j σ(z_j)σ(z_j),
whose mean is the metric and whose covariance is V^{(l+1)}/n_l; expanding ⟨σσ⟩_Ĝ to
second order in Ĝ − K gives both recursions. Derivatives with respect to the kernel are
Gaussian expectations (Stein's lemma: d⟨F⟩_K/dK = ⟨F (z² − K)⟩_K/(2K²), and
d²⟨F⟩_K/dK² = ⟨F (z⁴ − 6Kz² + 3K²)⟩_K/(4K⁴)), never finite differences.

Width convention: with equal hidden widths n every n_{l−1} is n; with ``widths`` the
book's per-layer n_{l−1} is used, so that E[z z] = K + K^{{1}}/n_{l−1} layer by layer.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from . import _checks
from .activations import Activation, get
from .gaussian import expect, expect2, expect_n, pair_rule, quadrature_1d

__all__ = ["first_layer_kernel", "kernel", "four_point", "kernel_correction", "run", "Flow",
           "single_input_moments"]


def first_layer_kernel(x, C_b: float, C_W: float) -> np.ndarray:
    """K^{(1)}_{αβ} = C_b + C_W x_α·x_β / n_0 for inputs x of shape [B, n_0]  (§4.1 of [RY]).

    Returns an array [B, B] (the first-layer metric, exact at any width).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"inputs x must have shape [B, n_0], got {x.shape}")
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    return C_b + C_W * (x @ x.T) / x.shape[1]


def _sigma_sigma(act: Activation, K: np.ndarray) -> np.ndarray:
    """⟨σ_α σ_β⟩_K for every pair of a Gram matrix K [B, B]; returns [B, B]."""
    B = K.shape[0]
    iu, ju = np.triu_indices(B, k=1)
    out = np.empty_like(K)
    diag = np.diagonal(K)
    out[np.diag_indices(B)] = expect(lambda z: act(z) ** 2, diag)
    if iu.size:
        off = expect2(act, act, diag[iu], K[iu, ju], diag[ju])
        out[iu, ju] = off
        out[ju, iu] = off
    return out


def kernel(act, C_b, C_W, K1, depth: int, xi=1.0, gamma=0.0) -> np.ndarray:
    """The infinite-width kernel K^{(l)} for layers l = 1..depth  (§4.1, §4.3 of [RY]).

    K^{(l+1)} = C_b^{(l+1)} + C_W^{(l+1)} ⟨σσ⟩_{K^{(l)}}; for residual layers (App. B)
    K^{(l+1)} = γ^{(l+1)2} K^{(l)} + ξ^{(l+1)2} (C_b^{(l+1)} + C_W^{(l+1)} ⟨σσ⟩_{K^{(l)}}).

    Parameters
    ----------
    act : str or Activation
        Activation σ (registry name or object from :func:`dlt_companion.activations.get`).
    C_b, C_W : float or sequence of ``depth`` floats
        Bias (≥ 0) and weight (> 0) variances, a number for every layer or one per layer
        (entry l−1 for layer l; layer 1's entries are unused since K1 is given).
    K1 : float or array [B, B]
        First-layer kernel: a number for one input, or the Gram matrix of B inputs
        (see :func:`first_layer_kernel` or :meth:`dlt_companion.network.MLP.first_layer_kernel`).
    depth : int
        Number of layers L ≥ 1.
    xi, gamma : float or sequence of ``depth`` floats
        Residual couplings (App. B); default ξ = 1, γ = 0 (the plain MLP).

    Returns
    -------
    array [depth] for scalar K1, or [depth, B, B] for a Gram matrix; entry l−1 is K^{(l)}.
    """
    act = get(act)
    depth = _checks.depth(depth)
    C_b = _checks.per_layer(C_b, depth, "C_b", _checks.C_b)
    C_W = _checks.per_layer(C_W, depth, "C_W", _checks.C_W)
    xi = _checks.per_layer(xi, depth, "xi", _checks.real)
    gamma = _checks.per_layer(gamma, depth, "gamma", _checks.real)
    scalar = np.ndim(K1) == 0
    K = np.array([[_checks.kernel_scalar(K1, "K1")]]) if scalar else _checks.gram(K1, "K1")
    out = np.empty((depth,) + K.shape)
    out[0] = K
    for layer in range(1, depth):
        new = C_b[layer] + C_W[layer] * _sigma_sigma(act, K)
        if xi[layer] != 1.0 or gamma[layer] != 0.0:
            new = gamma[layer] ** 2 * K + xi[layer] ** 2 * new
        K = new
        out[layer] = K
    return out[:, 0, 0] if scalar else out


# --------------------------------------------------------------------------
# shared argument handling
# --------------------------------------------------------------------------

def _finite_width_act(act) -> Activation:
    return _checks.differentiable_activation(act, "the finite-width flows (V and K^{1})")


def _width_ratios(widths, depth: int) -> np.ndarray:
    """r[l] = n_l / n_{l−1} used when going from layer l to l+1 (index l = 1..depth−1).

    Returns an array of length depth (entry 0 unused, = 1).
    """
    r = np.ones(depth)
    if widths is None:
        return r
    ns = _checks.widths(widths)
    if len(ns) not in (depth - 1, depth):
        raise ValueError(f"widths must list the hidden widths n_1..n_(depth-1) (length {depth - 1}) "
                         f"or all widths n_1..n_depth as for an ensemble (length {depth}); "
                         f"got length {len(ns)}")
    for l in range(2, depth):          # going from layer l to l+1 uses n_l / n_{l-1}
        r[l - 1] = ns[l - 1] / ns[l - 2]
    return r


# --------------------------------------------------------------------------
# single input: every Gaussian average of one layer from one quadrature pass
# --------------------------------------------------------------------------

def single_input_moments(act, K) -> dict:
    """Gaussian averages at kernel K > 0 that the one-input recursions need  (§4.3, §4.5, §5.1).

    Parameters
    ----------
    act : str or Activation
    K : float > 0

    Returns
    -------
    dict with ``s2`` = ⟨σ²⟩_K, ``s4`` = ⟨σ⁴⟩_K, ``ds2`` = d⟨σ²⟩_K/dK, ``d2s2`` = d²⟨σ²⟩_K/dK²
    and ``dd`` = ⟨σ'²⟩_K. The K-derivatives are Stein-lemma (Hermite) averages on the
    nodes of :func:`dlt_companion.gaussian.quadrature_1d`.
    """
    act = get(act)
    K = float(_checks.kernel_scalar(K))
    if K <= 0:
        raise ValueError("the finite-width recursions need K > 0; the kernel reached 0 "
                         "(e.g. C_b = 0 and a zero input)")
    return _moments(act, K)


def _moments(act: Activation, K: float) -> dict:
    x, w = quadrature_1d()
    s = np.sqrt(K)
    zp, zm = s * x, -s * x
    sp2, sm2 = act(zp) ** 2, act(zm) ** 2
    d = act.numpy[1]
    s2 = sp2 + sm2
    x2 = x * x
    return {
        "s2": float(s2 @ w),
        "s4": float((sp2 * sp2 + sm2 * sm2) @ w),
        "ds2": float((s2 * (x2 - 1.0)) @ w) / (2.0 * K),
        "d2s2": float((s2 * (x2 * x2 - 6.0 * x2 + 3.0)) @ w) / (4.0 * K * K),
        "dd": float((d(zp) ** 2 + d(zm) ** 2) @ w),
    }


def _flow_single(act, C_b, C_W, K1, depth, ratios):
    K = np.empty(depth)
    V = np.zeros(depth)
    Kc = np.zeros(depth)
    chi = np.empty(depth)
    K[0] = K1
    for l in range(depth):
        m = _moments(act, K[l])
        chi[l] = C_W * m["ds2"]
        if l + 1 == depth:
            break
        K[l + 1] = C_b + C_W * m["s2"]
        r = ratios[l]
        V[l + 1] = C_W ** 2 * (m["s4"] - m["s2"] ** 2) + r * chi[l] ** 2 * V[l]
        Kc[l + 1] = r * (chi[l] * Kc[l] + 0.5 * C_W * m["d2s2"] * V[l])
    return K, V, Kc, chi


def _common(act, C_b, C_W, K1, depth, widths):
    act = _finite_width_act(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    depth = _checks.depth(depth)
    ratios = _width_ratios(widths, depth)
    return act, C_b, C_W, depth, ratios


# --------------------------------------------------------------------------
# several inputs
# --------------------------------------------------------------------------

def _pair_averages(act: Activation, Kaa, Kab, Kbb) -> dict:
    """Two-input averages of one pair of inputs, all on one polar rule (σ, σ' evaluated once)."""
    z1, z2, w = pair_rule(Kaa, Kab, Kbb)
    s1, s2 = act.numpy[0](z1), act.numpy[0](z2)
    d1, d2 = act.numpy[1](z1), act.numpy[1](z2)
    products = {
        "s31": s1 ** 3 * s2, "s22": (s1 * s2) ** 2, "s13": s1 * s2 ** 3, "s11": s1 * s2,
        "dd": d1 * d2, "zds_a": z1 * d1 * s2, "zds_b": s1 * z2 * d2,
    }
    values = np.stack(list(products.values())) @ w                  # one matrix-vector product
    return dict(zip(products, values.tolist()))


def _four_sigma(act, K, idx, cache, pair_cache):
    """⟨σ_a σ_b σ_c σ_d⟩_K for a multiset of input indices idx (sorted tuple of 4)."""
    if idx in cache:
        return cache[idx]
    distinct = sorted(set(idx))
    if len(distinct) == 1:
        val = pair_cache["single"][distinct[0]]["s4"]
    elif len(distinct) == 2:
        a, b = distinct
        key = {1: "s13", 2: "s22", 3: "s31"}[idx.count(a)]
        val = pair_cache[(a, b)][key]
    else:
        sub = K[np.ix_(distinct, distinct)]
        pos = [distinct.index(i) for i in idx]
        val = expect_n(lambda z: np.prod([act(z[..., p]) for p in pos], axis=0), sub)
    cache[idx] = val
    return val


def _layer_tensors(act: Activation, C_W: float, K: np.ndarray):
    """Source S, derivative matrix D (over ordered pairs, [B², B²]) and averages of one layer."""
    B = K.shape[0]
    single = {a: _moments(act, K[a, a]) for a in range(B)}
    pairs = {"single": single}
    for a, b in itertools.combinations(range(B), 2):
        pairs[(a, b)] = _pair_averages(act, K[a, a], K[a, b], K[b, b])

    def ss(a, b):
        if a == b:
            return single[a]["s2"]
        lo, hi = min(a, b), max(a, b)
        return pairs[(lo, hi)]["s11"]

    D = np.zeros((B, B, B, B))
    for a in range(B):
        D[a, a, a, a] = C_W * single[a]["ds2"]
    for a, b in itertools.combinations(range(B), 2):
        p = pairs[(a, b)]
        Kab = K[a, b]
        D[a, b, a, b] = D[a, b, b, a] = 0.5 * C_W * p["dd"]
        D[a, b, a, a] = C_W * (p["zds_a"] - Kab * p["dd"]) / (2.0 * K[a, a])
        D[a, b, b, b] = C_W * (p["zds_b"] - Kab * p["dd"]) / (2.0 * K[b, b])
        D[b, a] = D[a, b]
    cache: dict = {}
    S = np.empty((B, B, B, B))
    for i in itertools.product(range(B), repeat=4):
        four = _four_sigma(act, K, tuple(sorted(i)), cache, pairs)
        S[i] = C_W ** 2 * (four - ss(i[0], i[1]) * ss(i[2], i[3]))
    return S, D, single


def _hermite4_contracted(M, V):
    """z ↦ Σ_ijkl V_ijkl H_ijkl(z), the Hermite tensor for K⁻¹ = M contracted with V.

    H_ijkl(z) = y_i y_j y_k y_l − (six terms M_ij y_k y_l) + (three terms M_ij M_kl), y = M z,
    so that ⟨∂_i∂_j∂_k∂_l F⟩_K = ⟨F H_ijkl⟩_K (Stein's lemma applied four times). Contracting
    with V first leaves a quartic, a quadratic form and a constant in y: cheap per node.
    """
    e = np.einsum
    A = (e("ij,ijkl->kl", M, V) + e("ik,ijkl->jl", M, V) + e("il,ijkl->jk", M, V)
         + e("jk,ijkl->il", M, V) + e("jl,ijkl->ik", M, V) + e("kl,ijkl->ij", M, V))
    c = e("ij,kl,ijkl->", M, M, V) + e("ik,jl,ijkl->", M, M, V) + e("il,jk,ijkl->", M, M, V)

    B = M.shape[0]
    V2 = V.reshape(B * B, B * B)

    def q(z):
        y = z @ M                                                    # [..., B]
        yy = (y[..., :, None] * y[..., None, :]).reshape(*y.shape[:-1], B * B)
        quartic = ((yy @ V2) * yy).sum(-1)                           # Σ V_ijkl y_i y_j y_k y_l as a matmul
        return quartic - ((y @ A) * y).sum(-1) + c
    return q


def _second_order_pair(act, C_W, K2, V2):
    """(C_W/2) Σ ∂²⟨σ_aσ_b⟩/∂K∂K · V for one pair a ≠ b, as (C_W/8)⟨σ_aσ_b Σ V H_4⟩  (§4.5)."""
    det = K2[0, 0] * K2[1, 1] - K2[0, 1] ** 2
    if det <= 1e-12 * K2[0, 0] * K2[1, 1]:
        raise ValueError("the multi-input K^{1} needs distinct (not perfectly correlated) "
                         "inputs; the 2x2 kernel of a pair became singular")
    q = _hermite4_contracted(np.linalg.inv(K2), V2)

    def fn(z):
        return act(z[..., 0]) * act(z[..., 1]) * q(z)
    return 0.125 * C_W * expect_n(fn, K2)


def _flow_multi(act, C_b, C_W, K1, depth, ratios, want_corr):
    B = K1.shape[0]
    K = np.empty((depth, B, B))
    V = np.zeros((depth, B, B, B, B))
    Kc = np.zeros((depth, B, B))
    K[0] = K1
    for l in range(depth - 1):
        Kl = K[l]
        if np.any(np.diagonal(Kl) <= 0):
            raise ValueError("the finite-width recursions need K_αα > 0 for every input")
        S, D, single = _layer_tensors(act, C_W, Kl)
        K[l + 1] = C_b + C_W * _sigma_sigma(act, Kl)
        r = ratios[l]
        V[l + 1] = S + r * np.einsum("abij,cdkl,ijkl->abcd", D, D, V[l])
        if want_corr:
            first = np.einsum("abij,ij->ab", D, Kc[l])
            second = np.empty((B, B))
            for a in range(B):
                second[a, a] = 0.5 * C_W * single[a]["d2s2"] * V[l][a, a, a, a]
            for a, b in itertools.combinations(range(B), 2):
                if l == 0:
                    second[a, b] = 0.0          # V^{(1)} = 0
                else:
                    ix = [a, b]
                    V2 = V[l][np.ix_(ix, ix, ix, ix)]
                    second[a, b] = _second_order_pair(act, C_W, Kl[np.ix_(ix, ix)], V2)
                second[b, a] = second[a, b]
            Kc[l + 1] = r * (first + second)
    return K, V, Kc


def _kernel_input(K1):
    scalar = np.ndim(K1) == 0
    if scalar:
        return True, float(_checks.kernel_scalar(K1, "K1"))
    return False, _checks.gram(K1, "K1")


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    """Per-layer statistics of preactivations at initialization, layers l = 1..L  (Ch. 4 of [RY]).

    Attributes
    ----------
    act : Activation
    C_b, C_W : float
    widths : tuple of int or None
        Hidden widths (n_1, …, n_{L−1}) if given; None means equal widths.
    K : array [L] (one input) or [L, B, B]
        Infinite-width kernel K^{(l)}.
    V : array [L] or [L, B, B, B, B]
        Four-point vertex V^{(l)}_{(α1α2)(α3α4)} (V^{(1)} = 0).
    K_corr : array [L] or [L, B, B]
        The book's K^{{1}(l)}: E[z z] = K + K_corr / n_{l−1} + O(1/n²).
    chi_par : array [L] or None
        χ_∥(K^{(l)}) for one input.
    """

    act: Activation
    C_b: float
    C_W: float
    widths: tuple | None
    K: np.ndarray
    V: np.ndarray
    K_corr: np.ndarray
    chi_par: np.ndarray | None = None

    def replace(self, **changes) -> "Flow":
        """A copy with some fields replaced (e.g. a deliberately wrong theory for a power check)."""
        return dataclasses.replace(self, **changes)

    @property
    def depth(self) -> int:
        return len(self.K)

    def fan_in(self, n: int | None = None) -> np.ndarray:
        """n_{l−1} for l = 1..L (layer 1's entry is irrelevant and set to 1 when unknown)."""
        if self.widths is None:
            if n is None:
                raise ValueError("equal-width flow: pass the width n")
            return np.full(self.depth, float(_checks.width(n)))
        return np.array([1.0] + [float(w) for w in self.widths[: self.depth - 1]])

    def metric(self, n: int | None = None) -> np.ndarray:
        """G^{(l)} = K^{(l)} + K^{{1}(l)}/n_{l−1} (equal widths: pass n)."""
        f = self.fan_in(n)
        return self.K + self.K_corr / f.reshape((-1,) + (1,) * (self.K.ndim - 1))

    def kurtosis(self, n: int | None = None) -> np.ndarray:
        """One-input excess kurtosis 3V^{(l)}/(n_{l−1} K^{(l)2}) (leading order)."""
        if self.K.ndim != 1:
            raise ValueError("kurtosis is defined here for a one-input flow")
        return 3.0 * self.V / (self.fan_in(n) * self.K ** 2)


def run(act, C_b: float, C_W: float, K1, depth: int, widths=None, correction: bool = True) -> Flow:
    """Kernel, four-point vertex and 1/n kernel correction, layer by layer  (§4.3, §4.5 of [RY]).

    Parameters
    ----------
    act : str or Activation
    C_b, C_W : float
        Bias (≥ 0) and weight (> 0) variances.
    K1 : float or array [B, B]
        First-layer kernel (one input: a number > 0; several: the Gram matrix, B ≤ 4).
    depth : int
        Number of layers L.
    widths : sequence of int, optional
        Hidden widths n_1..n_{L−1} (or n_1..n_L as for an ensemble; the last is unused).
        Omitted: equal widths (all ratios n_l/n_{l−1} = 1).
    correction : bool
        Compute K^{{1}} for several inputs too (its off-diagonal part costs a 2-d
        quadrature per pair and layer); always computed for one input.

    Returns
    -------
    Flow
    """
    act, C_b, C_W, depth, ratios = _common(act, C_b, C_W, K1, depth, widths)
    scalar, K1 = _kernel_input(K1)
    w = None if widths is None else tuple(_checks.widths(widths))
    if scalar:
        if K1 <= 0:
            raise ValueError("the finite-width recursions need K1 > 0")
        K, V, Kc, chi = _flow_single(act, C_b, C_W, K1, depth, ratios)
        return Flow(act, C_b, C_W, w, K, V, Kc, chi)
    if K1.shape[0] > 4:
        raise ValueError(f"the multi-input four-point vertex supports up to 4 inputs, got {K1.shape[0]}")
    K, V, Kc = _flow_multi(act, C_b, C_W, K1, depth, ratios, correction)
    return Flow(act, C_b, C_W, w, K, V, Kc if correction else np.full_like(Kc, np.nan))


def four_point(act, C_b: float, C_W: float, K1, depth: int, widths=None) -> np.ndarray:
    """The four-point vertex V^{(l)} for l = 1..depth, with V^{(1)} = 0  (§4.2, §4.3 of [RY]).

    Normalisation (the book's): for one input the connected E[z_i⁴] = 3V^{(l)}/n_{l−1} and the
    connected E[z_i² z_j²] = V^{(l)}/n_{l−1} for i ≠ j.

    Parameters
    ----------
    act, C_b, C_W, depth : as in :func:`kernel`
    K1 : float or array [B, B] (B ≤ 4)
    widths : sequence of int, optional
        Hidden widths n_1..n_{depth−1} (see :func:`run`); the propagation term carries
        the ratio n_l/n_{l−1}.

    Returns
    -------
    array [depth] for one input, or [depth, B, B, B, B] holding V_{(α1α2)(α3α4)}.
    """
    return run(act, C_b, C_W, K1, depth, widths, correction=False).V


def kernel_correction(act, C_b: float, C_W: float, K1, depth: int, widths=None) -> np.ndarray:
    """The 1/n correction K^{{1}(l)} to the kernel, l = 1..depth  (§4.5 of [RY]).

    E[z_{i;α} z_{i;β}] = K^{(l)}_{αβ} + K^{{1}(l)}_{αβ}/n_{l−1} + O(1/n²): with equal widths
    n_{l−1} = n. K^{{1}(1)} = K^{{1}(2)} = 0. For scale-invariant activations (ReLU, linear)
    it vanishes at every layer.

    Returns
    -------
    array [depth] for one input, or [depth, B, B].
    """
    return run(act, C_b, C_W, K1, depth, widths, correction=True).K_corr
