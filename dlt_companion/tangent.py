"""The empirical neural tangent kernel of real networks, for a whole ensemble at once.

With the book's learning-rate tensor (§7.2, §8.0 of [RY]: λ_b^{(l)} for the biases and
λ_W^{(l)}/n_{l−1} for the weights of layer l) the NTK of the layer-l preactivations is

    Ĥ^{(l)}_{i1i2;α1α2} = Σ_μ λ_μ (∂z^{(l)}_{i1;α1}/∂θ_μ)(∂z^{(l)}_{i2;α2}/∂θ_μ),

summed over the parameters θ_μ of layers 1..l. It is a random object at initialization
(Chapter 8 computes its statistics) and governs the first-order change of the outputs
under one gradient-descent step (§7.2).

Two exact ways to compute it, both batched over the M networks (no Python loop over
networks) and cross-checked in the tests against :func:`torch.func.jacrev`:

* :func:`empirical_ntk` — Jacobian contraction. For each layer k ≤ l let
  g^{(k)}_{α} = ∂z^{(l)}_α/∂z^{(k)}_α ([n_l, n_k] per input, by the chain rule
  g^{(k)} = g^{(k+1)} (ξ^{(k+1)} W^{(k+1)} diag σ'(z^{(k)}) + γ^{(k+1)} 1)); since
  ∂z^{(k)}_j/∂b^{(k)}_j = ξ^{(k)} and ∂z^{(k)}_j/∂W^{(k)}_{jm} = ξ^{(k)} σ^{(k−1)}_m,
  layer k contributes ξ^{(k)2} [λ_b^{(k)} + (λ_W^{(k)}/n_{k−1}) σ^{(k−1)}_{α1}·σ^{(k−1)}_{α2}]
  (g^{(k)}_{α1} g^{(k)ᵀ}_{α2}) (σ^{(0)} = x). Cheapest for one layer with few outputs.
* :func:`ntk_by_layer` — the book's forward equation (§8.0),
  Ĥ^{(l+1)} = ξ² δ_{i1i2}[λ_b + (λ_W/n_l) σ_{α1}·σ_{α2}] + J_{α1} Ĥ^{(l)} J_{α2}ᵀ with
  J_α = ξ W diag σ'(z^{(l)}_α) + γ 1, giving every layer's NTK in one pass.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import torch

from . import _checks
from .ensembles import MLPEnsemble, apply

__all__ = ["empirical_ntk", "ntk_by_layer", "learning_rates", "dntk", "dntk_preactivation_moments"]


def learning_rates(ens: MLPEnsemble, lam_b=None, lam_W=None) -> tuple[tuple, tuple]:
    """Per-layer (λ_b^{(l)}, λ_W^{(l)}) for an ensemble: the arguments, or its description's  (§7.2).

    Parameters
    ----------
    ens : MLPEnsemble
    lam_b, lam_W : float ≥ 0, sequence of L, or None
        None takes the value of ``ens.net`` (default 1.0 for every layer).

    Returns
    -------
    lam_b, lam_W : tuples of L floats (the weights' rate is λ_W^{(l)}/n_{l−1}).
    """
    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    L = ens.depth
    b = ens.net.lam_b if lam_b is None else _checks.per_layer(lam_b, L, "lam_b", _checks.nonnegative)
    w = ens.net.lam_W if lam_W is None else _checks.per_layer(lam_W, L, "lam_W", _checks.nonnegative)
    return b, w


def _layer(ens: MLPEnsemble, layer) -> int:
    if layer is None:
        return ens.depth
    layer = _checks.width(layer, "layer")
    if layer > ens.depth:
        raise ValueError(f"layer must be in 1..{ens.depth} (the network's depth), got {layer}")
    return layer


def _activations(ens: MLPEnsemble, x, l: int):
    """x [B, n0], preactivations z^{(1..l)} [M, B, n_k], and σ'(z^{(1..l−1)})."""
    x = ens._inputs(x)
    zs = ens.forward(x)[:l]
    return x, zs


def empirical_ntk(ens: MLPEnsemble, x, lam_b=None, lam_W=None, layer: int | None = None) -> torch.Tensor:
    """The NTK Ĥ^{(l)}_{i1i2;α1α2} of every network of an ensemble  (§7.2, §8.0 of [RY]).

    Parameters
    ----------
    ens : MLPEnsemble
        M networks (parameters are read, not changed).
    x : array or tensor [B, n_0]
        Inputs.
    lam_b, lam_W : float, sequence of L, or None
        Learning rates: λ_b^{(k)} for the biases of layer k and λ_W^{(k)}/n_{k−1} for its
        weights. None: the ensemble description's (``ens.net.lam_b``, default 1.0).
    layer : int, optional
        Which layer's preactivations (1..L; default the output layer L). The NTK of layer l
        sums over the parameters of layers 1..l.

    Returns
    -------
    tensor [M, n_l, n_l, B, B]
        Ĥ[m, i1, i2, α1, α2] in the ensemble's dtype and device.

    Notes
    -----
    Jacobian contraction (module docstring): cost M·B·n_l·Σ_k n_k n_{k+1} for the
    Jacobians plus M·B²·n_l²·Σ_k n_k for the contraction, memory M·B·n_l·max n_k.
    """
    l = _layer(ens, layer)
    lam_b, lam_W = learning_rates(ens, lam_b, lam_W)
    net = ens.net
    x, zs = _activations(ens, x, l)
    M, B = zs[0].shape[0], x.shape[0]
    n_l = net.widths[l - 1]
    act = net.act
    eye = torch.eye(n_l, dtype=zs[0].dtype, device=zs[0].device)
    g = eye.expand(M, B, n_l, n_l).contiguous()           # ∂z^{(l)}/∂z^{(l)} per input
    H = torch.zeros(M, n_l, n_l, B, B, dtype=zs[0].dtype, device=zs[0].device)
    for k in range(l, 0, -1):                              # layer k = l, l-1, ..., 1
        prev = x.expand(M, B, x.shape[1]) if k == 1 else act.torch[0](zs[k - 2])   # σ^{(k-1)}
        overlap = torch.einsum("mak,mbk->mab", prev, prev)                         # [M, B, B]
        factor = net.xi[k - 1] ** 2 * (lam_b[k - 1] + lam_W[k - 1] / net.fan_in[k - 1] * overlap)
        gg = torch.einsum("maik,mbjk->mijab", g, g)                                # [M, n, n, B, B]
        H += gg * factor[:, None, None]
        if k > 1:                                          # g^{(k-1)} = g^{(k)} ∂z^{(k)}/∂z^{(k-1)}
            W = ens.weights[k - 1]                                                 # [M, n_k, n_{k-1}]
            d = act.torch[1](zs[k - 2])                                            # [M, B, n_{k-1}]
            gW = torch.bmm(g.reshape(M, B * n_l, -1), W).reshape(M, B, n_l, -1)   # no copies of W
            new = net.xi[k - 1] * gW * d[:, :, None, :]
            if net.gamma[k - 1] != 0.0:
                new = new + net.gamma[k - 1] * g
            g = new
    return H


def _sandwich(J: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """[M, B, B, n, n]: J_α H_{αβ} J_βᵀ for J [M, B, n, n'] and H [M, B, B, n', n'], as two bmm's."""
    M, B, n, k = J.shape
    # left: rows of H_{αβ} by J_α, for all β at once -> [M, B(α), n, B(β), k]
    left = torch.bmm(J.reshape(M * B, n, k), H.permute(0, 1, 3, 2, 4).reshape(M * B, k, B * k))
    left = left.reshape(M, B, n, B, k).permute(0, 3, 1, 2, 4)          # [M, β, α, n, k]
    # right: columns by J_β -> [M, β, α, n, n]
    right = torch.bmm(left.reshape(M * B, B * n, k), J.reshape(M * B, n, k).transpose(1, 2))
    return right.reshape(M, B, B, n, n).permute(0, 2, 1, 3, 4)


def ntk_by_layer(ens: MLPEnsemble, x, lam_b=None, lam_W=None) -> list[torch.Tensor]:
    """The NTK of every layer, Ĥ^{(1)}, …, Ĥ^{(L)}, by the forward equation  (§8.0 of [RY]).

    Ĥ^{(1)} = δ_{i1i2}[λ_b^{(1)} + λ_W^{(1)} x_{α1}·x_{α2}/n_0] (deterministic), and
    Ĥ^{(l+1)} = ξ² δ_{i1i2}[λ_b + (λ_W/n_l) σ_{α1}·σ_{α2}] + J_{α1} Ĥ^{(l)} J_{α2}ᵀ with
    J_α = ξ^{(l+1)} W^{(l+1)} diag σ'(z^{(l)}_α) + γ^{(l+1)} 1.

    Parameters
    ----------
    ens, x, lam_b, lam_W : as in :func:`empirical_ntk`

    Returns
    -------
    list of L tensors [M, n_l, n_l, B, B]

    Notes
    -----
    Cost M·B²·Σ_l 2 n_l² n_{l+1} and memory M·B²·n_l² per layer: the natural choice when
    every layer's NTK is wanted (Chapter 8); for the output layer alone
    :func:`empirical_ntk` is cheaper.
    """
    lam_b, lam_W = learning_rates(ens, lam_b, lam_W)
    net = ens.net
    x, zs = _activations(ens, x, ens.depth)
    M, B = zs[0].shape[0], x.shape[0]
    kw = dict(dtype=zs[0].dtype, device=zs[0].device)
    out = []
    prev = x.expand(M, B, x.shape[1])
    H = None                                               # [M, B, B, n, n] while iterating
    for k in range(1, ens.depth + 1):
        n = net.widths[k - 1]
        overlap = torch.einsum("mak,mbk->mab", prev, prev)
        diag = net.xi[k - 1] ** 2 * (lam_b[k - 1] + lam_W[k - 1] / net.fan_in[k - 1] * overlap)
        new = diag[..., None, None] * torch.eye(n, **kw)
        if H is not None:
            d = net.act.torch[1](zs[k - 2])                                        # [M, B, n_{k-1}]
            J = net.xi[k - 1] * ens.weights[k - 1][:, None] * d[:, :, None, :]    # [M, B, n_k, n_{k-1}]
            if net.gamma[k - 1] != 0.0:
                J = J + net.gamma[k - 1] * torch.eye(n, **kw)
            new = new + _sandwich(J, H)
        H = new
        out.append(H.permute(0, 3, 4, 1, 2))
        prev = net.act.torch[0](zs[k - 1])
    return out


# ------------------------------------------------------------------------------------------
# The differential of the NTK (Chapter 11)
# ------------------------------------------------------------------------------------------

def _ntk_of(weights, biases, x, net, lam_b, lam_W, l: int, with_tangents: bool = False):
    """Ĥ^{(l)} [M, n_l, n_l, B, B] as a pure function of the parameters (torch.func-ready).

    The Jacobian contraction of :func:`empirical_ntk`, written over explicit parameter
    tensors so that ``torch.func.jvp`` can differentiate it. With ``with_tangents`` it also
    returns, for every output neuron i0 and input α0, the direction λ_μ ∂z^{(l)}_{i0;α0}/∂θ_μ
    in parameter space: tensors [M, n_l, B, *θ_shape] for the weights and biases of layers 1..l.
    """
    act = net.act
    M, B = weights[0].shape[0], x.shape[0]
    zs = apply(weights[:l], biases[:l], x, act, net.xi[:l], net.gamma[:l])
    n_l = net.widths[l - 1]
    eye = torch.eye(n_l, dtype=x.dtype, device=x.device)
    g = eye.expand(M, B, n_l, n_l)                            # ∂z^{(l)}_α/∂z^{(k)}_α, [M, B, n_l, n_k]
    H = 0.0
    tW, tb = [None] * l, [None] * l
    for k in range(l, 0, -1):
        prev = x.expand(M, B, x.shape[1]) if k == 1 else act.torch[0](zs[k - 2])     # σ^{(k-1)}
        xi = net.xi[k - 1]
        overlap = torch.einsum("mak,mbk->mab", prev, prev)
        factor = xi ** 2 * (lam_b[k - 1] + lam_W[k - 1] / net.fan_in[k - 1] * overlap)
        H = H + torch.einsum("maik,mbjk->mijab", g, g) * factor[:, None, None]
        if with_tangents:                                     # λ ∂z_{i0;α0}/∂θ of layer k
            tb[k - 1] = (lam_b[k - 1] * xi) * g.permute(0, 2, 1, 3)                # [M, n_l, B, n_k]
            tW[k - 1] = (lam_W[k - 1] / net.fan_in[k - 1] * xi) * torch.einsum(
                "maij,mak->miajk", g, prev)                                        # [M, n_l, B, n_k, n_{k-1}]
        if k > 1:
            d = act.torch[1](zs[k - 2])
            new = xi * torch.matmul(g, weights[k - 1][:, None]) * d[:, :, None, :]
            if net.gamma[k - 1] != 0.0:
                new = new + net.gamma[k - 1] * g
            g = new
    return (H, tW, tb) if with_tangents else H


def dntk(ens: MLPEnsemble, x, lam_b=None, lam_W=None, layer: int | None = None) -> torch.Tensor:
    """The differential of the NTK, dĤ_{i0i1i2;α0α1α2}, of every network of an ensemble  (§11.1 of [RY]).

        dĤ^{(l)}_{i0i1i2;α0α1α2} = Σ_μ λ_μ (∂z^{(l)}_{i0;α0}/∂θ_μ) (∂Ĥ^{(l)}_{i1i2;α1α2}/∂θ_μ),

    summed over the parameters of layers 1..l with the learning-rate tensor (λ_b for
    biases, λ_W/n_{k−1} for weights): the derivative of the NTK along the parameter step
    that moves output i0 on input α0. One gradient-descent step with residuals
    ε_{i0;α̃} = z_{i0;α̃} − y_{i0;α̃} on the training inputs changes the NTK by
    ΔĤ_{i1i2;α1α2} = −η Σ_{i0,α̃} ε_{i0;α̃} dĤ_{i0i1i2;α̃α1α2} + O(η²). It vanishes in the
    first layer (z^{(1)} is linear in its parameters, so Ĥ^{(1)} is constant) and is
    symmetric under (i1, α1) ↔ (i2, α2).

    Parameters
    ----------
    ens : MLPEnsemble
        M networks (parameters are read, not changed).
    x : array or tensor [B, n_0]
        Inputs.
    lam_b, lam_W : float, sequence of L, or None
        Learning rates (None: the ensemble description's, default 1.0), as in
        :func:`empirical_ntk`.
    layer : int, optional
        Which layer's preactivations (1..L; default the output layer L).

    Returns
    -------
    tensor [M, n_l, n_l, n_l, B, B, B]
        dĤ[m, i0, i1, i2, α0, α1, α2] in the ensemble's dtype and device.

    Notes
    -----
    Forward mode: the NTK is written as a pure function of the parameters (the Jacobian
    contraction of :func:`empirical_ntk`) and ``torch.func.jvp`` differentiates it along
    the n_l·B directions λ ∂z_{i0;α0}/∂θ (built from the same backward Jacobians), vmapped
    over directions and batched over networks. Cost ≈ 3 n_l·B NTK evaluations; memory
    n_l·B·M times one network's parameters — stream large ensembles with
    :func:`dlt_companion.ensembles.map_networks`. Tested exactly against a nested
    ``torch.func.jacrev`` (the Jacobian of the NTK) on small networks.
    """
    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    l = _layer(ens, layer)
    lam_b, lam_W = learning_rates(ens, lam_b, lam_W)
    net = ens.net
    x = ens._inputs(x)
    weights = tuple(W.detach() for W in ens.weights[:l])
    biases = tuple(b.detach() for b in ens.biases[:l])
    M, B, n_l = ens.n_networks, x.shape[0], net.widths[l - 1]
    with torch.no_grad():
        _, tW, tb = _ntk_of(weights, biases, x, net, lam_b, lam_W, l, with_tangents=True)
    D = n_l * B
    # directions first: [D, M, *θ_shape]
    tW = tuple(t.reshape(M, D, *t.shape[3:]).transpose(0, 1) for t in tW)
    tb = tuple(t.reshape(M, D, *t.shape[3:]).transpose(0, 1) for t in tb)

    def H_of(params):
        return _ntk_of(params[0], params[1], x, net, lam_b, lam_W, l)

    def along(tangent):
        return torch.func.jvp(H_of, ((weights, biases),), (tangent,))[1]

    dH = torch.func.vmap(along)((tW, tb))                    # [D, M, n_l, n_l, B, B]
    dH = dH.reshape(n_l, B, M, n_l, n_l, B, B)
    return dH.permute(2, 0, 3, 4, 1, 5, 6).contiguous()


def dntk_preactivation_moments(ens: MLPEnsemble, x, lam_b=None, lam_W=None) -> torch.Tensor:
    """Per-network estimators of the dNTK–preactivation correlators P/n_{L−1} and Q/n_{L−1}  (§11.2 of [RY]).

    For distinct output neurons i ≠ j, E[dĤ_{ijj;α0α1α2} z_{i;α3}] = P_{α0α1α2α3}/n_{L−1} and
    E[dĤ_{iij;α0α1α2} z_{j;α3}] = Q_{α0α1α2α3}/n_{L−1} (normalization of
    :func:`dlt_companion.flows.dntk_statistics`). Each network's average over its
    n_L(n_L − 1) ordered pairs of output neurons is an unbiased estimator of these; the
    networks are the independent samples.

    Parameters
    ----------
    ens : MLPEnsemble
        Output width n_L ≥ 2 (the output layer's fan-in n_{L−1} is the width that sets 1/n).
    x : array or tensor [B, n_0]
    lam_b, lam_W : as in :func:`dntk`

    Returns
    -------
    tensor [M, 2, B, B, B, B]
        [:, 0] estimates P/n_{L−1}, [:, 1] estimates Q/n_{L−1}, indices [α0, α1, α2, α3].
    """
    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    n_L = ens.net.widths[-1]
    if n_L < 2:
        raise ValueError(f"the dNTK's index structures need two distinct output neurons: the output "
                         f"width is {n_L}; use n_L >= 2 (it does not enter P, Q)")
    d = dntk(ens, x, lam_b, lam_W)                                   # [M, i0, i1, i2, a0, a1, a2]
    z = ens.output(x)                                                # [M, a3, i]
    eye = torch.eye(n_L, dtype=d.dtype, device=d.device)
    pairs = n_L * (n_L - 1)
    diag_P = torch.einsum("mijjabc->mijabc", d)                      # dĤ_{ijj}
    P = torch.einsum("mijabc,mdi->mabcd", diag_P * (1 - eye)[None, :, :, None, None, None], z)
    diag_Q = torch.einsum("miijabc->mijabc", d)                      # dĤ_{iij}
    Q = torch.einsum("mijabc,mdj->mabcd", diag_Q * (1 - eye)[None, :, :, None, None, None], z)
    return torch.stack([P, Q], 1) / pairs
