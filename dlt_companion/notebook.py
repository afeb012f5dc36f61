"""The one setup call every chapter notebook starts with.

``cfg = setup()`` seeds numpy and torch, applies the house plot style, reads the size
switch and picks the device. Environment variables:

* ``DLT_SCALE`` -- ``quick`` (default: every notebook runs in about a minute on two CPU
  cores; what CI and nbval use) or ``full`` (book-figure ensemble sizes, on a GPU when
  torch sees one).
* ``DLT_TORCH_THREADS`` -- if set, ``torch.set_num_threads`` to this value (the test
  suite checks that outputs are identical with 1 and 2 threads).
* ``DLT_MEMORY_MB`` -- memory budget for streamed ensembles (default 1024).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from .plotting import use_style

__all__ = ["Config", "setup", "scale"]

SCALES = ("quick", "full")


def scale() -> str:
    """The experiment size chosen by ``DLT_SCALE`` (``quick`` unless set to ``full``)."""
    value = os.environ.get("DLT_SCALE", "quick").strip().lower() or "quick"
    if value not in SCALES:
        raise ValueError(f"DLT_SCALE must be one of {SCALES}, got {value!r}")
    return value


@dataclass(frozen=True)
class Config:
    """What a notebook needs to size and place its experiments."""

    scale: str
    device: torch.device
    seed: int

    @property
    def full(self) -> bool:
        return self.scale == "full"

    def pick(self, quick, full):
        """``quick`` or ``full`` according to the scale switch."""
        return full if self.full else quick


def setup(seed: int = 0) -> Config:
    """Seed everything, apply the plot style and report the experiment size.

    Quick mode always runs on the CPU (so outputs are reproducible everywhere);
    full mode uses CUDA when available.
    """
    s = scale()
    threads = os.environ.get("DLT_TORCH_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    device = torch.device("cuda" if s == "full" and torch.cuda.is_available() else "cpu")
    use_style()
    print(f"DLT_SCALE={s}: {'book-figure' if s == 'full' else 'quick'} ensembles on {device.type}")
    return Config(scale=s, device=device, seed=seed)
