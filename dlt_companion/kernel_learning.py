"""Kernel learning: what gradient descent does to an infinite-width network, and to its Taylor models.

At infinite width the NTK Ĥ is frozen at its mean Θ during training (§10.1 of [RY]), so
the network is a linear model in its parameters and full-batch gradient descent on the
loss L = ½ Σ_{α∈A} Σ_i (z_{i;α} − y_{i;α})² with global rate η moves the residual
ε = z_A − y of the training inputs A by ε(t+1) = (1 − ηΘ̃) ε(t), Θ̃ = Θ_AA. Summing the
output updates −ηΘ_δA ε(t) over t steps gives, for any input δ,

    z_δ(t) = z_δ(0) − Θ_δA R_t (z_A(0) − y),   R_t = η Σ_{s<t} (1 − ηΘ̃)^s = Θ̃⁻¹[1 − (1 − ηΘ̃)^t],

and for t → ∞ (any stable η, or gradient flow, or the "giant leap" of §10.2, one step of
the matrix rate Θ̃⁻¹) R_∞ = Θ̃⁻¹: the **NTK predictor**. The initial outputs z(0) are a
zero-mean Gaussian process with kernel K (the NNGP kernel of Ch. 4), so over
initializations the trained outputs on test inputs δ are Gaussian with

    mean  m_δ   = Θ_δA R y,
    cov   Σ_δδ' = K_δδ' − Θ_δA R K_Aδ' − K_δA R Θ_Aδ' + Θ_δA R K_AA R Θ_Aδ'      (§10.2),

and the expected squared test error splits into a **bias** (m_δ − y_δ)² and a
**variance** Σ_δδ (§10.3): :func:`ntk_prediction`, :func:`generalization_error`.

A single finite-width network has its own NTK Ĥ (random at initialization, Ch. 8) and it
moves during training (the dNTK of Ch. 11). Its **kernel model** (the network linearized
in its parameters around initialization) obeys the same formula with Ĥ in place of Θ and
its own z(0): :func:`kernel_model`. Its **quadratic model** keeps the second-order term of
the Taylor expansion in the parameters, whose NTK moves by exactly the dNTK step
(§11.4, "nearly-kernel methods"): :func:`taylor_model_descent` trains either Taylor model
with the network's own gradient descent.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
import scipy.linalg
import torch

from . import _checks
from .ensembles import EnsembleSpec, MLPEnsemble, apply, map_networks
from .progress import progress
from .tangent import learning_rates

__all__ = ["ntk_prediction", "generalization_error", "BiasVariance", "kernel_model",
           "taylor_model_descent", "expected_training_loss", "mirrored", "train_and_record",
           "width_extrapolation"]

#: eigenvalues of Θ̃ below this fraction of the largest are treated as exact zeros (directions
#: that gradient descent never moves; for a PSD Θ they do not reach the test inputs either)
NULL_RTOL = 1e-12


# ------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------

def _n_train(n_train, N: int) -> int:
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) \
            or not 1 <= n_train <= N - 1:
        raise ValueError(f"n_train must be an integer in 1..N-1 = 1..{N - 1} (the first n_train of "
                         f"the N = {N} inputs are the training set, the rest the test set), "
                         f"got {n_train!r}")
    return int(n_train)


def _schedule(eta, steps) -> tuple[float | None, int | None]:
    if (eta is None) != (steps is None):
        raise ValueError("give both eta and steps (the prediction after `steps` steps of rate eta) "
                         "or neither (the fully trained network, t → ∞)")
    if eta is None:
        return None, None
    eta = _checks.real(eta, "eta")
    if not eta > 0:
        raise ValueError(f"the learning rate eta must be > 0, got {eta!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    return eta, int(steps)


def _targets(y, n_train: int) -> tuple[np.ndarray, bool]:
    y = np.asarray(y)
    if np.iscomplexobj(y):
        raise ValueError("targets y must be real")
    try:
        y = y.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"targets y must be numbers, got {y!r}") from None
    flat = y.ndim == 1
    if flat:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n_train:
        raise ValueError(f"targets y must have shape [n_train] or [n_train, n_out] with "
                         f"n_train = {n_train}, got {np.shape(y if not flat else y[:, 0])}")
    if not np.all(np.isfinite(y)):
        raise ValueError("targets y must be finite")
    return y, flat


def _kernels(K, Theta) -> tuple[np.ndarray, np.ndarray]:
    K = _checks.gram(K, "K (the NNGP kernel)")
    Theta = _checks.gram(Theta, "Theta (the NTK)")
    if K.shape != Theta.shape:
        raise ValueError(f"K and Theta must cover the same inputs: shapes {K.shape} and {Theta.shape}")
    if K.shape[0] < 2:
        raise ValueError("K and Theta must cover at least one training and one test input")
    return K, Theta


def _moved(h, steps: int):
    """1 − (1 − h)^steps for 0 ≤ h < 2, accurate for small h (numpy or torch)."""
    lib = torch if torch.is_tensor(h) else np
    small = h < 0.5
    hs = lib.where(small, h, lib.zeros_like(h))
    a = -lib.expm1(steps * lib.log1p(-hs))                 # 1 − (1 − h)^t for h < 1/2
    b = 1.0 - (1.0 - h) ** steps                          # |1 − h| ≤ 1/2: no cancellation
    return lib.where(small, a, b)


def _response(theta_train: np.ndarray, eta, steps) -> np.ndarray:
    """R_t = Θ̃⁻¹[1 − (1 − ηΘ̃)^t] (t = ∞: the pseudo-inverse), symmetric [A, A]."""
    lam, U = scipy.linalg.eigh(theta_train)
    top = max(float(lam.max()), 0.0)
    null = lam <= NULL_RTOL * top if top > 0 else np.ones_like(lam, dtype=bool)
    if eta is None:
        if np.any(null) and top == 0:
            raise ValueError("the NTK on the training inputs is zero: gradient descent does not move "
                             "the outputs")
        r = np.where(null, 0.0, 1.0 / np.where(null, 1.0, lam))
    else:
        if eta * top >= 2.0:
            raise ValueError(f"eta = {eta:g} makes gradient descent diverge: eta·λ_max(Θ̃) = "
                             f"{eta * top:.3g} must be < 2 (λ_max(Θ̃) = {top:.4g})")
        lam_c = np.where(null, 0.0, lam)
        r = np.where(null, eta * steps, _moved(eta * lam_c, steps) / np.where(null, 1.0, lam_c))
    return (U * r) @ U.T


# ------------------------------------------------------------------------------------------
# the infinite-width predictor
# ------------------------------------------------------------------------------------------

def ntk_prediction(K, Theta, y, n_train: int, eta: float | None = None,
                   steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance over initializations of the trained infinite-width network's test outputs  (§10.2 of [RY]).

    With A the first ``n_train`` inputs (training set) and δ the rest (test set),

        mean_δ   = Θ_δA R y,
        cov_δδ'  = K_δδ' − Θ_δA R K_Aδ' − K_δA R Θ_Aδ' + Θ_δA R K_AA R Θ_Aδ',

    with R = Θ̃⁻¹ for the fully trained network (the NTK predictor; any stable rate,
    gradient flow, or the one-step "giant leap" of §10.2 give the same), or, after ``steps``
    full-batch gradient-descent steps of global rate ``eta`` (§10.1),
    R = Θ̃⁻¹[1 − (1 − ηΘ̃)^steps] = η Σ_{s<steps} (1 − ηΘ̃)^s. Θ̃ = Θ_AA. Directions in which Θ̃
    vanishes are never moved (R acts as the pseudo-inverse there), so a singular Θ̃ gives the
    minimum-norm least-squares fit rather than an error.

    Parameters
    ----------
    K : array [N, N]
        Infinite-width kernel K^{(L)} of the output layer over all N inputs, training inputs
        first (e.g. ``MLP.kernel(x)[-1]``); symmetric PSD.
    Theta : array [N, N]
        Infinite-width mean NTK Θ^{(L)} over the same inputs (``MLP.ntk_mean(x)[-1]``),
        with the learning-rate tensor used in training.
    y : array [n_train] or [n_train, n_out]
        Training targets (every output component is trained alike).
    n_train : int in 1..N−1
        Number of training inputs.
    eta : float > 0, optional
        Global learning rate η; with ``steps``, the prediction after that many steps.
        Must satisfy η λ_max(Θ̃) < 2 (otherwise gradient descent diverges).
    steps : int ≥ 0, optional
        Number of gradient-descent steps (0 returns the initialization: mean 0, cov K).

    Returns
    -------
    mean : array [N − n_train] or [N − n_train, n_out] (like y's trailing dims)
    cov : array [N − n_train, N − n_train]
        Covariance over initializations, the same for every output component (components
        are independent).

    Raises
    ------
    ValueError
        Bad shapes, n_train outside 1..N−1, kernels that are not symmetric PSD, only one of
        eta/steps, a non-positive eta, or eta too large for gradient descent to converge.

    Examples
    --------
    >>> K = np.array([[1.0, 0.5], [0.5, 1.0]]); Theta = 2 * K
    >>> mean, cov = ntk_prediction(K, Theta, [1.0], n_train=1)
    >>> float(mean[0]), float(cov[0, 0])          # Θ_10/Θ_00 · y, K_11 − 2·(½)·½ + ¼
    (0.5, 0.75)
    """
    K, Theta = _kernels(K, Theta)
    N = K.shape[0]
    nA = _n_train(n_train, N)
    y, flat = _targets(y, nA)
    eta, steps = _schedule(eta, steps)
    R = _response(Theta[:nA, :nA], eta, steps)
    T_dA, K_dA = Theta[nA:, :nA], K[nA:, :nA]
    G = T_dA @ R                                    # [test, train]: how y and z_A(0) enter
    mean = G @ y
    cross = G @ K_dA.T
    cov = K[nA:, nA:] - cross - cross.T + G @ K[:nA, :nA] @ G.T
    cov = 0.5 * (cov + cov.T)
    return (mean[:, 0] if flat else mean), cov


