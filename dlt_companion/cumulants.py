"""Moments, cumulants (connected correlators) and nearly-Gaussian distributions (§1.2–§1.3 of [RY]).

Moments and cumulants
---------------------
The full k-point correlator E[z_{i1} ⋯ z_{ik}] of any distribution decomposes into
*connected* correlators (joint cumulants), one per block of every set partition of
the k positions (§1.2):

    E[z_{i1} ⋯ z_{ik}] = Σ_{partitions π} Π_{blocks B ∈ π} E[z_B]_connected,

and Möbius inversion on the partition lattice gives the converse,

    E[z_{i1} ⋯ z_{ik}]_connected = Σ_π (−1)^{|π|−1} (|π|−1)! Π_{B ∈ π} E[z_B].

For a zero-mean distribution this reduces to the book's definitions, e.g. the connected
four-point function E[z1z2z3z4] − E[z1z2]E[z3z4] − E[z1z3]E[z2z4] − E[z1z4]E[z2z3].
A Gaussian has every connected correlator beyond the two-point one equal to zero,
which is why they measure non-Gaussianity.

Nearly-Gaussian distributions
-----------------------------
:class:`NearlyGaussian` is the quartic-action distribution of §1.3,

    p(z) ∝ exp(−S(z)),   S(z) = ½ Σ K^{μν} z_μ z_ν + (1/4!) Σ V^{μνρλ} z_μ z_ν z_ρ z_λ,

with K^{μν} the inverse of the covariance K_{μν} of the Gaussian part and V a small,
fully symmetric quartic coupling. First-order perturbation theory in V gives

    E[z_μ z_ν z_ρ z_λ]_connected = −Σ V^{αβγδ} K_{μα} K_{νβ} K_{ργ} K_{λδ} + O(V²),
    E[z_μ z_ν]                   = K_{μν} − ½ Σ V^{αβγδ} K_{μα} K_{νβ} K_{γδ} + O(V²).

The class also samples the distribution exactly (rejection from its Gaussian part,
accepted with probability exp(−S_int) ≤ 1) and evaluates its moments exactly by
quadrature, so that the perturbative statements can be checked and their breakdown
seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations
from math import factorial
from typing import Callable

import numpy as np

from . import _checks, stats
from .gaussian import expect_n

__all__ = ["set_partitions", "moments_to_cumulants", "cumulants_to_moments", "joint_cumulant",
           "moment_from_cumulants", "sample_moment", "connected_correlator", "NearlyGaussian"]


# --------------------------------------------------------------------------
# Set partitions and the moment <-> cumulant maps
# --------------------------------------------------------------------------

def _order(k, what="k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {k!r}")
    return int(k)


@lru_cache(maxsize=None)
def _partitions(k: int) -> tuple:
    if k == 0:
        return ((),)
    out = []
    for part in _partitions(k - 1):
        # put element k-1 into each existing block, or into a new block of its own
        for b in range(len(part)):
            out.append(part[:b] + (part[b] + (k - 1,),) + part[b + 1:])
        out.append(part + ((k - 1,),))
    return tuple(out)


def set_partitions(k: int) -> tuple:
    """All partitions of the positions 0..k−1 into non-empty blocks (§1.2 of [RY]).

    There are Bell(k) of them (1, 1, 2, 5, 15, 52, 203, … for k = 0, 1, 2, …).

    Parameters
    ----------
    k : int, ≥ 0

    Returns
    -------
    tuple of partitions; each partition is a tuple of blocks, each block a tuple of positions.
    """
    return _partitions(_order(k))


def moments_to_cumulants(moments) -> np.ndarray:
    """Cumulants κ_1..κ_K of one variable from its raw moments m_1..m_K (§1.2 of [RY]).

    Uses the recursion κ_n = m_n − Σ_{k=1}^{n−1} C(n−1, k−1) κ_k m_{n−k} (m_0 = 1).

    Parameters
    ----------
    moments : array [..., K]
        Raw moments E[z], E[z²], …, E[z^K] along the last axis (K ≥ 1).

    Returns
    -------
    array [..., K] : κ_1 (mean), κ_2 (variance), κ_3, κ_4 (connected four-point), …
    """
    m = _moment_array(moments, "moments")
    K = m.shape[-1]
    full = np.concatenate([np.ones(m.shape[:-1] + (1,)), m], axis=-1)      # m_0..m_K
    kappa = np.zeros_like(full)
    for n in range(1, K + 1):
        acc = full[..., n].copy()
        for k in range(1, n):
            acc -= _binom(n - 1, k - 1) * kappa[..., k] * full[..., n - k]
        kappa[..., n] = acc
    return kappa[..., 1:]


def cumulants_to_moments(cumulants) -> np.ndarray:
    """Raw moments m_1..m_K of one variable from its cumulants κ_1..κ_K (§1.2 of [RY]).

    The inverse of :func:`moments_to_cumulants`: m_n = Σ_{k=1}^{n} C(n−1, k−1) κ_k m_{n−k}.

    Parameters
    ----------
    cumulants : array [..., K]

    Returns
    -------
    array [..., K]
    """
    kappa = _moment_array(cumulants, "cumulants")
    K = kappa.shape[-1]
    kap = np.concatenate([np.zeros(kappa.shape[:-1] + (1,)), kappa], axis=-1)
    m = np.zeros_like(kap)
    m[..., 0] = 1.0
    for n in range(1, K + 1):
        m[..., n] = sum(_binom(n - 1, k - 1) * kap[..., k] * m[..., n - k] for k in range(1, n + 1))
    return m[..., 1:]


def _binom(n: int, k: int) -> float:
    return factorial(n) / (factorial(k) * factorial(n - k))


def _moment_array(values, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim == 0 or a.shape[-1] < 1:
        raise ValueError(f"{what} must be an array whose last axis lists orders 1..K (K >= 1), "
                         f"got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be finite")
    return a


def _positions(indices) -> tuple:
    try:
        idx = tuple(indices)
    except TypeError:
        raise ValueError(f"indices must be a sequence of variable indices, got {indices!r}") from None
    if not idx:
        raise ValueError("indices must name at least one variable")
    for i in idx:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise ValueError(f"every index must be an integer >= 0, got {indices!r}")
    return tuple(int(i) for i in idx)


def _block_values(fn: Callable[[tuple], float], idx) -> Callable:
    """block of positions ↦ fn(sorted variable indices of the block), memoised."""
    cache: dict = {}

    def value(block):
        key = tuple(sorted(idx[p] for p in block))
        if key not in cache:
            cache[key] = float(fn(key))
        return cache[key]
    return value


def joint_cumulant(indices, moment: Callable[[tuple], float]) -> float:
    """Connected correlator E[z_{i1} ⋯ z_{ik}]_connected from full correlators (§1.2 of [RY]).

    Möbius inversion over set partitions π of the k positions:
    Σ_π (−1)^{|π|−1} (|π|−1)! Π_{B∈π} moment(indices restricted to B).

    Parameters
    ----------
    indices : sequence of int, length k ≥ 1
        Variable at each position, e.g. ``(0, 0, 1, 1)``.
    moment : callable
        ``moment(sub_indices)`` returns the full correlator E[Π_{i ∈ sub} z_i] for a
        tuple of variable indices (e.g. ``lambda idx: gaussian.wick_moment(idx, K)``).

    Returns
    -------
    float
    """
    idx = _positions(indices)
    m = _block_values(moment, idx)
    total = 0.0
    for part in set_partitions(len(idx)):
        r = len(part)
        total += (-1) ** (r - 1) * factorial(r - 1) * np.prod([m(B) for B in part])
    return float(total)


def moment_from_cumulants(indices, cumulant: Callable[[tuple], float]) -> float:
    """Full correlator E[z_{i1} ⋯ z_{ik}] as Σ over set partitions of products of cumulants (§1.2).

    Parameters
    ----------
    indices : sequence of int, length k ≥ 1
    cumulant : callable
        ``cumulant(sub_indices)`` returns the connected correlator of those variables.
    """
    idx = _positions(indices)
    c = _block_values(cumulant, idx)
    return float(sum(np.prod([c(B) for B in part]) for part in set_partitions(len(idx))))


# --------------------------------------------------------------------------
# Estimates from samples, with error bars
# --------------------------------------------------------------------------

def _samples(samples) -> np.ndarray:
    x = stats._np(samples)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"samples must have shape [N, d] (draws, variables) or [N], got {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for an error bar, got N = {x.shape[0]}")
    return x


def _checked(idx: tuple, d: int) -> tuple:
    if any(i >= d for i in idx):
        raise ValueError(f"indices must be in 0..{d - 1} (the samples have d = {d} variables), "
                         f"got {idx!r}")
    return idx


def sample_moment(samples, indices) -> tuple[float, float]:
    """Sample estimate of E[z_{i1} ⋯ z_{ik}] and its standard error.

    Parameters
    ----------
    samples : array [N, d] of independent draws (or [N] for one variable)
    indices : sequence of int in 0..d−1
    """
    x = _samples(samples)
    idx = _checked(_positions(indices), x.shape[1])
    value, se = stats.mean(np.prod(x[:, list(idx)], axis=1))
    return float(value), float(se)


def _subset_products(x: np.ndarray, idx: tuple):
    """Per-sample products of every sub-multiset of idx that a set partition can produce."""
    if len(idx) > 8:
        raise ValueError(f"connected correlators are supported up to k = 8 points, got k = {len(idx)}")
    subsets = sorted({tuple(sorted(idx[p] for p in B))
                      for part in set_partitions(len(idx)) for B in part})
    column = {s: c for c, s in enumerate(subsets)}
    return column, np.stack([np.prod(x[:, list(s)], axis=1) for s in subsets], axis=1)


def connected_correlator(samples, indices, weights=None, n_blocks: int = 200) -> tuple[float, float]:
    """Sample estimate of E[z_{i1} ⋯ z_{ik}]_connected with a jackknife error bar (§1.2).

    Every full correlator of every subset of the positions is estimated by its sample
    mean (or self-normalised weighted mean Σ w·z⋯z / Σ w), and they are combined by
    :func:`joint_cumulant`; the error bar is a delete-a-block jackknife over the draws
    (:func:`dlt_companion.stats.jackknife`).

    Parameters
    ----------
    samples : array [N, d] of independent draws (or [N])
    indices : sequence of k ≤ 8 ints in 0..d−1
    weights : array [N] ≥ 0, optional
        Importance weights of the draws (target density / proposal density, up to a constant).
    n_blocks : int, jackknife blocks

    Returns
    -------
    value, stderr : float
    """
    x = _samples(samples)
    idx = _checked(_positions(indices), x.shape[1])
    column, per_sample = _subset_products(x, idx)
    if weights is None:
        def est(means):
            return joint_cumulant(idx, lambda s: means[column[s]])
        value, se = stats.jackknife(per_sample, est, n_blocks=n_blocks)
        return float(value), float(se)
    w = np.asarray(weights, dtype=float)
    if w.shape != (x.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {x.shape[0]} finite non-negative numbers, not all zero")
    packed = np.concatenate([per_sample * w[:, None], w[:, None]], axis=1)

    def west(means):
        return joint_cumulant(idx, lambda s: means[column[s]] / means[-1])
    value, se = stats.jackknife(packed, west, n_blocks=n_blocks)
    return float(value), float(se)


# --------------------------------------------------------------------------
# The nearly-Gaussian (quartic-action) distribution of §1.3
# --------------------------------------------------------------------------

def _symmetric_quartic(V, d: int) -> np.ndarray:
    V = np.asarray(V, dtype=float)
    if V.shape != (d,) * 4:
        raise ValueError(f"the quartic coupling V must have shape ({d}, {d}, {d}, {d}) to match "
                         f"the {d}x{d} covariance, got {V.shape}")
    if not np.all(np.isfinite(V)):
        raise ValueError("the quartic coupling V must be finite")
    scale = max(np.abs(V).max(), np.finfo(float).tiny)
    for perm in permutations(range(4)):
        if not np.allclose(V, V.transpose(perm), rtol=0, atol=1e-12 * scale):
            raise ValueError("the quartic coupling V^{μνρλ} must be symmetric under every "
                             "permutation of its four indices")
    return V


@dataclass(frozen=True)
class NearlyGaussian:
    """The quartic-action distribution p(z) ∝ exp(−½ z·K⁻¹z − (1/4!) V·zzzz) of §1.3 of [RY].

    Build with :meth:`create` (general V) or :meth:`isotropic` (V ∝ λ).

    Attributes
    ----------
    K : array [d, d]
        Covariance of the Gaussian part (the book's K_{μν}; the action uses its inverse).
    V : array [d, d, d, d]
        Fully symmetric quartic coupling V^{μνρλ} (upper indices); the quartic form
        V·zzzz must be ≥ 0 for the distribution to exist.
    """

    K: np.ndarray
    V: np.ndarray

    @classmethod
    def create(cls, K, V) -> "NearlyGaussian":
        """Validate a covariance K [d, d] (positive definite) and a symmetric quartic coupling V."""
        K = _checks.gram(np.atleast_2d(np.asarray(K, dtype=float)), "covariance K")
        if np.linalg.eigvalsh(K).min() <= 0:
            raise ValueError("the covariance K of the Gaussian part must be positive definite "
                             "(the action contains its inverse)")
        V = _symmetric_quartic(V, K.shape[0])
        self = cls(K=K, V=V)
        # A necessary (not sufficient) check that V·zzzz >= 0: a fixed set of directions.
        u = np.random.default_rng(12345).standard_normal((4096, K.shape[0]))
        u = np.concatenate([u, np.eye(K.shape[0])])
        if np.any(self.quartic(u) < -1e-12 * np.abs(V).max() * (u * u).sum(1) ** 2):
            raise ValueError("the quartic form V^{μνρλ} z_μ z_ν z_ρ z_λ takes negative values, so "
                             "exp(−S) is not normalisable; use a coupling with V·zzzz >= 0 "
                             "(e.g. NearlyGaussian.isotropic with lam >= 0)")
        return self

    @classmethod
    def isotropic(cls, K, lam: float) -> "NearlyGaussian":
        """V^{μνρλ} = λ (δ^{μν}δ^{ρλ} + δ^{μρ}δ^{νλ} + δ^{μλ}δ^{νρ})/3, i.e. S_int = λ (z·z)²/4!.

        For one variable this is the single-variable quartic action of §1.3,
        S(z) = z²/(2K) + λ z⁴/4!.

        Parameters
        ----------
        K : float or array [d, d]
        lam : float ≥ 0, the quartic coupling λ
        """
        lam = _checks.nonnegative(lam, "quartic coupling lam")
        K = np.atleast_2d(np.asarray(K, dtype=float))
        d = K.shape[0]
        I = np.eye(d)
        V = lam * (np.einsum("ab,cd->abcd", I, I) + np.einsum("ac,bd->abcd", I, I)
                   + np.einsum("ad,bc->abcd", I, I)) / 3.0
        return cls.create(K, V)

    @property
    def dim(self) -> int:
        return self.K.shape[0]

    def quartic(self, z) -> np.ndarray:
        """V^{μνρλ} z_μ z_ν z_ρ z_λ for points z [..., d]."""
        z = np.asarray(z, dtype=float)
        return np.einsum("abcd,...a,...b,...c,...d->...", self.V, z, z, z, z)

    def action(self, z) -> np.ndarray:
        """S(z) = ½ z·K⁻¹z + V·zzzz/4! for points z [..., d] (the negative log-density up to a constant)."""
        z = np.asarray(z, dtype=float)
        Kinv = np.linalg.inv(self.K)
        return 0.5 * np.einsum("...a,ab,...b->...", z, Kinv, z) + self.quartic(z) / 24.0

    # --- perturbation theory ------------------------------------------------
    def connected_four_point(self) -> np.ndarray:
        """Leading-order connected four-point function −Σ V^{αβγδ} K_{μα}K_{νβ}K_{ργ}K_{λδ}, [d,d,d,d]."""
        K = self.K
        return -np.einsum("abcd,ma,nb,rc,ld->mnrl", self.V, K, K, K, K)

    def two_point(self) -> np.ndarray:
        """Two-point function to first order: K_{μν} − ½ Σ V^{αβγδ} K_{μα}K_{νβ}K_{γδ}, [d, d]."""
        K = self.K
        return K - 0.5 * np.einsum("abcd,ma,nb,cd->mn", self.V, K, K, K)

    # --- exact evaluation and sampling ---------------------------------------
    def exact_moment(self, indices) -> float:
        """E[z_{i1} ⋯ z_{ik}] under the full (non-perturbative) distribution, by quadrature (d ≤ 4).

        The ratio ⟨z_{i1}⋯z_{ik} e^{−S_int}⟩_K / ⟨e^{−S_int}⟩_K of Gaussian averages from
        :func:`dlt_companion.gaussian.expect_n`.
        """
        if self.dim > 4:
            raise ValueError(f"exact moments by quadrature need d <= 4 variables, got d = {self.dim}")
        idx = _checked(_positions(indices), self.dim)

        def weight(z):
            return np.exp(-self.quartic(z) / 24.0)
        Z = expect_n(weight, self.K)
        num = expect_n(lambda z: np.prod(z[..., list(idx)], axis=-1) * weight(z), self.K)
        return float(num / Z)

    def exact_connected(self, indices) -> float:
        """Connected correlator under the full distribution (quadrature, d ≤ 4)."""
        return joint_cumulant(indices, self.exact_moment)

    def importance_connected(self, indices, n: int, seed: int = 0,
                             n_blocks: int = 200) -> tuple[float, float]:
        """Connected correlator by importance weighting Gaussian draws, with a control variate.

        Draws z ~ N(0, K) and weights them by w = exp(−V·zzzz/4!). The weighted connected
        correlator minus the *unweighted* one on the same draws, plus the latter's exact
        Gaussian value (K_{μν} for k = 2, zero otherwise), has the same expectation but far
        less noise at small coupling: the Gaussian sampling noise cancels between the two.
        The error bar is a jackknife over draws of the whole difference.

        Parameters
        ----------
        indices : sequence of k ≤ 8 ints in 0..d−1
        n : int, number of Gaussian draws
        seed : int

        Returns
        -------
        value, stderr : float
        """
        n = _checks.width(n, "number of samples n")
        idx = _checked(_positions(indices), self.dim)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.dim)) @ np.linalg.cholesky(self.K).T
        w = np.exp(-self.quartic(z) / 24.0)
        column, per_sample = _subset_products(z, idx)
        packed = np.concatenate([per_sample * w[:, None], w[:, None], per_sample], axis=1)
        c = len(column)
        gauss = float(self.K[idx[0], idx[1]]) if len(idx) == 2 else 0.0

        def est(means):
            weighted = joint_cumulant(idx, lambda s: means[column[s]] / means[c])
            plain = joint_cumulant(idx, lambda s: means[c + 1 + column[s]])
            return weighted - plain + gauss
        value, se = stats.jackknife(packed, est, n_blocks=n_blocks)
        return float(value), float(se)

    def sample(self, n: int, seed: int = 0, batch: int = 1 << 18) -> tuple[np.ndarray, float]:
        """Exact independent draws by rejection from the Gaussian part.

        A proposal z ~ N(0, K) is accepted with probability exp(−V·zzzz/4!) ≤ 1, so the
        accepted points are distributed exactly as exp(−S(z)).

        Parameters
        ----------
        n : int, number of draws
        seed : int
        batch : int, proposals per round

        Returns
        -------
        z : array [n, d]
        acceptance : float, fraction of proposals accepted (= Z_V / Z_0)
        """
        n = _checks.width(n, "number of samples n")
        batch = _checks.width(batch, "batch")
        rng = np.random.default_rng(seed)
        A = np.linalg.cholesky(self.K)
        kept, total, proposed = [], 0, 0
        while total < n:
            z = rng.standard_normal((batch, self.dim)) @ A.T
            q = self.quartic(z)
            if np.any(q < 0):
                raise ValueError("the quartic form took a negative value on a proposal: the "
                                 "distribution is not normalisable")
            keep = z[rng.random(batch) < np.exp(-q / 24.0)]
            kept.append(keep)
            total += len(keep)
            proposed += batch
            if proposed > 200 * batch and total < 1e-4 * proposed:
                raise ValueError("acceptance below 1e-4: the coupling is too strong for rejection "
                                 "sampling from the Gaussian part")
        return np.concatenate(kept)[:n], total / proposed
