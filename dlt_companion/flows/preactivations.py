"""RG flow of preactivation statistics: kernel, four-point vertex, 1/n correction  (Ch. 4 of [RY]).

At infinite width the only statistic that flows is the kernel, the layer-l
covariance of preactivations for a set of inputs,

    K^{(1)}_{αβ}   = C_b^{(1)} + C_W^{(1)} (1/n_0) Σ_j x_{j;α} x_{j;β}          (§4.1),
    K^{(l+1)}_{αβ} = C_b^{(l+1)} + C_W^{(l+1)} ⟨σ(z_α) σ(z_β)⟩_{K^{(l)}}          (§4.3),

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
* the **1/n correction to the kernel** (the book's G^{{1}}, called ``K_corr`` here): the
  metric is G^{(l)} = E[z_i z_i] = K^{(l)} + G^{{1}(l)}/n_{l−1} + O(1/n²),
  G^{{1}(1)} = G^{{1}(2)} = 0, and

      G^{{1}(l+1)}_{α1α2} = (n_l/n_{l−1}) [ Σ_β D_{α1α2}^{β1β2} G^{{1}(l)}_{β1β2}
                             + (C_W/2) Σ_β ∂²⟨σ_α1σ_α2⟩_K/∂K_{β1β2}∂K_{β3β4} V^{(l)}_{(β1β2)(β3β4)} ].

Both follow from one observation: given layer l, the preactivations of layer l+1 are
exactly Gaussian with the *random* covariance Ĝ^{(l+1)} = C_b + C_W (1/n_l) Σ_j σ(z_j)σ(z_j),
whose mean is the metric and whose covariance is V^{(l+1)}/n_l; expanding ⟨σσ⟩_Ĝ to
second order in Ĝ − K gives both recursions. Every average and kernel derivative is one
call into :class:`dlt_companion.gaussian.Averages` (Stein's lemma, never finite
differences), and one input is the B = 1 case of the same code.

Per-layer hyperparameters: C_b, C_W may be sequences (entry l−1 for layer l; layer 1's
entries are unused since K^{(1)} is given). Widths: with equal hidden widths every n_{l−1}
is n; with ``widths`` the book's per-layer n_{l−1} is used, so that
E[z z] = K + G^{{1}}/n_{l−1} layer by layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _checks
from ..activations import Activation, get
from ..gaussian import Averages, expect, expect2, quadrature_1d
from . import _layers

__all__ = ["first_layer_kernel", "kernel", "vertex", "four_point", "kernel_correction", "run",
           "Flow", "single_input_moments", "SingleInputMoments"]

#: pairs of inputs integrated at once by :func:`kernel` (bounds memory for many inputs:
#: each pair's rule has 25 600 nodes)
PAIR_CHUNK = 64


def first_layer_kernel(x, C_b: float, C_W: float) -> np.ndarray:
    """K^{(1)}_{αβ} = C_b + C_W x_α·x_β / n_0 for inputs x of shape [B, n_0]  (§4.1 of [RY]).

    Parameters
    ----------
    x : array [B, n_0]
        Inputs (n_0 ≥ 1).
    C_b, C_W : float
        First-layer bias (≥ 0) and weight (> 0) variances.

    Returns
    -------
    array [B, B]
        The first-layer metric, exact at any width.
    """
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise ValueError("inputs x must be real")
    x = x.astype(float)
    if x.ndim != 2 or x.shape[1] == 0 or x.shape[0] == 0:
        raise ValueError(f"inputs x must have shape [B, n_0] with B, n_0 >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("inputs x must be finite")
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    return C_b + C_W * (x @ x.T) / x.shape[1]


def _sigma_sigma(act: Activation, K: np.ndarray) -> np.ndarray:
    """⟨σ_α σ_β⟩_K for every pair of a Gram matrix K [B, B], pairs in chunks; returns [B, B]."""
    B = K.shape[0]
    iu, ju = np.triu_indices(B, k=1)
    out = np.empty_like(K)
    diag = np.diagonal(K)
    out[np.diag_indices(B)] = expect(lambda z: act(z) ** 2, diag)
    for s in range(0, iu.size, PAIR_CHUNK):
        a, b = iu[s:s + PAIR_CHUNK], ju[s:s + PAIR_CHUNK]
        off = expect2(act, act, diag[a], K[a, b], diag[b])
        out[a, b] = off
        out[b, a] = off
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

    Raises
    ------
    ValueError
        For bad arguments, and naming the layer where the kernel diverges (C_W too large
        for the depth).
    """
    act = get(act)
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    xi = _layers.per_layer(xi, depth, "xi", _checks.real)
    gamma = _layers.per_layer(gamma, depth, "gamma", _checks.real)
    scalar, K = _layers.initial_kernel(K1)
    out = np.empty((depth,) + K.shape)
    out[0] = K
    for layer in range(1, depth):
        with np.errstate(over="ignore", invalid="ignore"):
            new = C_b[layer] + C_W[layer] * _sigma_sigma(act, K)
            if xi[layer] != 1.0 or gamma[layer] != 0.0:
                new = gamma[layer] ** 2 * K + xi[layer] ** 2 * new
        _layers.check_layer("kernel", new, layer + 1,
                            f"K^({layer}) = {np.max(np.diagonal(K)):.3g} grew by a factor "
                            f"C_W⟨σ²⟩/K > 1 per layer (C_W = {C_W[layer]:g}); use a smaller C_W or depth")
        K = new
        out[layer] = K
    return out[:, 0, 0] if scalar else out


