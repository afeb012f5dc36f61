"""Ensembles of real multilayer perceptrons, batched over networks.

The book's MLP (§2.1 of [RY]) with widths n_0, n_1, …, n_L is

    z^{(1)}_i   = b^{(1)}_i   + Σ_j W^{(1)}_{ij}   x_j,
    z^{(l+1)}_i = b^{(l+1)}_i + Σ_j W^{(l+1)}_{ij} σ(z^{(l)}_j),

initialised (§2.3) with independent b^{(l)}_i ~ N(0, C_b) and
W^{(l)}_{ij} ~ N(0, C_W / n_{l−1}) (residual layers of Appendix B:
z^{(l+1)} = ξ [b + W σ(z^{(l)})] + γ z^{(l)}). The architecture is one
:class:`~dlt_companion.network.MLP` description, the same object the theory reads.
An *ensemble* is M independent draws of all parameters. :class:`MLPEnsemble` stores
the M networks' parameters as stacked tensors (weights ``[M, n_l, n_{l-1}]``, biases
``[M, n_l]``) and runs all of them in one batched matmul per layer: there is no Python
loop over networks. The same tensors work with ``torch.func`` (:func:`apply` is the
pure forward, ``vmap``-able over networks), with autograd, and with the batched
gradient descent of :mod:`dlt_companion.training`.

Reproducible streaming
----------------------
Networks are generated in fixed blocks of ``spec.block`` networks (:data:`BLOCK` = 32,
fewer only for networks whose largest layer is so big that a block would exceed
:data:`BLOCK_BYTES`); block k is drawn from its own generator seeded by
``SeedSequence([seed, k])``. Network number i of a
seed is therefore the same tensor whichever sub-range or chunk it is generated in,
and :func:`map_networks` / :func:`stream_mean` can stream an ensemble of any size
through bounded memory with results that do not depend on the chunk size. The networks
of a seed depend on nothing else (not the chunk, the number of threads or the dtype),
except the device type: CUDA's generator draws different numbers from the CPU's.

Several machines
----------------
Seeded blocks make an ensemble embarrassingly parallel: :func:`map_networks` and
:func:`stream_mean` take any :class:`concurrent.futures.Executor` (a local
``ProcessPoolExecutor``, Dask's ``Client.get_executor()``, Ray's executor) and farm the
chunks out through it; the results are merged in chunk order with the same pairwise
update as the serial run, so they do not depend on the executor.

Performance notes
-----------------
* Parameters are written straight into their final tensors (no concatenation) and
  independent blocks are generated on ``torch.get_num_threads()`` worker threads;
  the draws do not depend on the number of threads.
* Normal deviates are drawn in float32 (about 4x faster than float64 on a CPU) and
  cast, so a float64 ensemble holds exactly the same networks as a float32 one.
* Streaming reuses one set of parameter buffers for every chunk: freshly allocated
  memory costs a page fault per 4 KiB, which on a small VM is as slow as drawing
  the numbers.
* The chunk size adapts to the memory budget ``DLT_MEMORY_MB`` and, on the CPU, stays
  near a cache-friendly size below it (see :func:`default_chunk`);
  ``benchmarks/run.py`` measures all of the above.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import _checks
from .activations import Activation
from .network import MLP
from .progress import progress

__all__ = ["BLOCK", "MLPEnsemble", "EnsembleSpec", "apply", "map_networks", "stream_mean",
           "iter_chunks", "default_chunk", "memory_budget"]

#: networks per independently seeded block (network i is in block i // spec.block)
BLOCK = 32

#: largest float32 draw of one layer for one block; networks with larger layers use
#: smaller blocks (down to one network), so one huge network never draws 31 others
BLOCK_BYTES = 256 * 2**20

#: an ensemble held at once may use at most this fraction of the available memory
MAX_MEMORY_FRACTION = 0.8

#: default memory budget (MiB) for streamed ensembles on the CPU, if DLT_MEMORY_MB is unset
DEFAULT_MEMORY_MB = 1024

#: on the CPU, chunks stop growing at about this many bytes (or PREFERRED_MIN_CHUNK networks,
#: whichever is more) even when the budget allows more: freshly drawn weights are then
#: still in cache when the forward reads them (measured on 2 cores: a width-32 depth-32 or
#: width-128 depth-8 streamed statistic ran 1.4x faster than with 1 GiB chunks)
PREFERRED_CHUNK_BYTES = 64 * 2**20
PREFERRED_MIN_CHUNK = 256

# float32 scratch blocks larger than this are not kept between calls
_SCRATCH_KEEP_BYTES = 64 * 2**20
_local = threading.local()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


@functools.lru_cache(maxsize=2**16)
def _block_seed(seed: int, block: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(block)]).generate_state(1, dtype=np.uint64)[0]
               % (2**63 - 1))


def _scratch(shape: tuple, device: torch.device) -> torch.Tensor:
    """A float32 work tensor of ``shape``, reused per thread while it is small."""
    numel = int(np.prod(shape))
    key = (device.type, device.index)
    cached = getattr(_local, "scratch", None)
    if cached is not None and cached[0] == key and cached[1].numel() >= numel:
        return cached[1][:numel].view(shape)
    buf = torch.empty(numel, dtype=torch.float32, device=device)
    if 4 * numel <= _SCRATCH_KEEP_BYTES:
        _local.scratch = (key, buf)
    return buf.view(shape)


def _forget_pool() -> None:          # a forked child has none of the parent's threads
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1),
                                       thread_name_prefix="dlt-ensembles")
        return _pool


def _device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', "
                         f"got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU on this "
                         "machine (torch.cuda.is_available() is False); use device='cpu'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


@dataclass(frozen=True)
class EnsembleSpec:
    """A network description plus where and in what precision its ensembles live.

    Attributes
    ----------
    net : MLP
        The architecture, initialization and learning rates (one description shared with
        the theory: :meth:`MLP.flow`, :meth:`MLP.kernel`).
    dtype : torch.dtype
        torch.float64 (default, measurement grade) or torch.float32.
    device : torch.device

    The description's fields are also readable here: ``n_in``, ``widths``, ``act``,
    ``C_b``, ``C_W``, ``lam_b``, ``lam_W``, ``xi``, ``gamma``, ``fan_in``, ``depth``.
    """

    net: MLP
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_network(cls, net: MLP, dtype=None, device="cpu") -> "EnsembleSpec":
        """The spec of ``net``'s ensembles  (§2.3 of [RY]).

        Parameters
        ----------
        net : MLP
        dtype : torch.float32 or torch.float64 (default)
        device : str or torch.device ('cpu' or 'cuda')

        Returns
        -------
        EnsembleSpec
        """
        if not isinstance(net, MLP):
            raise ValueError(f"net must be a dlt_companion.network.MLP, got {type(net).__name__}")
        dtype = torch.float64 if dtype is None else dtype
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        return cls(net=net, dtype=dtype, device=_device(device))

    @classmethod
    def build(cls, n_in, widths, act, C_b, C_W, dtype=torch.float64, device="cpu",
              **hyper) -> "EnsembleSpec":
        """Validate arguments and build a spec  (§2.3 of [RY]).

        Parameters
        ----------
        n_in, widths, act, C_b, C_W
            As for :class:`~dlt_companion.network.MLP` (C_b, C_W: a number or one per layer).
        dtype, device
            As in :meth:`from_network`.
        **hyper
            ``lam_b``, ``lam_W``, ``xi``, ``gamma`` (see :class:`MLP`).

        Returns
        -------
        EnsembleSpec
        """
        return cls.from_network(MLP(n_in, widths, act, C_b=C_b, C_W=C_W, **hyper),
                                dtype=dtype, device=device)

    def __getattr__(self, name):          # the description's fields, read through
        if name in ("n_in", "widths", "act", "C_b", "C_W", "lam_b", "lam_W", "xi", "gamma",
                    "fan_in", "depth", "n_parameters", "residual"):
            return getattr(self.net, name)
        raise AttributeError(f"'EnsembleSpec' object has no attribute {name!r}")

    @property
    def block(self) -> int:
        """Networks per independently seeded block: :data:`BLOCK`, or fewer for huge layers."""
        largest = 4 * max(n * m for n, m in zip(self.widths, self.fan_in))
        b = BLOCK
        while b > 1 and b * largest > BLOCK_BYTES:
            b //= 2
        return b

    def flops(self, n_inputs: int = 1) -> int:
        """Multiply-add FLOPs (2 per multiply-add) of one network's forward.

        Parameters
        ----------
        n_inputs : int

        Returns
        -------
        int
        """
        return 2 * n_inputs * sum(n * m for n, m in zip(self.widths, self.fan_in))

    def bytes_per_network(self, n_inputs: int = 1) -> int:
        """Memory one network of a chunk needs: its parameters plus its activations.

        Activations are counted four times over (every layer's preactivations are kept
        by ``forward``, plus σ(z), plus room for the per-network statistic computed
        from them).

        Parameters
        ----------
        n_inputs : int

        Returns
        -------
        int (bytes)
        """
        itemsize = torch.finfo(self.dtype).bits // 8
        acts = 4 * n_inputs * sum(self.widths)
        return itemsize * (self.n_parameters + acts)

    def bytes_held(self, n_networks: int) -> int:
        """Memory the parameters of ``n_networks`` networks take when held at once.

        Parameters
        ----------
        n_networks : int

        Returns
        -------
        int (bytes)
        """
        return (torch.finfo(self.dtype).bits // 8) * self.n_parameters * int(n_networks)

    def _scratch_bytes(self) -> int:
        """Per-thread float32 work space of one block of the largest layer."""
        return 4 * self.block * max(n * m + n for n, m in zip(self.widths, self.fan_in))

    # -- generation ---------------------------------------------------------------------
    def _fill_block(self, seed: int, block: int, first: int, lo: int, hi: int,
                    Ws: list, bs: list) -> None:
        """Draw block ``block`` and write its networks lo..hi−1 into Ws, bs (offset ``first``).

        The draws are those of ``torch.randn`` in float32 of shapes [b, n_l, n_{l-1}]
        then [b, n_l] (b = ``self.block``), layer by layer, from the block's own generator;
        they are scaled by sqrt(C_W / n_{l−1}) and sqrt(C_b) in the ensemble's dtype.
        """
        B = self.block
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_block_seed(seed, block))
        start = block * B
        whole = (lo == start and hi == start + B)
        direct = whole and self.dtype == torch.float32
        src = slice(lo - start, hi - start)
        dst = slice(lo - first, hi - first)
        for l, (n, m, cw, cb) in enumerate(zip(self.widths, self.fan_in, self.C_W, self.C_b)):
            for shape, out, scale in (((B, n, m), Ws[l], (cw / m) ** 0.5),
                                      ((B, n), bs[l], cb ** 0.5)):
                target = out[dst]
                if direct:                           # draw in place: no copy at all
                    target.normal_(0.0, 1.0, generator=gen)
                else:                                # draw a float32 block, keep part, cast
                    draw = _scratch(shape, self.device).normal_(0.0, 1.0, generator=gen)
                    target.copy_(draw[src])
                target.mul_(scale)

    def parameters(self, seed: int, first: int, count: int, out=None) -> tuple[list, list]:
        """Weights [count, n_l, n_{l-1}] and biases [count, n_l] of networks first..first+count−1.

        Parameters
        ----------
        seed, first, count : int
            The seed of the ensemble and the range of network indices.
        out : (Ws, bs), optional
            Buffers with room for at least ``count`` networks (e.g. from an earlier call)
            to write into instead of allocating; views of them are returned.
        """
        seed = _checks.seed(seed)
        first = _checks.index(first, "first network index")
        count = _checks.width(count, "n_networks")
        Ws, bs = self._buffers(count, out)
        last = first + count
        B = self.block
        jobs = [(k, max(first, k * B), min(last, (k + 1) * B))
                for k in range(first // B, (last - 1) // B + 1)]
        workers = 1 if self.device.type != "cpu" else min(len(jobs), torch.get_num_threads())

        def work(part):
            for k, lo, hi in part:
                self._fill_block(seed, k, first, lo, hi, Ws, bs)

        if workers <= 1:
            work(jobs)
        else:
            futures = [_thread_pool().submit(work, jobs[w::workers]) for w in range(workers)]
            for f in futures:
                f.result()
        return Ws, bs

    def _buffers(self, count: int, out) -> tuple[list, list]:
        kw = dict(dtype=self.dtype, device=self.device)
        if out is None:
            _check_fits(self, count)
            return ([torch.empty((count, n, m), **kw) for n, m in zip(self.widths, self.fan_in)],
                    [torch.empty((count, n), **kw) for n in self.widths])
        Ws, bs = out
        for l, (n, m) in enumerate(zip(self.widths, self.fan_in)):
            W, b = Ws[l], bs[l]
            if (W.shape[1:] != (n, m) or b.shape[1:] != (n,) or W.shape[0] < count
                    or b.shape[0] < count or W.dtype != self.dtype or b.dtype != self.dtype
                    or W.device != self.device or not W.is_contiguous() or not b.is_contiguous()):
                raise ValueError(f"out buffers of layer {l + 1} do not fit: need contiguous "
                                 f"[>={count}, {n}, {m}] and [>={count}, {n}] tensors of "
                                 f"{self.dtype} on {self.device}")
        return [W[:count] for W in Ws], [b[:count] for b in bs]


def _available_bytes(device: torch.device) -> int | None:
    """Memory that could hold an ensemble: free GPU memory, or MemAvailable on Linux."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_fits(spec: "EnsembleSpec", count: int) -> None:
    need = spec.bytes_held(count)
    have = _available_bytes(spec.device)
    if have is not None and need > MAX_MEMORY_FRACTION * have:
        raise ValueError(
            f"{count} networks of {spec.n_parameters} parameters would need "
            f"{need / 2**30:.3g} GiB held at once, but only {have / 2**30:.3g} GiB are available "
            f"on {spec.device.type}; stream the ensemble through bounded memory with "
            "ensembles.map_networks / ensembles.stream_mean (DLT_MEMORY_MB sets the chunk budget)")


