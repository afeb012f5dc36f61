"""One description of a network, read by the theory and by the real networks alike.

The book's multilayer perceptron (§2.1 of [RY]) with widths n_0, n_1, …, n_L is

    z^{(1)}_i   = b^{(1)}_i + Σ_j W^{(1)}_{ij} x_j,
    z^{(l+1)}_i = ξ^{(l+1)} [b^{(l+1)}_i + Σ_j W^{(l+1)}_{ij} σ(z^{(l)}_j)] + γ^{(l+1)} z^{(l)}_i,

initialised (§2.3) with b^{(l)} ~ N(0, C_b^{(l)}) and W^{(l)}_{ij} ~ N(0, C_W^{(l)}/n_{l−1}),
and trained (§7.2) with the learning-rate tensor λ_b^{(l)} for biases and λ_W^{(l)}/n_{l−1}
for weights. The residual couplings ξ, γ of Appendix B default to ξ = 1, γ = 0 (the plain
MLP); the first layer is never residual.

:class:`MLP` holds all of this once. The infinite-width and 1/n recursions
(:mod:`dlt_companion.flows`) and the ensembles of real torch networks
(:mod:`dlt_companion.ensembles`) are both built from it, so that a notebook cannot compare a
theory and an experiment that disagree about a C_W, a λ or a width — the way
neural-tangents derives the init, apply and kernel functions of a layer from one
description.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import _checks
from .activations import Activation, get

__all__ = ["MLP"]


@dataclass(frozen=True)
class MLP:
    """Architecture, initialization and learning rates of a (residual) MLP  (§2.1, §2.3, §7.2, App. B).

    Every per-layer field accepts a number (the same for every layer) or a sequence of one
    value per layer, entry l−1 for layer l; it is stored as a tuple of length L.

    Parameters
    ----------
    n_in : int
        Input dimension n_0.
    widths : sequence of int
        Layer widths (n_1, …, n_L); the last is the output width.
    act : str or Activation
        Activation σ (registry name or object from :func:`dlt_companion.activations.get`).
    C_b : float ≥ 0 or sequence of L
        Bias variances C_b^{(l)}.
    C_W : float > 0 or sequence of L
        Weight variances C_W^{(l)} (weights have variance C_W^{(l)}/n_{l−1}).
    lam_b, lam_W : float ≥ 0 or sequence of L
        Learning rates λ_b^{(l)} of the biases and λ_W^{(l)} of the weights; the weights'
        learning rate is λ_W^{(l)}/n_{l−1} (§7.2).
    xi, gamma : float or sequence of L, optional
        Residual couplings (App. B): layer l ≥ 2 computes
        z^{(l)} = ξ^{(l)} [b + W σ(z^{(l−1)})] + γ^{(l)} z^{(l−1)}. Defaults ξ = 1, γ = 0.
        A number applies to every layer that can carry a skip connection (l ≥ 2 with
        n_l = n_{l−1}); the others stay plain. A sequence gives every layer explicitly:
        layer 1's entries must be ξ = 1, γ = 0, and γ^{(l)} ≠ 0 needs n_l = n_{l−1}.

    Examples
    --------
    >>> net = MLP(4, [32, 32, 1], "tanh", C_b=0.1, C_W=1.5)
    >>> net.depth, net.fan_in
    (3, (4, 32, 32))
    >>> net.replace(C_W=1.0).C_W
    (1.0, 1.0, 1.0)
    """

    n_in: int
    widths: tuple
    act: Activation
    C_b: tuple = 0.0
    C_W: tuple = 1.0
    lam_b: tuple = 1.0
    lam_W: tuple = 1.0
    xi: tuple = 1.0
    gamma: tuple = 0.0

    def __post_init__(self):
        n_in = _checks.width(self.n_in, "n_in")
        widths = tuple(_checks.widths(self.widths, "widths"))
        L = len(widths)
        act = get(self.act)
        fan_in = (n_in,) + widths[:-1]
        fields = {
            "n_in": n_in, "widths": widths, "act": act,
            "C_b": _checks.per_layer(self.C_b, L, "C_b", _checks.C_b),
            "C_W": _checks.per_layer(self.C_W, L, "C_W", _checks.C_W),
            "lam_b": _checks.per_layer(self.lam_b, L, "lam_b", _checks.nonnegative),
            "lam_W": _checks.per_layer(self.lam_W, L, "lam_W", _checks.nonnegative),
        }
        # a number for xi/gamma applies to the layers that can have a skip connection
        # (l >= 2 with n_l = n_(l-1)); the others stay plain (xi = 1, gamma = 0)
        can_skip = [l > 0 and widths[l] == fan_in[l] for l in range(L)]
        for name, plain, check in (("xi", 1.0, _checks.real), ("gamma", 0.0, _checks.real)):
            value = getattr(self, name)
            if np.ndim(value) == 0:
                v = check(value, name)
                fields[name] = tuple(v if ok else plain for ok in can_skip)
            else:
                fields[name] = _checks.per_layer(value, L, name, check)
        if fields["xi"][0] != 1.0 or fields["gamma"][0] != 0.0:
            raise ValueError("the first layer is never residual: xi[0] must be 1 and gamma[0] "
                             f"must be 0, got xi[0] = {fields['xi'][0]}, gamma[0] = {fields['gamma'][0]}")
        for l, g in enumerate(fields["gamma"]):
            if g != 0.0 and not can_skip[l]:
                raise ValueError(f"layer {l + 1} has a residual connection (gamma = {g}) but changes "
                                 f"width {fan_in[l]} -> {widths[l]}; a skip connection needs "
                                 "n_l = n_(l-1)")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    # -- shape ----------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Number of layers L."""
        return len(self.widths)

    @property
    def fan_in(self) -> tuple:
        """(n_0, n_1, …, n_{L−1}): the fan-in n_{l−1} of each layer l = 1..L."""
        return (self.n_in,) + self.widths[:-1]

    @property
    def residual(self) -> bool:
        """Whether any layer has ξ ≠ 1 or γ ≠ 0."""
        return any(x != 1.0 for x in self.xi) or any(g != 0.0 for g in self.gamma)

    @property
    def n_parameters(self) -> int:
        """Parameters of one network, Σ_l n_l (n_{l−1} + 1)."""
        return sum(n * m + n for n, m in zip(self.widths, self.fan_in))

    def replace(self, **changes) -> "MLP":
        """A copy with some fields replaced (validated again), e.g. ``net.replace(C_W=2.0)``.

        Parameters
        ----------
        **changes
            Field values (same forms as the constructor's arguments).

        Returns
        -------
        MLP
        """
        return dataclasses.replace(self, **changes)

    # -- first layer (exact at any width) ---------------------------------------------------
    def _inputs(self, x) -> np.ndarray:
        x = np.asarray(x)
        if np.iscomplexobj(x):
            raise ValueError("inputs x must be real")
        x = x.astype(float)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"inputs x must have shape [B, n_in] = [B, {self.n_in}], got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("inputs x must be finite")
        return x

    def first_layer_kernel(self, x) -> np.ndarray:
        """K^{(1)}_{αβ} = C_b^{(1)} + C_W^{(1)} x_α·x_β / n_0  (§4.1 of [RY]).

        Parameters
        ----------
        x : array [B, n_0]

        Returns
        -------
        array [B, B]
        """
        x = self._inputs(x)
        return self.C_b[0] + self.C_W[0] * (x @ x.T) / self.n_in

    def first_layer_ntk(self, x) -> np.ndarray:
        """Θ^{(1)}_{αβ} = λ_b^{(1)} + λ_W^{(1)} x_α·x_β / n_0  (§8.1 of [RY]).

        The first-layer NTK is deterministic: z^{(1)} is linear in its parameters.

        Parameters
        ----------
        x : array [B, n_0]

        Returns
        -------
        array [B, B]
        """
        x = self._inputs(x)
        return self.lam_b[0] + self.lam_W[0] * (x @ x.T) / self.n_in

    # -- theory -----------------------------------------------------------------------------
    def kernel(self, x) -> np.ndarray:
        """Infinite-width kernel K^{(l)} of inputs x for l = 1..L  (§4.1, §4.3 of [RY]).

        Parameters
        ----------
        x : array [B, n_0]

        Returns
        -------
        array [L, B, B]
        """
        from . import flows
        return flows.kernel(self.act, self.C_b, self.C_W, self.first_layer_kernel(x), self.depth,
                            xi=self.xi, gamma=self.gamma)

    def flow(self, x, correction: bool = True):
        """Kernel, four-point vertex and 1/n kernel correction of this network  (Ch. 4, App. B).

        Uses this description's per-layer C_b, C_W and widths (the width ratios
        n_l/n_{l−1} of the propagation terms), and for residual networks its ξ, γ
        (:func:`dlt_companion.flows.residual.run`).

        Parameters
        ----------
        x : array [B, n_0] (B ≤ 8)
        correction : bool
            Compute G^{1} (see :func:`dlt_companion.flows.run`).

        Returns
        -------
        dlt_companion.flows.Flow
        """
        from . import flows
        if self.residual:
            return flows.residual.run(self.act, self.C_b, self.C_W, self.first_layer_kernel(x),
                                      self.depth, xi=self.xi, gamma=self.gamma,
                                      widths=self.widths, correction=correction)
        return flows.run(self.act, self.C_b, self.C_W, self.first_layer_kernel(x), self.depth,
                         widths=self.widths, correction=correction)

    def ntk_mean(self, x) -> np.ndarray:
        """Infinite-width mean NTK Θ^{(l)} of inputs x for l = 1..L  (§8.1–8.3); [L, B, B].

        Uses this description's per-layer C_b, C_W, λ_b, λ_W (and ξ, γ).

        Parameters
        ----------
        x : array [B, n_0]

        Returns
        -------
        array [L, B, B]
        """
        from . import flows
        return flows.ntk_mean(self.act, self.C_b, self.C_W, self.lam_b, self.lam_W,
                              self.first_layer_kernel(x), self.first_layer_ntk(x), self.depth,
                              xi=self.xi, gamma=self.gamma)

    # -- experiment -------------------------------------------------------------------------
    def spec(self, dtype=None, device="cpu"):
        """The :class:`~dlt_companion.ensembles.EnsembleSpec` of this network  (§2.3 of [RY]).

        Parameters
        ----------
        dtype : torch.float32 or torch.float64 (default)
        device : str or torch.device

        Returns
        -------
        EnsembleSpec
        """
        from .ensembles import EnsembleSpec
        return EnsembleSpec.from_network(self, dtype=dtype, device=device)

    def ensemble(self, n_networks: int, seed: int = 0, dtype=None, device="cpu", first: int = 0):
        """M = ``n_networks`` independently initialised real networks of this architecture  (§2.3).

        Network i of a seed is the same whatever ``first`` and chunking (see
        :mod:`dlt_companion.ensembles`).

        Parameters
        ----------
        n_networks : int
        seed : int ≥ 0
        dtype : torch.float32 or torch.float64 (default)
        device : str or torch.device
        first : int ≥ 0

        Returns
        -------
        MLPEnsemble
        """
        from .ensembles import MLPEnsemble
        return MLPEnsemble.from_spec(self.spec(dtype, device), n_networks, seed=seed, first=first)

    def __str__(self) -> str:
        def show(v):
            return f"{v[0]:g}" if len(set(v)) == 1 else "(" + ", ".join(f"{a:g}" for a in v) + ")"
        parts = [f"n0={self.n_in}", f"widths={list(self.widths)}", self.act.label,
                 f"C_b={show(self.C_b)}", f"C_W={show(self.C_W)}"]
        if set(self.lam_b) != {1.0} or set(self.lam_W) != {1.0}:
            parts += [f"lam_b={show(self.lam_b)}", f"lam_W={show(self.lam_W)}"]
        if self.residual:
            parts += [f"xi={show(self.xi)}", f"gamma={show(self.gamma)}"]
        return "MLP(" + ", ".join(parts) + ")"
