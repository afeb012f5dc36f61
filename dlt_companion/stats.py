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
shape [M, B, n] (networks, inputs, neurons) and return an :class:`Estimate`
``(value, stderr)``, which unpacks like the tuple it is.

Agreement (:func:`assert_agree`) is decided by two criteria, so that neither an outlier
nor a small systematic offset spread over many points passes:

* every |z| = |measured − theory|/σ ≤ ``tol`` (default 4), and
* the χ² = Σ z² of all points is not improbably large for N points: the p-value
  P(χ²_N ≥ χ²) must be ≥ ``p_min`` (default :data:`P_MIN` = 10⁻³).

Any NaN or infinity among the theory values, measurements, error bars or tolerances is
an error, never a pass.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
from scipy import linalg as scipy_linalg
from scipy import stats as _sps

__all__ = ["Estimate", "mean", "jackknife", "covariance", "kernel", "four_point", "neuron_moments",
           "excess_kurtosis", "relative_variance", "z_scores", "chi2_pvalue", "assert_agree",
           "assert_rejects",
           "P_MIN", "TOL"]

#: default largest allowed |Δ|/σ of a single point in :func:`assert_agree`
TOL = 4.0
#: default smallest allowed χ² p-value in :func:`assert_agree` (a 1-in-1000 fluctuation)
P_MIN = 1e-3


class Estimate(NamedTuple):
    """A measured value with its standard error; unpacks as ``value, stderr = est``.

    Attributes
    ----------
    value : float or array
    stderr : float or array of the same shape
        One standard error (standard error of the mean over networks, or jackknife).
    """

    value: "float | np.ndarray"
    stderr: "float | np.ndarray"

    def replace(self, **changes) -> "Estimate":
        """A copy with some fields replaced.

        Parameters
        ----------
        **changes
            ``value=`` and/or ``stderr=``.

        Returns
        -------
        Estimate
        """
        return self._replace(**changes)


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


def mean(samples) -> Estimate:
    """Mean over the first axis (independent samples) and its standard error (every chapter's checks).

    Parameters
    ----------
    samples : array [M, ...]
        Independent samples along axis 0 (e.g. one value per network).

    Returns
    -------
    Estimate
        value and standard error, each of shape [...].
    """
    x = _np(samples)
    if x.ndim == 0 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples along axis 0, got shape {x.shape}")
    return Estimate(x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(x.shape[0]))


def jackknife(per_network, estimator: Callable[[np.ndarray], np.ndarray],
              n_blocks: int | None = None) -> Estimate:
    """Delete-a-block jackknife of ``estimator(mean over networks)`` (non-linear statistics, §4.3).

    Parameters
    ----------
    per_network : array [M, ...]
        Per-network averages (independent across the first axis).
    estimator : callable
        Maps the ensemble mean (shape [...]) to the statistic (any shape).
    n_blocks : int ≥ 2, optional
        Number of contiguous blocks of networks (default min(M, 200); at most M).

    Returns
    -------
    Estimate
        The estimator at the full mean, and its jackknife standard error.
    """
    x = _np(per_network)
    M = x.shape[0] if x.ndim else 0
    if M < 2:
        raise ValueError(f"need at least 2 networks for a jackknife, got {M}")
    if n_blocks is None:
        G = min(M, 200)
    else:
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 2:
            raise ValueError(f"n_blocks must be an integer >= 2 (a jackknife needs at least two "
                             f"blocks to leave out), got {n_blocks!r}")
        G = min(M, int(n_blocks))
    edges = np.linspace(0, M, G + 1).astype(int)
    sums = np.add.reduceat(x, edges[:-1], axis=0)                 # [G, ...]
    counts = np.diff(edges).reshape((G,) + (1,) * (x.ndim - 1))
    total = x.sum(axis=0)
    value = np.asarray(estimator(total / M))
    loo = np.stack([np.asarray(estimator((total - sums[g]) / (M - counts[g])))
                    for g in range(G)])
    # block jackknife variance with unequal block sizes ≈ (G-1)/G Σ (θ_g − θ̄)²
    var = (G - 1) / G * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0)
    return Estimate(value, np.sqrt(var))


