"""Progress bars for long loops (tqdm), silenced where outputs are compared.

Set ``TQDM_DISABLE=1`` (the test suite and the notebook executor do) to turn every bar off.

In a Jupyter kernel with ipywidgets installed the bar is a widget; without ipywidgets (a
core-only install used from some other Jupyter) it falls back quietly to the text bar,
instead of tqdm's "IProgress not found" warning on the first cell that shows one.
"""

from __future__ import annotations

import os
import warnings

from tqdm.std import TqdmWarning

with warnings.catch_warnings():
    # tqdm.auto warns once, on import, when it runs in a kernel without ipywidgets, and
    # then uses the text bar anyway: keep the fallback and drop the warning
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable, desc: str | None = None, total: int | None = None, disable: bool = False):
    """Wrap ``iterable`` in a tqdm bar labelled ``desc`` (none when disabled)."""
    off = disable or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    return tqdm(iterable, desc=desc, total=total, disable=off, leave=False)
