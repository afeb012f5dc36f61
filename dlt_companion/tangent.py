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
    g = eye.expand(M, B, n_l, n_l).contiguous()               # ∂z^{(l)}_α/∂z^{(k)}_α, [M, B, n_l, n_k]
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
            gW = torch.bmm(g.reshape(M, B * n_l, -1), weights[k - 1]).reshape(M, B, n_l, -1)
            new = xi * gW * d[:, :, None, :]
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


# ==========================================================================================
# Chapter ∞ (§∞.1): the second-order differentials — the ddNTKs — of every network.
# Section owned by the ch12 work (issue 15); the dNTK section of Chapter 11 is separate.
# ==========================================================================================
#
# With the λ-weighted gradients u_{p} = λ ∂z_p/∂θ of every output p = (i, α) (λ_b for biases,
# λ_W/n_{l−1} for weights), all differentials of the book are contractions of the derivatives
# of z with these directions:
#
#   NTK       Ĥ_{pq}        = ⟨∂z_p, u_q⟩                           = Σ_μ λ_μ ∂_μ z_p ∂_μ z_q
#   d2        T_{p;qr}      = ∂²z_p[u_q, u_r]                       (second derivative, two gradients)
#   d3        I_{p;qrs}     = ∂³z_p[u_q, u_r, u_s]                  (third derivative, three gradients)
#   d2d2      II_{pq;rs}    = ⟨∂²z_p·u_r, λ ∂²z_q·u_s⟩              (two Hessian-vector products)
#
# and in terms of these (the identities are derived in chapters/12_end_of_training.md)
#
#   dNTK      dĤ_{p0p1p2}   = Σ_μ λ_μ ∂_μ z_{p0} ∂_μ Ĥ_{p1p2}        = T_{p1;p0p2} + T_{p2;p0p1},
#   ddNTK I   dd_IĤ_{p0p1p2p3}  = Σ_μν λ_μλ_ν ∂_μ z_{p0} ∂_ν z_{p1} ∂_μ∂_ν Ĥ_{p2p3}
#                           = I_{p2;p3p0p1} + I_{p3;p2p0p1} + II_{p2p3;p0p1} + II_{p2p3;p1p0},
#   ddNTK II  dd_IIĤ_{p1p2p3p4} = Σ_μν λ_μλ_ν ∂_μ z_{p1} ∂_μ∂_ν z_{p2} ∂_ν Ĥ_{p3p4}
#                           = II_{p2p3;p1p4} + II_{p2p4;p1p3},
#
# so that one gradient-descent step (Δθ = −η λ Σ_p ∂z_p ε_p) changes the dNTK by
# ΔdĤ_{p0p1p2} = −η Σ_p ε_p [dd_IĤ_{p0 p p1 p2} + dd_IIĤ_{p p0 p1 p2}] + O(η²).

from typing import NamedTuple  # noqa: E402  (kept inside this chapter's section)

__all__ += ["Differentials", "differentials", "ddntk", "ddntk_moments", "composite"]