def covariance(per_network, estimator: Callable[[np.ndarray], np.ndarray] | None = None,
               n_blocks: int | None = None) -> np.ndarray:
    """Covariance matrix of an ensemble estimate's entries, for a χ² over correlated points (§1.2).

    Points measured on the same networks (one statistic at several layers, several
    correlators of one sample) are correlated; :func:`assert_agree` takes this matrix as
    ``cov=`` so that its χ² criterion uses Δᵀ C⁻¹ Δ instead of assuming independence.

    Parameters
    ----------
    per_network : array [M, ...]
        Per-network values (independent along axis 0).
    estimator : callable, optional
        As in :func:`jackknife`; None means the plain mean over networks (covariance of
        the mean, sample covariance / M).
    n_blocks : int ≥ 2, optional
        Jackknife blocks. Default: max(200, 20 N) (at most M), so that the noise of the
        estimated matrix inflates a χ² over its N points by less than 6 %.

    Returns
    -------
    array [N, N]
        Covariance of the flattened estimate (N = its number of entries); its diagonal is
        the squared standard error that :func:`mean` / :func:`jackknife` return.
    """
    x = _np(per_network)
    M = x.shape[0] if x.ndim else 0
    if M < 2:
        raise ValueError(f"need at least 2 networks for a covariance, got {M}")
    if estimator is None:
        flat = x.reshape(M, -1)
        return np.atleast_2d(np.cov(flat, rowvar=False, ddof=1)) / M
    total = x.sum(axis=0)
    if n_blocks is None:
        # a covariance estimated from G blocks is noisy: a χ² over N points computed with it
        # is inflated by (G − 1)/(G − N − 2) on average (Hotelling), 1.48 for N = 64 and
        # G = 200. Twenty blocks per point keep that below 1.06.
        N = np.asarray(estimator(total / M)).size
        G = min(M, max(200, 20 * N))
    else:
        G = int(n_blocks)
    if G < 2:
        raise ValueError(f"n_blocks must be an integer >= 2, got {n_blocks!r}")
    G = min(G, M)
    edges = np.linspace(0, M, G + 1).astype(int)
    sums = np.add.reduceat(x, edges[:-1], axis=0)
    counts = np.diff(edges).reshape((G,) + (1,) * (x.ndim - 1))
    loo = np.stack([np.asarray(estimator((total - sums[g]) / (M - counts[g]))).ravel()
                    for g in range(G)])
    dev = loo - loo.mean(axis=0)
    return (G - 1) / G * dev.T @ dev


def kernel(z) -> Estimate:
    """The metric G_{αβ} = E[z_{i;α} z_{i;β}] with its standard error  (§4.1, §4.5 of [RY]).

    Parameters
    ----------
    z : array [M, B, n]
        Preactivations of one layer for B inputs in M networks.

    Returns
    -------
    Estimate
        G and its standard error, arrays [B, B], averaged over neurons and networks.
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


def four_point(z, inputs=(0, 0, 0, 0), neurons: str = "same") -> Estimate:
    """Connected four-point function of preactivations with a jackknife error bar.

    ``neurons="same"`` gives E[z_{i;a} z_{i;b} z_{i;c} z_{i;d}]_connected (one neuron i);
    ``neurons="different"`` gives E[z_{i;a} z_{i;b} z_{j;c} z_{j;d}]_connected for i ≠ j.
    In the book's normalisation (§4.3 of [RY]) the first is
    (V_{(ab)(cd)} + V_{(ac)(bd)} + V_{(ad)(bc)}) / n_{l−1} and the second V_{(ab)(cd)} / n_{l−1};
    for one input these are 3V/n_{l−1} and V/n_{l−1}.

    Parameters
    ----------
    z : array [M, B, n]
        Preactivations of one layer (networks, inputs, neurons).
    inputs : tuple of 4 int
        Input indices (a, b, c, d), each in 0..B−1.
    neurons : {"same", "different"}

    Returns
    -------
    Estimate
        The connected four-point function (float) and its jackknife standard error.
    """
    if neurons not in ("same", "different"):
        raise ValueError(f"neurons must be 'same' or 'different', got {neurons!r}")
    z = _preacts(z, min_neurons=2 if neurons == "different" else 1)
    idx = tuple(inputs) if np.ndim(inputs) == 1 else ()
    if (len(idx) != 4 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                 and 0 <= i < z.shape[1] for i in idx)):
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
    return Estimate(float(value), float(se))


def neuron_moments(zs, input_index: int = 0, powers=(2, 4)):
    """Per-network averages over neurons of z^p for each layer: [M, L, P]  (§0.2, §3.4, §5.4).

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
    return Estimate(float(value), float(se)) if value.ndim == 0 else Estimate(value, se)


