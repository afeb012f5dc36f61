"""The end of training at finite width: the trained network's mean prediction and covariance to O(1/n)  (Ch. ∞ of [RY]).

Function-space dynamics (§∞.2)
------------------------------
Write p = (i, α) for an output neuron and an input, A for the training pairs, and
ε_A = z_A − y for the residuals. One full-batch gradient-descent step moves the parameters
by Δθ = −η Σ_{c∈A} ε_c u_c (u_c = λ ∂z_c/∂θ), and Taylor-expanding every differential of
:mod:`dlt_companion.tangent` in Δθ gives the exact one-step updates, truncated where the
1/n expansion allows (the ddNTKs are O(1/n), their changes O(1/n^{3/2})):

    Δz_a   = −η Σ_c Ĥ_{ac} ε_c + (η²/2) Σ_{cd} T_{a;cd} ε_c ε_d − (η³/6) Σ_{cde} I_{a;cde} ε_c ε_d ε_e,
    ΔĤ_ab  = −η Σ_c (T_{a;bc} + T_{b;ac}) ε_c + η² Σ_{cd} [½(I_{a;bcd} + I_{b;acd}) + II_{ab;cd}] ε_c ε_d,
    ΔT_{a;bc} = −η Σ_d (I_{a;bcd} + II_{ab;cd} + II_{ac;bd}) ε_d,          I, II constant.

(T = ∂²z[u, u], I = ∂³z[u, u, u], II = ⟨∂²z·u, λ∂²z·u⟩; the first line is the output's Taylor
series, the second is dĤ and dd_IĤ of the book, the third is dd_IĤ + dd_IIĤ.)
:func:`truncated_descent` iterates these updates, for whole ensembles at once; fed with a
real network's own differentials at initialization it reproduces that network's trained
outputs up to corrections of higher order in 1/n (checked in the chapter notebook).

Prediction at finite width (§∞.3)
---------------------------------
Over initializations, z(0), ΔĤ = Ĥ − E[Ĥ], T, I, II are small or correlated in a way that
the statistics of :func:`dlt_companion.flows.ddntk_statistics` fix at O(1/n): z(0) has
covariance K + G^{{1}}/n; E[Ĥ] = Θ + Θ^{{1}}/n; E[ΔĤΔĤ] (A, B) and E[ΔĤ z z] (D, F) are
O(1/n); T is odd and only E[T z] (the dNTK's P, Q) survives; only the means of I, II (the
ddNTKs' R, S, T, U) survive. The trained output F(z(0), Ĥ, T, I, II) of the truncated
dynamics is then expanded to first order in each of these, and the Gaussian average over
z(0) is done exactly (F is a polynomial of degree ≤ 3 in z(0); a three-point Gauss–Hermite
rule per output, exact to degree 5). Derivatives along the statistics' tensors are
forward-mode derivatives (:func:`torch.func.jvp`) of the same dynamics, so every piece is
the exact O(1/n) coefficient for the given learning rate η and number of steps. The mean
splits into the pieces the book names,

    E[z_δ(t)] = m^∞ + (1/n) [m^{Θ1} + m^{ΔNTK} + m^{dNTK} + m^{ddNTK}],

m^∞ the infinite-width NTK predictor, m^{Θ1} the shift of the mean NTK, m^{ΔNTK} the NTK
variance (A, B), m^{dNTK} the dNTK (P, Q) and m^{ddNTK} the ddNTKs (R, S, T, U); the
covariance likewise, with G^{{1}} and the NTK–preactivation correlators (D, F) added.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from . import _checks

__all__ = ["truncated_descent", "composite_statistics", "CompositeStatistics", "trained_prediction",
           "TrainedPrediction", "steps_to_converge", "kernel_model_outputs", "train_ensemble",
           "unpack_trained", "measured_pieces", "extrapolate", "WidthFit", "function_space_descent",
           "PIECES", "giant_leaps"]

#: names of the O(1/n) pieces of the trained mean and covariance, in order
PIECES = ("Theta1", "dNTK_var", "dNTK", "ddNTK")

#: residual ratio at which "trained to convergence" stops the theory's iterations
CONVERGED = 1e-13

#: the most steps a theory run may take (a stable but very slowly converging η)
MAX_STEPS = 200_000


# ------------------------------------------------------------------------------------------
# the dynamics
# ------------------------------------------------------------------------------------------

def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps = {steps} is more than {MAX_STEPS}")
    return int(steps)


class _Jet:
    """A truncated Taylor series Σ_k c_k s^k (k ≤ order) of tensors, for exact forward-mode
    derivatives of the polynomial dynamics; ``None`` coefficients are known zeros."""

    __slots__ = ("c",)

    def __init__(self, coeffs):
        self.c = list(coeffs)

    @staticmethod
    def lift(x, order: int) -> "_Jet":
        return x if isinstance(x, _Jet) else _Jet([x] + [None] * order)

    def _zip(self, other, op):
        out = []
        for a, b in zip(self.c, other.c):
            out.append(b if a is None else a if b is None else op(a, b))
        return _Jet(out)

    def __add__(self, other):
        return self._zip(other, lambda a, b: a + b)

    def __sub__(self, other):
        neg = _Jet([None if b is None else -b for b in other.c])
        return self._zip(neg, lambda a, b: a + b)

    def scale(self, a: float) -> "_Jet":
        return _Jet([None if c is None else a * c for c in self.c])

    def map(self, f) -> "_Jet":
        return _Jet([None if c is None else f(c) for c in self.c])


def _ein(spec: str, *jets: _Jet) -> _Jet:
    """Truncated product: coefficient k of einsum(spec, …) is Σ_{k1+…+km=k} einsum of the c_ki."""
    J = len(jets[0].c)
    out = [None] * J

    def rec(i, k, parts):
        if i == len(jets):
            val = torch.einsum(spec, *parts)
            out[k] = val if out[k] is None else out[k] + val
            return
        for ki, c in enumerate(jets[i].c):
            if c is not None and k + ki < J:
                rec(i + 1, k + ki, parts + [c])
    rec(0, 0, [])
    return _Jet(out)


def _descent(z, H, T, I, II, y, eta, steps: int, PA: int, state: bool = False):
    """The truncated updates on jets, training pairs first (composite indices 0..PA−1).

    ``eta`` is the global rate (a number) or a function-space learning-rate tensor Ξ [PA, PA]
    (the parameters then move by Δθ = −λ Σ_ab ∂z_a Ξ_ab ε_b); ``state=True`` returns (z, Ĥ, T).
    """
    IA = I.map(lambda t: t[..., :PA, :PA, :PA])
    IA2 = I.map(lambda t: t[..., :PA, :PA])
    IA1 = I.map(lambda t: t[..., :PA])
    IIA2 = II.map(lambda t: t[..., :PA, :PA])
    IIA1 = II.map(lambda t: t[..., :PA])
    matrix = torch.is_tensor(eta)
    for _ in range(steps):
        e = z.map(lambda t: t[..., :PA]) - y
        g = e.map(lambda t: torch.einsum("ab,...b->...a", eta, t)) if matrix else e.scale(eta)
        dz = (_ein("...acde,...c,...d,...e->...a", IA, g, g, g).scale(-1.0 / 6)
              + _ein("...acd,...c,...d->...a", T.map(lambda t: t[..., :PA, :PA]), g, g).scale(0.5)
              - _ein("...ac,...c->...a", H.map(lambda t: t[..., :PA]), g))
        Tc = _ein("...abc,...c->...ab", T.map(lambda t: t[..., :PA]), g)
        Igg = _ein("...abcd,...c,...d->...ab", IA2, g, g)
        sym = lambda j: j + j.map(lambda t: t.transpose(-1, -2))
        dH = (sym(Igg).scale(0.5) + _ein("...abcd,...c,...d->...ab", IIA2, g, g)) - sym(Tc)
        IIg = _ein("...abcd,...d->...abc", IIA1, g)
        dT = (_ein("...abcd,...d->...abc", IA1, g) + IIg
              + IIg.map(lambda t: t.transpose(-1, -2))).scale(-1.0)
        z, H, T = z + dz, H + dH, T + dT
    return (z, H, T) if state else z


def _rate(eta, PA: int):
    """A positive number, or a finite [PA, PA] learning-rate tensor (as a float64 tensor)."""
    if np.ndim(eta) == 0 and not torch.is_tensor(eta):
        eta = _checks.real(eta, "eta")
        if not eta > 0:
            raise ValueError(f"the learning rate eta must be > 0, got {eta!r}")
        return eta
    Xi = torch.as_tensor(np.asarray(eta, dtype=float) if not torch.is_tensor(eta) else eta,
                         dtype=torch.float64)
    if Xi.shape != (PA, PA) or not torch.all(torch.isfinite(Xi)):
        raise ValueError(f"a learning-rate tensor must be a finite [{PA}, {PA}] matrix over the "
                         f"training pairs, got shape {tuple(Xi.shape)}")
    return Xi


def _order_train_first(train, P: int) -> tuple[list, list]:
    train = [int(a) for a in train]
    if len(set(train)) != len(train) or not all(0 <= a < P for a in train) or not train:
        raise ValueError(f"train must list distinct composite indices in 0..{P - 1}, got {train}")
    perm = train + [p for p in range(P) if p not in train]
    return perm, list(np.argsort(perm))


def _permute(t, perm, k: int):
    """Reorder the last k axes (all of length P) of a tensor by ``perm``."""
    idx = torch.as_tensor(perm)
    for ax in range(1, k + 1):
        t = t.index_select(t.ndim - ax, idx)
    return t


def truncated_descent(z0, ntk, d2, d3, d2d2, y, eta: float, steps: int, train) -> torch.Tensor:
    """Gradient descent in function space with the differentials truncated at O(1/n)  (§∞.2 of [RY]).

    Iterates the updates of the module docstring ``steps`` times. All tensors use composite
    indices p = (i, α) (see :func:`dlt_companion.tangent.differentials`) and may carry
    leading batch axes (networks), broadcast against each other.

    Parameters
    ----------
    z0 : tensor [..., P]
        Outputs at initialization on every input (training and test).
    ntk : tensor [..., P, P]
    d2 : tensor [..., P, P, P]
        T_{a;bc}.
    d3, d2d2 : tensors [..., P, P, P, P]
        I_{a;bcd} and II_{ab;cd}.
    y : tensor [..., P_A]
        Targets of the training pairs ``train``, in that order.
    eta : float > 0, or array [P_A, P_A]
        Global learning rate η, or a function-space learning-rate tensor Ξ over the training
        pairs (in the order of ``train``): the step is then Δθ = −λ Σ_ab ∂z_a Ξ_ab ε_b (the
        "giant leap" of §10.2 and §∞.2 is one step with Ξ = Θ̃⁻¹).
    steps : int ≥ 0
    train : sequence of int
        The composite indices of the training pairs (length P_A).

    Returns
    -------
    tensor [..., P]
        The outputs after ``steps`` steps.
    """
    steps = _check_steps(steps)
    z0 = torch.as_tensor(z0)
    P = z0.shape[-1]
    perm, inv = _order_train_first(train, P)
    eta = _rate(eta, len(list(train)))
    lift = lambda t, k: _Jet([_permute(torch.as_tensor(t), perm, k)])
    out = _descent(lift(z0, 1), lift(ntk, 2), lift(d2, 3), lift(d3, 4), lift(d2d2, 4),
                   _Jet([torch.as_tensor(y)]), eta, steps, len(perm) - (P - len(train)))
    return _permute(out.c[0], inv, 1)


def steps_to_converge(Theta_train, eta: float, tol: float = CONVERGED) -> int:
    """Steps after which infinite-width gradient descent has shrunk every residual below ``tol``  (§10.2).

    The residuals move as ε(t) = (1 − ηΘ̃)^t ε(0); this is the smallest t with
    max_k |1 − ηλ_k|^t ≤ tol over the eigenvalues λ_k of Θ̃.

    Parameters
    ----------
    Theta_train : array [P_A, P_A]
        The mean NTK on the training pairs.
    eta : float > 0
    tol : float in (0, 1)

    Returns
    -------
    int
    """
    Th = np.asarray(Theta_train, float)
    lam = np.linalg.eigvalsh(Th)
    if np.ndim(eta) == 0:
        rho = float(np.max(np.abs(1.0 - eta * lam)))
        hint = f"need eta < 2/λ_max = {2 / lam.max():.3g} and a positive-definite Θ̃"
    else:
        rho = float(np.max(np.abs(np.linalg.eigvals(np.eye(len(Th)) - Th @ np.asarray(eta, float)))))
        hint = "the spectral radius of 1 − Θ̃Ξ must be below 1"
    if not rho < 1.0:
        raise ValueError(f"gradient descent with this learning rate does not converge on this NTK: "
                         f"|1 − ηλ| reaches {rho:.3g} ({hint})")
    if rho < 1e-12:
        return 1
    steps = int(np.ceil(np.log(tol) / np.log(rho)))
    if steps > MAX_STEPS:
        raise ValueError(f"reaching a residual ratio {tol:g} takes {steps} steps (|1 − ηλ| = {rho:.6f}); "
                         "use a larger eta or fewer steps")
    return max(steps, 1)


# ------------------------------------------------------------------------------------------
# statistics in composite indices
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CompositeStatistics:
    """The output layer's O(1/n) statistics as tensors over composite indices p = (i, α)  (§∞.3).

    Built by :func:`composite_statistics` from the book's per-pairing tensors with Kronecker
    deltas in the neuron indices (n_L output neurons, B inputs, P = n_L·B). Every 1/n tensor
    here is the coefficient of 1/n_{L−1}.

    Attributes
    ----------
    K, G1, Theta, Theta1 : arrays [P, P]
        δ_ij K_αβ etc.
    HH : array [P, P, P, P]
        E[ΔĤ_ab ΔĤ_cd] (A, B).
    Hzz : array [P, P, P, P]
        E[ΔĤ_ab z_c z_d] (D, F).
    Tz : array [P, P, P, P]
        E[T_{a;bc} z_d] (the dNTK's P, Q).
    I, II : arrays [P, P, P, P]
        E[I_{a;bcd}], E[II_{ab;cd}] (the ddNTKs' R, S, T, U).
    n_out, n_inputs : int
    """

    K: np.ndarray
    G1: np.ndarray
    Theta: np.ndarray
    Theta1: np.ndarray
    HH: np.ndarray
    Hzz: np.ndarray
    Tz: np.ndarray
    I: np.ndarray
    II: np.ndarray
    n_out: int
    n_inputs: int

    def index(self, neuron: int, inp: int) -> int:
        """Composite index of (neuron i, input α): i·B + α."""
        return neuron * self.n_inputs + inp


def _pairings(n_out: int, t1, t2, t3, perm2: str, perm3: str) -> np.ndarray:
    """Σ over the three neuron pairings: δ_ab δ_cd t1[α_a α_b α_c α_d] + δ_ac δ_bd t2[...] + δ_ad δ_bc t3[...].

    ``perm2``/``perm3`` say how t2/t3 are indexed by the inputs (a, b, c, d) of the composite
    slots, e.g. 'acbd' means t2[α_a, α_c, α_b, α_d].
    """
    d = np.eye(n_out)
    B = t1.shape[0]
    out = np.einsum("ij,kl,abcd->iajbkcld", d, d, t1)
    out = out + np.einsum("ik,jl,abcd->iajbkcld", d, d, np.einsum(f"{perm2}->abcd", t2))
    out = out + np.einsum("il,jk,abcd->iajbkcld", d, d, np.einsum(f"{perm3}->abcd", t3))
    P = n_out * B
    return out.reshape(P, P, P, P)


def composite_statistics(stats, n_out: int, layer: int | None = None) -> CompositeStatistics:
    """Composite-index tensors of one layer of :func:`dlt_companion.flows.ddntk_statistics`  (§∞.3).

    Parameters
    ----------
    stats : DDNTKStatistics
    n_out : int
        Number of output neurons n_L (the neuron indices run over them).
    layer : int, optional
        Which layer (1..L); default the last.

    Returns
    -------
    CompositeStatistics
    """
    n_out = _checks.width(n_out, "n_out")
    L = stats.depth
    l = L if layer is None else _checks.width(layer, "layer")
    if l > L:
        raise ValueError(f"layer must be in 1..{L}, got {l}")
    k = l - 1
    B = stats.K.shape[-1]
    eye = np.eye(n_out)
    two = lambda m: np.kron(eye, m)
    HH = _pairings(n_out, stats.A[k], stats.B[k], stats.B[k], "acbd", "adbc")
    Hzz = _pairings(n_out, stats.D[k], stats.F[k], stats.F[k], "acbd", "adbc")
    Tz = _pairings(n_out, stats.X[k], stats.X[k], stats.Y[k], "acbd", "adbc")
    I = _pairings(n_out, stats.R1[k], stats.R1[k], stats.R1[k], "acbd", "adbc")
    II = _pairings(n_out, stats.S1[k], stats.T1[k], stats.U1[k], "abcd", "abcd")
    return CompositeStatistics(two(stats.K[k]), two(stats.G1[k]), two(stats.Theta[k]),
                               two(stats.Theta1[k]), HH, Hzz, Tz, I, II, n_out, B)


# ------------------------------------------------------------------------------------------
# the O(1/n) mean and covariance of the trained outputs
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainedPrediction:
    """Mean and covariance over initializations of the trained outputs, to O(1/n)  (§∞.3 of [RY]).

    For width n (= n_{L−1}, the fan-in of the output layer) the mean over initializations
    of the outputs after training is ``mean_inf + sum(mean_pieces.values())/n`` and their
    covariance ``cov_inf + sum(cov_pieces.values())/n`` (+ O(1/n²)); :meth:`mean` and
    :meth:`cov` evaluate these.

    Attributes
    ----------
    mean_inf : array [P]
        The infinite-width NTK predictor on every composite index (training pairs included).
    mean_pieces : dict of arrays [P]
        O(1/n) coefficients: ``"Theta1"`` (shift of the mean NTK), ``"dNTK_var"`` (NTK
        variance A, B), ``"dNTK"`` (dNTK, P, Q), ``"ddNTK"`` (ddNTKs, R, S, T, U).
    cov_inf : array [P, P]
        The infinite-width covariance of the trained outputs.
    cov_pieces : dict of arrays [P, P]
        O(1/n) coefficients: the four above (for ``"dNTK_var"`` with the NTK–preactivation
        correlators D, F too) and ``"G1"`` (the 1/n correction of the kernel).
    steps : int
        Gradient-descent steps the prediction is for.
    eta : float
    train : tuple of int
        Composite indices of the training pairs.
    """

    mean_inf: np.ndarray
    mean_pieces: dict
    cov_inf: np.ndarray
    cov_pieces: dict
    steps: int
    eta: float
    train: tuple

    def mean(self, n=None, pieces=None) -> np.ndarray:
        """m^∞ + Σ pieces / n (all pieces by default); n = None gives the O(1/n) coefficient alone."""
        names = PIECES if pieces is None else tuple(pieces)
        corr = sum(self.mean_pieces[k] for k in names)
        return corr if n is None else self.mean_inf + corr / float(n)

    def cov(self, n=None, pieces=None) -> np.ndarray:
        """Σ^∞ + Σ pieces / n (all pieces, G1 included, by default); n = None: the coefficient."""
        names = ("G1",) + PIECES if pieces is None else tuple(pieces)
        corr = sum(self.cov_pieces[k] for k in names)
        return corr if n is None else self.cov_inf + corr / float(n)


def _gauss_hermite(K: np.ndarray):
    """Nodes z [N, P] and weights [N] exact for polynomials of degree ≤ 5 under N(0, K)."""
    x, w = np.polynomial.hermite_e.hermegauss(3)
    w = w / w.sum()
    P = K.shape[0]
    lam, V = np.linalg.eigh(0.5 * (K + K.T))
    keep = lam > 1e-12 * max(lam.max(), 1e-300)
    Lm = V[:, keep] * np.sqrt(lam[keep])
    r = int(keep.sum())
    grids = np.stack(np.meshgrid(*([x] * r), indexing="ij"), -1).reshape(-1, r)
    wts = np.prod(np.stack(np.meshgrid(*([w] * r), indexing="ij"), -1).reshape(-1, r), axis=1)
    return grids @ Lm.T, wts


def trained_prediction(stats: CompositeStatistics, y, n_train: int, eta: float,
                       steps: int | None = None) -> TrainedPrediction:
    """The O(1/n) mean and covariance of gradient-descent-trained outputs  (§∞.2–∞.3 of [RY]).

    Expands the trained outputs of :func:`truncated_descent` to first order in every O(1/n)
    statistic of ``stats`` (second order in the NTK fluctuation ΔĤ, whose variance is
    O(1/n)) and averages over the initial outputs exactly (module docstring). The
    derivatives are exact: the dynamics are run on truncated Taylor series in the size of
    each statistic (forward-mode differentiation of the polynomial updates).

    Parameters
    ----------
    stats : CompositeStatistics
        From :func:`composite_statistics` (output layer, B inputs, n_L neurons; P = n_L·B ≤ 8).
    y : array [n_train] (n_L = 1) or [n_train, n_L]
        Targets of the first ``n_train`` inputs.
    n_train : int
        The first ``n_train`` inputs are the training set; the others are test inputs.
    eta : float > 0, or array [P_A, P_A]
        Global learning rate of full-batch gradient descent (the λ's are in the statistics),
        or a function-space learning-rate tensor over the training pairs (composite order,
        neuron-major), as in :func:`truncated_descent`.
    steps : int, optional
        Number of steps; default: to convergence (:func:`steps_to_converge`, residual ratio
        :data:`CONVERGED`).

    Returns
    -------
    TrainedPrediction
    """
    if not isinstance(stats, CompositeStatistics):
        raise ValueError("stats must be a CompositeStatistics (finite_width.composite_statistics)")
    nL, B = stats.n_out, stats.n_inputs
    P = nL * B
    if P > 8:
        raise ValueError(f"n_L × inputs = {P} composite outputs; at most 8 are supported "
                         "(the Gaussian rule has 3^P nodes)")
    n_train = _checks.width(n_train, "n_train")
    if n_train > B:
        raise ValueError(f"n_train = {n_train} but the statistics have only {B} inputs")
    y = np.asarray(y, dtype=float)
    if y.ndim == 1 and nL == 1:
        y = y[:, None]
    if y.shape != (n_train, nL) or not np.all(np.isfinite(y)):
        raise ValueError(f"targets y must be finite with shape [n_train, n_L] = [{n_train}, {nL}] "
                         f"(or [n_train] when n_L = 1), got {y.shape}")
    train = [i * B + a for i in range(nL) for a in range(n_train)]
    PA = len(train)
    eta = _rate(eta, PA)
    if steps is None:
        steps = steps_to_converge(stats.Theta[np.ix_(train, train)],
                                  eta.numpy() if torch.is_tensor(eta) else eta)
    steps = _check_steps(steps)
    perm, inv = _order_train_first(train, P)
    pm = lambda a, k: _permute(torch.as_tensor(np.asarray(a, dtype=float)), perm, k)
    yA = torch.as_tensor(np.array([y[a, i] for i in range(nL) for a in range(n_train)]))
    Th, K = pm(stats.Theta, 2), pm(stats.K, 2)
    nodes, wts = _gauss_hermite(K.numpy())
    Z, W = torch.as_tensor(nodes), torch.as_tensor(wts)                       # [N, P], [N]
    Yz = Z @ torch.linalg.inv(K)                                              # K⁻¹ z at the nodes
    zeros = lambda k: torch.zeros((P,) * k, dtype=torch.float64)

    def run(order, dH=None, dT=None, dI=None, dII=None):
        """Taylor coefficients [order+1] of the outputs at every node along one or more directions."""
        jet = lambda base, d: _Jet([base] + [d[:, None]] + [None] * (order - 1) if d is not None
                                   else [base] + [None] * order)
        out = _descent(_Jet([Z] + [None] * order), jet(Th, dH), jet(zeros(3), dT), jet(zeros(4), dI),
                       jet(zeros(4), dII), _Jet([yA] + [None] * order), eta, steps, PA)
        shape = torch.broadcast_shapes(*(c.shape for c in out.c if c is not None))
        return [c.expand(shape) if c is not None else torch.zeros(shape, dtype=torch.float64) for c in out.c]

    avg = lambda v: torch.einsum("...np,n->...p", v, W)                       # ⟨·⟩ over z(0)
    avg2 = lambda a, b: torch.einsum("...np,...nq,n->...pq", a, b, W)         # ⟨a bᵀ⟩
    F0 = run(0)[0]                                                            # [N, P]
    m0, E00 = avg(F0), avg2(F0, F0)

    # first order, all directions at once: Θ¹, E[ΔĤ z_c z_d] (P² of them), E[T z_d] (P), ddNTK
    hz = pm(stats.Hzz, 4).permute(2, 3, 0, 1).reshape(P * P, P, P)
    tz = pm(stats.Tz, 4).permute(3, 0, 1, 2)
    nd = 1 + P * P + P + 1
    dH = torch.zeros(nd, P, P, dtype=torch.float64)
    dT = torch.zeros(nd, P, P, P, dtype=torch.float64)
    dI = torch.zeros(nd, P, P, P, P, dtype=torch.float64)
    dII = torch.zeros(nd, P, P, P, P, dtype=torch.float64)
    dH[0] = pm(stats.Theta1, 2)
    dH[1:1 + P * P] = hz
    dT[1 + P * P:1 + P * P + P] = tz
    dI[-1], dII[-1] = pm(stats.I, 4), pm(stats.II, 4)
    _, F1 = run(1, dH, dT, dI, dII)                                           # [nd, N, P]
    sl_h, sl_t = slice(1, 1 + P * P), slice(1 + P * P, 1 + P * P + P)
    outer = lambda a, b: torch.einsum("...np,...nq->...npq", a, b)
    FF1 = outer(F1, F0) + outer(F0, F1)                                       # first order of F Fᵀ

    m_th1, E_th1 = avg(F1[0]), avg2(F1[0], F0) + avg2(F0, F1[0])
    # NTK–preactivation correlators: ½ Σ_cd ⟨∂_c∂_d (F Fᵀ)'⟩ (Stein: weight y_c y_d − K⁻¹_cd)
    Kinv = torch.linalg.inv(K)
    wz = (torch.einsum("nc,nd->cdn", Yz, Yz) - Kinv[:, :, None]).reshape(P * P, -1)
    E_hz = 0.5 * torch.einsum("kn,knpq,n->pq", wz, FF1[sl_h], W)
    # dNTK: Σ_d ⟨∂_d F'⟩ along E[T z_d] (Stein: weight (K⁻¹z)_d)
    m_dntk = torch.einsum("nd,dnp,n->p", Yz, F1[sl_t], W)
    E_dntk = torch.einsum("nd,dnpq,n->pq", Yz, FF1[sl_t], W)
    # ddNTKs: their means
    m_dd, E_dd = avg(F1[-1]), torch.einsum("npq,n->pq", FF1[-1], W)

    # second order along the eigen-directions of E[ΔĤ ΔĤ]: Σ_k c_k (Taylor coefficient 2)
    C = pm(stats.HH, 4).reshape(P * P, P * P)
    c, vec = torch.linalg.eigh(0.5 * (C + C.T))
    keep = c.abs() > 1e-12 * max(float(c.abs().max()), 1e-300)
    dirs = vec[:, keep].T.reshape(-1, P, P)
    _, G1c, G2c = run(2, dH=dirs)                                             # [k, N, P]
    ck = c[keep]
    m_var = torch.einsum("k,kp->p", ck, avg(G2c))
    E_var = torch.einsum("k,kpq->pq", ck, avg2(G2c, F0.expand_as(G2c)) + avg2(F0.expand_as(G2c), G2c)
                         + avg2(G1c, G1c))

    # G^{1}: the outputs are linear in z(0) at zeroth order; J = ∂F/∂z(0)
    J = torch.linalg.lstsq(torch.cat([Z, torch.ones(len(Z), 1, dtype=Z.dtype)], 1), F0).solution[:P].T
    mo = lambda m1: torch.outer(m0, m1) + torch.outer(m1, m0)
    back = lambda v: _permute(v, inv, v.ndim).numpy().copy()
    mean_pieces = {"Theta1": back(m_th1), "dNTK_var": back(m_var), "dNTK": back(m_dntk),
                   "ddNTK": back(m_dd)}
    cov_pieces = {"G1": back(J @ pm(stats.G1, 2) @ J.T),
                  "Theta1": back(E_th1 - mo(m_th1)),
                  "dNTK_var": back(E_var + E_hz - mo(m_var)),
                  "dNTK": back(E_dntk - mo(m_dntk)),
                  "ddNTK": back(E_dd - mo(m_dd))}
    return TrainedPrediction(back(m0), mean_pieces, back(E00 - torch.outer(m0, m0)), cov_pieces,
                             steps, eta.numpy().copy() if torch.is_tensor(eta) else eta, tuple(train))


# ------------------------------------------------------------------------------------------
# experiment: trained ensembles and their kernel models
# ------------------------------------------------------------------------------------------

def kernel_model_outputs(z0, ntk, y, eta: float | None, steps: int | None, train) -> torch.Tensor:
    """Outputs of each network's kernel model (its NTK frozen at initialization) after training  (§10.2, §∞.3).

    z(t) = z(0) − Ĥ_{·A} Ĥ̃⁻¹ [1 − (1 − ηĤ̃)^t] (z_A(0) − y): what the network would predict if
    its NTK did not move; ``steps=None`` is the fully trained model,
    z(0) − Ĥ_{·A} Ĥ̃⁻¹ (z_A(0) − y). The difference between a trained network and its kernel
    model is the dNTK and ddNTK part of the trained prediction; the kernel model's own mean
    differs from the infinite-width predictor by the shift and the variance of the NTK.

    Parameters
    ----------
    z0 : tensor [..., P]
    ntk : tensor [..., P, P]
    y : tensor [..., P_A]
    eta : float > 0, or None with ``steps=None``
    steps : int or None
    train : sequence of int
        Composite indices of the training pairs.

    Returns
    -------
    tensor [..., P]
    """
    z0, ntk, y = torch.as_tensor(z0), torch.as_tensor(ntk), torch.as_tensor(y)
    P = z0.shape[-1]
    if steps is None:
        perm, inv = _order_train_first(train, P)
        A = torch.as_tensor(perm[:len(list(train))])
        HA = ntk.index_select(-1, A)                                  # Ĥ_{·A}
        eps = z0.index_select(-1, A) - y
        sol = torch.linalg.solve(HA.index_select(-2, A), eps.unsqueeze(-1)).squeeze(-1)
        return z0 - torch.einsum("...pa,...a->...p", HA, sol)
    zero3 = torch.zeros((1,) * (z0.ndim - 1) + (P,) * 3, dtype=z0.dtype)
    zero4 = torch.zeros((1,) * (z0.ndim - 1) + (P,) * 4, dtype=z0.dtype)
    return truncated_descent(z0, ntk, zero3, zero4, zero4, y, eta, steps, train)


def train_ensemble(ens, x, y, n_train: int, eta: float, steps: int, desc: str | None = None):
    """Train an ensemble by full-batch gradient descent and return what Chapter ∞ measures  (§∞.3).

    Parameters
    ----------
    ens : MLPEnsemble
        Trained in place (the first ``n_train`` inputs of ``x`` are the training set).
    x : array [B, n_0]
        Training inputs first, then test inputs.
    y : array [n_train] or [n_train, n_L]
    n_train : int
    eta : float > 0
    steps : int
    desc : str, optional
        Label of a progress bar over steps.

    Returns
    -------
    tensor [M, 4 + P, P]
        Per network, in composite indices p = i·B + α (unpack with :func:`unpack_trained`): the
        trained outputs z, the fully trained kernel model's outputs zK
        (:func:`kernel_model_outputs`), the same for z(0) = 0 (its target-driven part), the
        initial outputs z(0), and the initial NTK Ĥ(0) [P, P].
    """
    from . import tangent, training

    x = ens._inputs(x)
    B, nL = x.shape[0], ens.widths[-1]
    n_train = _checks.width(n_train, "n_train")
    if n_train >= B:
        raise ValueError(f"x must hold the {n_train} training inputs and at least one test input")
    yt = training.targets(ens, y, n_train)                      # [n_train, n_L] (or per network)
    train = [i * B + a for i in range(nL) for a in range(n_train)]
    z0 = ens.output(x).transpose(1, 2).reshape(ens.n_networks, -1)        # [M, P]
    H0 = tangent.composite(tangent.empirical_ntk(ens, x), 2)              # [M, P, P]
    yA = yt.transpose(-1, -2).reshape(*yt.shape[:-2], -1)
    zK = kernel_model_outputs(z0, H0, yA, None, None, train)
    zK0 = kernel_model_outputs(torch.zeros_like(z0), H0, yA, None, None, train)
    training.gradient_descent(ens, x[:n_train], yt, eta=eta, steps=steps, desc=desc)
    z = ens.output(x).transpose(1, 2).reshape(ens.n_networks, -1)
    return torch.cat([torch.stack([z, zK, zK0, z0], 1), H0], 1)


def unpack_trained(arr) -> dict:
    """The arrays of :func:`train_ensemble` by name: ``z``, ``zK``, ``zK0``, ``z0`` [M, P], ``ntk0`` [M, P, P]."""
    arr = np.asarray(arr)
    return {"z": arr[:, 0], "zK": arr[:, 1], "zK0": arr[:, 2], "z0": arr[:, 3], "ntk0": arr[:, 4:]}


def measured_pieces(rec: dict, ntk_untrained, Theta, mean_inf, y, n_train: int) -> dict:
    """Per-network estimators of the trained mean's O(1/n) pieces, with control variates  (§∞.3).

    With Φ̄ = Θ_{·A}Θ̃⁻¹ and the linear map c(Ĥ) = (Ĥ_{·A} − Φ̄ Ĥ_{AA}) Θ̃⁻¹ y (the first-order change
    of the infinite-width predictor when Θ → Ĥ), every trained network gives

    * ``repr`` = z − zK: the dNTK and ddNTK part (the network minus its own kernel model);
    * ``ntk_var`` = zK0 − m^∞ − c(Ĥ(0) − Θ): the part of the kernel model second order in the
      NTK's fluctuation (the book's A, B);
    * ``rest`` = z − (zK − zK0) − c(Ĥ(0) − Θ) − m^∞, whose mean is E[z] − m^∞ − E[c]:
      zK − zK0 = z(0) − Φ̂ z_A(0) has mean exactly zero (it is odd in the outputs), and c is
      linear in Ĥ, so E[c] = c(E[Ĥ] − Θ) is the shift of the mean NTK (the book's Θ^{{1}}),
      measured on the untrained networks ``ntk_untrained``.

    Each per-network value fluctuates at O(1/n) (the O(1) and O(1/√n) noise of z is removed
    exactly), so the 1/n effects are resolved with modest ensembles.

    Parameters
    ----------
    rec : dict
        :func:`unpack_trained` of :func:`train_ensemble`'s output.
    ntk_untrained : array [M', P, P]
        Initial NTKs of independent networks (for E[c]).
    Theta, mean_inf : arrays [P, P], [P]
        Infinite-width mean NTK and predictor.
    y : array [P_A]
        Targets of the training pairs (composite order).
    n_train : int
        Number of training pairs P_A (the first ones in composite order for n_L = 1).

    Returns
    -------
    dict
        ``"repr"``, ``"ntk_var"``, ``"rest"`` : arrays [M, P] per trained network;
        ``"theta1"`` : array [M', P] per untrained network (its mean is the Θ^{{1}} piece);
        and ``"total"`` : stats.Estimate of E[z] − m^∞ (mean of ``rest`` + mean of ``theta1``).
    """
    from .stats import Estimate, mean

    A = int(n_train)
    Theta, y = np.asarray(Theta, float), np.asarray(y, float)
    Ti = np.linalg.inv(Theta[:A, :A])
    Phi = Theta[:, :A] @ Ti
    c_of = lambda H: (H[..., :, :A] - np.einsum("pa,...ab->...pb", Phi, H[..., :A, :A])) @ Ti @ y
    c = c_of(np.asarray(rec["ntk0"]) - Theta)
    c_big = c_of(np.asarray(ntk_untrained) - Theta)
    out = {"repr": rec["z"] - rec["zK"], "ntk_var": rec["zK0"] - mean_inf - c,
           "rest": rec["z"] - (rec["zK"] - rec["zK0"]) - c - mean_inf, "theta1": c_big}
    a, b = mean(out["rest"]), mean(c_big)
    out["total"] = Estimate(a.value + b.value, np.sqrt(a.stderr ** 2 + b.stderr ** 2))
    return out


class WidthFit(NamedTuple):
    """Result of :func:`extrapolate`."""

    value: np.ndarray        #: intercepts a (n → ∞), [K]
    stderr: np.ndarray       #: their standard errors, [K]
    cov: np.ndarray          #: their covariance, [K, K]
    slope: np.ndarray        #: slopes b (the 1/n coefficients), [K]
    chi2: float              #: χ² of the fit
    dof: int                 #: its degrees of freedom, (W − 2)·K
    curvature: np.ndarray    #: intercept the same fit returns for data 1/n² (per quantity), [K]

    def neglected(self, reference) -> np.ndarray:
        """Shift of the intercepts by an unmodelled X2/n², with |X2| ≤ b²/(2|X|) (X = ``reference``).

        The bound is exact for deep linear networks, whose finite-width corrections
        exponentiate (Chapter 3); it is used as a theory error, never tuned.
        """
        X = np.abs(np.asarray(reference, float))
        return np.abs(self.curvature) * self.slope ** 2 / (2 * np.maximum(X, 1e-12 + 1e-3 * X.max()))


def extrapolate(ns, values, covs) -> WidthFit:
    """Generalized least-squares fit v(n) = a + b/n over widths; the intercept a is the n → ∞ value  (§∞.3).

    Parameters
    ----------
    ns : sequence of int
        Widths (at least 2, distinct).
    values : array [W, K]
        K quantities measured at each of the W widths (e.g. n × a 1/n deviation).
    covs : array [W, K, K]
        Their covariance at each width (independent networks at different widths).

    Returns
    -------
    WidthFit
    """
    ns = np.asarray(ns, float)
    v = np.asarray(values, float)
    C = np.asarray(covs, float)
    if v.ndim != 2 or C.shape != (v.shape[0], v.shape[1], v.shape[1]):
        raise ValueError(f"values must be [W, K] and covs [W, K, K], got {v.shape} and {C.shape}")
    W, K = v.shape
    if W < 2 or len(set(ns)) != W or len(ns) != W:
        raise ValueError(f"need at least two distinct widths, one per row of values, got {list(ns)}")
    X = np.zeros((W * K, 2 * K))
    for w in range(W):
        X[w * K:(w + 1) * K, :K] = np.eye(K)
        X[w * K:(w + 1) * K, K:] = np.eye(K) / ns[w]
    Cinv = np.zeros((W * K, W * K))
    for w in range(W):
        Cinv[w * K:(w + 1) * K, w * K:(w + 1) * K] = np.linalg.inv(C[w])
    cov = np.linalg.inv(X.T @ Cinv @ X)
    G = cov @ X.T @ Cinv                                       # the estimator, [2K, WK]
    beta = G @ v.ravel()
    r = v.ravel() - X @ beta
    curv = np.array([sum(G[k, w * K + k] / ns[w] ** 2 for w in range(W)) for k in range(K)])
    return WidthFit(beta[:K], np.sqrt(np.diag(cov)[:K]), cov[:K, :K], beta[K:], float(r @ Cinv @ r),
                    (W - 2) * K, curv)


def function_space_descent(ens, x, y, Xi, steps: int, desc: str | None = None) -> torch.Tensor:
    """Train an ensemble with a function-space learning-rate tensor Ξ, in place  (§10.2, §∞.2 of [RY]).

    Each step moves the parameters by Δθ_μ = −λ_μ Σ_{ab} (∂z_a/∂θ_μ) Ξ_ab ε_b over the training
    pairs (λ_b for biases, λ_W/n_{l−1} for weights; ε = z − y). With Ξ = η·1 this is
    :func:`dlt_companion.training.gradient_descent`; with Ξ = Θ̃⁻¹ one step is the infinite-width
    "giant leap" to the minimum.

    Parameters
    ----------
    ens : MLPEnsemble
        Updated in place.
    x : array [B_train, n_0]
        Training inputs.
    y : array [B_train] (n_L = 1) or [B_train, n_L]
    Xi : array [P_A, P_A]
        Learning-rate tensor over the training pairs in composite order p = i·B_train + α.
    steps : int ≥ 0
    desc : str, optional
        Label of a progress bar over steps.

    Returns
    -------
    tensor [steps + 1, M]
        The loss ½ Σ ε² of every network before each step and after the last.
    """
    from . import training
    from .ensembles import apply
    from .progress import progress
    from .tangent import learning_rates

    x = ens._inputs(x)
    yt = training.targets(ens, y, x.shape[0])
    B, nL = x.shape[0], ens.widths[-1]
    Xi = torch.as_tensor(np.asarray(Xi, dtype=float), dtype=ens.spec.dtype, device=ens.spec.device)
    if Xi.shape != (B * nL, B * nL) or not torch.all(torch.isfinite(Xi)):
        raise ValueError(f"Xi must be a finite [{B * nL}, {B * nL}] matrix over the training pairs, "
                         f"got shape {tuple(Xi.shape)}")
    steps = _check_steps(steps)
    lam_b, lam_W = learning_rates(ens)
    net, L = ens.net, ens.depth
    rates = [lw / n for lw, n in zip(lam_W, net.fan_in)] + list(lam_b)
    params = list(ens.weights) + list(ens.biases)
    losses = torch.empty(steps + 1, ens.n_networks, dtype=torch.float64)
    for t in progress(range(steps + 1), desc=desc, total=steps + 1, disable=desc is None):
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_(t < steps) for p in params]
            z = apply(leaves[:L], leaves[L:], x, net.act, net.xi, net.gamma, layers="last")[0]
            eps = (z - yt).transpose(-1, -2).reshape(ens.n_networks, -1)     # [M, P_A]
            losses[t] = 0.5 * (eps.detach() ** 2).sum(1).to("cpu", torch.float64)
            if t == steps:
                break
            g = (eps @ Xi.T).detach()
            zf = z.transpose(-1, -2).reshape(ens.n_networks, -1)
            grads = torch.autograd.grad((zf * g).sum(), leaves)
        if not torch.all(torch.isfinite(losses[t])):
            raise ValueError(f"the loss became non-finite at step {t}: the learning-rate tensor is "
                             "too large for this architecture")
        with torch.no_grad():
            for p, gr, r in zip(params, grads, rates):
                if r:
                    p.sub_(gr, alpha=r)
    return losses


def giant_leaps(ens, x, y, n_train: int, Xi, leaps: int = 1) -> torch.Tensor:
    """Outputs after ``leaps`` giant leaps, less each network's frozen-NTK response to its own z(0)  (§10.2, §∞.2).

    Trains the ensemble in place with :func:`function_space_descent` (learning-rate tensor
    Ξ, e.g. Θ̃⁻¹ for the infinite-width leap to the minimum) and subtracts what its kernel
    model (NTK frozen at initialization, :func:`kernel_model_outputs`) does to z(0) with
    zero targets. That part is odd in z(0), so its mean over initializations is exactly zero,
    and removing it takes the O(1) network-to-network noise out of the O(1/n) mean that
    :func:`trained_prediction` (``eta=Xi``, ``steps=leaps``) predicts.

    Parameters
    ----------
    ens : MLPEnsemble
        Updated in place.
    x : array [B, n_0]
        The ``n_train`` training inputs first, then test inputs.
    y : array [n_train] (n_L = 1) or [n_train, n_L]
    n_train : int, 1 ≤ n_train ≤ B
    Xi : array [P_A, P_A]
        Learning-rate tensor over the training pairs (P_A = n_L·n_train, neuron-major).
    leaps : int ≥ 0

    Returns
    -------
    tensor [M, P]
        Per network, in composite indices p = i·B + α (P = n_L·B).
    """
    from . import tangent

    x = ens._inputs(x)
    B, nL, M = x.shape[0], ens.widths[-1], ens.n_networks
    n_train = _checks.width(n_train, "n_train")
    if n_train > B:
        raise ValueError(f"n_train = {n_train} but x holds only {B} inputs")
    leaps = _check_steps(leaps)
    train = [i * B + a for i in range(nL) for a in range(n_train)]
    z0 = ens.output(x).transpose(1, 2).reshape(M, -1)
    H0 = tangent.composite(tangent.empirical_ntk(ens, x), 2)
    Xi_t = torch.as_tensor(np.asarray(Xi, dtype=float), dtype=z0.dtype, device=z0.device)
    odd = kernel_model_outputs(z0, H0, torch.zeros(len(train), dtype=z0.dtype, device=z0.device),
                               Xi_t, leaps, train)
    function_space_descent(ens, x[:n_train], y, Xi, leaps)
    return ens.output(x).transpose(1, 2).reshape(M, -1) - odd