class BiasVariance(NamedTuple):
    """Expected squared test error of the trained networks, split as bias + variance  (§10.3).

    All arrays [N_test], summed over output components:
    ``bias`` = Σ_i (E[z_{i;δ}] − y_{i;δ})², ``variance`` = Σ_i Var(z_{i;δ}),
    ``error`` = bias + variance = E[Σ_i (z_{i;δ} − y_{i;δ})²].
    """

    bias: np.ndarray
    variance: np.ndarray
    error: np.ndarray


def generalization_error(K, Theta, y, n_train: int, y_test, eta: float | None = None,
                         steps: int | None = None) -> BiasVariance:
    """Bias and variance parts of the infinite-width network's expected test error  (§10.3 of [RY]).

    Over initializations the trained network's test output z_δ has the mean and covariance
    of :func:`ntk_prediction`, so E[(z_δ − y_δ)²] = (mean_δ − y_δ)² + cov_δδ per output
    component: the bias (a deterministic miss of the average network) plus the variance
    (network-to-network scatter, which at infinite width is all inherited from the random
    initial function z(0), since the NTK is deterministic).

    Parameters
    ----------
    K, Theta, y, n_train, eta, steps : as in :func:`ntk_prediction`
    y_test : array [N − n_train] or [N − n_train, n_out]
        True outputs on the test inputs (shaped like ``y``).

    Returns
    -------
    BiasVariance
        ``bias``, ``variance``, ``error``, each [N − n_train].
    """
    mean, cov = ntk_prediction(K, Theta, y, n_train, eta, steps)
    m = mean[:, None] if mean.ndim == 1 else mean
    y_test = np.asarray(y_test)
    if np.iscomplexobj(y_test) or y_test.size != m.size or y_test.ndim not in (1, 2) \
            or (y_test.ndim == 2 and y_test.shape != m.shape) or (y_test.ndim == 1 and mean.ndim == 2):
        raise ValueError(f"y_test must hold the true outputs on the {m.shape[0]} test inputs, shaped "
                         f"like the predictions {mean.shape}, got shape {np.shape(y_test)}")
    y_test = y_test.astype(float).reshape(m.shape)
    if not np.all(np.isfinite(y_test)):
        raise ValueError("y_test must be finite")
    bias = ((m - y_test) ** 2).sum(axis=1)
    variance = m.shape[1] * np.clip(np.diagonal(cov), 0.0, None)
    return BiasVariance(bias, variance, bias + variance)


