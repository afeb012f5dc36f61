"""Layer-to-layer flows (the book's RG flow of preactivation statistics, Chapter 4 of [RY]).

At infinite width the only statistic that flows is the kernel, the layer-l
covariance of preactivations for a set of inputs,

    K^{(1)}_{αβ}   = C_b + C_W (1/n_0) Σ_j x_{j;α} x_{j;β}            (§4.1),
    K^{(l+1)}_{αβ} = C_b + C_W ⟨σ(z_α) σ(z_β)⟩_{K^{(l)}}              (§4.3),

where the average is over a zero-mean Gaussian with covariance K^{(l)}.
Finite-width statistics (the four-point vertex V and the 1/n correction to the
kernel) flow alongside it; they live in this module too.
"""

from __future__ import annotations

import numpy as np

from . import _checks
from .activations import Activation, get
from .gaussian import expect, expect2

__all__ = ["first_layer_kernel", "kernel"]


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


def kernel(act, C_b: float, C_W: float, K1, depth: int) -> np.ndarray:
    """The infinite-width kernel K^{(l)} for layers l = 1..depth  (§4.1, §4.3 of [RY]).

    Parameters
    ----------
    act : str or Activation
        Activation σ (registry name or object from :func:`dlt_companion.activations.get`).
    C_b, C_W : float
        Bias and weight variances of layers 2..depth (C_b ≥ 0, C_W > 0).
    K1 : float or array [B, B]
        First-layer kernel: a number for one input, or the Gram matrix of B inputs
        (see :func:`first_layer_kernel`).
    depth : int
        Number of layers L ≥ 1.

    Returns
    -------
    array [depth] for scalar K1, or [depth, B, B] for a Gram matrix; entry l−1 is K^{(l)}.
    """
    act = get(act)
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    depth = _checks.depth(depth)
    scalar = np.ndim(K1) == 0
    K = np.array([[_checks.kernel_scalar(K1, "K1")]]) if scalar else _checks.gram(K1, "K1")
    out = np.empty((depth,) + K.shape)
    out[0] = K
    for layer in range(1, depth):
        K = C_b + C_W * _sigma_sigma(act, K)
        out[layer] = K
    return out[:, 0, 0] if scalar else out
