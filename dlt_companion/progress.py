"""Progress bars for long loops (tqdm), silenced where outputs are compared.

Set ``TQDM_DISABLE=1`` (the test suite and the notebook executor do) to turn every bar off.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable, desc: str | None = None, total: int | None = None, disable: bool = False):
    """Wrap ``iterable`` in a tqdm bar labelled ``desc`` (none when disabled)."""
    off = disable or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    return tqdm(iterable, desc=desc, total=total, disable=off, leave=False)