def expected_training_loss(K, Theta, y, eta: float, steps: int) -> np.ndarray:
    """E[L(t)] over initializations for t = 0..steps at infinite width  (§10.1 of [RY]).

    ε(t) = (1 − ηΘ̃)^t (z_A(0) − y) with z_A(0) ~ N(0, K̃), so
    E[L(t)] = ½ [‖P_t y‖² + n_out tr(P_t K̃ P_tᵀ)], P_t = (1 − ηΘ̃)^t.

    Parameters
    ----------
    K, Theta : arrays [n_train, n_train]
        Kernel and NTK on the training inputs.
    y : array [n_train] or [n_train, n_out]
    eta : float > 0 (η λ_max(Θ̃) < 2)
    steps : int ≥ 0

    Returns
    -------
    array [steps + 1]
    """
    K, Theta = _checks.gram(K, "K"), _checks.gram(Theta, "Theta")
    if K.shape != Theta.shape:
        raise ValueError(f"K and Theta must have the same shape, got {K.shape} and {Theta.shape}")
    y, _ = _targets(y, K.shape[0])
    eta, steps = _schedule(eta, steps)
    if eta is None:
        raise ValueError("give eta and steps")
    lam, U = scipy.linalg.eigh(Theta)
    if eta * lam.max() >= 2.0:
        raise ValueError(f"eta·λ_max(Θ̃) = {eta * lam.max():.3g} must be < 2 for gradient descent "
                         "to converge")
    yu = U.T @ y                                     # targets in the eigenbasis
    Ku = U.T @ K @ U
    t = np.arange(steps + 1)[:, None]
    p = (1.0 - eta * lam)[None, :] ** t              # [t, A]
    bias = (p[:, :, None] ** 2 * yu[None] ** 2).sum(axis=(1, 2))
    var = y.shape[1] * (p ** 2 * np.diagonal(Ku)[None, :]).sum(axis=1)
    return 0.5 * (bias + var)


