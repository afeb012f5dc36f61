"""One house style for every figure, and the theory-vs-experiment plot.

Convention: theory is a line, experiment is points with error bars, and axes carry
the book's symbols.
"""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

__all__ = ["use_style", "theory_vs_experiment", "COLORS"]

#: colour cycle shared by all notebooks (colour-blind safe, Okabe–Ito)
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "lines.linewidth": 1.8,
    "lines.markersize": 5,
    "errorbar.capsize": 2.5,
    "axes.prop_cycle": mpl.cycler(color=COLORS),
    "figure.constrained_layout.use": True,
}


def use_style() -> None:
    """Apply the house matplotlib style (called by the notebook setup cell)."""
    mpl.rcParams.update(STYLE)


def theory_vs_experiment(x_theory, y_theory, x_exp, y_exp, y_err, *, ax=None, label=None,
                         color=None, xlabel=None, ylabel=None, residuals_ax=None,
                         theory_style="-", marker="o"):
    """Draw a theory curve and measured points with error bars on the same axes.

    Parameters
    ----------
    x_theory, y_theory : arrays
        The prediction, drawn as a line (may be on a finer grid than the data).
    x_exp, y_exp, y_err : arrays
        Measurements and their standard errors, drawn as points with error bars.
    ax : matplotlib Axes, optional (default: current axes)
    residuals_ax : matplotlib Axes, optional
        If given, also draws (measured − theory)/σ there, with the theory
        interpolated at ``x_exp`` and a ±2σ band.
    label, color, xlabel, ylabel, theory_style, marker : styling

    Returns
    -------
    The axes drawn on.
    """
    ax = plt.gca() if ax is None else ax
    color = color or ax._get_lines.get_next_color()
    ax.plot(x_theory, y_theory, theory_style, color=color, label=None if label is None else f"{label} (theory)")
    ax.errorbar(x_exp, y_exp, yerr=y_err, fmt=marker, color=color, mfc="white", mew=1.4,
                ls="none", label=None if label is None else f"{label} (networks)")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if residuals_ax is not None:
        order = np.argsort(x_theory)
        pred = np.interp(x_exp, np.asarray(x_theory)[order], np.asarray(y_theory)[order])
        residuals_ax.axhspan(-2, 2, color="0.9", zorder=0)
        residuals_ax.axhline(0, color="0.4", lw=1)
        residuals_ax.plot(x_exp, (np.asarray(y_exp) - pred) / np.asarray(y_err), marker,
                          color=color, mfc="white", mew=1.4, ls="none")
        residuals_ax.set_ylabel("(exp − th)/σ")
    return ax