def apply(weights, biases, x, act: Activation, xi=None, gamma=None, layers: str = "all"):
    """The MLP forward as a pure function of its parameters  (§2.1, App. B of [RY]).

    Works for one network (weights [n_l, n_{l−1}], biases [n_l], x [B, n_0]) and for a
    stack of networks (leading axis M on weights and biases), so it composes with
    ``torch.func`` (``grad``, ``jacrev``, ``jvp``, ``vmap`` over networks) and autograd.

    Parameters
    ----------
    weights, biases : sequences of L tensors
        W^{(l)} [..., n_l, n_{l−1}] and b^{(l)} [..., n_l].
    x : tensor [B, n_0] (or [..., B, n_0])
    act : Activation
    xi, gamma : sequences of L floats, optional
        Residual couplings (layer 1's are ignored); None: plain MLP.
    layers : "all" or "last"

    Returns
    -------
    list of tensors [..., B, n_l]: every layer's preactivations, or [z^{(L)}].
    """
    if layers not in ("all", "last"):
        raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
    sigma = act.torch[0]
    z = torch.matmul(x, weights[0].transpose(-1, -2)) + biases[0].unsqueeze(-2)
    out = [z]
    for l in range(1, len(weights)):
        new = torch.matmul(sigma(z), weights[l].transpose(-1, -2)) + biases[l].unsqueeze(-2)
        if xi is not None and xi[l] != 1.0:
            new = xi[l] * new
        if gamma is not None and gamma[l] != 0.0:
            new = new + gamma[l] * z
        z = new
        if layers == "all":
            out.append(z)
        else:
            out[0] = z
    return out