# ------------------------------------------------------------------------------------------
# per-network Taylor models of real networks
# ------------------------------------------------------------------------------------------

def _torch_response(H: torch.Tensor, eta, steps) -> torch.Tensor:
    """Batched R_t for symmetric PSD matrices H [M, D, D] (t = ∞: pseudo-inverse)."""
    lam, U = torch.linalg.eigh(H)
    top = lam.amax(dim=-1, keepdim=True).clamp_min(0.0)
    null = lam <= NULL_RTOL * top
    safe = torch.where(null, torch.ones_like(lam), lam)
    if eta is None:
        r = torch.where(null, torch.zeros_like(lam), 1.0 / safe)
    else:
        lam_c = torch.where(null, torch.zeros_like(lam), lam)
        r = torch.where(null, torch.full_like(lam, eta * steps), _moved(eta * lam_c, steps) / safe)
    return (U * r.unsqueeze(-2)) @ U.transpose(-1, -2)


def kernel_model(H, z0, y, n_train: int, eta: float | None = None,
                 steps: int | None = None) -> torch.Tensor:
    """Outputs of each network's kernel model (linearized network) after training  (§10.1, §11.4).

    The network linearized in its parameters around initialization has the frozen NTK Ĥ of
    that network, so gradient descent gives, for every input δ,
    z_δ(t) = z_δ(0) − Σ Ĥ_δA R_t (z_A(0) − y) with R_t as in :func:`ntk_prediction` but
    over the joint (neuron, input) index of the training set, and batched over networks.

    Parameters
    ----------
    H : tensor [M, n_L, n_L, N, N]
        Each network's NTK at initialization over all N inputs, training inputs first
        (:func:`dlt_companion.tangent.empirical_ntk`).
    z0 : tensor [M, N, n_L]
        Each network's outputs at initialization (``ens.output(x)``).
    y : array or tensor [n_train, n_L] (or [n_train] when n_L = 1)
    n_train : int in 1..N−1
    eta, steps : as in :func:`ntk_prediction` (None, None: t → ∞)

    Returns
    -------
    tensor [M, N, n_L]
        Every input's output after training (training inputs first), in H's dtype.
    """
    if not (torch.is_tensor(H) and torch.is_tensor(z0)):
        raise ValueError("H and z0 must be torch tensors (from tangent.empirical_ntk and ens.output)")
    if H.ndim != 5 or H.shape[1] != H.shape[2] or H.shape[3] != H.shape[4]:
        raise ValueError(f"H must have shape [M, n_L, n_L, N, N], got {tuple(H.shape)}")
    M, n_L, _, N, _ = H.shape
    if tuple(z0.shape) != (M, N, n_L):
        raise ValueError(f"z0 must have shape [M, N, n_L] = [{M}, {N}, {n_L}], got {tuple(z0.shape)}")
    nA = _n_train(n_train, N)
    eta, steps = _schedule(eta, steps)
    y = torch.as_tensor(np.asarray(y, dtype=float) if not torch.is_tensor(y) else y,
                        dtype=H.dtype, device=H.device)
    if y.ndim == 1 and n_L == 1:
        y = y[:, None]
    if tuple(y.shape) != (nA, n_L):
        raise ValueError(f"y must have shape [n_train, n_L] = [{nA}, {n_L}], got {tuple(y.shape)}")
    # joint index (α, i): H_flat[m, αi, βj] = H[m, i, j, α, β]
    Hf = H.permute(0, 3, 1, 4, 2).reshape(M, N * n_L, N * n_L)
    D = nA * n_L
    H_AA = 0.5 * (Hf[:, :D, :D] + Hf[:, :D, :D].transpose(1, 2))
    if eta is not None:
        top = torch.linalg.eigvalsh(H_AA).amax()
        if float(eta * top) >= 2.0:
            raise ValueError(f"eta·λ_max(Ĥ_AA) = {float(eta * top):.3g} ≥ 2 for some network: "
                             "gradient descent on its kernel model diverges")
    R = _torch_response(H_AA, eta, steps)
    eps = (z0[:, :nA] - y).reshape(M, D, 1)
    move = Hf[:, :, :D] @ (R @ eps)                                   # [M, N·n_L, 1]
    return z0 - move.reshape(M, N, n_L)