def relative_variance(samples) -> Estimate:
    """Var(X)/E[X]² of per-network scalars X across networks, with a jackknife error (§0, §3.4).

    Parameters
    ----------
    samples : array [M, ...]
        One value of X per network (independent along axis 0).

    Returns
    -------
    Estimate
        Relative variance and its jackknife standard error, float or array [...].
    """
    x = _np(samples)
    packed = np.stack([x, x * x], axis=-1)
    value, se = jackknife(packed, lambda a: a[..., 1] / a[..., 0] ** 2 - 1.0)
    return Estimate(float(value), float(se)) if value.ndim == 0 else Estimate(value, se)


def _finite(a, what: str) -> np.ndarray:
    a = np.asarray(a)
    if np.iscomplexobj(a):
        raise ValueError(f"{what} must be real numbers, got complex values")
    try:
        a = a.astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {a!r}") from None
    if not np.all(np.isfinite(a)):
        bad = np.flatnonzero(~np.isfinite(a.ravel()))[:5].tolist()
        raise ValueError(f"{what} must be finite, but has NaN or infinite entries at flat "
                         f"indices {bad} (a NaN can never count as agreement)")
    return a


def z_scores(theory, value, stderr, theory_err=0.0) -> np.ndarray:
    """(value − theory) / sqrt(stderr² + theory_err²), elementwise (the checks' unit of agreement).

    Parameters
    ----------
    theory, value, stderr, theory_err : arrays broadcastable to one shape
        Prediction, measurement, its standard error (> 0) and an optional error of the
        prediction (≥ 0). All must be finite.

    Returns
    -------
    array of the broadcast shape
    """
    theory = _finite(theory, "theory")
    value = _finite(value, "measured values")
    stderr = _finite(stderr, "error bars")
    theory_err = _finite(theory_err, "theory errors")
    sigma = np.sqrt(stderr ** 2 + theory_err ** 2)
    if np.any(sigma <= 0):
        raise ValueError("every compared point needs a positive error bar")
    return (value - theory) / sigma


def chi2_pvalue(z, chi2: float | None = None) -> float:
    """P(χ²_N ≥ χ²): the probability of a χ² at least this large from N unit Gaussians (§1.2).

    Parameters
    ----------
    z : array of N finite z-scores
    chi2 : float, optional
        The χ² to test (default Σ z², i.e. independent points).

    Returns
    -------
    float
    """
    z = _finite(z, "z-scores").ravel()
    if z.size == 0:
        raise ValueError("no z-scores given")
    chi2 = float(np.sum(z ** 2)) if chi2 is None else float(chi2)
    return float(_sps.chi2.sf(chi2, z.size))


def _chi2_correlated(delta: np.ndarray, cov, theory_err) -> float:
    """Δᵀ (C + diag(theory_err²))⁻¹ Δ with a checked covariance C [N, N]."""
    N = delta.size
    C = _finite(cov, "cov")
    if C.shape != (N, N):
        raise ValueError(f"cov must be the [N, N] covariance of the N = {N} compared values, "
                         f"got shape {C.shape}")
    C = 0.5 * (C + C.T) + np.diag(np.broadcast_to(np.asarray(theory_err, float) ** 2,
                                                  delta.shape).ravel())
    try:
        chol = np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        raise ValueError("cov is not positive definite: with fewer networks than compared "
                         "points, or exactly dependent points, the covariance is singular; "
                         "compare fewer points or use more networks") from None
    w = scipy_linalg.solve_triangular(chol, delta.ravel(), lower=True)
    return float(w @ w)


