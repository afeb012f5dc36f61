"""An interactive criticality explorer for Chapter 5 of [RY].

Pick an activation, C_b and C_W (and depth, width): :func:`update` computes, in about a
second on two CPU cores,

* the kernel flow K^{(l)} at infinite width and with its 1/n correction, G = K + G^{1}/n
  (:func:`dlt_companion.flows.run`);
* the susceptibilities χ_∥ and χ_⊥ along the flow (§5.1);
* every fixed point of the kernel map with its stability, classified from the map's
  derivatives (:func:`dlt_companion.criticality.fixed_points`);
* a small live ensemble of real networks (:class:`dlt_companion.ensembles.MLPEnsemble`):
  its measured kernel and excess kurtosis, with standard errors, beside the theory
  (3V/(nK²) at leading order, §4.3 and §5.4);

and :func:`render` draws them. :func:`widget` wires both to ipywidgets sliders for
JupyterLab and Binder; the update function is a plain function of its arguments (no
browser needed), so it is unit-tested and the static pages show one deterministic state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from . import _checks, criticality, ensembles, flows, stats
from .activations import Activation, get, names

__all__ = ["Explorer", "update", "render", "widget", "ACTIVATIONS", "summary"]

#: activations the explorer offers (every registered one with a function derivative)
ACTIVATIONS = tuple(n for n in names() if n != "perceptron")


@dataclass(frozen=True)
class Explorer:
    """One state of the explorer: inputs, theory and a measured ensemble  (§5.1–5.4 of [RY]).

    Attributes
    ----------
    activation : Activation
        The activation (``.label`` names it with its parameters).
    C_b, C_W : float
    K1 : float
        First-layer kernel C_b + C_W x·x/n_0 of the one input.
    width, depth, n_networks, seed : int
    layers : array [L]
        1..L.
    K : array [L]
        Infinite-width kernel K^{(l)}.
    G : array [L]
        K + G^{1}/n, the kernel with its 1/n correction (nan where the flow left K > 0).
    chi_par, chi_perp : arrays [L]
        χ_∥(K^{(l)}), χ_⊥(K^{(l)}).
    kurtosis : array [L]
        Leading-order excess kurtosis 3V^{(l)}/(n K^{(l)2}).
    fixed_points : tuple of FixedPoint
        Every fixed point of K ↦ C_b + C_W⟨σ²⟩_K with its stability.
    critical : Critical
        The activation's critical initialization (for reference).
    K_measured, K_err : arrays [L]
        Mean over networks of (1/n) Σ_i z_i² and its standard error.
    kurtosis_measured, kurtosis_err : arrays [L]
        Measured excess kurtosis and its jackknife error.
    seconds : float
        Wall time of the update (not part of any comparison).
    """

    activation: Activation
    C_b: float
    C_W: float
    K1: float
    width: int
    depth: int
    n_networks: int
    seed: int
    layers: np.ndarray
    K: np.ndarray
    G: np.ndarray
    chi_par: np.ndarray
    chi_perp: np.ndarray
    kurtosis: np.ndarray
    fixed_points: tuple
    critical: criticality.Critical
    K_measured: np.ndarray
    K_err: np.ndarray
    kurtosis_measured: np.ndarray
    kurtosis_err: np.ndarray
    seconds: float


def _flow(act, C_b, C_W, K1, depth):
    """K, G^{1}, V, χ_∥, χ_⊥ per layer; where the kernel reaches 0 or ∞ the rest is nan."""
    K = np.full(depth, np.nan)
    Kc, V = np.full(depth, np.nan), np.full(depth, np.nan)
    try:
        f = flows.run(act, C_b, C_W, K1, depth)
        K, Kc, V = f.K, f.K_corr, f.V
    except (ValueError, OverflowError, FloatingPointError):
        with np.errstate(all="ignore"):       # infinite-width kernel alone, as far as it is finite
            k = K1
            for l in range(depth):
                if not (np.isfinite(k) and 0 < k < 1e300):
                    break
                K[l] = k
                k = float(flows.kernel(act, C_b, C_W, k, 2)[1])
    ok = np.isfinite(K) & (K > 0)
    chi_par, chi_perp = np.full(depth, np.nan), np.full(depth, np.nan)
    if ok.any():
        chi_par[ok], chi_perp[ok] = criticality.susceptibilities(act, C_b, C_W, K[ok])
    return K, Kc, V, chi_par, chi_perp


def update(act: str = "tanh", C_b: float = 0.0, C_W: float = 1.0, depth: int = 20,
           width: int = 32, n_networks: int = 512, seed: int = 0, x2: float = 1.0,
           **params) -> Explorer:
    """Compute one state of the explorer (theory and a live ensemble)  (§5.1–5.4 of [RY]).

    Parameters
    ----------
    act : str
        A registered activation with a function derivative (see :data:`ACTIVATIONS`).
    C_b, C_W : float
        Bias variance (≥ 0) and weight variance (> 0) of every layer.
    depth : int, 1 ≤ depth ≤ 200
    width : int, 2 ≤ width ≤ 512
        Width n of every hidden layer (the networks have n outputs too).
    n_networks : int, 2 ≤ M ≤ 20 000
        Size of the live ensemble (512 keeps an update near a second on 2 cores).
    seed : int
        Seed of the ensemble (same seed, same networks).
    x2 : float > 0
        x·x/n_0 of the one input (dimension n_0 = 8), so that K^{(1)} = C_b + C_W x2.
    **params
        Activation parameters, e.g. ``slope=0.1`` for leaky ReLU.

    Returns
    -------
    Explorer
    """
    t0 = time.perf_counter()
    a = get(act, **params)
    if a.name == "perceptron":
        raise ValueError("the explorer needs σ' as a function; the perceptron's derivative is a "
                         "Dirac delta (choose one of: " + ", ".join(ACTIVATIONS) + ")")
    C_b, C_W = _checks.C_b(C_b), _checks.C_W(C_W)
    depth, width = _checks.depth(depth), _checks.width(width)
    n_networks = _checks.width(n_networks, "n_networks")
    if not depth <= 200:
        raise ValueError(f"depth must be at most 200 in the explorer, got {depth}")
    if not 2 <= width <= 512:
        raise ValueError(f"width must lie in 2..512 in the explorer, got {width}")
    if not 2 <= n_networks <= 20_000:
        raise ValueError(f"n_networks must lie in 2..20000 in the explorer, got {n_networks}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    x2 = float(_checks.kernel_scalar(x2, "x2"))
    if not x2 > 0:
        raise ValueError(f"x2 = x·x/n0 must be > 0, got {x2!r}")
    K1 = C_b + C_W * x2

    K, Kc, V, chi_par, chi_perp = _flow(a, C_b, C_W, K1, depth)
    with np.errstate(all="ignore"):
        G = K + Kc / width
        kurt = 3.0 * V / (width * K ** 2)
    kurt[0] = 0.0
    fps = criticality.fixed_points(a, C_b, C_W)
    crit = criticality.critical_point(a)

    n0 = 8
    x = np.full((1, n0), np.sqrt(x2))
    ens = ensembles.MLPEnsemble(n0, [width] * depth, a, C_b, C_W, n_networks=n_networks,
                                seed=int(seed), dtype=torch.float64)
    with torch.no_grad():
        moments = stats.neuron_moments(ens(x)).numpy()             # [M, L, 2]
    with np.errstate(all="ignore"):
        K_meas, K_err = stats.mean(moments[..., 0])
        finite = np.all(np.isfinite(moments), axis=(0, 2)) & (moments[..., 0].min(axis=0) > 0)
        ku, ku_err = np.full(depth, np.nan), np.full(depth, np.nan)
        if finite.any():
            ku[finite], ku_err[finite] = stats.excess_kurtosis(moments=moments[:, finite])
    return Explorer(a, C_b, C_W, K1, width, depth, n_networks, int(seed),
                    np.arange(1, depth + 1), K, G, chi_par, chi_perp, kurt, fps, crit,
                    np.asarray(K_meas), np.asarray(K_err), ku, ku_err, time.perf_counter() - t0)


def summary(state: Explorer, digits: int = 3) -> str:
    """A few deterministic lines describing a state: fixed points, criticality, last layer  (§5.1).

    Parameters
    ----------
    state : Explorer
    digits : int, significant digits

    Returns
    -------
    str
    """
    g = f".{digits}g"
    lines = [f"{state.activation.label}, C_b = {state.C_b:{g}}, C_W = {state.C_W:{g}}: "
             f"{len(state.fixed_points)} fixed point(s)"]
    lines += [f"  {p}" for p in state.fixed_points]
    c = state.critical
    lines.append(f"  critical initialization of {c.activation}: " +
                 (f"C_b = {c.C_b:{g}}, C_W = {c.C_W:{g}} ({c.universality})" if c.exists else "none"))
    last = state.depth - 1
    lines.append(f"  layer {state.depth}: K = {state.K[last]:{g}}, χ∥ = {state.chi_par[last]:{g}}, "
                 f"χ⊥ = {state.chi_perp[last]:{g}}")
    return "\n".join(lines)


def render(state: Explorer, fig=None):
    """Draw a state: kernel flow, susceptibilities, kurtosis, the kernel map's fixed points  (§5.1–5.4).

    Parameters
    ----------
    state : Explorer
    fig : matplotlib Figure, optional (cleared and reused)

    Returns
    -------
    matplotlib Figure with four axes.
    """
    import matplotlib.pyplot as plt

    if fig is None:
        fig = plt.figure(figsize=(11, 7))
    fig.clf()
    ax = fig.subplots(2, 2)
    l = state.layers
    a = ax[0, 0]
    a.plot(l, state.K, "-", color="C0", label="$K$ (infinite width)")
    a.plot(l, state.G, "--", color="C1", label=r"$K + G^{\{1\}}/n$")
    a.errorbar(l, state.K_measured, state.K_err, fmt="o", mfc="white", color="C1",
               label=f"{state.n_networks} networks, n = {state.width}")
    positive = np.isfinite(state.K) & (state.K > 0)
    if positive.any() and np.nanmax(state.K[positive]) / np.nanmin(state.K[positive]) > 20:
        a.set_yscale("log")
    a.set(xlabel=r"layer $\ell$", ylabel=r"$K^{(\ell)}$", title="kernel flow")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(l, state.chi_par, "-", label=r"$\chi_\parallel$")
    a.plot(l, state.chi_perp, "--", label=r"$\chi_\perp$")
    a.axhline(1.0, color="k", lw=0.8)
    a.set(xlabel=r"layer $\ell$", ylabel="susceptibility", title="susceptibilities along the flow")
    a.legend(fontsize=8)
    a = ax[1, 0]
    a.plot(l, state.kurtosis, "-", color="C2", label=r"$3V/(nK^2)$ (first order)")
    a.errorbar(l, state.kurtosis_measured, state.kurtosis_err, fmt="o", mfc="white", color="C2",
               label="networks")
    a.set(xlabel=r"layer $\ell$", ylabel="excess kurtosis", title="non-Gaussianity")
    a.legend(fontsize=8)
    a = ax[1, 1]
    K_star = [p.K_star for p in state.fixed_points if p.K_star is not None]
    top = max([4.0 * max(K_star, default=0.0), 3.0 * state.K1, 1.0])
    grid = np.linspace(top * 1e-3, top, 300)
    from .gaussian import expect
    act = state.activation
    g = state.C_b + state.C_W * expect(lambda z: act(z) ** 2, grid) - grid
    a.plot(grid, g, "-", color="0.3", label=r"$f(K) - K$")
    a.axhline(0.0, color="k", lw=0.8)
    marks = {"stable": ("o", "C2"), "unstable": ("x", "C3"), "half-stable": ("D", "C4"),
             "marginal": ("s", "0.5")}
    for p in state.fixed_points:
        if p.K_star is None:
            a.text(0.05, 0.9, "every K is a fixed point", transform=a.transAxes)
            continue
        m, c = marks[p.stability]
        a.plot([p.K_star], [0.0], m, color=c, ms=8, label=f"K* = {p.K_star:.3g}: {p.stability}")
    a.set(xlabel="$K$", ylabel=r"$C_b + C_W\langle\sigma^2\rangle_K - K$", title="fixed points")
    a.legend(fontsize=8)
    fig.suptitle(f"{state.activation.label}: $C_b$ = {state.C_b:.3g}, $C_W$ = {state.C_W:.3g}, "
                 f"depth {state.depth}, width {state.width}")
    return fig


def widget(act: str = "tanh", C_b: float = 0.0, C_W: float = 1.0, depth: int = 20,
           width: int = 32, n_networks: int = 512, seed: int = 0):
    """The explorer as ipywidgets controls over a live figure (JupyterLab, Binder)  (§5.1–5.4 of [RY]).

    Every change of a control calls :func:`update` and :func:`render`; "critical" sets
    (C_b, C_W) to the activation's critical initialization (when it has one).

    Parameters
    ----------
    act, C_b, C_W, depth, width, n_networks, seed
        The initial state (see :func:`update`).

    Returns
    -------
    ipywidgets.VBox
        Display it in a notebook cell. Its ``.refresh()`` recomputes the current state and
        ``.state`` holds the last :class:`Explorer`.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt
    from IPython.display import display

    controls = {
        "act": w.Dropdown(options=list(ACTIVATIONS), value=act, description="σ"),
        "C_b": w.FloatSlider(value=C_b, min=0.0, max=1.0, step=0.01, description="C_b",
                             continuous_update=False),
        "C_W": w.FloatSlider(value=C_W, min=0.1, max=5.0, step=0.01, description="C_W",
                             continuous_update=False),
        "depth": w.IntSlider(value=depth, min=2, max=60, description="depth", continuous_update=False),
        "width": w.IntSlider(value=width, min=4, max=128, step=4, description="width n",
                             continuous_update=False),
    }
    button = w.Button(description="critical (C_b, C_W)")
    out = w.Output()
    text = w.HTML()
    box = w.VBox([w.HBox([controls["act"], button]),
                  w.HBox([controls["C_b"], controls["C_W"]]),
                  w.HBox([controls["depth"], controls["width"]]), text, out])
    box.state = None

    def refresh(*_):
        args = {k: c.value for k, c in controls.items()}
        try:
            box.state = update(n_networks=n_networks, seed=seed, **args)
        except ValueError as exc:
            text.value = f"<b>cannot update:</b> {exc}"
            return
        text.value = "<pre>" + summary(box.state) + f"\n  (updated in {box.state.seconds:.2f} s)</pre>"
        with out:
            out.clear_output(wait=True)
            fig = render(box.state)
            display(fig)
            plt.close(fig)

    def set_critical(_):
        c = criticality.critical_point(controls["act"].value)
        if not c.exists:
            text.value = f"<b>{c.activation} has no critical initialization:</b> {c.reason}"
            return
        controls["C_b"].value = min(max(c.C_b, 0.0), controls["C_b"].max)
        controls["C_W"].value = c.C_W
        refresh()

    for c in controls.values():
        c.observe(refresh, names="value")
    button.on_click(set_critical)
    box.refresh = refresh
    box.controls = controls
    refresh()
    return box
