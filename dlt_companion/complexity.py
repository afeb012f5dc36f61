"""Model complexity from the macroscopic perspective: parameter counts vs the couplings of the effective theory  (Epilogue ε of [RY]).

The microscopic description of a multilayer perceptron is its parameter count
P = Σ_l n_l (n_{l−1} + 1), about (L − 2) n² for L layers of equal hidden width n. The effective
theory of the book describes the same network by a handful of data-dependent couplings per
layer: the kernel K and mean NTK Θ at infinite width, and at order 1/n the four-point vertex V
(§4.3), the NTK variance A, B and NTK–preactivation correlators D, F (§8.3), the dNTK's P, Q
(§11.2) and the ddNTKs' R, S, T, U (§∞.1). Made dimensionless with K and Θ and divided by the
fan-in n, each of these grows linearly with depth at criticality, so the whole O(1/n) theory
is controlled by one number, the aspect ratio r = L/n — not by P (Epilogue ε; §5.4, §9.1–9.3,
§11.3).

This module holds the small pieces the Epilogue's notebook needs:

* :func:`width_for_budget` -- the equal hidden width that spends a parameter budget at a
  given depth, and :func:`budget_architectures` for a list of depths;
* :func:`depth_for_aspect_ratio` -- the depth at which a budget reaches a given L/n
  (e.g. the optimal aspect ratio of App. A, :func:`dlt_companion.information.optimal_aspect_ratio`);
* :func:`couplings` -- the dimensionless O(1/n) couplings of a network's output layer for one
  input, from :func:`dlt_companion.flows.ddntk_statistics` (one run gives all of them).

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _checks
from .flows import ddntk_statistics
from .network import MLP

__all__ = ["parameter_count", "width_for_budget", "budget_architectures", "depth_for_aspect_ratio",
           "couplings", "COUPLINGS"]

#: the dimensionless couplings :func:`couplings` returns, with the scale each is divided by
COUPLINGS = {
    "V": "n K²", "A": "n Θ²", "B": "n Θ²", "A+2B": "n Θ²", "D": "n K Θ", "F": "n K Θ",
    "P": "n Θ²", "Q": "n Θ²", "R": "n Θ³/K", "S": "n Θ³/K", "T": "n Θ³/K", "U": "n Θ³/K",
}


def _depth(L) -> int:
    L = _checks.depth(L)
    if L < 2:
        raise ValueError(f"depth must be at least 2 (one hidden layer and an output layer), got {L}")
    return L


def _budget(P) -> int:
    if isinstance(P, bool) or not isinstance(P, numbers.Real) or not np.isfinite(P) or P <= 0:
        raise ValueError(f"the parameter budget must be a positive number, got {P!r}")
    return P


def parameter_count(n_in: int, n: int, depth: int, n_out: int = 1) -> int:
    """Parameters of an MLP with ``depth`` layers of which the ``depth − 1`` hidden ones have width n  (§2.1).

    P = n(n_0 + 1) + (L − 2) n(n + 1) + n_out(n + 1), weights and biases together
    (the same count as :attr:`dlt_companion.network.MLP.n_parameters`).

    Parameters
    ----------
    n_in, n, n_out : int > 0
        Input dimension n_0, hidden width n, output width n_L.
    depth : int ≥ 2
        Number of layers L.

    Returns
    -------
    int
    """
    n_in, n, n_out = (_checks.width(v, w) for v, w in ((n_in, "n_in"), (n, "n"), (n_out, "n_out")))
    L = _depth(depth)
    return n * (n_in + 1) + (L - 2) * n * (n + 1) + n_out * (n + 1)


def width_for_budget(P, depth: int, n_in: int, n_out: int = 1) -> int:
    """The equal hidden width whose parameter count is closest to a budget P at a given depth  (Epilogue ε).

    Solves (L − 2) n² + (n_0 + L − 1 + n_out) n + n_out = P for n (the quadratic of
    :func:`parameter_count`) and rounds to the better of the two neighbouring integers (ties
    go to the narrower network).

    Parameters
    ----------
    P : float > 0
        Parameter budget.
    depth : int ≥ 2
    n_in, n_out : int > 0

    Returns
    -------
    int ≥ 1

    Raises
    ------
    ValueError
        If even width 1 needs more parameters than the budget (too small for this depth).
    """
    P = _budget(P)
    L = _depth(depth)
    n_in, n_out = _checks.width(n_in, "n_in"), _checks.width(n_out, "n_out")
    if parameter_count(n_in, 1, L, n_out) > P:
        raise ValueError(f"a budget of {P} parameters cannot fill {L} layers: even width 1 has "
                         f"{parameter_count(n_in, 1, L, n_out)} parameters")
    a, b, c = L - 2, n_in + L - 1 + n_out, n_out - P
    root = -c / b if a == 0 else (-b + np.sqrt(b * b - 4 * a * c)) / (2 * a)
    lo = max(1, int(np.floor(root)))
    return min((lo, lo + 1), key=lambda n: (abs(parameter_count(n_in, n, L, n_out) - P), n))


def budget_architectures(P, depths, n_in: int, n_out: int = 1) -> list[tuple[int, int, int]]:
    """(L, n, parameter count) for each depth, with the width that spends the budget P  (Epilogue ε).

    Parameters
    ----------
    P : float > 0
    depths : sequence of int ≥ 2
    n_in, n_out : int > 0

    Returns
    -------
    list of (depth, width, parameters)
    """
    depths = _checks.widths(depths, "depths")
    out = []
    for L in depths:
        n = width_for_budget(P, L, n_in, n_out)
        out.append((L, n, parameter_count(n_in, n, L, n_out)))
    return out


def depth_for_aspect_ratio(P, r, n_in: int, n_out: int = 1, max_depth: int = 10_000) -> int:
    """The depth at which a budget of P parameters has aspect ratio L/n closest to r  (Epilogue ε, §A.3).

    At fixed P the width falls like √(P/L), so L/n ≈ L^{3/2}/√P grows monotonically with
    depth; the search walks depths 2, 3, … until L/n passes r and returns the closer of the
    two depths around it (in log L/n).

    Parameters
    ----------
    P : float > 0
    r : float > 0
        Target aspect ratio L/n.
    n_in, n_out : int > 0
    max_depth : int
        Search limit.

    Returns
    -------
    int ≥ 2
    """
    P = _budget(P)
    r = _checks.real(r, "r")
    if not r > 0:
        raise ValueError(f"the aspect ratio r = L/n must be > 0, got {r!r}")
    max_depth = _depth(max_depth)
    prev = None
    for L in range(2, max_depth + 1):
        n = width_for_budget(P, L, n_in, n_out)
        ratio = L / n
        if ratio >= r:
            if prev is None or abs(np.log(ratio / r)) <= abs(np.log(r / prev[1])):
                return L
            return prev[0]
        prev = (L, ratio)
    raise ValueError(f"a budget of {P} parameters does not reach L/n = {r} below depth {max_depth}")


def couplings(net: MLP, x) -> dict:
    """Dimensionless O(1/n) couplings of a network's output layer for one input  (§4.3, §8.3, §11.2, §∞.1; Epilogue ε).

    Runs :func:`dlt_companion.flows.ddntk_statistics` for the network's activation,
    initialization, learning rates and widths, and divides each order-1/n statistic of the
    last layer by the fan-in n = n_{L−1} and by the power of K and Θ that makes it
    independent of the scale of the outputs and of the learning rates (:data:`COUPLINGS`):

    * V/(nK²): a third of the output's excess kurtosis;
    * A/(nΘ²), B/(nΘ²) and (A + 2B)/(nΘ²), the relative variance Var Ĥ_ii/Θ² of a diagonal NTK entry;
    * D/(nKΘ), F/(nKΘ): NTK–preactivation correlators;
    * P/(nΘ²), Q/(nΘ²): the dNTK (Chapter 11);
    * RK/(nΘ³), SK/(nΘ³), TK/(nΘ³), UK/(nΘ³): the ddNTKs (Chapter ∞).

    Parameters
    ----------
    net : MLP
        A plain (non-residual) MLP; its activation needs σ' (ReLU's kink enters pointwise,
        as in :func:`~dlt_companion.flows.ddntk_statistics`).
    x : array [n_0] or [1, n_0]
        One input.

    Returns
    -------
    dict
        Keys of :data:`COUPLINGS` → float, plus ``"K"`` and ``"Theta"`` (the infinite-width
        kernel and mean NTK of the output) and ``"n"`` (the fan-in).
    """
    if not isinstance(net, MLP):
        raise ValueError(f"net must be a dlt_companion.network.MLP, got {type(net).__name__}")
    if net.residual:
        raise ValueError("couplings() describes plain MLPs (no residual ξ, γ)")
    if net.depth < 2:
        raise ValueError("a one-layer network has no 1/n couplings (its output is Gaussian); use depth ≥ 2")
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[0] != 1 or x.shape[1] != net.n_in:
        raise ValueError(f"x must be one input of dimension n_0 = {net.n_in} (shape [{net.n_in}] or "
                         f"[1, {net.n_in}]), got shape {x.shape}")
    st = ddntk_statistics(net.act, net.C_b, net.C_W, net.lam_b, net.lam_W, net.first_layer_kernel(x)[0, 0],
                          net.first_layer_ntk(x)[0, 0], net.depth, widths=net.widths)

    def last(name):
        return float(np.ravel(getattr(st, name)[-1])[0])

    n = net.fan_in[-1]
    K, Th = last("K"), last("Theta")
    scale = {"n K²": n * K * K, "n Θ²": n * Th * Th, "n K Θ": n * K * Th, "n Θ³/K": n * Th ** 3 / K}
    raw = {k: last(k) for k in ("V", "A", "B", "D", "F", "P", "Q", "R", "S", "T", "U")}
    raw["A+2B"] = raw["A"] + 2 * raw["B"]
    out = {k: raw[k] / scale[s] for k, s in COUPLINGS.items()}
    out.update(K=K, Theta=Th, n=n)
    return out