def _taylor_outputs(params0, delta, x, net, order: int):
    """z(θ0 + Δ) to ``order`` in Δ (1: linear, 2: quadratic), batched over networks."""
    L = len(params0) // 2

    def f(p):
        return apply(p[:L], p[L:], x, net.act, net.xi, net.gamma, layers="last")[0]

    if order == 1:
        z0, dz = torch.func.jvp(f, (params0,), (delta,))
        return z0 + dz

    def df(p):
        return torch.func.jvp(f, (p,), (delta,))[1]

    (z0, dz), (_, d2z) = torch.func.jvp(lambda p: (f(p), df(p)), (params0,), (delta,))
    return z0 + dz + 0.5 * d2z


def taylor_model_descent(ens: MLPEnsemble, x, y, n_train: int, eta: float, steps: int,
                         order: int = 2, lam_b=None, lam_W=None,
                         desc: str | None = None) -> torch.Tensor:
    """Train each network's order-1 (kernel) or order-2 (quadratic) Taylor model by gradient descent  (§11.4 of [RY]).

    The Taylor model of a network around its initial parameters θ0,
    z^{[k]}(θ0 + Δ) = Σ_{m≤k} (1/m!) (Δ·∂_θ)^m z(θ0), is trained with exactly the update of
    :func:`dlt_companion.training.gradient_descent` (full batch on the first ``n_train``
    inputs, loss ½ Σ (z − y)², learning-rate tensor λ_b and λ_W/n_{l−1}). The linear model
    (``order=1``) is the kernel model — its NTK never moves and it agrees with the closed
    form :func:`kernel_model`. The quadratic model (``order=2``) is the simplest
    nearly-kernel model: its NTK moves by the network's dNTK, (ΔĤ)_{i1i2} = Σ_{i0α0} dĤ_{i0i1i2}·(…)
    linearly in Δ, and nothing else (no ddNTKs).

    The derivatives are taken with ``torch.func.jvp`` (forward-over-forward for the
    quadratic term) and the gradient by reverse mode through them, for all M networks at once.

    Parameters
    ----------
    ens : MLPEnsemble
        The networks at initialization (not changed).
    x : array or tensor [N, n_0]
        All inputs, the first ``n_train`` of which are trained on.
    y : array or tensor [n_train, n_L] (or [n_train] when n_L = 1)
    n_train : int in 1..N
    eta : float > 0
    steps : int ≥ 0
    order : 1 or 2
    lam_b, lam_W : as in :func:`dlt_companion.training.gradient_descent`
    desc : str, optional
        Label of a tqdm progress bar over steps.

    Returns
    -------
    tensor [M, N, n_L]
        The trained Taylor model's outputs on every input.
    """
    from .training import targets

    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order must be 1 (kernel model) or 2 (quadratic model), got {order!r}")
    eta, steps = _schedule(eta, steps)
    if eta is None:
        raise ValueError("give eta and steps")
    x = ens._inputs(x)
    N = x.shape[0]
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or not 1 <= n_train <= N:
        raise ValueError(f"n_train must be an integer in 1..{N}, got {n_train!r}")
    y = targets(ens, y, n_train)
    lam_b, lam_W = learning_rates(ens, lam_b, lam_W)
    net = ens.net
    L = ens.depth
    rates = [eta * lw / n for lw, n in zip(lam_W, net.fan_in)] + [eta * lb for lb in lam_b]
    params0 = tuple(p.detach() for p in list(ens.weights) + list(ens.biases))
    delta = tuple(torch.zeros_like(p) for p in params0)

    def loss(d):
        z = _taylor_outputs(params0, d, x[:n_train], net, order)
        return 0.5 * ((z - y) ** 2).sum()

    grad = torch.func.grad(loss)
    for _ in progress(range(steps), desc=desc, total=steps, disable=desc is None):
        g = grad(delta)
        delta = tuple(d - r * gi for d, gi, r in zip(delta, g, rates))
    with torch.no_grad():
        return _taylor_outputs(params0, delta, x, net, order).detach()


