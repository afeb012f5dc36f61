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

Both maps are evaluated here without listing the Bell(k) partitions: grouping the
partitions by the block B that holds the first position gives

    E[z_S] = Σ_{B ∋ first} E[z_B]_connected · E[z_{S∖B}],

a recursion over *sub-multisets* of the indices (repeated indices collapse, so
E[z⁴⁰]_connected of one variable costs a few hundred terms, not Bell(40) ≈ 10³⁵).

Nearly-Gaussian distributions
-----------------------------
:class:`NearlyGaussian` is the general even action of §1.3 truncated at sixth order,

    p(z) ∝ exp(−S(z)),
    S(z) = ½ Σ K^{μν} z_μ z_ν + (1/4!) Σ V^{μνρλ} z_μ z_ν z_ρ z_λ
           + (1/6!) Σ U^{μ1…μ6} z_μ1 ⋯ z_μ6,

with K^{μν} the inverse of the covariance K_{μν} of the Gaussian part, a quartic
coupling V = O(ε) and a sextic coupling U = O(ε²) for a small bookkeeping parameter ε.
To leading order in ε (§1.3):

    E[z_μ z_ν]                       = K_{μν} − ½ Σ V^{αβγδ} K_{μα} K_{νβ} K_{γδ} + O(ε²),
    E[z_μ z_ν z_ρ z_λ]_connected     = −Σ V^{αβγδ} K_{μα} K_{νβ} K_{ργ} K_{λδ} + O(ε²),
    E[z_μ1 ⋯ z_μ6]_connected         = −U·K⁶ + Σ_{10 splits 3|3} (V·K³)_{μμμ;α} K^{...}_{αβ} (V·K³)_{μμμ;β} + O(ε³),

so the connected 2k-point function is of order ε^{k−1}; :func:`couplings_from_correlators`
is the inverse dictionary, from measured correlators back to (K, V, U).

The class also samples the distribution exactly (rejection from its Gaussian part,
accepted with probability exp(−S_int) ≤ 1) and evaluates its moments exactly by
quadrature, so that the perturbative statements can be checked and their breakdown
seen.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from itertools import permutations
from typing import Callable

import numpy as np

from . import _checks, stats
from .gaussian import expect_n, pairings

__all__ = ["set_partitions", "bell_number", "moments_to_cumulants", "cumulants_to_moments",
           "joint_cumulant", "moment_from_cumulants", "sample_moment", "connected_correlator",
           "connected_correlators", "JointEstimate", "NearlyGaussian", "Couplings",
           "couplings_from_correlators", "preactivation_correlators", "MAX_PARTITION_TERMS",
           "MAX_LISTED_PARTITIONS"]

#: largest number of terms the sub-multiset recursion of :func:`joint_cumulant` and
#: :func:`moment_from_cumulants` may visit (about 4 s of Python); above it they refuse
MAX_PARTITION_TERMS = 1_000_000
#: largest Bell number :func:`set_partitions` will list (k ≤ 10: 115 975 partitions)
MAX_LISTED_PARTITIONS = 200_000


# --------------------------------------------------------------------------
# Set partitions and the moment <-> cumulant maps
# --------------------------------------------------------------------------