def assert_agree(name: str, theory, value, stderr, tol: float = TOL, theory_err=0.0,
                 quiet: bool = False, p_min: float = P_MIN, cov=None) -> np.ndarray:
    """Assert that measurements agree with a prediction, point by point and as a whole (all chapters).

    Two criteria must both hold (module docstring): every |Δ|/σ ≤ ``tol``, and the χ²
    p-value of all points ≥ ``p_min``, so that a consistent offset of ~2σ over many
    points fails although no single point is an outlier.

    Parameters
    ----------
    name : str
        What is compared (printed).
    theory, value, stderr : arrays broadcastable to one shape (at least one point)
        Prediction, measurements and their standard errors (> 0). Everything must be
        finite: NaN or infinity anywhere raises ``ValueError``.
    tol : float > 0
        Largest allowed single-point |Δ|/σ (default :data:`TOL` = 4).
    theory_err : array, optional
        Error of the prediction itself (e.g. quadrature or a truncated series), added in
        quadrature.
    quiet : bool
        Do not print the ✔ line.
    p_min : float in (0, 1)
        Smallest allowed χ² p-value (default :data:`P_MIN` = 10⁻³).
    cov : array [N, N], optional
        Covariance of the N measured values (e.g. from :func:`covariance`) when they are
        correlated, as statistics of one ensemble at several layers are. The χ² is then
        Δᵀ C⁻¹ Δ (printed as χ²/N "(correlated)"); single-point z-scores still use
        ``stderr``. Without it points are taken as independent.

    Returns
    -------
    array
        The z-scores.

    Raises
    ------
    AssertionError
        If either criterion fails; the message lists the worst points.
    ValueError
        For non-finite or empty input or a bad ``tol``/``p_min``.

    Notes
    -----
    Prints one deterministic line,
    ``✔ name: N points, max |Δ|/σ = …, χ²/N = … (p = …; tolerance 4σ, p ≥ 0.001)``.
    """
    tol = float(_finite(tol, "tol"))
    if not tol > 0:
        raise ValueError(f"tol must be > 0 standard errors, got {tol!r}")
    p_min = float(_finite(p_min, "p_min"))
    if not 0 < p_min < 1:
        raise ValueError(f"p_min must lie in (0, 1), got {p_min!r}")
    z = np.atleast_1d(z_scores(theory, value, stderr, theory_err))
    if z.size == 0:
        raise ValueError(f"{name}: nothing to compare (no points)")
    worst = float(np.abs(z).max())
    if cov is None:
        chi2, kind = float(np.sum(z ** 2)), ""
    else:
        delta = np.broadcast_to(_finite(value, "measured values") - _finite(theory, "theory"),
                                z.shape)
        chi2, kind = _chi2_correlated(delta, cov, theory_err), " (correlated)"
    p = chi2_pvalue(z, chi2)
    p_text = f"{p:.2g}" if p >= 0.01 else f"{p:.1e}"
    summary = (f"{name}: {z.size} points, max |Δ|/σ = {worst:.1f}, χ²/N{kind} = "
               f"{chi2 / z.size:.2f} (p = {p_text}; tolerance {tol:g}σ, p ≥ {p_min:g})")
    if worst > tol or p < p_min:
        order = np.argsort(-np.abs(z.ravel()))[:5]
        why = "a point is off by more than the tolerance" if worst > tol else \
            "the χ² is too large for the number of points (a systematic offset)"
        raise AssertionError(f"✘ {summary}: {why}; worst z-scores at flat indices "
                             f"{order.tolist()}: {np.round(z.ravel()[order], 2).tolist()}")
    if not quiet:
        print(f"✔ {summary}")
    return z


def assert_rejects(name: str, theory, value, stderr, tol: float = TOL, theory_err=0.0,
                   p_min: float = P_MIN, cov=None) -> np.ndarray:
    """Assert that measurements *reject* a prediction (a deliberately wrong theory).

    The decision rule is that of :func:`assert_agree`: a prediction is rejected when some
    |Δ|/σ exceeds ``tol`` or the χ² p-value falls below ``p_min``. Used to show that a
    check has power: the same data that accept the right theory must reject a wrong one.

    Parameters
    ----------
    name : str
        What wrong theory is compared (printed).
    theory, value, stderr, tol, theory_err, p_min, cov
        As in :func:`assert_agree`.

    Returns
    -------
    array
        The z-scores.

    Raises
    ------
    AssertionError
        If the data do *not* reject the prediction (the check would have no power).

    Notes
    -----
    Prints one line, ``✘ rejected (as it should be): name: N points, max |Δ|/σ = …, χ²/N = … (p = …)``.
    """
    z = np.atleast_1d(z_scores(theory, value, stderr, theory_err))
    if cov is None:
        chi2 = float(np.sum(z ** 2))
    else:
        delta = np.broadcast_to(_finite(value, "measured values") - _finite(theory, "theory"), z.shape)
        chi2 = _chi2_correlated(delta, cov, theory_err)
    worst, p = float(np.abs(z).max()), chi2_pvalue(z, chi2)
    line = (f"{name}: {z.size} points, max |Δ|/σ = {worst:.1f}, χ²/N = {chi2 / z.size:.3g} "
            f"(p = {p:.1e})")
    if worst <= tol and p >= p_min:
        raise AssertionError(f"{line}: the data do not reject this prediction, so the check "
                             "has no power against it")
    print(f"✘ rejected (as it should be): {line}")
    return z
