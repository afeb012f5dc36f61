"""Ensemble statistics with error bars, and the theory-vs-experiment assertion.

Networks in an ensemble are independent, but neurons and inputs *within* one
network are not (they share the weights of earlier layers). Every estimator here
therefore first reduces each network to a few per-network averages and then
treats networks as the independent samples:

* linear statistics (means, the kernel) get the standard error of the mean over
  networks;
* non-linear ones (connected four-point functions, kurtosis) get a delete-a-block
  jackknife over networks.

All functions accept numpy arrays or torch tensors of preactivations ``z`` with
shape [M, B, n] (networks, inputs, neurons) and return numpy ``(value, stderr)``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["mean", "jackknife", "kernel", "four_point", "neuron_moments", "excess_kurtosis",
           "relative_variance", "z_scores", "assert_agree"]


def _np(z) -> np.ndarray:
    if hasattr(z, "detach"):
        z = z.detach().to("cpu").double().numpy()
    return np.asarray(z, dtype=float)


def _preacts(z, min_neurons: int = 1) -> np.ndarray:
    z = _np(z)
    if z.ndim == 2:
        z = z[:, None, :]
    if z.ndim != 3:
        raise ValueError(f"preactivations must have shape [M, B, n] (networks, inputs, neurons) "
                         f"or [M, n], got {z.shape}")
    if z.shape[0] < 2:
        raise ValueError(f"need at least 2 networks for an error bar, got M = {z.shape[0]}")
    if z.shape[2] < min_neurons:
        raise ValueError(f"need at least {min_neurons} neurons per layer, got n = {z.shape[2]}")
    return z


def mean(samples) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the first axis (independent samples) and its standard error."""
    x = _np(samples)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples along axis 0, got {x.shape[0]}")
    return x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])