# ------------------------------------------------------------------------------------------
# trained ensembles
# ------------------------------------------------------------------------------------------

def mirrored(ens: MLPEnsemble) -> MLPEnsemble:
    """The ensemble followed by its mirror image: every network again with W^{(L)}, b^{(L)} → −W^{(L)}, −b^{(L)}.

    The initialization distribution is symmetric under this flip, so each mirror is an equally
    likely network; it starts from the opposite function, z(0) → −z(0), with the same NTK.
    Averaging a network with its mirror (antithetic sampling) cancels the part of any
    trained output that is odd in z(0) — for an infinite-width network everything except
    the NTK predictor's mean Θ_δA R y — so the mean of trained outputs is measured with far
    smaller error bars. Pairs are independent of each other, so per-pair averages are
    independent samples.

    Returns
    -------
    MLPEnsemble of 2M networks: networks 0..M−1 are ``ens``'s, M..2M−1 their mirrors (copies;
    ``ens`` is not changed).
    """
    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    out = ens.clone()
    out.weights = [torch.cat([W, W]) for W in ens.weights]
    out.biases = [torch.cat([b, b]) for b in ens.biases]
    M = ens.n_networks
    out.weights[-1][M:].neg_()
    out.biases[-1][M:].neg_()
    out.n_networks = 2 * M
    return out