class Differentials(NamedTuple):
    """Derivatives of the outputs of every network, contracted with λ-weighted gradients  (§∞.1).

    Indices are written as in :func:`empirical_ntk`: neurons first, then inputs. With
    u_{j;β} = λ ∂z_{j;β}/∂θ (λ_b for biases, λ_W^{(l)}/n_{l−1} for weights of layer l):

    Attributes
    ----------
    ntk : tensor [M, n, n, B, B]
        Ĥ_{i1i2;α1α2} = ⟨∂z_{i1;α1}, u_{i2;α2}⟩.
    d2 : tensor [M, n, n, n, B, B, B]
        T_{i0;i1i2;α0α1α2} = ∂²z_{i0;α0}[u_{i1;α1}, u_{i2;α2}] (symmetric in the last two pairs).
    d3 : tensor [M, n, n, n, n, B, B, B, B] or None
        I_{i0;i1i2i3} = ∂³z_{i0}[u_{i1}, u_{i2}, u_{i3}] (symmetric in the last three pairs).
    d2d2 : tensor [M, n, n, n, n, B, B, B, B] or None
        II_{i0i1;i2i3} = ⟨∂²z_{i0}·u_{i2}, λ ∂²z_{i1}·u_{i3}⟩ (symmetric under (i0,i2) ↔ (i1,i3)).

    Here n = n_L (the output width) and B the number of inputs.
    """

    ntk: torch.Tensor
    d2: torch.Tensor
    d3: torch.Tensor | None
    d2d2: torch.Tensor | None

    def dntk(self) -> torch.Tensor:
        """The dNTK dĤ_{i0i1i2;α0α1α2} = Σ_μ λ_μ ∂_μ z_{i0;α0} ∂_μ Ĥ_{i1i2;α1α2}  (§11.1)  [M, n,n,n, B,B,B]."""
        T = composite(self.d2, 3)
        return _split(T.permute(0, 2, 1, 3) + T.permute(0, 2, 3, 1), 3, self.d2.shape[1])

    def ddntk(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two ddNTKs (dd_IĤ, dd_IIĤ) of the module section's comment  (§∞.1); each [M, n×4, B×4]."""
        if self.d3 is None or self.d2d2 is None:
            raise ValueError("these differentials were computed with order=2; call "
                             "tangent.differentials(..., order=3) for the ddNTKs")
        n = self.d2.shape[1]
        I, II = composite(self.d3, 4), composite(self.d2d2, 4)
        # dd_I[p0,p1,p2,p3] = I[p2,p3,p0,p1] + I[p3,p2,p0,p1] + II[p2,p3,p0,p1] + II[p2,p3,p1,p0]
        dd1 = (I.permute(0, 3, 4, 1, 2) + I.permute(0, 3, 4, 2, 1)
               + II.permute(0, 3, 4, 1, 2) + II.permute(0, 4, 3, 1, 2))
        # dd_II[p1,p2,p3,p4] = II[p2,p3,p1,p4] + II[p2,p4,p1,p3]
        dd2 = II.permute(0, 3, 1, 2, 4) + II.permute(0, 3, 1, 4, 2)
        return _split(dd1, 4, n), _split(dd2, 4, n)


def composite(t: torch.Tensor, k: int) -> torch.Tensor:
    """Per-network differentials over composite indices p = i·B + α (neuron-major)  (§∞.2).

    The differentials of this module are indexed [M, i_1..i_k, α_1..α_k] (k output neurons,
    then k inputs); the end-of-training dynamics of :mod:`dlt_companion.finite_width` use one
    composite index per output, p = (i, α).

    Parameters
    ----------
    t : tensor [M, n_L × k, B × k]
        E.g. the NTK of :func:`empirical_ntk` (k = 2), or ``Differentials.d2`` (k = 3).
    k : int ≥ 1
        Number of (neuron, input) slots.

    Returns
    -------
    tensor [M, P × k] with P = n_L·B
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (the number of slots), got {k!r}")
    if not torch.is_tensor(t) or t.ndim != 1 + 2 * k:
        raise ValueError(f"t must be a tensor [M, n_L x {k}, B x {k}] with {1 + 2 * k} dimensions, "
                         f"got {tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
    M, n, B = t.shape[0], t.shape[1], t.shape[-1]
    if tuple(t.shape[1:]) != (n,) * k + (B,) * k:
        raise ValueError(f"t must be [M, n_L x {k}, B x {k}] with equal neuron and equal input sizes, "
                         f"got {tuple(t.shape)}")
    order = [0] + [x for j in range(k) for x in (1 + j, 1 + k + j)]
    return t.permute(*order).reshape((M,) + (n * B,) * k)


def _split(t: torch.Tensor, k: int, n: int) -> torch.Tensor:
    """Inverse of :func:`composite`: [M, P×k] -> [M, n×k, B×k]."""
    M, P = t.shape[0], t.shape[1]
    B = P // n
    t = t.reshape((M,) + (n, B) * k)
    order = [0] + [1 + 2 * j for j in range(k)] + [2 + 2 * j for j in range(k)]
    return t.permute(*order)


def _output_function(ens: MLPEnsemble, x: torch.Tensor):
    """z of one network as a flat vector [n_L·B] (p = i·B + α) of its parameter tuple."""
    from .ensembles import apply

    net, L = ens.net, ens.depth

    def f(params):
        z = apply(params[:L], params[L:], x, net.act, net.xi, net.gamma, layers="last")[0]
        return z.transpose(-1, -2).reshape(-1)
    return f


def _network_differentials(f, rates, order: int):
    """Per-network differentials (vmapped over networks by the caller); composite indices."""
    from torch.func import jacrev, jvp, vmap

    def one(params):
        J = jacrev(f)(params)                                        # leaves [P, *shape]
        u = tuple(r * j for r, j in zip(rates, J))                   # λ-weighted gradients
        H = sum(torch.einsum("p...,q...->pq", j, v) for j, v in zip(J, u))

        def along(v):                                                # ∂z·v as a function of θ
            return lambda p: jvp(f, (p,), (v,))[1]

        # Hess z_a · u_b for every b: leaves [P(b), P(a), *shape] (reverse over forward)
        Hu = vmap(lambda v: jacrev(along(v))(params))(u)
        T = sum(torch.einsum("ba...,c...->abc", h, v) for h, v in zip(Hu, u))
        if order < 3:
            return H, T
        II = sum(r * torch.einsum("ca...,db...->abcd", h, h) for r, h in zip(rates, Hu))

        def third(vb, vc, vd):                                      # ∂³z[vb, vc, vd] for all a
            g = lambda p: jvp(along(vb), (p,), (vc,))[1]
            return jvp(g, (params,), (vd,))[1]
        over_d = vmap(third, in_dims=(None, None, 0))
        over_cd = vmap(over_d, in_dims=(None, 0, None))
        I = vmap(over_cd, in_dims=(0, None, None))(u, u, u)          # [P(b), P(c), P(d), P(a)]
        return H, T, I.permute(3, 0, 1, 2), II
    return one


def differentials(ens: MLPEnsemble, x, lam_b=None, lam_W=None, order: int = 3) -> Differentials:
    """NTK, second- and third-order output differentials of every network  (§7.2, §11.1, §∞.1 of [RY]).

    Exact derivatives from :mod:`torch.func` (Jacobians, Hessian-vector products by
    reverse-over-forward, third derivatives by nested ``jvp``), vmapped over the M networks
    of the ensemble (no Python loop over networks); the tests compare them with nested
    ``jacrev`` of a tiny network.

    Parameters
    ----------
    ens : MLPEnsemble
        M networks (read, not changed).
    x : array or tensor [B, n_0]
        Inputs.
    lam_b, lam_W : float, sequence of L, or None
        Learning-rate tensor (None: the description's, see :func:`empirical_ntk`).
    order : 2 or 3
        2 computes the NTK and d2 (enough for the dNTK); 3 adds d3 and d2d2 (the ddNTKs).

    Returns
    -------
    Differentials
        Fields ``ntk``, ``d2``, ``d3``, ``d2d2`` (class docstring), in the ensemble's dtype.

    Notes
    -----
    With P = n_L·B outputs and N parameters per network, memory is M·P²·N for the
    Hessian-vector products and time about (P + P³) forward-mode passes per network; use it
    on modest P (the chapters use n_L = 1, B ≤ 4) and stream large ensembles through
    :func:`dlt_companion.ensembles.map_networks`.
    """
    from torch.func import vmap

    if order not in (2, 3):
        raise ValueError(f"order must be 2 (NTK and d2) or 3 (also the ddNTK pieces), got {order!r}")
    lam_b, lam_W = learning_rates(ens, lam_b, lam_W)
    x = ens._inputs(x)
    net, L = ens.net, ens.depth
    rates = tuple(lw / n for lw, n in zip(lam_W, net.fan_in)) + tuple(lam_b)
    f = _output_function(ens, x)
    params = tuple(ens.weights) + tuple(ens.biases)
    with torch.enable_grad():
        out = vmap(_network_differentials(f, rates, order))(params)
    H, T, I, II = out if order == 3 else out + (None, None)
    n = net.widths[-1]
    return Differentials(_split(H, 2, n), _split(T, 3, n),
                         None if I is None else _split(I, 4, n),
                         None if II is None else _split(II, 4, n))


def ddntk(ens: MLPEnsemble, x, lam_b=None, lam_W=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ddNTKs, dd_IĤ and dd_IIĤ, of every network  (§∞.1 of [RY]).

    With λ-weighted gradients (λ_b for biases, λ_W^{(l)}/n_{l−1} for weights of layer l):

        dd_IĤ_{i0i1i2i3;α0α1α2α3}  = Σ_μν λ_μ λ_ν (∂z_{i0;α0}/∂θ_μ)(∂z_{i1;α1}/∂θ_ν)(∂²Ĥ_{i2i3;α2α3}/∂θ_μ∂θ_ν),
        dd_IIĤ_{i1i2i3i4;α1α2α3α4} = Σ_μν λ_μ λ_ν (∂z_{i1;α1}/∂θ_μ)(∂²z_{i2;α2}/∂θ_μ∂θ_ν)(∂Ĥ_{i3i4;α3α4}/∂θ_ν),

    so that one gradient-descent step at rate η changes the dNTK (:meth:`Differentials.dntk`) by
    ΔdĤ_{i0i1i2} = −η Σ_{j,β} ε_{j;β} [dd_IĤ_{i0 j i1 i2} + dd_IIĤ_{j i0 i1 i2}] + O(η²)
    (input indices carried with their neurons; ε = z − y on the training inputs).
    dd_IĤ is symmetric in its first two and in its last two (neuron, input) pairs;
    dd_IIĤ in its last two.

    Parameters
    ----------
    ens : MLPEnsemble
    x : array or tensor [B, n_0]
    lam_b, lam_W : float, sequence of L, or None
        As in :func:`empirical_ntk`.

    Returns
    -------
    dd_I, dd_II : tensors [M, n_L, n_L, n_L, n_L, B, B, B, B]
        Neuron indices first, then the input indices in the same order.
    """
    return differentials(ens, x, lam_b, lam_W, order=3).ddntk()


def ddntk_moments(ens: MLPEnsemble, x, lam_b=None, lam_W=None) -> torch.Tensor:
    """Per-network estimators of the ddNTK means R/n, S/n, T/n, U/n  (§∞.1 of [RY]).

    For distinct output neurons i ≠ j (normalization of :mod:`dlt_companion.flows.ddntk`):
    E[dd_IĤ_{iijj}] = R/n_{L−1}, E[dd_IĤ_{ijij}] = S/n_{L−1}, E[dd_IIĤ_{iijj}] = T/n_{L−1},
    E[dd_IIĤ_{ijij}] = U/n_{L−1}, input indices in the order of the neuron labels. Each
    network's average over its n_L(n_L − 1) ordered pairs is an unbiased estimator.

    Parameters
    ----------
    ens : MLPEnsemble
        Output width n_L ≥ 2.
    x : array or tensor [B, n_0]
    lam_b, lam_W : as in :func:`empirical_ntk`

    Returns
    -------
    tensor [M, 4, B, B, B, B]
        R, S, T, U estimates (divided by n_{L−1}), indices [α, β, γ, δ].
    """
    if not isinstance(ens, MLPEnsemble):
        raise ValueError(f"ens must be an MLPEnsemble, got {type(ens).__name__}")
    n = ens.widths[-1]
    if n < 2:
        raise ValueError(f"the ddNTKs' index structures need two distinct output neurons; the output "
                         f"width is {n} (use n_L >= 2; it does not enter R, S, T, U)")
    dd1, dd2 = ddntk(ens, x, lam_b, lam_W)
    off = 1.0 - torch.eye(n, dtype=dd1.dtype, device=dd1.device)
    w = off[None, :, :, None, None, None, None] / (n * (n - 1))
    pick = lambda t, spec: (torch.einsum(spec, t) * w).sum(dim=(1, 2))
    return torch.stack([pick(dd1, "miijjabcd->mijabcd"), pick(dd1, "mijijabcd->mijabcd"),
                        pick(dd2, "miijjabcd->mijabcd"), pick(dd2, "mijijabcd->mijabcd")], 1)