# --------------------------------------------------------------------------
# single input: typed averages
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class SingleInputMoments:
    """Gaussian averages at one kernel value K that the one-input recursions need  (§4.3, §4.5, §5.1).

    Attributes
    ----------
    K : float
    s2 : float
        ⟨σ²⟩_K.
    s4 : float
        ⟨σ⁴⟩_K.
    ds2 : float
        d⟨σ²⟩_K/dK (χ_∥ = C_W ds2).
    d2s2 : float
        d²⟨σ²⟩_K/dK².
    dd : float
        ⟨σ'²⟩_K (χ_⊥ = C_W dd).
    """

    K: float
    s2: float
    s4: float
    ds2: float
    d2s2: float
    dd: float


def single_input_moments(act, K) -> SingleInputMoments:
    """Gaussian averages at kernel K > 0 that the one-input recursions need  (§4.3, §4.5, §5.1).

    Parameters
    ----------
    act : str or Activation
    K : float > 0

    Returns
    -------
    SingleInputMoments
        ⟨σ²⟩, ⟨σ⁴⟩, d⟨σ²⟩/dK, d²⟨σ²⟩/dK², ⟨σ'²⟩ from one
        :class:`~dlt_companion.gaussian.Averages` (Stein's lemma for the derivatives).
    """
    act = _layers.finite_width_act(act)
    K = float(_checks.kernel_scalar(K))
    if K <= 0:
        raise ValueError("the finite-width recursions need K > 0; the kernel reached 0 "
                         "(e.g. C_b = 0 and a zero input)")
    avg = Averages(act, K)
    return SingleInputMoments(K=K, s2=avg.mean((0, 0)), s4=avg.mean((0, 0, 0, 0)),
                              ds2=float(avg.dK((0, 0))[0, 0, 0, 0]),
                              d2s2=float(avg.d2K((0, 0), np.ones((1, 1, 1, 1)))[0, 0]),
                              dd=avg.mean((0, 0), (1, 1)))