class MLPEnsemble:
    """M independently initialised MLPs held as stacked tensors (§2.3 of [RY]).

    Build one from a description with :meth:`MLP.ensemble <dlt_companion.network.MLP.ensemble>`
    (or :meth:`from_spec`), or directly:

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
    **hyper
        ``lam_b``, ``lam_W``, ``xi``, ``gamma`` of the description (see :class:`MLP`).

    Attributes
    ----------
    weights : list of L tensors [M, n_l, n_{l−1}]
    biases : list of L tensors [M, n_l]
        The parameters (public: checks and training read and update them in place).
    spec : EnsembleSpec
        ``spec.net`` is the :class:`MLP` description it was built from.

    Examples
    --------
    >>> ens = MLPEnsemble(3, [16, 16, 1], "tanh", C_b=0.0, C_W=1.0, n_networks=64, seed=0)
    >>> zs = ens(np.ones((2, 3)))           # one tensor [M, B, n_l] per layer
    >>> [tuple(z.shape) for z in zs]
    [(64, 2, 16), (64, 2, 16), (64, 2, 1)]
    """

    def __init__(self, n_in: int, widths: Sequence[int], act, C_b, C_W, n_networks: int,
                 seed: int = 0, dtype: torch.dtype = torch.float64, device="cpu", first: int = 0,
                 **hyper):
        self.spec = EnsembleSpec.build(n_in, widths, act, C_b, C_W, dtype=dtype, device=device,
                                       **hyper)
        self.n_networks = _checks.width(n_networks, "n_networks")
        self.seed = _checks.seed(seed)
        self.first = _checks.index(first, "first network index")
        self.weights, self.biases = self.spec.parameters(self.seed, self.first, self.n_networks)

    @classmethod
    def from_spec(cls, spec: EnsembleSpec, n_networks: int, seed: int = 0, first: int = 0,
                  out=None):
        """The ensemble of networks first..first+n_networks−1 of ``seed``  (§2.3 of [RY]).

        Parameters
        ----------
        spec : EnsembleSpec
        n_networks : int
        seed : int ≥ 0
        first : int ≥ 0
            Index of the first network.
        out : (weights, biases), optional
            Buffers to write into (see :meth:`EnsembleSpec.parameters`).

        Returns
        -------
        MLPEnsemble
        """
        if not isinstance(spec, EnsembleSpec):
            raise ValueError(f"spec must be an EnsembleSpec, got {type(spec).__name__}")
        self = cls.__new__(cls)
        self.spec = spec
        self.seed = _checks.seed(seed)
        self.first = _checks.index(first, "first network index")
        self.n_networks = _checks.width(n_networks, "n_networks")
        self.weights, self.biases = spec.parameters(self.seed, self.first, self.n_networks, out=out)
        return self

    @property
    def net(self) -> MLP:
        """The network description (shared with the theory)."""
        return self.spec.net

    @property
    def widths(self) -> tuple:
        return self.spec.widths

    @property
    def depth(self) -> int:
        return len(self.spec.widths)

    @property
    def params(self) -> tuple:
        """``(weights, biases)`` as tuples of tensors: the argument of :func:`apply`."""
        return tuple(self.weights), tuple(self.biases)

    def clone(self) -> "MLPEnsemble":
        """An independent copy of these networks (e.g. to train one copy and keep the other)."""
        other = MLPEnsemble.__new__(MLPEnsemble)
        other.spec, other.seed, other.first, other.n_networks = (self.spec, self.seed, self.first,
                                                                 self.n_networks)
        other.weights = [W.clone() for W in self.weights]
        other.biases = [b.clone() for b in self.biases]
        return other

    def _inputs(self, x) -> torch.Tensor:
        if (torch.is_tensor(x) and x.is_complex()) or (not torch.is_tensor(x) and np.iscomplexobj(x)):
            raise ValueError("inputs x must be real, got complex values")
        x = torch.as_tensor(x, dtype=self.spec.dtype, device=self.spec.device)
        if x.ndim != 2 or x.shape[1] != self.spec.n_in:
            raise ValueError(f"inputs must have shape [B, n_in] = [B, {self.spec.n_in}], "
                             f"got {tuple(x.shape)}")
        return x

    def forward(self, x, layers: str = "all") -> list[torch.Tensor]:
        """Preactivations z^{(l)} of every layer for inputs x [B, n_in]  (§2.1 of [RY]).

        One batched GEMM per layer (``baddbmm`` over the M networks), so the cost is that
        of ``torch.bmm`` on the same shapes (see ``benchmarks/``).

        Parameters
        ----------
        x : array or tensor [B, n_0]
        layers : "all" or "last"

        Returns a list of L tensors [M, B, n_l] (``layers="all"``) or just the output
        [M, B, n_L] in a one-element list (``layers="last"``, which frees the others).
        """
        if layers not in ("all", "last"):
            raise ValueError(f"layers must be 'all' or 'last', got {layers!r}")
        x = self._inputs(x)
        if self.spec.residual:
            return apply(self.weights, self.biases, x, self.spec.act, self.spec.xi,
                         self.spec.gamma, layers)
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
        """Network outputs z^{(L)} [M, B, n_L]  (§2.1 of [RY]).

        Parameters
        ----------
        x : array or tensor [B, n_0]

        Returns
        -------
        tensor [M, B, n_L]
        """
        return self.forward(x, layers="last")[0]


