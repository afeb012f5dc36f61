"""The NTK's mean, variance and cross-correlation measured on real networks, with error bars.

The experiment side of :func:`dlt_companion.flows.ntk_fluctuations` (Ch. 8–9 of [RY]). For
the layer-l NTK Ĥ_{ij;αβ} of an ensemble (:func:`dlt_companion.tangent.empirical_ntk`) and
the preactivations z_{i;α} of the same layer, the book's order-1/n statistics are, for
neurons i ≠ j (so that only one neuron structure survives),

* Θ_{α1α2} ≈ E[Ĥ_{ii;α1α2}] (the measured mean, which also holds its own 1/n correction),
* A_{(α1α2)(α3α4)} = n_{l−1} Cov(Ĥ_{ii;α1α2}, Ĥ_{jj;α3α4}),
* B_{α1α3α2α4}     = n_{l−1} E[Ĥ_{ij;α1α2} Ĥ_{ij;α3α4}],
* D_{α1α2α3α4}     = n_{l−1} Cov(Ĥ_{ii;α1α2}, z_{j;α3} z_{j;α4}),
* F_{α1α3α2α4}     = n_{l−1} E[Ĥ_{ij;α1α2} z_{i;α3} z_{j;α4}],
* S_{(α1α2)(α3α4)} = n_{l−1} Cov(Ĥ_{ii;α1α2}, Ĥ_{ii;α3α4}) = A_{(α1α2)(α3α4)} + B_{α1α3α2α4} + B_{α1α4α2α3}
  (one neuron: all three pairings contribute),

arrays indexed by the book's subscripts in the order written (as
:class:`~dlt_companion.flows.NTKFluctuations`). Each network is first reduced to averages
over its ordered neuron pairs i ≠ j (:func:`moments`); networks are the independent samples.
The covariances are non-linear in those averages, so errors come from a delete-a-block
jackknife over blocks of networks.

Bounded memory: the ensemble is streamed through :func:`dlt_companion.ensembles.map_networks`
in independently seeded calls of at most :data:`MAX_CALL` networks, and each call's results
are reduced at once to the means of its ``n_blocks`` jackknife blocks, so memory does not
grow with the number of networks (``DLT_SCALE=full`` runs 10⁵–10⁶).

Only the widths n_1..n_{l−1} below the measured layer enter its statistics; the measured
layer itself can be narrow (a few output neurons are enough for the pair averages), which
makes the Jacobian contraction of :func:`~dlt_companion.tangent.empirical_ntk` cheap.

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from . import _checks, ensembles, stats, tangent
from .network import MLP
from .progress import progress

__all__ = ["moments", "measure", "NTKStatistics", "FIELDS", "SYMMETRIES", "unique_entries",
           "extrapolate", "WidthExtrapolation"]

#: the statistics :meth:`NTKStatistics.estimate` knows, with their number of input indices
FIELDS = {"Theta": 2, "G": 2, "A": 4, "B": 4, "D": 4, "F": 4, "S": 4}

#: index permutations that leave each statistic unchanged (book index order): A_(12)(34) and
#: S within and between the pairs; B_1324 under swapping the NTK's neurons (→ B_2413) and the
#: two NTKs (→ B_3142); D_1234 within its pairs only; F_1324 under swapping the neurons (→ F_2413)
SYMMETRIES = {"Theta": [(1, 0)], "G": [(1, 0)],
              "A": [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)], "S": [(1, 0, 2, 3), (0, 1, 3, 2), (2, 3, 0, 1)],
              "B": [(2, 3, 0, 1), (1, 0, 3, 2)], "D": [(1, 0, 2, 3), (0, 1, 3, 2)], "F": [(2, 3, 0, 1)]}


#: extra equalities in layers 1 and 2 only: there Ĥ_{ij;α1α2} = Ĥ_{ij;α2α1} for every pair of
#: neurons (Ĥ^{(1)} is diagonal in neurons), so B_1324 = B_2314 and F_1324 = F_2314
EARLY_SYMMETRIES = {"B": [(2, 1, 0, 3)], "F": [(2, 1, 0, 3)]}


def unique_entries(name: str, n_inputs: int, layer: int | None = None) -> list[tuple]:
    """One index tuple per class of entries that the symmetries of ``name`` make equal.

    Comparing all entries of a tensor would count equal entries several times (and make the
    covariance of a χ² singular); these representatives are the lexicographically smallest.
    ``layer`` ≤ 2 adds the equalities special to the first two layers (:data:`EARLY_SYMMETRIES`).
    """
    if name not in FIELDS:
        raise ValueError(f"unknown statistic {name!r}; choose from {list(FIELDS)}")
    B = _checks.width(n_inputs, "n_inputs")
    perms = SYMMETRIES[name] + (EARLY_SYMMETRIES.get(name, []) if layer is not None and layer <= 2 else [])
    seen, out = set(), []
    for idx in np.ndindex(*(B,) * FIELDS[name]):
        orbit, frontier = {idx}, [idx]
        while frontier:
            cur = frontier.pop()
            for perm in perms:
                nxt = tuple(cur[p] for p in perm)
                if nxt not in orbit:
                    orbit.add(nxt)
                    frontier.append(nxt)
        rep = min(orbit)
        if rep not in seen:
            seen.add(rep)
            out.append(rep)
    return out


def moments(H: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-network neuron-pair averages of the NTK and the preactivations of one layer.

    Parameters
    ----------
    H : tensor [M, n, n, B, B]
        NTK Ĥ_{ij;αβ} of M networks (n ≥ 2 neurons).
    z : tensor [M, B, n]
        Preactivations of the same layer.

    Returns
    -------
    tensor [M, 2B² + 5B⁴]
        Concatenated, each flattened in its index order: mean_i Ĥ_{ii;ab} [B, B];
        mean_{i≠j} Ĥ_{ii;ab}Ĥ_{jj;cd}, mean_{i≠j} Ĥ_{ij;ab}Ĥ_{ij;cd},
        mean_{i≠j} Ĥ_{ii;ab} z_{j;c}z_{j;d}, mean_{i≠j} Ĥ_{ij;ab} z_{i;c}z_{j;d},
        mean_i Ĥ_{ii;ab}Ĥ_{ii;cd} [B, B, B, B] each; mean_i z_{i;a}z_{i;b} [B, B].
    """
    if H.ndim != 5 or H.shape[1] != H.shape[2] or H.shape[3] != H.shape[4]:
        raise ValueError(f"H must have shape [M, n, n, B, B], got {tuple(H.shape)}")
    M, n, _, B, _ = H.shape
    if tuple(z.shape) != (M, B, n):
        raise ValueError(f"z must have shape [M, B, n] = {[M, B, n]} to match H, got {tuple(z.shape)}")
    if n < 2:
        raise ValueError("the pair averages need at least 2 neurons in the measured layer")
    pairs = n * (n - 1)
    d = torch.diagonal(H, dim1=1, dim2=2)                                # [M, B, B, n]
    S = d.sum(-1)                                                        # Σ_i Ĥ_ii
    Q = torch.einsum("mci,mdi->mcd", z, z)                               # Σ_i z_i z_i
    dd = torch.einsum("mabi,mcdi->mabcd", d, d)                          # Σ_i Ĥ_ii Ĥ_ii
    dzz = torch.einsum("mabi,mci,mdi->mabcd", d, z, z)                   # Σ_i Ĥ_ii z_i z_i
    hh = (S[:, :, :, None, None] * S[:, None, None] - dd) / pairs
    oo = (torch.einsum("mijab,mijcd->mabcd", H, H) - dd) / pairs
    hz = (S[:, :, :, None, None] * Q[:, None, None] - dzz) / pairs
    Hz = torch.einsum("mijab,mdj->miabd", H, z)                          # Σ_j Ĥ_ij z_j
    oz = (torch.einsum("miabd,mci->mabcd", Hz, z) - dzz) / pairs
    return torch.cat([(S / n).flatten(1), hh.flatten(1), oo.flatten(1), hz.flatten(1),
                      oz.flatten(1), (dd / n).flatten(1), (Q / n).flatten(1)], dim=1)