# --------------------------------------------------------------------------
# the flow
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Flow(_layers.LayerStatistics):
    """Per-layer statistics of preactivations at initialization, layers l = 1..L  (Ch. 4 of [RY]).

    Attributes
    ----------
    act : Activation
    C_b, C_W : tuple of L floats
        Per-layer bias and weight variances (layer 1's enter only through K^{(1)}).
    widths : tuple of int or None
        Widths (n_1, …, n_{L−1}[, n_L]) if given; None means equal widths.
    K : array [L] (one input) or [L, B, B]
        Infinite-width kernel K^{(l)}.
    V : array [L] or [L, B, B, B, B]
        Four-point vertex V^{(l)}_{(α1α2)(α3α4)} (V^{(1)} = 0).
    K_corr : array [L] or [L, B, B], or None
        The book's G^{{1}(l)}: E[z z] = K + K_corr / n_{l−1} + O(1/n²); None if the flow was
        run with ``correction=False``.
    chi_par : array [L] or None
        χ_∥ at K^{(l)} for one input (with the C_W of layer l+1; the last entry uses C_W^{(L)}).
    """

    act: Activation
    C_b: tuple
    C_W: tuple
    widths: tuple | None
    K: np.ndarray
    V: np.ndarray
    K_corr: np.ndarray | None
    chi_par: np.ndarray | None = None

    @property
    def G1(self) -> np.ndarray | None:
        """The book's name for ``K_corr``: the 1/n correction G^{{1}} to the metric."""
        return self.K_corr

    def metric(self, n: int | None = None) -> np.ndarray:
        """G^{(l)} = K^{(l)} + G^{{1}(l)}/n_{l−1}  (§4.5 of [RY]).

        Parameters
        ----------
        n : int, optional
            The hidden width of an equal-width flow (not given when the flow has widths).

        Returns
        -------
        array of the shape of ``K``
        """
        if self.K_corr is None:
            raise ValueError("this flow was run with correction=False: no G^{1} to add")
        f = self.fan_in(n)
        return self.K + self.K_corr / f.reshape((-1,) + (1,) * (self.K.ndim - 1))

    def kurtosis(self, n: int | None = None) -> np.ndarray:
        """One-input excess kurtosis 3V^{(l)}/(n_{l−1} K^{(l)2}) at leading order  (§4.3, §5.4).

        Parameters
        ----------
        n : int, optional
            As in :meth:`metric`.

        Returns
        -------
        array [L]
        """
        if self.K.ndim != 1:
            raise ValueError("kurtosis is defined here for a one-input flow")
        return 3.0 * self.V / (self.fan_in(n) * self.K ** 2)


