"""Ensembles of real multilayer perceptrons, batched over networks.

The book's MLP (§2.1 of [RY]) with widths n_0, n_1, …, n_L is

    z^{(1)}_i   = b^{(1)}_i   + Σ_j W^{(1)}_{ij}   x_j,
    z^{(l+1)}_i = b^{(l+1)}_i + Σ_j W^{(l+1)}_{ij} σ(z^{(l)}_j),

initialised (§2.3) with independent b^{(l)}_i ~ N(0, C_b) and
W^{(l)}_{ij} ~ N(0, C_W / n_{l−1}). An *ensemble* is M independent draws of all
parameters. :class:`MLPEnsemble` stores the M networks' parameters as stacked
tensors (weights ``[M, n_l, n_{l-1}]``, biases ``[M, n_l]``) and runs all of them in
one batched matmul per layer: there is no Python loop over networks.

Reproducible streaming
----------------------
Networks are generated in fixed blocks of :data:`BLOCK` networks; block k is drawn
from its own generator seeded by ``SeedSequence([seed, k])``. Network number i of a
seed is therefore the same tensor whichever sub-range or chunk it is generated in,
and :func:`map_networks` can stream an ensemble of any size through bounded memory
with results that do not depend on the chunk size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import _checks
from .activations import Activation, get
from .progress import progress

__all__ = ["BLOCK", "MLPEnsemble", "EnsembleSpec", "map_networks", "iter_chunks", "default_chunk"]

#: networks per independently seeded block (chunks are whole numbers of blocks)
BLOCK = 32


def _per_layer(value, L: int, what: str, check) -> list[float]:
    if np.ndim(value) == 0:
        return [check(value, what)] * L
    values = list(value)
    if len(values) != L:
        raise ValueError(f"{what} must be a number or a sequence of one value per layer "
                         f"(length {L}), got length {len(values)}")
    return [check(v, f"{what}[{i}]") for i, v in enumerate(values)]


def _block_seed(seed: int, block: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1, dtype=np.uint64)[0]
               % (2**63 - 1))


@dataclass(frozen=True)
class EnsembleSpec:
    """Architecture and initialisation of an MLP ensemble (everything but its size and seed).

    Attributes
    ----------
    n_in : int
        Input dimension n_0.
    widths : tuple of int
        Layer widths (n_1, …, n_L); the last is the output width.
    act : Activation
    C_b, C_W : tuple of float
        Per-layer bias and weight variances (length L).
    dtype : torch.dtype
    device : torch.device
    """

    n_in: int
    widths: tuple
    act: Activation
    C_b: tuple
    C_W: tuple
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")

    @classmethod
    def build(cls, n_in, widths, act, C_b, C_W, dtype=torch.float64, device="cpu") -> "EnsembleSpec":
        """Validate arguments and build a spec (C_b, C_W: a number or one per layer)."""
        n_in = _checks.width(n_in, "n_in")
        widths = tuple(_checks.widths(widths))
        L = len(widths)
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        return cls(n_in=n_in, widths=widths, act=get(act),
                   C_b=tuple(_per_layer(C_b, L, "C_b", _checks.C_b)),
                   C_W=tuple(_per_layer(C_W, L, "C_W", _checks.C_W)),
                   dtype=dtype, device=torch.device(device))

    @property
    def fan_in(self) -> tuple:
        return (self.n_in,) + self.widths[:-1]

    def bytes_per_network(self, n_inputs: int = 1) -> int:
        """Memory one network needs: its parameters plus one batch of preactivations."""
        itemsize = torch.finfo(self.dtype).bits // 8
        params = sum(n * m + n for n, m in zip(self.widths, self.fan_in))
        acts = 2 * n_inputs * sum(self.widths)
        return itemsize * (params + acts)

    def _block(self, seed: int, block: int) -> tuple[list, list]:
        # Normal deviates are drawn in float32 (4x faster than float64 on CPU) and then
        # cast: the same networks for either dtype, and a distribution exact to 2^-24.
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_block_seed(seed, block))
        Ws, bs = [], []
        for n, m, cw, cb in zip(self.widths, self.fan_in, self.C_W, self.C_b):
            W = torch.randn((BLOCK, n, m), generator=gen, dtype=torch.float32, device=self.device)
            b = torch.randn((BLOCK, n), generator=gen, dtype=torch.float32, device=self.device)
            Ws.append(W.to(self.dtype).mul_((cw / m) ** 0.5))
            bs.append(b.to(self.dtype).mul_(cb ** 0.5))
        return Ws, bs

    def parameters(self, seed: int, first: int, count: int) -> tuple[list, list]:
        """Weights [count, n_l, n_{l-1}] and biases [count, n_l] of networks first..first+count−1."""
        first, count = int(first), _checks.width(count, "n_networks")
        if first < 0:
            raise ValueError(f"first network index must be >= 0, got {first}")
        b0, b1 = first // BLOCK, (first + count - 1) // BLOCK
        blocks = [self._block(seed, k) for k in range(b0, b1 + 1)]
        lo = first - b0 * BLOCK
        L = len(self.widths)
        Ws = [torch.cat([blk[0][l] for blk in blocks])[lo:lo + count] for l in range(L)]
        bs = [torch.cat([blk[1][l] for blk in blocks])[lo:lo + count] for l in range(L)]
        return Ws, bs


class MLPEnsemble:
    """M independently initialised MLPs held as stacked tensors (§2.3 of [RY]).

    Parameters
    ----------
    n_in : int
        Input dimension n_0.
    widths : sequence of int
        Widths n_1, …, n_L of every layer, the output layer last.
    act : str or Activation
        Activation σ applied between layers (not after the last).
    C_b, C_W : float or sequence of L floats
        Bias variance (≥ 0) and weight variance (> 0; weights have variance C_W / n_{l−1}).
    n_networks : int
        Ensemble size M.
    seed : int
        Seed of the ensemble; network i is the same for every ``first``/chunking.
    dtype : torch.float32 or torch.float64 (default float64, measurement grade)
    device : str or torch.device
    first : int
        Index of the first network (for streaming sub-ranges of one seeded ensemble).

    Examples
    --------
    >>> ens = MLPEnsemble(3, [16, 16, 1], "tanh", C_b=0.0, C_W=1.0, n_networks=64, seed=0)
    >>> zs = ens(np.ones((2, 3)))           # one tensor [M, B, n_l] per layer
    >>> [tuple(z.shape) for z in zs]
    [(64, 2, 16), (64, 2, 16), (64, 2, 1)]
    """

    def __init__(self, n_in: int, widths: Sequence[int], act, C_b, C_W, n_networks: int,
                 seed: int = 0, dtype: torch.dtype = torch.float64, device="cpu", first: int = 0):
        self.spec = EnsembleSpec.build(n_in, widths, act, C_b, C_W, dtype=dtype, device=device)
        self.n_networks = _checks.width(n_networks, "n_networks")
        self.seed, self.first = int(seed), int(first)
        self.weights, self.biases = self.spec.parameters(self.seed, self.first, self.n_networks)

    @classmethod
    def from_spec(cls, spec: EnsembleSpec, n_networks: int, seed: int = 0, first: int = 0):
        self = cls.__new__(cls)
        self.spec, self.seed, self.first = spec, int(seed), int(first)
        self.n_networks = _checks.width(n_networks, "n_networks")
        self.weights, self.biases = spec.parameters(self.seed, self.first, self.n_networks)
        return self

    @property
    def widths(self) -> tuple:
        return self.spec.widths

    @property
    def depth(self) -> int:
        return len(self.spec.widths)

    def _inputs(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=self.spec.dtype, device=self.spec.device)
        if x.ndim != 2 or x.shape[1] != self.spec.n_in:
            raise ValueError(f"inputs must have shape [B, n_in] = [B, {self.spec.n_in}], "
                             f"got {tuple(x.shape)}")
        return x

    def forward(self, x, layers: str = "all") -> list[torch.Tensor]:
        """Preactivations z^{(l)} of every layer for inputs x [B, n_in].

        Returns a list of L tensors [M, B, n_l] (``layers="all"``) or just the output
        [M, B, n_L] in a one-element list (``layers="last"``, which frees the others).
        """
        if layers not in ("all", "last"):
            raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
        x = self._inputs(x)
        sigma = self.spec.act.torch[0]
        W, b = self.weights[0], self.biases[0]
        z = torch.matmul(x, W.transpose(1, 2)) + b[:, None, :]
        out = [z]
        for W, b in zip(self.weights[1:], self.biases[1:]):
            z = torch.baddbmm(b[:, None, :], sigma(z), W.transpose(1, 2))
            if layers == "all":
                out.append(z)
            else:
                out[0] = z
        return out

    __call__ = forward

    def output(self, x) -> torch.Tensor:
        """Network outputs z^{(L)} [M, B, n_L]."""
        return self.forward(x, layers="last")[0]


def default_chunk(spec: EnsembleSpec, n_inputs: int = 1) -> int:
    """Networks per chunk that fit the memory budget ``DLT_MEMORY_MB`` (default 1024 MiB)."""
    budget = float(os.environ.get("DLT_MEMORY_MB", "1024")) * 2**20
    per = spec.bytes_per_network(n_inputs)
    return max(BLOCK, int(budget // (3 * per)) // BLOCK * BLOCK)


def map_networks(fn: Callable[[MLPEnsemble], torch.Tensor], spec: EnsembleSpec, n_networks: int,
                 seed: int = 0, chunk: int | None = None, desc: str | None = None,
                 n_inputs: int = 1) -> np.ndarray:
    """Apply ``fn`` to an ensemble of ``n_networks`` networks, chunk by chunk.

    ``fn(ens)`` must return a tensor whose first axis runs over the chunk's networks
    (per-network statistics such as ``ens.output(x)[:, 0, :]**2``). The results are
    concatenated into a numpy array [n_networks, ...]. Peak memory is set by ``chunk``
    (default: :func:`default_chunk`), and the result does not depend on it.
    """
    chunks = iter_chunks(spec, n_networks, seed, chunk, n_inputs)
    pieces = []
    for ens in progress(chunks, desc=desc, total=len(chunks), disable=desc is None or len(chunks) < 2):
        with torch.no_grad():
            pieces.append(fn(ens).detach().to("cpu", torch.float64).numpy())
        del ens
    return np.concatenate(pieces, axis=0)


class iter_chunks:
    """The seeded ensemble of ``n_networks`` as consecutive sub-ensembles of ``chunk`` networks.

    Iterating yields :class:`MLPEnsemble` objects built lazily, one at a time.
    """

    def __init__(self, spec: EnsembleSpec, n_networks: int, seed: int = 0,
                 chunk: int | None = None, n_inputs: int = 1):
        self.spec, self.seed = spec, int(seed)
        self.n_networks = _checks.width(n_networks, "n_networks")
        self.chunk = default_chunk(spec, n_inputs) if chunk is None else _checks.width(chunk, "chunk")

    def __len__(self) -> int:
        return -(-self.n_networks // self.chunk)

    def __iter__(self) -> Iterator[MLPEnsemble]:
        for start in range(0, self.n_networks, self.chunk):
            yield MLPEnsemble.from_spec(self.spec, min(self.chunk, self.n_networks - start),
                                        seed=self.seed, first=start)