def _width(B: int) -> int:
    return 2 * B * B + 5 * B ** 4


def _unpack(mean: np.ndarray, B: int) -> dict:
    sizes = [B * B] + [B ** 4] * 5 + [B * B]
    parts = np.split(np.asarray(mean), np.cumsum(sizes)[:-1], axis=-1)
    lead = parts[0].shape[:-1]
    shapes = [(B, B)] + [(B,) * 4] * 5 + [(B, B)]
    names = ["h1", "hh", "oo", "hz", "oz", "ii", "zz"]
    return {k: p.reshape(lead + s) for k, p, s in zip(names, parts, shapes)}


def _statistics(mean: np.ndarray, B: int, fan_in: float) -> dict:
    """Θ, G, A, B, D, F (book index order) from the ensemble mean of :func:`moments`."""
    m = _unpack(mean, B)
    h1, zz = m["h1"], m["zz"]
    return {"Theta": h1, "G": zz,
            "A": fan_in * (m["hh"] - np.multiply.outer(h1, h1)),
            "B": fan_in * m["oo"].transpose(0, 2, 1, 3),
            "D": fan_in * (m["hz"] - np.multiply.outer(h1, zz)),
            "F": fan_in * m["oz"].transpose(0, 2, 1, 3),
            "S": fan_in * (m["ii"] - np.multiply.outer(h1, h1))}