def _propagate(D: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Σ D_{ab}^{ij} D_{cd}^{kl} V_{(ij)(kl)}: D V Dᵀ with pairs of inputs as matrix indices."""
    B = D.shape[0]
    D2 = D.reshape(B * B, B * B)
    return (D2 @ V.reshape(B * B, B * B) @ D2.T).reshape(B, B, B, B)


def _flow(act: Activation, C_b: tuple, C_W: tuple, K1: np.ndarray, depth: int,
          ratios: np.ndarray, want_corr: bool):
    """K, V, G^{1} and (one input) χ_∥ for a [B, B] first-layer kernel."""
    if K1.shape[0] == 1:
        return _flow_one_input(act, C_b, C_W, K1, depth, ratios)
    return _flow_general(act, C_b, C_W, K1, depth, ratios, want_corr)


def _flow_general(act: Activation, C_b: tuple, C_W: tuple, K1: np.ndarray, depth: int,
                  ratios: np.ndarray, want_corr: bool):
    """The general path, any B ≤ 8, over :class:`~dlt_companion.gaussian.Averages`."""
    B = K1.shape[0]
    K = np.empty((depth, B, B))
    V = np.zeros((depth, B, B, B, B))
    Kc = np.zeros((depth, B, B))
    chi = np.empty(depth)
    K[0] = K1
    for l in range(depth):
        Kl = K[l]
        if np.any(np.diagonal(Kl) <= 0):
            raise ValueError(f"the finite-width recursions need K_αα > 0 for every input; at layer "
                             f"{l + 1} a variance is {np.diagonal(Kl).min():.3g} (C_b = 0 and a "
                             "zero input, or a vanishing kernel)")
        cw = C_W[min(l + 1, depth - 1)]
        avg = Averages(act, Kl, _checked=True)
        D = cw * avg.dK((0, 0))                                  # [B, B, B, B]
        chi[l] = D[0, 0, 0, 0]
        if l + 1 == depth:
            break
        ss = avg.tensor((0, 0))
        K[l + 1] = C_b[l + 1] + cw * ss
        S = cw ** 2 * (avg.tensor((0, 0, 0, 0)) - np.multiply.outer(ss, ss))
        with np.errstate(over="ignore", invalid="ignore"):
            V[l + 1] = S + ratios[l] * _propagate(D, V[l])
            if want_corr:
                Kc[l + 1] = ratios[l] * ((D.reshape(B * B, B * B) @ Kc[l].ravel()).reshape(B, B)
                                         + 0.5 * cw * avg.d2K((0, 0), V[l]))
        why = (f"K^({l + 1}) = {np.max(np.diagonal(Kl)):.3g} and χ_∥ = {chi[l]:.3g}; "
               "a growing kernel or χ_∥ > 1 explode geometrically with depth")
        _layers.check_layer("kernel", K[l + 1], l + 2, why)
        _layers.check_layer("four-point vertex", V[l + 1], l + 2, why)
        _layers.check_layer("1/n kernel correction", Kc[l + 1], l + 2, why)
    return K, V, Kc, chi


def _flow_one_input(act: Activation, C_b: tuple, C_W: tuple, K1: np.ndarray, depth: int,
                    ratios: np.ndarray):
    """:func:`_flow` for B = 1, written out: the same averages with scalar arithmetic.

    With u = z²/K on the nodes of :func:`dlt_companion.gaussian.quadrature_1d` (z = √K ξ),
    ∂⟨σ²⟩/∂K = ⟨σ²(u − 1)⟩/(2K) and ∂²⟨σ²⟩/∂K² = ⟨σ²(u² − 6u + 3)⟩/(4K²) (Stein's lemma, as
    :meth:`Averages.dK` and :meth:`Averages.d2K` compute them for any B); a test checks the
    two paths agree. A layer costs a few vector operations instead of the general engine's
    tensor bookkeeping (~10× faster at depth 100).
    """
    x, w = quadrature_1d()
    xi, wt = np.concatenate([x, -x]), np.concatenate([w, w])
    u0 = xi * xi
    sigma = act.numpy[0]
    K = np.empty((depth, 1, 1))
    V = np.zeros((depth, 1, 1, 1, 1))
    Kc = np.zeros((depth, 1, 1))
    chi = np.empty(depth)
    k, v, g = float(K1[0, 0]), 0.0, 0.0
    K[0] = k
    for l in range(depth):
        if not k > 0:
            raise ValueError(f"the finite-width recursions need K_αα > 0 for every input; at layer "
                             f"{l + 1} a variance is {k:.3g} (C_b = 0 and a zero input, or a "
                             "vanishing kernel)")
        cw = C_W[min(l + 1, depth - 1)]
        s2 = np.asarray(sigma(np.sqrt(k) * xi), dtype=float) ** 2
        ws2 = wt * s2
        ss = float(np.sum(ws2))
        chi[l] = cw * float(ws2 @ (u0 - 1.0)) / (2.0 * k)
        if l + 1 == depth:
            break
        S = cw ** 2 * (float(ws2 @ s2) - ss * ss)
        with np.errstate(over="ignore", invalid="ignore"):
            d2 = float(ws2 @ (u0 * u0 - 6.0 * u0 + 3.0)) / (4.0 * k * k)
            g = ratios[l] * (chi[l] * g + 0.5 * cw * d2 * v)
            v = S + ratios[l] * chi[l] ** 2 * v
        k = C_b[l + 1] + cw * ss
        K[l + 1], V[l + 1], Kc[l + 1] = k, v, g
        why = (f"K^({l + 1}) = {K[l, 0, 0]:.3g} and χ_∥ = {chi[l]:.3g}; "
               "a growing kernel or χ_∥ > 1 explode geometrically with depth")
        _layers.check_layer("kernel", K[l + 1], l + 2, why)
        _layers.check_layer("four-point vertex", V[l + 1], l + 2, why)
        _layers.check_layer("1/n kernel correction", Kc[l + 1], l + 2, why)
    return K, V, Kc, chi


def run(act, C_b, C_W, K1, depth: int, widths=None, correction: bool = True) -> Flow:
    """Kernel, four-point vertex and 1/n kernel correction, layer by layer  (§4.3, §4.5 of [RY]).

    Parameters
    ----------
    act : str or Activation
    C_b, C_W : float or sequence of ``depth`` floats
        Bias (≥ 0) and weight (> 0) variances, per layer if a sequence (entry l−1 for
        layer l; layer 1's are unused since K1 is given).
    K1 : float or array [B, B]
        First-layer kernel (one input: a number > 0; several: the Gram matrix, B ≤ 8).
    depth : int
        Number of layers L.
    widths : sequence of int, optional
        Hidden widths n_1..n_{L−1} (or n_1..n_L as for an ensemble; the last is unused).
        Omitted: equal widths (all ratios n_l/n_{l−1} = 1).
    correction : bool
        Compute G^{{1}} (for several inputs its off-diagonal part costs a 2-d quadrature
        with a Hermite weight per pair and layer). False leaves ``K_corr`` None.

    Returns
    -------
    Flow
    """
    act = _layers.finite_width_act(act)
    depth = _layers.depth(depth)
    C_b, C_W = _layers.hyper(depth, C_b, C_W)
    ratios, w = _layers.width_ratios(widths, depth)
    scalar, K1 = _layers.initial_kernel(K1)
    if K1.shape[0] > _layers.MAX_INPUTS:
        raise ValueError(f"the finite-width flows support up to {_layers.MAX_INPUTS} inputs "
                         f"(V has B^4 entries), got {K1.shape[0]}; flows.kernel takes any number")
    K, V, Kc, chi = _flow(act, C_b, C_W, K1, depth, ratios, bool(correction) or scalar)
    if scalar:
        return Flow(act, C_b, C_W, w, K[:, 0, 0], V[:, 0, 0, 0, 0], Kc[:, 0, 0], chi)
    return Flow(act, C_b, C_W, w, K, V, Kc if correction else None)


def vertex(act, C_b, C_W, K1, depth: int, widths=None) -> np.ndarray:
    """The four-point vertex V^{(l)} for l = 1..depth, with V^{(1)} = 0  (§4.2, §4.3 of [RY]).

    Normalisation (the book's): for one input the connected E[z_i⁴] = 3V^{(l)}/n_{l−1} and the
    connected E[z_i² z_j²] = V^{(l)}/n_{l−1} for i ≠ j.

    Parameters
    ----------
    act, C_b, C_W, depth : as in :func:`run`
    K1 : float or array [B, B] (B ≤ 8)
    widths : sequence of int, optional
        Hidden widths n_1..n_{depth−1} (see :func:`run`); the propagation term carries
        the ratio n_l/n_{l−1}.

    Returns
    -------
    array [depth] for one input, or [depth, B, B, B, B] holding V_{(α1α2)(α3α4)}.
    """
    return run(act, C_b, C_W, K1, depth, widths, correction=False).V


#: the earlier name of :func:`vertex` (kept: notebooks and readers' code use it)
four_point = vertex


def kernel_correction(act, C_b, C_W, K1, depth: int, widths=None) -> np.ndarray:
    """The 1/n correction G^{{1}(l)} to the kernel, l = 1..depth  (§4.5 of [RY]).

    E[z_{i;α} z_{i;β}] = K^{(l)}_{αβ} + G^{{1}(l)}_{αβ}/n_{l−1} + O(1/n²): with equal widths
    n_{l−1} = n. G^{{1}(1)} = G^{{1}(2)} = 0. For scale-invariant activations (ReLU, linear)
    it vanishes for a single input at every layer.

    Parameters
    ----------
    act, C_b, C_W, K1, depth, widths : as in :func:`run`

    Returns
    -------
    array [depth] for one input, or [depth, B, B].
    """
    return run(act, C_b, C_W, K1, depth, widths, correction=True).K_corr