def memory_budget(device="cpu") -> int:
    """The memory budget (bytes) for one chunk of a streamed ensemble.

    ``DLT_MEMORY_MB`` if set; otherwise 1024 MiB on the CPU and a quarter of the free
    memory (at most 8 GiB) on a GPU.

    Parameters
    ----------
    device : str or torch.device

    Returns
    -------
    int (bytes)
    """
    value = os.environ.get("DLT_MEMORY_MB", "").strip()
    if value:
        try:
            mb = float(value)
        except ValueError:
            mb = float("nan")
        if not (np.isfinite(mb) and mb > 0):
            raise ValueError(f"DLT_MEMORY_MB must be a positive number of MiB, got {value!r}")
        return int(mb * 2**20)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(free // 4, 8 * 2**30))
    return DEFAULT_MEMORY_MB * 2**20


def default_chunk(spec: EnsembleSpec, n_inputs: int = 1, n_networks: int | None = None) -> int:
    """Networks per chunk: what fits the memory budget (:func:`memory_budget`, ``DLT_MEMORY_MB``).

    A chunk holds ``chunk × spec.bytes_per_network(n_inputs)`` bytes plus a float32
    work block per generator thread, and must fit the budget. On the CPU it is also
    kept near :data:`PREFERRED_CHUNK_BYTES` (but at least :data:`PREFERRED_MIN_CHUNK`
    networks), which is faster than filling a large budget; on a GPU the budget is
    used in full. The result is a multiple of the spec's block (every block but the last
    is then drawn in place) when at least one block fits, otherwise as many networks as
    fit (at least one); and no more than ``n_networks`` if given.

    Parameters
    ----------
    spec : EnsembleSpec
    n_inputs : int
        Inputs per forward pass (activations are counted per input).
    n_networks : int, optional
        Ensemble size (the chunk never exceeds it).

    Returns
    -------
    int
    """
    n_inputs = _checks.width(n_inputs, "n_inputs")
    budget = memory_budget(spec.device)
    per = spec.bytes_per_network(n_inputs)
    cpu = spec.device.type == "cpu"
    workers = torch.get_num_threads() if cpu else 1
    B = spec.block
    fits = int((budget - workers * spec._scratch_bytes()) // per)
    if cpu:
        fits = min(fits, max(PREFERRED_MIN_CHUNK, PREFERRED_CHUNK_BYTES // per))
    chunk = fits // B * B if fits >= B else max(1, fits)
    if n_networks is not None:
        chunk = min(chunk, _checks.width(n_networks, "n_networks"))
    return chunk


class iter_chunks:
    """The seeded ensemble of ``n_networks`` as consecutive sub-ensembles of ``chunk`` networks.

    Iterating yields :class:`MLPEnsemble` objects built lazily, one at a time. With
    ``reuse=True`` every chunk is written into the same parameter buffers (much faster
    for many chunks), so a yielded ensemble is valid only until the next one is
    requested.
    """

    def __init__(self, spec: EnsembleSpec, n_networks: int, seed: int = 0,
                 chunk: int | None = None, n_inputs: int = 1, reuse: bool = False):
        self.spec, self.seed, self.reuse = spec, _checks.seed(seed), bool(reuse)
        self.n_networks = _checks.width(n_networks, "n_networks")
        self.chunk = (default_chunk(spec, n_inputs, self.n_networks) if chunk is None
                      else _checks.width(chunk, "chunk"))

    def __len__(self) -> int:
        return -(-self.n_networks // self.chunk)

    def ranges(self) -> list[tuple[int, int]]:
        """(first, count) of every chunk, in order."""
        return [(start, min(self.chunk, self.n_networks - start))
                for start in range(0, self.n_networks, self.chunk)]

    def __iter__(self) -> Iterator[MLPEnsemble]:
        buffers = None
        for start, count in self.ranges():
            ens = MLPEnsemble.from_spec(self.spec, count, seed=self.seed, first=start, out=buffers)
            if self.reuse and buffers is None:
                buffers = (ens.weights, ens.biases)
            yield ens
            del ens


def _evaluate(fn, ens: MLPEnsemble, grad: bool) -> np.ndarray:
    """fn(ens) as a float64 numpy copy, checked to run over the chunk's networks."""
    with (torch.enable_grad() if grad else torch.no_grad()):
        value = fn(ens)
    if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != ens.n_networks:
        raise ValueError(f"fn must return a tensor whose first axis runs over the chunk's "
                         f"{ens.n_networks} networks, got "
                         f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)}")
    # a copy: the parameter buffers are overwritten by the next chunk
    return np.array(value.detach().to("cpu", torch.float64).numpy(), copy=True)


def _remote_chunk(fn, spec: EnsembleSpec, seed: int, first: int, count: int, grad: bool,
                  summarize: bool):
    """One chunk evaluated in a worker (module level, so process pools can pickle it)."""
    piece = _evaluate(fn, MLPEnsemble.from_spec(spec, count, seed=seed, first=first), grad)
    return _summary(piece) if summarize else piece


def _summary(piece: np.ndarray) -> tuple:
    """(count, mean, Σ (x − mean)²) of one chunk's per-network values."""
    mu = piece.mean(axis=0)
    return piece.shape[0], mu, ((piece - mu) ** 2).sum(axis=0)


def _pieces(fn, spec, n_networks, seed, chunk, desc, n_inputs, grad=False, executor=None,
            summarize=False) -> Iterator:
    """fn over the chunks of the ensemble, in chunk order: per-network arrays, or summaries."""
    chunks = iter_chunks(spec, n_networks, seed, chunk, n_inputs, reuse=executor is None)
    bar = dict(desc=desc, total=len(chunks), disable=desc is None or len(chunks) < 2)
    if executor is None:
        for ens in progress(chunks, **bar):
            piece = _evaluate(fn, ens, grad)
            yield _summary(piece) if summarize else piece
            del piece, ens
        return
    if not isinstance(executor, Executor):
        raise ValueError(f"executor must be a concurrent.futures.Executor (e.g. ProcessPoolExecutor, "
                         f"dask's Client.get_executor()), got {type(executor).__name__}")
    futures = [executor.submit(_remote_chunk, fn, spec, chunks.seed, first, count, grad, summarize)
               for first, count in chunks.ranges()]
    for f in progress(futures, **bar):
        yield f.result()


def map_networks(fn: Callable[[MLPEnsemble], torch.Tensor], spec: EnsembleSpec, n_networks: int,
                 seed: int = 0, chunk: int | None = None, desc: str | None = None,
                 n_inputs: int = 1, grad: bool = False,
                 executor: Executor | None = None) -> np.ndarray:
    """Apply ``fn`` to an ensemble of ``n_networks`` networks, chunk by chunk  (§2.3 of [RY]).

    Parameters
    ----------
    fn : callable
        ``fn(ens)`` returns a tensor whose first axis runs over the chunk's networks
        (per-network statistics such as ``ens.output(x)[:, 0, :]**2``). It may
        differentiate (``torch.func``, :mod:`dlt_companion.tangent`) or train
        (:mod:`dlt_companion.training`) the chunk's networks: each chunk is a fresh draw.
    spec : EnsembleSpec
    n_networks : int
    seed : int
    chunk : int, optional
        Networks per chunk (default :func:`default_chunk` for ``n_inputs`` inputs).
    desc : str, optional
        Label of a tqdm progress bar over chunks.
    n_inputs : int
        Inputs per forward pass, for sizing the default chunk.
    grad : bool
        Run ``fn`` with autograd enabled (needed for ``torch.autograd.grad`` /
        ``.backward()`` inside ``fn``; ``torch.func`` transforms and
        :mod:`dlt_companion.training` work either way). Default: under ``torch.no_grad()``.
    executor : concurrent.futures.Executor, optional
        Farm the chunks out (``ProcessPoolExecutor``, Dask's ``Client.get_executor()``,
        Ray's executor); ``fn`` and ``spec`` must then be picklable (a module-level
        function or ``functools.partial``). Results are identical to the serial run.

    Returns
    -------
    array [n_networks, ...]
        The per-network results in network order, float64. Peak memory is the chunk plus
        the results; they do not depend on the chunk size. For a statistic whose memory
        must not grow with ``n_networks`` at all, see :func:`stream_mean`.
    """
    pieces = _pieces(fn, spec, n_networks, seed, chunk, desc, n_inputs, grad, executor)
    return np.concatenate(list(pieces), axis=0)


def stream_mean(fn: Callable[[MLPEnsemble], torch.Tensor], spec: EnsembleSpec, n_networks: int,
                seed: int = 0, chunk: int | None = None, desc: str | None = None,
                n_inputs: int = 1, grad: bool = False, executor: Executor | None = None):
    """Mean over networks of ``fn``'s per-network values and its standard error, in O(chunk) memory.

    The same numbers as ``stats.mean(map_networks(fn, ...))`` (to float rounding), but
    only running sums are kept, so memory does not grow with ``n_networks``. Chunks are
    combined, in chunk order, with the pairwise update of Chan, Golub & LeVeque (1979),
    which stays accurate when the mean is large compared with the spread; with an
    ``executor`` each worker returns its chunk's (count, mean, sum of squares) and the
    merge is the same, so the result does not depend on the executor.

    Parameters
    ----------
    fn, spec, n_networks, seed, chunk, desc, n_inputs, grad, executor
        As in :func:`map_networks` (``n_networks`` ≥ 2).

    Returns
    -------
    stats.Estimate
        mean and standard error, arrays of the shape of one network's value.
    """
    from .stats import Estimate

    if _checks.width(n_networks, "n_networks") < 2:
        raise ValueError(f"need at least 2 networks for an error bar, got {n_networks}")
    count, mean, m2 = 0, 0.0, 0.0
    for k, mu, sq in _pieces(fn, spec, n_networks, seed, chunk, desc, n_inputs, grad, executor,
                             summarize=True):
        delta = mu - mean
        total = count + k
        mean = mean + delta * (k / total)
        m2 = m2 + sq + delta ** 2 * (count * k / total)
        count = total
    return Estimate(np.asarray(mean), np.sqrt(m2 / (count - 1) / count))