@dataclass(frozen=True)
class NTKStatistics:
    """NTK statistics of some layers of an ensemble, with jackknife errors  (§8.2–8.3 of [RY]).

    Attributes
    ----------
    net : MLP
        The measured architecture.
    layers : tuple of int
        The measured layers l.
    n_inputs : int
        B.
    n_networks : int
    blocks : array [n_blocks, len(layers), 2B² + 5B⁴]
        Mean of :func:`moments` over each independently seeded block of networks, per layer.
    """

    net: MLP
    layers: tuple
    n_inputs: int
    n_networks: int
    blocks: np.ndarray

    def replace(self, **changes) -> "NTKStatistics":
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)

    def fan_in(self, layer: int) -> int:
        """n_{l−1}, the width that layer l's statistics are normalised by."""
        self._slot(layer)
        return self.net.fan_in[layer - 1]

    def _slot(self, layer) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer {layer} was not measured; measured layers: {list(self.layers)}")
        return self.layers.index(layer)

    def _entries(self, entries) -> list:
        out = []
        for entry in entries:
            if len(entry) != 3:
                raise ValueError(f"an entry is (name, layer, index), got {entry!r}")
            name, layer, index = entry[0], int(entry[1]), tuple(int(i) for i in entry[2])
            if name not in FIELDS or len(index) != FIELDS[name]:
                raise ValueError(f"entry ({name!r}, {layer}, {index}) needs a name from "
                                 f"{list(FIELDS)} and {FIELDS.get(name, '?')} input indices")
            out.append((name, self._slot(layer), float(self.fan_in(layer)), index))
        return out

    def _function(self, entries):
        B = self.n_inputs

        def f(mean):
            cache = {}
            vals = []
            for name, slot, n, index in entries:
                if slot not in cache:
                    cache[slot] = _statistics(mean[slot], B, n)
                vals.append(cache[slot][name][index])
            return np.array(vals)
        return f

    def estimate(self, name: str, layer: int | None = None) -> stats.Estimate:
        """The statistic ``name`` ("Theta", "G", "A", "B", "D", "F", "S") of one layer, with its error.

        Parameters
        ----------
        name : str
        layer : int, optional
            Default: the only (or last) measured layer.

        Returns
        -------
        stats.Estimate of arrays [B, B] (Θ, the metric G = E[z z]) or [B, B, B, B] in the
        book's index order.
        """
        layer = self.layers[-1] if layer is None else layer
        if name not in FIELDS:
            raise ValueError(f"unknown statistic {name!r}; choose from {list(FIELDS)}")
        slot, n, B = self._slot(layer), float(self.fan_in(layer)), self.n_inputs
        return stats.jackknife(self.blocks, lambda m: _statistics(m[slot], B, n)[name],
                               n_blocks=len(self.blocks))

    def select(self, entries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Values, errors and joint covariance of chosen entries, for one correlated comparison.

        Parameters
        ----------
        entries : sequence of (name, layer, index)
            e.g. ``[("A", 3, (0, 0, 0, 0)), ("F", 4, (0, 0, 1, 1))]``.

        Returns
        -------
        values [N], stderr [N], cov [N, N] (jackknife over blocks; pass ``cov`` to
        :func:`dlt_companion.stats.assert_agree`: entries from one ensemble are correlated).
        """
        f = self._function(self._entries(entries))
        est = stats.jackknife(self.blocks, f, n_blocks=len(self.blocks))
        cov = stats.covariance(self.blocks, f, n_blocks=len(self.blocks))
        return np.asarray(est.value), np.asarray(est.stderr), cov


#: most networks streamed by one ``map_networks`` call (its per-network results, a few hundred
#: numbers each, are held until the call returns; the parameters are streamed in chunks)
MAX_CALL = 8192


def _calls(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Group consecutive blocks into calls of at most :data:`MAX_CALL` networks: (first, last+1)."""
    out, start, count = [], 0, 0
    for k, size in enumerate(sizes):
        if count and count + size > MAX_CALL:
            out.append((start, k))
            start, count = k, 0
        count += int(size)
    out.append((start, len(sizes)))
    return out


def _call_seeds(seed: int, n_calls: int) -> list[int]:
    """Independent seeds for the calls of one measurement (SeedSequence spawning)."""
    state = np.random.SeedSequence([seed, 0x4E544B]).generate_state(n_calls, dtype=np.uint64)
    return [int(s >> np.uint64(1)) for s in state]


def measure(net: MLP, x, n_networks: int, seed: int = 0, layers=None,
            lam_b=None, lam_W=None, n_blocks: int | None = None, dtype=None, device="cpu",
            desc: str | None = None) -> NTKStatistics:
    """Measure Θ, A, B, D, F of some layers on an ensemble of real networks  (§8.2–8.3 of [RY]).

    Parameters
    ----------
    net : MLP
        Architecture (the measured layer needs at least 2 neurons).
    x : array [B, n_0]
        Inputs.
    n_networks : int
        Ensemble size M (split into ``n_blocks`` blocks of nearly equal size).
    seed : int
        Seed of the measurement; each streamed call uses its own seed spawned from it.
    layers : int or sequence of int, optional
        Measured layers (default the output layer). One layer: its NTK comes from
        :func:`~dlt_companion.tangent.empirical_ntk` (Jacobian contraction, cheap for a narrow
        layer); several: every layer's from :func:`~dlt_companion.tangent.ntk_by_layer`
        (the forward equation, one pass).
    lam_b, lam_W : optional
        Learning rates (default the description's), as in :func:`~dlt_companion.tangent.empirical_ntk`.
    n_blocks : int, optional
        Jackknife blocks (default min(400, M // 8), at least 2). Comparing N entries with a
        covariance estimated from G blocks inflates a χ² by about G/(G − N); keep N ≪ G.
    dtype, device : ensemble precision (default float64) and device.
    desc : str, optional
        Label of a progress bar over blocks.

    Returns
    -------
    NTKStatistics
    """
    if not isinstance(net, MLP):
        raise ValueError(f"net must be a dlt_companion.network.MLP, got {type(net).__name__}")
    if net.residual:
        raise ValueError("the NTK fluctuation statistics are defined here for plain MLPs (no ξ, γ)")
    M = _checks.width(n_networks, "n_networks")
    seed = _checks.seed(seed)
    if layers is None:
        layers = (net.depth,)
    elif np.ndim(layers) == 0:
        layers = (layers,)
    layers = tuple(_checks.width(l, "layer") for l in layers)
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must be distinct, got {list(layers)}")
    for l in layers:
        if l > net.depth:
            raise ValueError(f"layers must be in 1..{net.depth}, got {l}")
        if net.widths[l - 1] < 2:
            raise ValueError(f"layer {l} has {net.widths[l - 1]} neuron; the statistics compare "
                             "pairs of neurons i != j, so it needs at least 2")
    G = min(400, max(2, M // 8)) if n_blocks is None else _checks.width(n_blocks, "n_blocks")
    if G < 2 or G > M:
        raise ValueError(f"n_blocks must be between 2 and n_networks = {M}, got {G}")
    x = np.asarray(x, dtype=float)
    B = net._inputs(x).shape[0]
    spec = net.spec(dtype, device)
    sizes = np.full(G, M // G)
    sizes[: M % G] += 1

    def fn(ens):
        zs = ens.forward(x)
        if len(layers) == 1:
            Hs = {layers[0]: tangent.empirical_ntk(ens, x, lam_b=lam_b, lam_W=lam_W, layer=layers[0])}
        else:
            every = tangent.ntk_by_layer(ens, x, lam_b=lam_b, lam_W=lam_W)
            Hs = {l: every[l - 1] for l in layers}
        return torch.stack([moments(Hs[l], zs[l - 1]) for l in layers], dim=1)

    blocks = np.empty((G, len(layers), _width(B)))
    calls = _calls(sizes)
    for (lo, hi), s in progress(list(zip(calls, _call_seeds(seed, len(calls)))), desc=desc,
                                disable=desc is None):
        values = ensembles.map_networks(fn, spec, int(sizes[lo:hi].sum()), seed=s, n_inputs=B)
        edges = np.concatenate([[0], np.cumsum(sizes[lo:hi])])
        for k in range(lo, hi):
            blocks[k] = values[edges[k - lo]:edges[k - lo + 1]].mean(axis=0)
    return NTKStatistics(net=net, layers=layers, n_inputs=B, n_networks=M, blocks=blocks)


@dataclass(frozen=True)
class WidthExtrapolation:
    """Statistics measured at several widths, extrapolated to n → ∞ along y(n) = a + b/n.

    Attributes
    ----------
    widths : tuple of int
    value, stderr : arrays [N]
        The intercepts a (the infinite-width limit of n·Cov, what the 1/n theory predicts)
        and their standard errors.
    cov : array [N, N]
        Covariance of the intercepts (the entries come from the same networks).
    slope : array [N]
        b: the measured next-order coefficient, y(n) − a ≈ b/n.
    chi2 : float
        Σ over entries of the fit's χ² (each entry has len(widths) − 2 degrees of freedom;
        entries are correlated, so this is a diagnostic, not a test).
    dof : int
    """

    widths: tuple
    value: np.ndarray
    stderr: np.ndarray
    cov: np.ndarray
    slope: np.ndarray
    chi2: float
    dof: int

    def replace(self, **changes) -> "WidthExtrapolation":
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


def extrapolate(widths, values, covs) -> WidthExtrapolation:
    """Weighted least-squares extrapolation y(n) = a + b/n of entries measured at several widths.

    The ensembles at different widths are independent; within one width the entries are
    correlated (``covs``). Each entry gets its own weighted fit (weights 1/σ²), so each
    intercept is a fixed linear combination Σ_w c_w y_w of the measurements, and the
    intercepts' covariance is Σ_w c_w c_w'ᵀ ∘ cov_w.

    Parameters
    ----------
    widths : sequence of W ≥ 2 distinct widths
    values : array [W, N]
    covs : array [W, N, N]
        Covariance of each width's N values (e.g. from :meth:`NTKStatistics.select`).

    Returns
    -------
    WidthExtrapolation
    """
    ns = np.asarray(_checks.widths(widths), dtype=float)
    W = len(ns)
    if W < 2 or len(set(ns)) != W:
        raise ValueError(f"need at least two distinct widths to extrapolate in 1/n, got {list(widths)}")
    y = np.asarray(values, dtype=float)
    C = np.asarray(covs, dtype=float)
    if y.ndim != 2 or y.shape[0] != W or C.shape != (W, y.shape[1], y.shape[1]):
        raise ValueError(f"values must be [W, N] and covs [W, N, N] with W = {W}; got "
                         f"{y.shape} and {C.shape}")
    var = np.stack([np.diagonal(c) for c in C])                     # [W, N]
    if not (np.all(np.isfinite(y)) and np.all(var > 0)):
        raise ValueError("values must be finite and every variance positive")
    x = 1.0 / ns
    w = 1.0 / var                                                   # [W, N]
    S0, S1, S2 = w.sum(0), (w * x[:, None]).sum(0), (w * x[:, None] ** 2).sum(0)
    det = S0 * S2 - S1 ** 2
    # intercept a = Σ_w c_w y_w with c_w = w (S2 − S1 x_w)/det; slope b = Σ_w d_w y_w
    c = w * (S2[None, :] - S1[None, :] * x[:, None]) / det[None, :]
    d = w * (S0[None, :] * x[:, None] - S1[None, :]) / det[None, :]
    a, b = (c * y).sum(0), (d * y).sum(0)
    cov = sum(np.outer(c[k], c[k]) * C[k] for k in range(W))
    chi2 = float((w * (y - a[None, :] - b[None, :] * x[:, None]) ** 2).sum())
    return WidthExtrapolation(tuple(int(n) for n in ns), a, np.sqrt(np.diagonal(cov)), cov, b, chi2,
                              (W - 2) * y.shape[1])
