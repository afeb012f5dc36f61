"""What every layer-to-layer flow shares: per-layer hyperparameters, width ratios, limits.

Private to :mod:`dlt_companion.flows`; the preactivation flows (Ch. 4) and the NTK flows
(Ch. 8 onwards) all go through these, so that per-layer C_b, C_W, λ_b, λ_W and widths
mean the same thing everywhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import _checks
from ..activations import Activation

#: deepest flow computed (one input costs ~0.1 ms a layer; 10^9 layers would take days)
MAX_DEPTH = 100_000

#: largest number of inputs of a finite-width flow: V has B^4 entries, and every set of
#: four distinct inputs costs a four-dimensional quadrature (~0.3 s) per layer
MAX_INPUTS = 8


def depth(L) -> int:
    """A depth 1 ≤ L ≤ :data:`MAX_DEPTH`."""
    L = _checks.depth(L)
    if L > MAX_DEPTH:
        raise ValueError(f"depth {L} is more than {MAX_DEPTH} layers (about {L * 1e-4 / 60:.3g} "
                         "minutes of quadrature for one input); large-depth behaviour is in "
                         "dlt_companion.criticality.asymptotics")
    return L


def per_layer(value, L: int, what: str, check) -> tuple:
    """A number or one value per layer (entry l−1 for layer l), as a tuple of L."""
    return _checks.per_layer(value, L, what, check)


def hyper(L: int, C_b, C_W) -> tuple[tuple, tuple]:
    """Per-layer (C_b^{(l)}, C_W^{(l)}) tuples of length L."""
    return per_layer(C_b, L, "C_b", _checks.C_b), per_layer(C_W, L, "C_W", _checks.C_W)


def learning_rates(L: int, lam_b, lam_W) -> tuple[tuple, tuple]:
    """Per-layer (λ_b^{(l)}, λ_W^{(l)}) tuples of length L (λ ≥ 0)."""
    return (per_layer(lam_b, L, "lam_b", _checks.nonnegative),
            per_layer(lam_W, L, "lam_W", _checks.nonnegative))


def width_ratios(widths, L: int) -> tuple[np.ndarray, tuple | None]:
    """r[l] = n_l/n_{l−1}, used going from layer l to l+1 (index l−1 = 0..L−2), and the widths.

    ``widths`` lists the hidden widths n_1..n_{L−1} (length L−1) or all widths n_1..n_L as
    for an ensemble (length L; the last is unused); None means equal widths (ratios 1).
    Returns (ratios [L], widths tuple or None); ratios[L−1] is unused and 1.
    """
    r = np.ones(L)
    if widths is None:
        return r, None
    ns = _checks.widths(widths)
    if len(ns) not in (L - 1, L) or (L == 1 and len(ns) == 0):
        raise ValueError(f"widths must list the hidden widths n_1..n_(depth-1) (length {L - 1}) "
                         f"or all widths n_1..n_depth as for an ensemble (length {L}); "
                         f"got length {len(ns)}")
    for l in range(2, L):              # going from layer l to l+1 uses n_l / n_{l-1}
        r[l - 1] = ns[l - 1] / ns[l - 2]
    return r, tuple(ns)


def initial_kernel(K1, what: str = "K1") -> tuple[bool, np.ndarray]:
    """(scalar?, K as a [B, B] Gram matrix) from a number or a matrix."""
    return _checks.scalar_or_gram(K1, what)


def finite_width_act(act) -> Activation:
    return _checks.differentiable_activation(act, "the finite-width flows (V, G^{1}, NTK)")


def check_layer(name: str, value: np.ndarray, layer: int, why: str) -> None:
    """Raise a ValueError naming the layer where a flow stopped being finite."""
    biggest = float(np.max(np.abs(value))) if np.size(value) else 0.0
    if not biggest < 1e250:                                  # also catches NaN
        raise ValueError(f"the {name} diverged at layer {layer} (it is no longer a finite number "
                         f"of sensible size): {why}")


class LayerStatistics:
    """What every flow's result shares: a copy with fields replaced, the depth, the fan-ins.

    Mixed into the frozen dataclasses the flows return (:class:`~dlt_companion.flows.Flow`,
    :class:`~dlt_companion.flows.NTKFluctuations`, :class:`~dlt_companion.flows.DNTKStatistics`,
    :class:`~dlt_companion.flows.DDNTKStatistics`); each has a kernel field ``K`` ([L] for one
    input, [L, B, B] for several) and ``widths`` (None for an equal-width flow).
    """

    def replace(self, **changes):
        """A copy with some fields replaced (e.g. a deliberately wrong theory for a power check).

        Parameters
        ----------
        **changes
            New field values (e.g. ``V=0.8 * flow.V``).
        """
        return dataclasses.replace(self, **changes)

    @property
    def depth(self) -> int:
        """Number of layers L."""
        return len(self.K)

    @property
    def single_input(self) -> bool:
        """Whether the statistics are for one input (per-layer scalars)."""
        return np.ndim(self.K) == 1

    def fan_in(self, n: int | None = None) -> np.ndarray:
        """n_{l−1} for l = 1..L (layer 1's entry is irrelevant and set to 1 when unknown).

        Parameters
        ----------
        n : int, optional
            The hidden width of an equal-width flow; must not be given when the flow has
            per-layer widths.
        """
        if self.widths is None:
            if n is None:
                raise ValueError("equal-width flow: pass the width n")
            return np.full(self.depth, float(_checks.width(n)))
        if n is not None:
            raise ValueError(f"this flow was computed for per-layer widths {list(self.widths)}; "
                             "call it without n (the widths are already known)")
        return np.array([1.0] + [float(w) for w in self.widths[: self.depth - 1]])
