"""Preconditions, checked once and centrally, with errors that say how to fix the call."""

from __future__ import annotations

import numbers

import numpy as np

# Relative slack allowed when deciding that a kernel is positive semidefinite:
# Gram matrices built in floating point can have eigenvalues of -1e-16 * scale.
PSD_RTOL = 1e-10


def width(n, what: str = "width") -> int:
    """A positive integer layer width."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"{what} must be a positive integer, got {n!r}")
    return int(n)


def seed(value, what: str = "seed") -> int:
    """A non-negative integer seed (1.7 is an error, not 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def index(value, what: str = "index") -> int:
    """A non-negative integer index (0.5 is an error, not 0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def widths(ns, what: str = "widths") -> list[int]:
    """A non-empty sequence of positive integer widths."""
    try:
        ns = list(ns)
    except TypeError:
        raise ValueError(f"{what} must be a sequence of positive integers, got {ns!r}") from None
    if not ns:
        raise ValueError(f"{what} must contain at least one layer width")
    return [width(n, f"{what}[{i}]") for i, n in enumerate(ns)]


def depth(L, what: str = "depth") -> int:
    return width(L, what)


def C_W(value, what: str = "C_W") -> float:
    """Weight variance C_W > 0."""
    v = _real(value, what)
    if not v > 0:
        raise ValueError(f"{what} must be > 0 (weights have variance {what}/n), got {value!r}")
    return v


def C_b(value, what: str = "C_b") -> float:
    """Bias variance C_b ≥ 0."""
    v = _real(value, what)
    if v < 0:
        raise ValueError(f"{what} must be >= 0 (it is the bias variance), got {value!r}")
    return v


def real(value, what: str) -> float:
    """A finite real number."""
    return _real(value, what)


def per_layer(value, L: int, what: str, check) -> tuple:
    """A number (the same for every layer) or a sequence of one value per layer, as a tuple of L.

    Entry l−1 is layer l's value; each entry passes ``check(value, name)``.
    """
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{what} must be a number or a sequence of {L} numbers, got {value!r}")
    if np.ndim(value) == 0:
        return (check(value, what),) * L
    try:
        values = list(np.asarray(value, dtype=object).ravel()) if np.ndim(value) == 1 else None
    except (TypeError, ValueError):
        values = None
    if values is None:
        raise ValueError(f"{what} must be a number or a flat sequence of {L} numbers (one per "
                         f"layer), got an array of shape {np.shape(value)}")
    if len(values) != L:
        raise ValueError(f"{what} must be a number or a sequence of one value per layer "
                         f"(length {L}), got length {len(values)}")
    return tuple(check(v, f"{what}[{i}]") for i, v in enumerate(values))


def nonnegative(value, what: str) -> float:
    v = _real(value, what)
    if v < 0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    return v


def _real(value, what: str) -> float:
    if isinstance(value, (complex, np.complexfloating)) or isinstance(value, bool):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a real number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return v


def _real_array(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if np.iscomplexobj(a):
        raise ValueError(f"{what} must be real, got complex values")
    try:
        return a.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {a!r}") from None


def kernel_scalar(K, what: str = "K") -> np.ndarray:
    """One or many single-input kernel values K ≥ 0 (array of any shape)."""
    K = _real_array(K, what)
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{what} must be finite, got {K!r}")
    if np.any(K < 0):
        raise ValueError(f"{what} is a variance and must be >= 0, got min {K.min()!r}")
    return K


def kernel_pair(K11, K12, K22):
    """Entries of one or many 2x2 kernels [[K11, K12], [K12, K22]]; checks PSD."""
    K11, K12, K22 = np.broadcast_arrays(*(_real_array(k, "kernel entries") for k in (K11, K12, K22)))
    if not (np.all(np.isfinite(K11)) and np.all(np.isfinite(K12)) and np.all(np.isfinite(K22))):
        raise ValueError("kernel entries must be finite")
    if np.any(K11 < 0) or np.any(K22 < 0):
        raise ValueError("diagonal kernel entries K11, K22 are variances and must be >= 0")
    det = K11 * K22 - K12 * K12
    if np.any(det < -PSD_RTOL * np.maximum(K11 * K22, np.finfo(float).tiny)):
        raise ValueError("the 2x2 kernel [[K11, K12], [K12, K22]] is not positive semidefinite: "
                         "need K12**2 <= K11*K22")
    return K11, K12, K22


def gram(K, what: str = "kernel") -> np.ndarray:
    """A symmetric positive semidefinite matrix of shape [B, B]."""
    K = _real_array(K, what)
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"{what} must be a square [B, B] matrix, got shape {K.shape}")
    if not np.all(np.isfinite(K)):
        raise ValueError(f"{what} must be finite")
    if not np.allclose(K, K.T, rtol=1e-12, atol=1e-14 * max(1.0, np.abs(K).max(initial=0.0))):
        raise ValueError(f"{what} must be symmetric")
    K = 0.5 * (K + K.T)
    eig = np.linalg.eigvalsh(K) if K.size else np.zeros(0)
    scale = max(np.abs(eig).max(initial=0.0), np.finfo(float).tiny)
    if eig.size and eig.min() < -PSD_RTOL * scale:
        raise ValueError(f"{what} is not positive semidefinite (smallest eigenvalue "
                         f"{eig.min():.3g}); a kernel must be a Gram matrix of covariances")
    return K


def scalar_or_gram(K, what: str = "K") -> tuple[bool, np.ndarray]:
    """A kernel given as a number (one input) or a Gram matrix: (is_scalar, [B, B] matrix).

    The one check behind every function that takes "K1: float or array [B, B]".
    """
    if np.ndim(K) == 0:
        return True, np.array([[float(kernel_scalar(K, what))]])
    return False, gram(K, what)


def differentiable_activation(act, purpose: str):
    """An activation whose derivative σ' is an ordinary function (not the perceptron's δ)."""
    from .activations import get

    act = get(act)
    if act.name == "perceptron":
        raise ValueError(f"{purpose} need σ' as a function; the perceptron's step has a "
                         "Dirac-delta derivative, so they are not available for it")
    return act