def jackknife(per_network, estimator: Callable[[np.ndarray], np.ndarray],
              n_blocks: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Delete-a-block jackknife of ``estimator(mean over networks)``.

    Parameters
    ----------
    per_network : array [M, ...]
        Per-network averages (independent across the first axis).
    estimator : callable
        Maps the ensemble mean (shape [...]) to the statistic (any shape).
    n_blocks : int, optional
        Number of contiguous blocks of networks (default min(M, 200)).

    Returns
    -------
    value, stderr : the estimator at the full mean, and its jackknife standard error.
    """
    x = _np(per_network)
    M = x.shape[0]
    if M < 2:
        raise ValueError(f"need at least 2 networks for a jackknife, got {M}")
    G = min(M, n_blocks or 200)
    edges = np.linspace(0, M, G + 1).astype(int)
    sums = np.add.reduceat(x, edges[:-1], axis=0)                 # [G, ...]
    counts = np.diff(edges).reshape((G,) + (1,) * (x.ndim - 1))
    total = x.sum(axis=0)
    value = np.asarray(estimator(total / M))
    loo = np.stack([np.asarray(estimator((total - sums[g]) / (M - counts[g])))
                    for g in range(G)])
    # block jackknife variance with unequal block sizes ≈ (G-1)/G Σ (θ_g − θ̄)²
    var = (G - 1) / G * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0)
    return value, np.sqrt(var)


def kernel(z) -> tuple[np.ndarray, np.ndarray]:
    """The metric G_{αβ} = E[z_{i;α} z_{i;β}] with its standard error.

    Parameters
    ----------
    z : array [M, B, n]
        Preactivations of one layer for B inputs in M networks.

    Returns
    -------
    G, stderr : arrays [B, B], averaged over neurons and networks.
    """
    z = _preacts(z)
    per_net = np.einsum("mai,mbi->mab", z, z) / z.shape[2]
    return mean(per_net)


def _four_point_estimator(kind: str, idx):
    a, b, c, d = idx

    def est(m):
        G = m["G"]
        if kind == "same":
            return m["p4"] - (G[a, b] * G[c, d] + G[a, c] * G[b, d] + G[a, d] * G[b, c])
        return m["q4"] - G[a, b] * G[c, d]
    return est


def four_point(z, inputs=(0, 0, 0, 0), neurons: str = "same") -> tuple[float, float]:
    """Connected four-point function of preactivations with a jackknife error bar.

    ``neurons="same"`` gives E[z_{i;a} z_{i;b} z_{i;c} z_{i;d}]_connected (one neuron i);
    ``neurons="different"`` gives E[z_{i;a} z_{i;b} z_{j;c} z_{j;d}]_connected for i ≠ j.
    In the book's normalisation (§4.3 of [RY]) the first is
    (V_{(ab)(cd)} + V_{(ac)(bd)} + V_{(ad)(bc)}) / n_{l−1} and the second V_{(ab)(cd)} / n_{l−1};
    for one input these are 3V/n_{l−1} and V/n_{l−1}.

    Parameters
    ----------
    z : array [M, B, n]
    inputs : 4 input indices (a, b, c, d)
    neurons : "same" or "different"
    """
    if neurons not in ("same", "different"):
        raise ValueError(f"neurons must be 'same' or 'different', got {neurons!r}")
    z = _preacts(z, min_neurons=2 if neurons == "different" else 1)
    idx = tuple(int(i) for i in inputs)
    if len(idx) != 4 or not all(0 <= i < z.shape[1] for i in idx):
        raise ValueError(f"inputs must be 4 indices in 0..{z.shape[1] - 1}, got {inputs!r}")
    a, b, c, d = idx
    n = z.shape[2]
    pair = np.einsum("mai,mbi->mab", z, z) / n                      # [M, B, B]
    if neurons == "same":
        extra = (z[:, a] * z[:, b] * z[:, c] * z[:, d]).mean(axis=1)
        key = "p4"
    else:
        sab = (z[:, a] * z[:, b]).sum(axis=1)
        scd = (z[:, c] * z[:, d]).sum(axis=1)
        diag = (z[:, a] * z[:, b] * z[:, c] * z[:, d]).sum(axis=1)
        extra = (sab * scd - diag) / (n * (n - 1))
        key = "q4"
    B = z.shape[1]
    packed = np.concatenate([pair.reshape(len(z), -1), extra[:, None]], axis=1)
    inner = _four_point_estimator(neurons, idx)

    def est(m):
        return inner({"G": m[:-1].reshape(B, B), key: m[-1]})
    value, se = jackknife(packed, est)
    return float(value), float(se)


def neuron_moments(zs, input_index: int = 0, powers=(2, 4)):
    """Per-network averages over neurons of z^p for each layer: [M, L, P] (torch or numpy).

    Parameters
    ----------
    zs : list of L tensors/arrays [M, B, n_l] (e.g. ``MLPEnsemble.forward(x)``), or one of them
    input_index : which of the B inputs
    powers : the powers p

    This is the compact per-network summary that streamed ensembles keep
    (see :func:`dlt_companion.ensembles.map_networks`); pass it to
    :func:`excess_kurtosis` as ``moments=``.
    """
    if not isinstance(zs, (list, tuple)):
        zs = [zs]
    stack = np.stack if isinstance(zs[0], np.ndarray) else __import__("torch").stack
    per_layer = [stack([(z[:, input_index, :] ** p).mean(-1) for p in powers], -1) for z in zs]
    return stack(per_layer, 1)


def excess_kurtosis(z=None, input_index: int = 0, moments=None):
    """E[z⁴]/E[z²]² − 3 of one neuron's preactivation for one input, with jackknife error.

    Averages over the n neurons of each network (which share the distribution) and
    then over networks. Zero for a Gaussian; 3·(connected 4-point)/K² = 3V/(n K²) at
    leading order for a network layer (§4.3, §5.4 of [RY]).

    Parameters
    ----------
    z : array [M, B, n], or
    moments : array [M, ..., 2] of per-network neuron averages of (z², z⁴), e.g. from
        :func:`neuron_moments`; the result then has shape [...].
    """
    if (z is None) == (moments is None):
        raise ValueError("give exactly one of z (preactivations) or moments (per-network z², z⁴)")
    if z is not None:
        m = neuron_moments(_preacts(z), input_index)[:, 0, :]
    else:
        m = _np(moments)
        if m.shape[-1] != 2:
            raise ValueError(f"moments must end in an axis of 2 (z², z⁴), got shape {m.shape}")
    value, se = jackknife(m, lambda a: a[..., 1] / a[..., 0] ** 2 - 3.0)
    return (float(value), float(se)) if value.ndim == 0 else (value, se)


def relative_variance(samples):
    """Var(X)/E[X]² of per-network scalars X [M, ...] across networks, with jackknife error."""
    x = _np(samples)
    packed = np.stack([x, x * x], axis=-1)
    value, se = jackknife(packed, lambda a: a[..., 1] / a[..., 0] ** 2 - 1.0)
    return (float(value), float(se)) if value.ndim == 0 else (value, se)


def z_scores(theory, value, stderr, theory_err=0.0) -> np.ndarray:
    """(value − theory) / sqrt(stderr² + theory_err²), elementwise."""
    theory, value, stderr = (np.asarray(a, dtype=float) for a in (theory, value, stderr))
    sigma = np.sqrt(stderr ** 2 + np.asarray(theory_err, dtype=float) ** 2)
    if np.any(sigma <= 0):
        raise ValueError("every compared point needs a positive error bar")
    return (value - theory) / sigma


def assert_agree(name: str, theory, value, stderr, tol: float = 4.0, theory_err=0.0,
                 quiet: bool = False) -> np.ndarray:
    """Assert that measurements agree with a prediction within ``tol`` standard errors.

    Prints one deterministic line, ``✔ name: N points, max |Δ|/σ = …, χ²/N = …``, and
    raises ``AssertionError`` (with the worst points) if any |Δ|/σ exceeds ``tol``.
    Returns the z-scores.
    """
    z = np.atleast_1d(z_scores(theory, value, stderr, theory_err))
    worst = float(np.abs(z).max())
    chi2 = float(np.mean(z ** 2))
    summary = f"{name}: {z.size} points, max |Δ|/σ = {worst:.1f}, χ²/N = {chi2:.2f} (tolerance {tol:g}σ)"
    if worst > tol:
        order = np.argsort(-np.abs(z.ravel()))[:5]
        raise AssertionError(f"✘ {summary}; worst z-scores at flat indices "
                             f"{order.tolist()}: {np.round(z.ravel()[order], 2).tolist()}")
    if not quiet:
        print(f"✔ {summary}")
    return z
