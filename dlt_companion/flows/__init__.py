"""Layer-to-layer flows: the book's RG flows of the statistics of a deep network.

One module per family, all importable from here:

* :mod:`~dlt_companion.flows.preactivations` -- kernel K, four-point vertex V and the 1/n
  kernel correction G^{1} (Ch. 4 of [RY]): :func:`first_layer_kernel`, :func:`kernel`,
  :func:`vertex` (alias :func:`four_point`), :func:`kernel_correction`, :func:`run` → :class:`Flow`.
* :mod:`~dlt_companion.flows.ntk` -- the neural tangent kernel (Ch. 8–9): :func:`ntk_mean`, :func:`ntk_fluctuations` → :class:`NTKFluctuations`.
* :mod:`~dlt_companion.flows.dntk` -- the dNTK's statistics P, Q (Ch. 11): :func:`dntk_statistics`.
* :mod:`~dlt_companion.flows.ddntk` -- what the end of training needs at O(1/n) (Ch. ∞): the ddNTK means R, S, T, U, E[dĤ z] and the 1/n shift of the mean NTK: :func:`ddntk_statistics`.

Every recursion is written once over :class:`dlt_companion.gaussian.Averages` (one input is
the B = 1 case), with per-layer C_b, C_W (and λ_b, λ_W) and per-layer widths, so the
theory describes exactly the ensemble a notebook measures
(:class:`dlt_companion.network.MLP` builds both).

[RY] D. A. Roberts, S. Yaida, B. Hanin, *The Principles of Deep Learning Theory*,
Cambridge University Press (2022), arXiv:2106.10165.
"""

from . import residual  # App. B: residual.run (K, V, G^{1}), vertex, kernel_correction, susceptibilities
from .ddntk import DDNTKStatistics, ddntk_rstu, ddntk_statistics, dntk_pq  # Chapter ∞
from .dntk import DNTKStatistics, dntk_statistics
from .ntk import NTKFluctuations, ntk_fluctuations, ntk_mean
from .preactivations import (Flow, SingleInputMoments, first_layer_kernel, four_point, kernel,
                             kernel_correction, run, single_input_moments, vertex)

__all__ = ["first_layer_kernel", "kernel", "vertex", "four_point", "kernel_correction", "run",
           "Flow", "single_input_moments", "SingleInputMoments", "ntk_mean", "ntk_fluctuations", "NTKFluctuations",
           "dntk_statistics", "DNTKStatistics", "ddntk_statistics", "DDNTKStatistics", "dntk_pq", "ddntk_rstu"]