def _order(k, what="k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"{what} must be an integer >= 0, got {k!r}")
    return int(k)


def bell_number(k: int) -> int:
    """The Bell number B_k, the number of set partitions of k positions (§1.2 of [RY]).

    Parameters
    ----------
    k : int ≥ 0

    Returns
    -------
    int
        Exact (Python integer), from the Bell triangle: 1, 1, 2, 5, 15, 52, 203, … for k = 0, 1, 2, ….
    """
    k = _order(k)
    row = [1]
    for _ in range(k):
        new = [row[-1]]
        for v in row:
            new.append(new[-1] + v)
        row = new
    return row[0]


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

    There are Bell(k) of them (1, 1, 2, 5, 15, 52, 203, … for k = 0, 1, 2, …); listing
    them is refused beyond :data:`MAX_LISTED_PARTITIONS` (k ≤ 10). The cumulant maps
    (:func:`joint_cumulant`, :func:`moment_from_cumulants`) never list them.

    Parameters
    ----------
    k : int, 0 ≤ k ≤ 10

    Returns
    -------
    tuple of partitions; each partition is a tuple of blocks, each block a tuple of positions.

    Raises
    ------
    ValueError
        For k < 0, a non-integer k, or Bell(k) above :data:`MAX_LISTED_PARTITIONS`.
    """
    k = _order(k)
    count = bell_number(k)
    if count > MAX_LISTED_PARTITIONS:
        raise ValueError(f"{k} positions have Bell({k}) = {count:.3g} set partitions, more than "
                         f"the {MAX_LISTED_PARTITIONS} this function lists; joint_cumulant and "
                         "moment_from_cumulants evaluate partition sums without listing them")
    return _partitions(k)


def moments_to_cumulants(moments) -> np.ndarray:
    """Cumulants κ_1..κ_K of one variable from its raw moments m_1..m_K (§1.2 of [RY]).

    Uses the recursion κ_n = m_n − Σ_{k=1}^{n−1} C(n−1, k−1) κ_k m_{n−k} (m_0 = 1).

    Parameters
    ----------
    moments : array [..., K]
        Raw moments E[z], E[z²], …, E[z^K] along the last axis (K ≥ 1).

    Returns
    -------
    array [..., K]
        κ_1 (mean), κ_2 (variance), κ_3, κ_4 (connected four-point), …
    """
    m = _moment_array(moments, "moments")
    K = m.shape[-1]
    full = np.concatenate([np.ones(m.shape[:-1] + (1,)), m], axis=-1)      # m_0..m_K
    kappa = np.zeros_like(full)
    for n in range(1, K + 1):
        acc = full[..., n].copy()
        for k in range(1, n):
            acc -= math.comb(n - 1, k - 1) * kappa[..., k] * full[..., n - k]
        kappa[..., n] = acc
    return kappa[..., 1:]


def cumulants_to_moments(cumulants) -> np.ndarray:
    """Raw moments m_1..m_K of one variable from its cumulants κ_1..κ_K (§1.2 of [RY]).

    The inverse of :func:`moments_to_cumulants`: m_n = Σ_{k=1}^{n} C(n−1, k−1) κ_k m_{n−k}.

    Parameters
    ----------
    cumulants : array [..., K]
        κ_1..κ_K along the last axis.

    Returns
    -------
    array [..., K]
        E[z], …, E[z^K].
    """
    kappa = _moment_array(cumulants, "cumulants")
    K = kappa.shape[-1]
    kap = np.concatenate([np.zeros(kappa.shape[:-1] + (1,)), kappa], axis=-1)
    m = np.zeros_like(kap)
    m[..., 0] = 1.0
    for n in range(1, K + 1):
        m[..., n] = sum(math.comb(n - 1, k - 1) * kap[..., k] * m[..., n - k] for k in range(1, n + 1))
    return m[..., 1:]


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


def _multiset(idx: tuple) -> tuple[tuple, tuple]:
    """(distinct variables, their multiplicities) of an index tuple, variables sorted."""
    values = tuple(sorted(set(idx)))
    return values, tuple(idx.count(v) for v in values)


def _recursion_cost(counts: tuple) -> int:
    """Terms the sub-multiset recursion visits: Π_v (c_v + 1)(c_v + 2)/2."""
    return math.prod((c + 1) * (c + 2) // 2 for c in counts)


def _partition_recursion(indices, block: Callable[[tuple], float], rest_is_moment: bool,
                         what: str) -> float:
    """Σ_{B ∋ first} mult(B) · X(B) · Y(S∖B) over sub-multisets B, memoised on count vectors.

    With ``rest_is_moment`` (cumulant from moments) X = κ and Y = m:
    κ(S) = m(S) − Σ_{B ∋ first, B ≠ S} mult(B) κ(B) m(S∖B);
    otherwise (moment from cumulants) m(S) = Σ_{B ∋ first} mult(B) κ(B) m(S∖B).
    ``block`` is the given function (moments or cumulants) of a sorted index tuple.
    """
    idx = _positions(indices)
    values, counts = _multiset(idx)
    cost = _recursion_cost(counts)
    if cost > MAX_PARTITION_TERMS:
        raise ValueError(f"{what} of {len(idx)} indices ({len(values)} distinct variables) needs "
                         f"about {cost:.2g} terms of the partition recursion, more than "
                         f"MAX_PARTITION_TERMS = {MAX_PARTITION_TERMS:.0e}; use fewer distinct "
                         "variables (repeated indices are cheap)")
    given: dict = {}
    derived: dict = {}

    def tup(c):
        return tuple(v for v, k in zip(values, c) for _ in range(k))

    def known(c):                      # the function the caller passed in
        if c not in given:
            given[c] = float(block(tup(c)))
        return given[c]

    def unknown(c):                    # the function the recursion produces
        if not any(c):
            return 1.0                  # m(∅) = 1 (only reached for moments)
        if c in derived:
            return derived[c]
        first = next(i for i, k in enumerate(c) if k)
        ranges = [range(1, k + 1) if i == first else range(k + 1) for i, k in enumerate(c)]
        total = 0.0
        for b in itertools.product(*ranges):
            rest = tuple(k - j for k, j in zip(c, b))
            mult = math.prod(math.comb(k - 1, j - 1) if i == first else math.comb(k, j)
                             for i, (k, j) in enumerate(zip(c, b)))
            if rest_is_moment:
                if not any(rest):
                    continue            # B = S: that term is κ(S) itself
                total += mult * unknown(b) * known(rest)
            else:
                total += mult * known(b) * unknown(rest)
        derived[c] = known(c) - total if rest_is_moment else total
        return derived[c]

    return float(unknown(counts))


def joint_cumulant(indices, moment: Callable[[tuple], float]) -> float:
    """Connected correlator E[z_{i1} ⋯ z_{ik}]_connected from full correlators (§1.2 of [RY]).

    Equal to the Möbius sum Σ_π (−1)^{|π|−1} (|π|−1)! Π_{B∈π} moment(B) over set partitions,
    evaluated by the recursion κ(S) = m(S) − Σ_{B ∋ first, B ≠ S} κ(B) m(S∖B) over
    sub-multisets (module docstring): Π_v (c_v + 1)(c_v + 2)/2 terms for multiplicities c_v,
    so repeated indices are cheap (one variable to order 40: 861 terms); 12 distinct
    variables (5.3·10⁵ terms, about 2 s) are the most it accepts.

    Parameters
    ----------
    indices : sequence of int, length k ≥ 1
        Variable at each position, e.g. ``(0, 0, 1, 1)``.
    moment : callable
        ``moment(sub_indices)`` returns the full correlator E[Π_{i ∈ sub} z_i] for a
        sorted tuple of variable indices (e.g. ``lambda idx: gaussian.wick_moment(idx, K)``).
        It is called once per distinct sub-multiset.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For bad indices, or when the recursion would exceed :data:`MAX_PARTITION_TERMS`
        terms (the message gives the cost).
    """
    return _partition_recursion(indices, moment, True, "the joint cumulant")


def moment_from_cumulants(indices, cumulant: Callable[[tuple], float]) -> float:
    """Full correlator E[z_{i1} ⋯ z_{ik}] as Σ over set partitions of products of cumulants (§1.2).

    Evaluated as m(S) = Σ_{B ∋ first} κ(B) m(S∖B) over sub-multisets (same cost and limit
    as :func:`joint_cumulant`).

    Parameters
    ----------
    indices : sequence of int, length k ≥ 1
    cumulant : callable
        ``cumulant(sub_indices)`` returns the connected correlator of those variables
        (a sorted tuple).

    Returns
    -------
    float
    """
    return _partition_recursion(indices, cumulant, False, "the moment")


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


def sample_moment(samples, indices) -> stats.Estimate:
    """Sample estimate of E[z_{i1} ⋯ z_{ik}] and its standard error (§1.2 of [RY]).

    Parameters
    ----------
    samples : array [N, d] of independent draws (or [N] for one variable)
    indices : sequence of int in 0..d−1

    Returns
    -------
    Estimate
        (value, standard error of the mean), floats.
    """
    x = _samples(samples)
    idx = _checked(_positions(indices), x.shape[1])
    value, se = stats.mean(np.prod(x[:, list(idx)], axis=1))
    return stats.Estimate(float(value), float(se))


#: most sub-multiset products a sample estimator keeps per draw
_MAX_COLUMNS = 4096


def _sub_multisets(idx: tuple) -> list:
    """Every non-empty sub-multiset of idx, as sorted index tuples."""
    values, counts = _multiset(idx)
    out = []
    for c in itertools.product(*(range(k + 1) for k in counts)):
        if any(c):
            out.append(tuple(v for v, k in zip(values, c) for _ in range(k)))
    return out


def _subset_products(x: np.ndarray, index_sets) -> tuple[dict, np.ndarray]:
    """Per-sample products of every sub-multiset of every index tuple: (column map, [N, C])."""
    subsets = sorted({s for idx in index_sets for s in _sub_multisets(idx)}, key=lambda s: (len(s), s))
    if len(subsets) > _MAX_COLUMNS:
        raise ValueError(f"these correlators need {len(subsets)} distinct sub-products per draw, "
                         f"more than {_MAX_COLUMNS}; ask for fewer or lower-order correlators")
    column = {s: c for c, s in enumerate(subsets)}
    return column, np.stack([np.prod(x[:, list(s)], axis=1) for s in subsets], axis=1)


def connected_correlator(samples, indices, weights=None, n_blocks: int = 200) -> stats.Estimate:
    """Sample estimate of E[z_{i1} ⋯ z_{ik}]_connected with a jackknife error bar (§1.2).

    Every full correlator of every sub-multiset of the indices is estimated by its sample
    mean (or self-normalised weighted mean Σ w·z⋯z / Σ w), and they are combined by
    :func:`joint_cumulant`; the error bar is a delete-a-block jackknife over the draws
    (:func:`dlt_companion.stats.jackknife`).

    Parameters
    ----------
    samples : array [N, d] of independent draws (or [N])
    indices : sequence of ints in 0..d−1
    weights : array [N] ≥ 0, optional
        Importance weights of the draws (target density / proposal density, up to a constant).
    n_blocks : int ≥ 2, jackknife blocks

    Returns
    -------
    Estimate
        value and jackknife standard error, floats.
    """
    est = connected_correlators(samples, [indices], weights=weights, n_blocks=n_blocks)
    return stats.Estimate(float(est.value[0]), float(est.stderr[0]))


@dataclass(frozen=True)
class JointEstimate:
    """Several statistics of one sample, with their jackknife covariance (§1.2 of [RY]).

    Attributes
    ----------
    value : array [C]
        The estimates.
    stderr : array [C]
        Their standard errors (√diag of ``cov``).
    cov : array [C, C]
        Jackknife covariance: statistics of the same draws are correlated, so a χ² over
        them needs it (``stats.assert_agree(..., cov=est.cov)``).
    """

    value: np.ndarray
    stderr: np.ndarray
    cov: np.ndarray


def connected_correlators(samples, index_sets, weights=None, n_blocks: int = 200) -> JointEstimate:
    """Several connected correlators of one sample, with their joint jackknife covariance (§1.2).

    Parameters
    ----------
    samples : array [N, d] of independent draws (or [N])
    index_sets : sequence of index tuples
        One tuple of variable indices per connected correlator, e.g.
        ``[(0, 1), (0, 0, 1, 1)]``.
    weights : array [N] ≥ 0, optional
        Importance weights (as in :func:`connected_correlator`).
    n_blocks : int ≥ 2, jackknife blocks

    Returns
    -------
    JointEstimate
        value [C], stderr [C], cov [C, C] for the C correlators.
    """
    x = _samples(samples)
    sets = [_checked(_positions(idx), x.shape[1]) for idx in index_sets]
    if not sets:
        raise ValueError("index_sets must list at least one correlator")
    column, per_sample = _subset_products(x, sets)
    if weights is None:
        packed = per_sample

        def est(means):
            return np.array([joint_cumulant(idx, lambda s: means[column[s]]) for idx in sets])
    else:
        w = np.asarray(weights, dtype=float)
        if w.shape != (x.shape[0],) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights must be {x.shape[0]} finite non-negative numbers, not all zero")
        packed = np.concatenate([per_sample * w[:, None], w[:, None]], axis=1)

        def est(means):
            return np.array([joint_cumulant(idx, lambda s: means[column[s]] / means[-1])
                             for idx in sets])
    value, _ = stats.jackknife(packed, est, n_blocks=n_blocks)
    cov = stats.covariance(packed, est, n_blocks=n_blocks)
    return JointEstimate(np.asarray(value, float), np.sqrt(np.diag(cov)), cov)


# --------------------------------------------------------------------------
# The nearly-Gaussian distribution of §1.3
# --------------------------------------------------------------------------

def _symmetric(T, d: int, order: int, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=float)
    if T.shape != (d,) * order:
        raise ValueError(f"the {what} must have shape {(d,) * order} to match the {d}x{d} "
                         f"covariance, got {T.shape}")
    if not np.all(np.isfinite(T)):
        raise ValueError(f"the {what} must be finite")
    scale = max(np.abs(T).max(initial=0.0), np.finfo(float).tiny)
    for perm in permutations(range(order)):
        if not np.allclose(T, T.transpose(perm), rtol=0, atol=1e-12 * scale):
            raise ValueError(f"the {what} must be symmetric under every permutation of its "
                             f"{order} indices")
    return T


def _isotropic_tensor(d: int, order: int) -> np.ndarray:
    """Σ over perfect matchings of δ⋯δ, divided by their number: T·z^order = (z·z)^{order/2}."""
    I = np.eye(d)
    T = np.zeros((d,) * order)
    matchings = list(pairings(order))
    letters = "abcdefgh"[:order]
    for m in matchings:
        spec = ",".join(letters[a] + letters[b] for a, b in m) + "->" + letters
        T = T + np.einsum(spec, *([I] * len(m)))
    return T / len(matchings)


def _power_form(T, z) -> np.ndarray:
    """T_{a1…ak} z_a1 ⋯ z_ak for points z [..., d] (k = T.ndim)."""
    z = np.asarray(z, dtype=float)
    flat = z.reshape(-1, z.shape[-1])
    out = np.broadcast_to(T, (flat.shape[0],) + T.shape)
    for _ in range(T.ndim):
        out = np.einsum("n...a,na->n...", out, flat)
    return out.reshape(z.shape[:-1])


def _splits_3_3():
    """The 10 ways to split six positions into two unordered groups of three."""
    out = []
    for A in itertools.combinations(range(6), 3):
        if 0 in A:
            out.append((A, tuple(p for p in range(6) if p not in A)))
    return out


def _tree_six(V, K) -> np.ndarray:
    """Σ_{10 splits} W_{μ1μ2μ3;e} K_{ef} W_{μ4μ5μ6;f}, with W = V with three legs lowered by K."""
    W = np.einsum("abce,ma,nb,rc->mnre", V, K, K, K)          # three external legs lowered
    pair = np.einsum("mnre,ef,stuf->mnrstu", W, K, W)          # positions (0,1,2 | 3,4,5)
    out = np.zeros_like(pair)
    for A, B in _splits_3_3():
        out = out + np.moveaxis(pair, range(6), A + B)
    return out


@dataclass(frozen=True)
class NearlyGaussian:
    """The even action S = ½ z·K⁻¹z + V·z⁴/4! + U·z⁶/6! of §1.3 of [RY], and its samples.

    Build with :meth:`create` (general V, U) or :meth:`isotropic` (V ∝ λ, U ∝ ρ). With a
    bookkeeping parameter ε the natural scaling is V = O(ε), U = O(ε²): then the
    connected 2k-point function is O(ε^{k−1}).

    Attributes
    ----------
    K : array [d, d]
        Covariance of the Gaussian part (the book's K_{μν}; the action uses its inverse).
    V : array [d, d, d, d]
        Fully symmetric quartic coupling V^{μνρλ} (upper indices).
    U : array [d]*6
        Fully symmetric sextic coupling U^{μ1…μ6} (zeros for a purely quartic action).
        The interaction V·z⁴/4! + U·z⁶/6! must be ≥ 0 for the rejection sampler; each
        form is required to be ≥ 0 separately.
    """

    K: np.ndarray
    V: np.ndarray
    U: np.ndarray

    @classmethod
    def create(cls, K, V, U=None) -> "NearlyGaussian":
        """Validate a covariance and symmetric couplings and build the distribution  (§1.3 of [RY]).

        Parameters
        ----------
        K : array [d, d], positive definite
        V : array [d, d, d, d], fully symmetric, V·z⁴ ≥ 0
        U : array [d]*6, fully symmetric, U·z⁶ ≥ 0, optional (default zero)

        Returns
        -------
        NearlyGaussian
        """
        K = _checks.gram(np.atleast_2d(np.asarray(K, dtype=float)), "covariance K")
        if np.linalg.eigvalsh(K).min() <= 0:
            raise ValueError("the covariance K of the Gaussian part must be positive definite "
                             "(the action contains its inverse)")
        d = K.shape[0]
        V = _symmetric(V, d, 4, "quartic coupling V")
        U = np.zeros((d,) * 6) if U is None else _symmetric(U, d, 6, "sextic coupling U")
        self = cls(K=K, V=V, U=U)
        # A necessary (not sufficient) check that the forms are >= 0: a fixed set of directions.
        u = np.random.default_rng(12345).standard_normal((2048, d))
        u = np.concatenate([u, np.eye(d)])
        norm = (u * u).sum(1)
        for T, power, what in ((V, 4, "quartic"), (U, 6, "sextic")):
            if np.any(_power_form(T, u) < -1e-12 * max(np.abs(T).max(), 1e-300) * norm ** (power // 2)):
                raise ValueError(f"the {what} form takes negative values, so exp(−S_int) exceeds "
                                 "1 and the rejection sampler cannot use it; use couplings with a "
                                 "non-negative form (e.g. NearlyGaussian.isotropic with lam, rho >= 0)")
        return self

    @classmethod
    def isotropic(cls, K, lam: float, rho: float = 0.0) -> "NearlyGaussian":
        """S_int = λ (z·z)²/4! + ρ (z·z)³/6!  (the single-variable action of §1.3 for d = 1).

        For one variable this is S(z) = z²/(2K) + λ z⁴/4! + ρ z⁶/6!.

        Parameters
        ----------
        K : float or array [d, d]
        lam : float ≥ 0, the quartic coupling λ
        rho : float ≥ 0, the sextic coupling ρ (default 0)

        Returns
        -------
        NearlyGaussian
        """
        lam = _checks.nonnegative(lam, "quartic coupling lam")
        rho = _checks.nonnegative(rho, "sextic coupling rho")
        K = np.atleast_2d(np.asarray(K, dtype=float))
        d = K.shape[0]
        return cls.create(K, lam * _isotropic_tensor(d, 4), rho * _isotropic_tensor(d, 6))

    @property
    def dim(self) -> int:
        """Number of variables d."""
        return self.K.shape[0]

    def quartic(self, z) -> np.ndarray:
        """V^{μνρλ} z_μ z_ν z_ρ z_λ for points z  (§1.3 of [RY]).

        Parameters
        ----------
        z : array [..., d]

        Returns
        -------
        array [...]
        """
        return _power_form(self.V, z)

    def interaction(self, z) -> np.ndarray:
        """S_int(z) = V·z⁴/4! + U·z⁶/6! for points z  (§1.3 of [RY]).

        Parameters
        ----------
        z : array [..., d]

        Returns
        -------
        array [...]
        """
        out = self.quartic(z) / 24.0
        if np.any(self.U):
            out = out + _power_form(self.U, z) / 720.0
        return out

    def action(self, z) -> np.ndarray:
        """S(z) = ½ z·K⁻¹z + S_int(z), the negative log-density up to a constant  (§1.3 of [RY]).

        Parameters
        ----------
        z : array [..., d]

        Returns
        -------
        array [...]
        """
        z = np.asarray(z, dtype=float)
        Kinv = np.linalg.inv(self.K)
        return 0.5 * np.einsum("...a,ab,...b->...", z, Kinv, z) + self.interaction(z)

    # --- perturbation theory ------------------------------------------------
    def connected_four_point(self) -> np.ndarray:
        """Leading-order connected four-point function −Σ V^{αβγδ} K_{μα}K_{νβ}K_{ργ}K_{λδ}  (§1.3).

        Returns
        -------
        array [d, d, d, d], of order ε (its next order, ε², holds V² and U).
        """
        K = self.K
        return -np.einsum("abcd,ma,nb,rc,ld->mnrl", self.V, K, K, K, K)

    def connected_six_point(self) -> np.ndarray:
        """Leading-order connected six-point function: −U·K⁶ plus the V–K–V tree  (§1.3).

        Both terms are of order ε² (U = O(ε²), V² = O(ε²)); for one variable with
        S = z²/2K + λz⁴/4! + ρz⁶/6! this is (10λ² K − ρ) K⁶.

        Returns
        -------
        array [d]*6
        """
        K = self.K
        lowered = np.einsum("abcdef,ma,nb,rc,sd,te,uf->mnrstu", self.U, K, K, K, K, K, K)
        return -lowered + _tree_six(self.V, K)

    def two_point(self) -> np.ndarray:
        """Two-point function to first order in ε: K_{μν} − ½ Σ V^{αβγδ} K_{μα}K_{νβ}K_{γδ}  (§1.3).

        Returns
        -------
        array [d, d]
        """
        K = self.K
        return K - 0.5 * np.einsum("abcd,ma,nb,cd->mn", self.V, K, K, K)

    # --- exact evaluation and sampling ---------------------------------------
    def exact_moment(self, indices) -> float:
        """E[z_{i1} ⋯ z_{ik}] under the full (non-perturbative) distribution, by quadrature (d ≤ 4; §1.3).

        The ratio ⟨z_{i1}⋯z_{ik} e^{−S_int}⟩_K / ⟨e^{−S_int}⟩_K of Gaussian averages from
        :func:`dlt_companion.gaussian.expect_n`.

        Parameters
        ----------
        indices : sequence of int in 0..d−1

        Returns
        -------
        float
        """
        if self.dim > 4:
            raise ValueError(f"exact moments by quadrature need d <= 4 variables, got d = {self.dim}")
        idx = _checked(_positions(indices), self.dim)

        def weight(z):
            return np.exp(-self.interaction(z))
        Z = expect_n(weight, self.K)
        num = expect_n(lambda z: np.prod(z[..., list(idx)], axis=-1) * weight(z), self.K)
        return float(num / Z)

    def exact_connected(self, indices) -> float:
        """Connected correlator under the full distribution (quadrature, d ≤ 4)  (§1.2–1.3).

        Parameters
        ----------
        indices : sequence of int in 0..d−1

        Returns
        -------
        float
        """
        return joint_cumulant(indices, self.exact_moment)

    def importance_connected(self, indices, n: int, seed: int = 0,
                             n_blocks: int = 200) -> stats.Estimate:
        """Connected correlator by importance weighting Gaussian draws, with a control variate  (§1.3).

        Draws z ~ N(0, K) and weights them by w = exp(−S_int(z)). The weighted connected
        correlator minus the *unweighted* one on the same draws, plus the latter's exact
        Gaussian value (K_{μν} for k = 2, zero otherwise), has the same expectation but far
        less noise at small coupling: the Gaussian sampling noise cancels between the two.
        The error bar is a jackknife over draws of the whole difference.

        Parameters
        ----------
        indices : sequence of ints in 0..d−1
        n : int, number of Gaussian draws
        seed : int
        n_blocks : int ≥ 2, jackknife blocks

        Returns
        -------
        Estimate
            value and jackknife standard error, floats.
        """
        n = _checks.width(n, "number of samples n")
        idx = _checked(_positions(indices), self.dim)
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((n, self.dim)) @ np.linalg.cholesky(self.K).T
        w = np.exp(-self.interaction(z))
        column, per_sample = _subset_products(z, [idx])
        packed = np.concatenate([per_sample * w[:, None], w[:, None], per_sample], axis=1)
        c = len(column)
        gauss = float(self.K[idx[0], idx[1]]) if len(idx) == 2 else 0.0

        def est(means):
            weighted = joint_cumulant(idx, lambda s: means[column[s]] / means[c])
            plain = joint_cumulant(idx, lambda s: means[c + 1 + column[s]])
            return weighted - plain + gauss
        value, se = stats.jackknife(packed, est, n_blocks=n_blocks)
        return stats.Estimate(float(value), float(se))

    def sample(self, n: int, seed: int = 0, batch: int = 1 << 18) -> tuple[np.ndarray, float]:
        """Exact independent draws by rejection from the Gaussian part  (§1.3).

        A proposal z ~ N(0, K) is accepted with probability exp(−S_int(z)) ≤ 1, so the
        accepted points are distributed exactly as exp(−S(z)).

        Parameters
        ----------
        n : int, number of draws
        seed : int
        batch : int, proposals per round

        Returns
        -------
        z : array [n, d]
        acceptance : float, fraction of proposals accepted (= Z_S / Z_Gauss)
        """
        n = _checks.width(n, "number of samples n")
        batch = _checks.width(batch, "batch")
        rng = np.random.default_rng(seed)
        A = np.linalg.cholesky(self.K)
        kept, total, proposed = [], 0, 0
        while total < n:
            z = rng.standard_normal((batch, self.dim)) @ A.T
            s = self.interaction(z)
            if np.any(s < 0):
                raise ValueError("the interaction took a negative value on a proposal: the "
                                 "rejection sampler needs S_int >= 0")
            keep = z[rng.random(batch) < np.exp(-s)]
            kept.append(keep)
            total += len(keep)
            proposed += batch
            if proposed > 200 * batch and total < 1e-4 * proposed:
                raise ValueError("acceptance below 1e-4: the coupling is too strong for rejection "
                                 "sampling from the Gaussian part")
        return np.concatenate(kept)[:n], total / proposed


@dataclass(frozen=True)
class Couplings:
    """Couplings of a nearly-Gaussian action read off from its correlators (§1.3 of [RY]).

    Attributes
    ----------
    K : array [d, d]
        Covariance of the Gaussian part, K = G − ½ C4·G⁻¹ + O(ε²).
    V : array [d, d, d, d]
        Quartic coupling, V = −K⁻¹K⁻¹K⁻¹K⁻¹·C4 + O(ε²).
    U : array [d]*6 or None
        Sextic coupling, U = K⁻⁶·(tree(V) − C6) + O(ε³) (None if no six-point function was given).
    """

    K: np.ndarray
    V: np.ndarray
    U: np.ndarray | None


def couplings_from_correlators(G, C4, C6=None) -> Couplings:
    """The inverse dictionary of §1.3: couplings (K, V, U) from the correlators, to leading order in ε.

    Inverts E[zz] = K − ½V·K³, C4 = −V·K⁴ and C6 = −U·K⁶ + tree(V, K) (see
    :class:`NearlyGaussian`). For one variable: K = G − C4/(2G), λ = −C4/K⁴,
    ρ = (10 C4²/K − C6)/K⁶.

    Parameters
    ----------
    G : float or array [d, d]
        The two-point function E[z_μ z_ν] (positive definite).
    C4 : float or array [d]*4
        The connected four-point function.
    C6 : float or array [d]*6, optional
        The connected six-point function.

    Returns
    -------
    Couplings
        K [d, d], V [d]*4 and U [d]*6 (or None), as arrays even for one variable.
    """
    G = np.atleast_2d(np.asarray(G, dtype=float))
    G = _checks.gram(G, "two-point function G")
    d = G.shape[0]
    if np.linalg.eigvalsh(G).min() <= 0:
        raise ValueError("the two-point function G must be positive definite")
    C4 = np.asarray(C4, dtype=float).reshape((d,) * 4)
    if not np.all(np.isfinite(C4)):
        raise ValueError("C4 must be finite")
    Ginv = np.linalg.inv(G)
    K = G - 0.5 * np.einsum("mnrl,rl->mn", C4, Ginv)
    Kinv = np.linalg.inv(K)
    V = -np.einsum("ma,nb,rc,ld,abcd->mnrl", Kinv, Kinv, Kinv, Kinv, C4)
    U = None
    if C6 is not None:
        C6 = np.asarray(C6, dtype=float).reshape((d,) * 6)
        if not np.all(np.isfinite(C6)):
            raise ValueError("C6 must be finite")
        U = np.einsum("ma,nb,rc,sd,te,uf,abcdef->mnrstu", Kinv, Kinv, Kinv, Kinv, Kinv, Kinv,
                      _tree_six(V, K) - C6)
    return Couplings(K=K, V=V, U=U)


# --------------------------------------------------------------------------
# Connected correlators of network preactivations, jointly over layers
# --------------------------------------------------------------------------

def _per_network_pieces(z: np.ndarray, spec) -> tuple[np.ndarray, Callable]:
    """Per-network averages [M, P] for one correlator of one layer, and the map means → value."""
    kind, idx = spec
    M, B, n = z.shape
    if kind in ("same", "different"):
        if len(idx) != 4 or not all(0 <= int(i) < B for i in idx):
            raise ValueError(f"four-point specs need 4 input indices in 0..{B - 1}, got {idx!r}")
        a, b, c, d = (int(i) for i in idx)
        pair = lambda p, q: (z[:, p] * z[:, q]).mean(1)          # noqa: E731
        if kind == "same":
            extra = (z[:, a] * z[:, b] * z[:, c] * z[:, d]).mean(1)
            pieces = np.stack([extra, pair(a, b), pair(c, d), pair(a, c), pair(b, d),
                               pair(a, d), pair(b, c)], axis=1)
            return pieces, lambda m: m[0] - m[1] * m[2] - m[3] * m[4] - m[5] * m[6]
        if n < 2:
            raise ValueError("two different neurons need a layer of width >= 2")
        sab, scd = (z[:, a] * z[:, b]).sum(1), (z[:, c] * z[:, d]).sum(1)
        diag = (z[:, a] * z[:, b] * z[:, c] * z[:, d]).sum(1)
        pieces = np.stack([(sab * scd - diag) / (n * (n - 1)), sab / n, scd / n], axis=1)
        return pieces, lambda m: m[0] - m[1] * m[2]
    if kind == "six":
        if n < 3 or not 0 <= int(idx) < B:
            raise ValueError(f"the six-point spec needs width >= 3 and one input index in 0..{B - 1}")
        sq = z[:, int(idx)] ** 2
        p1, p2, p3 = sq.sum(1), (sq ** 2).sum(1), (sq ** 3).sum(1)
        pieces = np.stack([p1 / n, (p1 ** 2 - p2) / (n * (n - 1)),
                           (p1 ** 3 - 3 * p1 * p2 + 2 * p3) / (n * (n - 1) * (n - 2))], axis=1)
        return pieces, lambda m: m[2] - 3.0 * m[1] * m[0] + 2.0 * m[0] ** 3
    raise ValueError(f"spec kind must be 'same', 'different' or 'six', got {kind!r}")


def preactivation_correlators(zs, specs, n_blocks: int | None = None) -> JointEstimate:
    """Connected correlators of preactivations at several layers, with their joint covariance (§4.2–4.3).

    All layers of one ensemble are measured on the same networks, so their estimates are
    correlated; one delete-a-block jackknife over networks gives the values, the error bars
    and the full covariance (for ``stats.assert_agree(..., cov=...)``).

    Parameters
    ----------
    zs : sequence of L arrays [M, B, n_l]
        Preactivations of each layer (networks, inputs, neurons), e.g. ``ens(x)``.
    specs : sequence of (kind, indices)
        ``("same", (a, b, c, d))``: E[z_{i;a} z_{i;b} z_{i;c} z_{i;d}]_connected (one neuron),
        which is (V_{(ab)(cd)} + V_{(ac)(bd)} + V_{(ad)(bc)})/n_{l−1} at leading order;
        ``("different", (a, b, c, d))``: E[z_{i;a} z_{i;b} z_{j;c} z_{j;d}]_connected, i ≠ j
        (V_{(ab)(cd)}/n_{l−1}); ``("six", a)``: E[z_{i;a}² z_{j;a}² z_{k;a}²]_connected for
        distinct neurons i, j, k (order 1/n², §4.2).
    n_blocks : int ≥ 2, optional
        Jackknife blocks (default min(M, 200)).

    Returns
    -------
    JointEstimate
        value and stderr of shape [L, S], cov of shape [L·S, L·S] (row-major: layer, then spec).
    """
    layers = [stats._np(z) for z in zs]
    if not layers:
        raise ValueError("zs must hold at least one layer")
    layers = [z[:, None, :] if z.ndim == 2 else z for z in layers]
    M = layers[0].shape[0]
    if any(z.ndim != 3 or z.shape[0] != M for z in layers):
        raise ValueError("every layer must have shape [M, B, n] with the same number of networks M")
    if M < 2:
        raise ValueError(f"need at least 2 networks for an error bar, got M = {M}")
    specs = list(specs)
    if not specs:
        raise ValueError("specs must list at least one correlator")
    blocks, maps, sizes = [], [], []
    for z in layers:
        for spec in specs:
            pieces, fn = _per_network_pieces(z, spec)
            blocks.append(pieces)
            maps.append(fn)
            sizes.append(pieces.shape[1])
    packed = np.concatenate(blocks, axis=1)
    edges = np.concatenate([[0], np.cumsum(sizes)])

    def est(means):
        return np.array([fn(means[a:b]) for fn, a, b in zip(maps, edges[:-1], edges[1:])])
    value, _ = stats.jackknife(packed, est, n_blocks=n_blocks)
    cov = stats.covariance(packed, est, n_blocks=n_blocks)
    shape = (len(layers), len(specs))
    return JointEstimate(np.asarray(value).reshape(shape), np.sqrt(np.diag(cov)).reshape(shape), cov)