def train_and_record(spec: EnsembleSpec, x, y, n_train: int, eta: float, checkpoints,
                     n_networks: int, seed: int = 0, mirror: bool = True, lam_b=None, lam_W=None,
                     chunk: int | None = None, desc: str | None = None) -> np.ndarray:
    """Train an ensemble by batched gradient descent and record every network's outputs at checkpoints  (§10.1–10.2).

    Networks are drawn, trained and read chunk by chunk (:func:`dlt_companion.ensembles.map_networks`),
    so any number of them runs through bounded memory; within a chunk all networks (and
    their mirrors) are trained at once by :func:`dlt_companion.training.gradient_descent`
    on the first ``n_train`` inputs, and their outputs on all inputs are recorded after each
    checkpoint's number of steps.

    Parameters
    ----------
    spec : EnsembleSpec
        Architecture and precision (``net.spec()``).
    x : array [N, n_0]
        All inputs, training inputs first.
    y : array [n_train] or [n_train, n_L]
        Training targets.
    n_train : int in 1..N
    eta : float > 0
        Global learning rate.
    checkpoints : increasing sequence of int ≥ 0
        Step counts at which outputs are recorded (0 records the initialization).
    n_networks : int
        Networks drawn (with ``mirror``, each comes with its mirror: 2·n_networks trained).
    seed : int
    mirror : bool
        Also train every network's mirror image (:func:`mirrored`).
    lam_b, lam_W : learning-rate tensor (None: the description's)
    chunk : int, optional
        Networks per chunk (default: what the memory budget allows for N inputs).
    desc : str, optional
        Label of tqdm progress bars (chunks and steps).

    Returns
    -------
    array [n_networks, 2 (mirror) or 1, len(checkpoints), N, n_L]
        float64; axis 1 is (network, its mirror).
    """
    from .training import gradient_descent

    if not isinstance(spec, EnsembleSpec):
        raise ValueError(f"spec must be an EnsembleSpec (net.spec()), got {type(spec).__name__}")
    cps = [int(c) if isinstance(c, numbers.Integral) and not isinstance(c, bool) else None
           for c in np.atleast_1d(checkpoints)]
    if not cps or None in cps or cps[0] < 0 or any(b <= a for a, b in zip(cps, cps[1:])):
        raise ValueError(f"checkpoints must be a strictly increasing sequence of step counts >= 0, "
                         f"got {checkpoints!r}")
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"x must have shape [N, n_0], got {x.shape}")
    N = x.shape[0]
    if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or not 1 <= n_train <= N:
        raise ValueError(f"n_train must be an integer in 1..{N}, got {n_train!r}")

    def run(ens: MLPEnsemble) -> torch.Tensor:
        M = ens.n_networks
        both = mirrored(ens) if mirror else ens.clone()
        out, done = [], 0
        for c in cps:
            if c > done:
                gradient_descent(both, x[:n_train], y, eta, c - done, lam_b, lam_W, desc=desc)
                done = c
            out.append(both.output(x))                                   # [kM, N, n_L]
        z = torch.stack(out, 1)                                          # [kM, C, N, n_L]
        return z.reshape(2 if mirror else 1, M, *z.shape[1:]).transpose(0, 1)

    return map_networks(run, spec, n_networks, seed=seed, chunk=chunk, desc=desc,
                        n_inputs=4 * N)


def width_extrapolation(widths, values, covs, order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The n → ∞ limit of measurements at several widths, by a fit polynomial in 1/n.

    Finite-width measurements X(n) = X_∞ + a/n + O(1/n²) (the book's 1/n expansion) are fit by
    ordinary least squares in x = 1/n with a polynomial of degree ``order``; the intercept is
    a fixed linear combination Σ_w c_w X(n_w) of the measurements (c_w from the widths alone,
    never from the data), so its covariance is Σ_w c_w² C_w for independent ensembles.

    Parameters
    ----------
    widths : sequence of W ≥ order + 1 positive ints
    values : array [W, ...]
        The measurement at each width (any trailing shape, flattened for the covariance).
    covs : array [W, P, P]
        Covariance of each width's flattened measurement (e.g. :func:`dlt_companion.stats.covariance`).
    order : int ≥ 1
        1: X_∞ + a/n; 2: also b/n².

    Returns
    -------
    value : array [...]
        The extrapolated X_∞.
    cov : array [P, P]
        Its covariance.
    """
    ns = np.asarray(_checks.widths(widths, "widths"), dtype=float)
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    if len(ns) < order + 1:
        raise ValueError(f"an order-{order} extrapolation needs at least {order + 1} widths, "
                         f"got {len(ns)}")
    values = np.asarray(values, dtype=float)
    covs = np.asarray(covs, dtype=float)
    if values.shape[0] != len(ns) or covs.shape[0] != len(ns):
        raise ValueError(f"values and covs must have one entry per width ({len(ns)}), got "
                         f"{values.shape[0]} and {covs.shape[0]}")
    P = int(np.prod(values.shape[1:], dtype=int))
    if covs.shape[1:] != (P, P):
        raise ValueError(f"covs must be [W, P, P] with P = {P}, got {covs.shape}")
    design = np.vander(1.0 / ns, order + 1, increasing=True)          # [W, order+1]
    c = np.linalg.pinv(design)[0]                                    # intercept weights
    value = np.tensordot(c, values, axes=1)
    cov = np.tensordot(c ** 2, covs, axes=1)
    return value, cov
