"""Batched full-batch gradient descent of a whole ensemble of real networks  (§7.1–7.2 of [RY]).

Every network of an :class:`~dlt_companion.ensembles.MLPEnsemble` is trained on the same
inputs with the book's loss and learning-rate tensor,

    L = ½ Σ_{α ∈ train} Σ_i (z^{(L)}_{i;α} − y_{i;α})²,
    b^{(l)} ← b^{(l)} − η λ_b^{(l)} ∂L/∂b^{(l)},     W^{(l)} ← W^{(l)} − η (λ_W^{(l)}/n_{l−1}) ∂L/∂W^{(l)},

so that to first order in η the outputs move by −η Σ_{α} Ĥ_{αβ} ε_β with the NTK of
:mod:`dlt_companion.tangent`. The M networks are one batched tensor program: one forward
and one backward over the stacked parameters per step (the gradient of the summed loss
of independent networks is each network's own gradient), no Python loop over networks.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from . import _checks
from .ensembles import MLPEnsemble, apply
from .progress import progress
from .tangent import learning_rates

__all__ = ["gradient_descent", "loss", "targets"]

#: refuse runs longer than this many steps (a typo like steps=10**9 would hang)
MAX_STEPS = 10_000_000


def targets(ens: MLPEnsemble, y, n_inputs: int) -> torch.Tensor:
    """Targets as a tensor [B, n_L] (shared by all networks) or [M, B, n_L]  (§7.1 of [RY]).

    Parameters
    ----------
    ens : MLPEnsemble
    y : array or tensor [B], [B, n_L] or [M, B, n_L]
        [B] is allowed when the output width n_L is 1.
    n_inputs : int
        B, the number of training inputs.

    Returns
    -------
    tensor in the ensemble's dtype and device.
    """
    if (torch.is_tensor(y) and y.is_complex()) or (not torch.is_tensor(y) and np.iscomplexobj(y)):
        raise ValueError("targets y must be real")
    y = torch.as_tensor(y, dtype=ens.spec.dtype, device=ens.spec.device)
    n_L, M = ens.widths[-1], ens.n_networks
    if y.ndim == 1 and n_L == 1:
        y = y[:, None]
    allowed = {(n_inputs, n_L), (M, n_inputs, n_L)}
    if tuple(y.shape) not in allowed:
        raise ValueError(f"targets y must have shape [B, n_L] = [{n_inputs}, {n_L}] (or [B] when "
                         f"n_L = 1, or [M, B, n_L] = [{M}, {n_inputs}, {n_L}] per network), "
                         f"got {tuple(y.shape)}")
    if not torch.all(torch.isfinite(y)):
        raise ValueError("targets y must be finite")
    return y


def loss(ens: MLPEnsemble, x, y) -> torch.Tensor:
    """L = ½ Σ_α Σ_i (z^{(L)}_{i;α} − y_{i;α})² of every network  (§7.1 of [RY]).

    Parameters
    ----------
    ens : MLPEnsemble
    x : array or tensor [B, n_0]
    y : targets, as in :func:`targets`

    Returns
    -------
    tensor [M]
    """
    x = ens._inputs(x)
    y = targets(ens, y, x.shape[0])
    z = ens.output(x)
    return 0.5 * ((z - y) ** 2).sum(dim=(1, 2))


def gradient_descent(ens: MLPEnsemble, x, y, eta: float, steps: int, lam_b=None, lam_W=None,
                     desc: str | None = None) -> torch.Tensor:
    """Train all M networks by full-batch gradient descent, in place  (§7.2 of [RY]).

    Parameters
    ----------
    ens : MLPEnsemble
        Its ``weights`` and ``biases`` are updated in place.
    x : array or tensor [B, n_0]
        Training inputs.
    y : array or tensor [B, n_L], [B] (n_L = 1) or [M, B, n_L]
        Targets, shared by all networks or one set per network.
    eta : float > 0
        Global learning rate η.
    steps : int ≥ 0
        Number of full-batch steps.
    lam_b, lam_W : float, sequence of L, or None
        Learning-rate tensor: λ_b^{(l)} for biases, λ_W^{(l)}/n_{l−1} for weights. None: the
        description's (``ens.net.lam_b``/``lam_W``, default 1.0).
    desc : str, optional
        Label of a tqdm progress bar over steps.

    Returns
    -------
    tensor [steps + 1, M]
        The loss of every network before each step and after the last, float64 on the CPU.

    Raises
    ------
    ValueError
        For bad shapes, rates or counts, and if a network's loss becomes non-finite
        (η too large for this architecture: the message names the step).
    """
    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    eta = _checks.real(eta, "eta")
    if not eta > 0:
        raise ValueError(f"the learning rate eta must be > 0, got {eta!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps = {steps} is more than {MAX_STEPS}; train in several calls")
    x = ens._inputs(x)
    y = targets(ens, y, x.shape[0])
    lam_b, lam_W = learning_rates(ens, lam_b, lam_W)
    net = ens.net
    L = ens.depth
    rates = ([eta * lw / n for lw, n in zip(lam_W, net.fan_in)] + [eta * lb for lb in lam_b])
    params = list(ens.weights) + list(ens.biases)
    losses = torch.empty(int(steps) + 1, ens.n_networks, dtype=torch.float64)
    for t in progress(range(int(steps) + 1), desc=desc, total=int(steps) + 1,
                      disable=desc is None):
        last = t == steps
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(not last) for p in params]
            z = apply(leaves[:L], leaves[L:], x, net.act, net.xi, net.gamma, layers="last")[0]
            per_net = 0.5 * ((z - y) ** 2).sum(dim=(1, 2))
            if not last:
                grads = torch.autograd.grad(per_net.sum(), leaves)
        losses[t] = per_net.detach().to("cpu", torch.float64)
        if not torch.all(torch.isfinite(losses[t])):
            bad = int((~torch.isfinite(losses[t])).sum())
            raise ValueError(f"the loss of {bad} of {ens.n_networks} networks became non-finite "
                             f"at step {t} (eta = {eta:g} is too large for this architecture and "
                             "learning-rate tensor)")
        if last:
            break
        with torch.no_grad():
            for p, g, r in zip(params, grads, rates):
                if r:
                    p.sub_(g, alpha=r)
    return losses
