"""Benchmark suite: every row a ratio or a time measured in this one run.

    .venv/bin/python benchmarks/run.py            # full sizes, writes benchmarks/RESULTS.md
    .venv/bin/python benchmarks/run.py --quick    # small sizes (smoke test, ~10 s), writes
                                                  # build/benchmarks-quick.md

Rows (see benchmarks/README.md for how to read them):

1. ensemble forward GFLOP/s ÷ one ``torch.bmm`` of the same FLOPs and shapes (target ≥ 0.5);
2. ensemble forward ÷ a loop over M separate ``torch.nn.Sequential`` networks (target ≥ 10×);
3. peak memory of a streamed statistic at M = 100 000 vs M = 1 000 networks, each in a
   fresh subprocess (target ≤ 1.5×), and the wall time per network;
4. the flows at depth 100: kernel + four-point vertex + 1/n kernel correction (one input:
   target < 50 ms; two inputs: reported);
5. the book in quick mode: seconds per chapter from ``build/summary.md`` (budget ~60 s);
6. the empirical NTK of an ensemble ÷ ``torch.func.jacrev`` per network plus contraction (target ≥ 10×);
7. one batched gradient-descent step ÷ a loop of ``torch.optim.SGD`` over ``nn.Module``s (target ≥ 10×);
8. the NTK fluctuations at depth 100 (``flows.ntk_fluctuations``: K, V, Θ, A, B, D, F in one
   pass; one input: target < 50 ms; two inputs: target < 1 s), wall and CPU time.
9. training throughput at Chapter 10's notebook shape, network-steps/s of ``training.gradient_descent``
   ÷ the same steps by a loop of ``torch.optim.SGD`` over ``nn.Module``s (target ≥ 10×);
10. ``tangent.dntk`` of an ensemble ÷ nested ``torch.func.jacrev`` (the Jacobian of the NTK), the
   faster of a loop over networks and ``torch.func.vmap`` over them (target ≥ 10×).

Timings are the minimum over repeats, and the two sides of a ratio are timed alternately
so that they share whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dlt_companion import ensembles, flows  # noqa: E402

BOOK_BUDGET_S = 60.0


@dataclass
class Row:
    key: str
    what: str
    value: str
    target: str
    met: bool | None          # None: no target (reported only) or not measurable
    note: str = ""


# ---------------------------------------------------------------------------------------
# timing helpers
# ---------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fns, repeats: int, device=torch.device("cpu"), warmup: bool = True) -> list[float]:
    """Minimum wall time of each callable, timed alternately (after one warm-up call each)."""
    best = [float("inf")] * len(fns)
    with torch.no_grad():
        if warmup:
            for f in fns:
                f()
        _sync(device)
        for _ in range(repeats):
            for i, f in enumerate(fns):
                t0 = time.perf_counter()
                f()
                _sync(device)
                best[i] = min(best[i], time.perf_counter() - t0)
    return best


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "CPU": cpu,
        "logical cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "Python": platform.python_version(),
        "OS": platform.platform(terse=True),
    }
    if hasattr(os, "getloadavg"):
        info["load average at start (1 min)"] = f"{os.getloadavg()[0]:.2f}"
    if torch.cuda.is_available():
        info["GPU"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------
# rows 1 and 2: batched forward
# ---------------------------------------------------------------------------------------

def _spec(n, L, dtype, device, n_in=None):
    return ensembles.EnsembleSpec.build(n_in or n, [n] * L, "relu", 0.0, 2.0, dtype=dtype, device=device)


def row_bmm(ens, B, repeats) -> Row:
    """Ensemble forward GFLOP/s over one torch.bmm of the same FLOPs and shapes."""
    spec, M = ens.spec, ens.n_networks
    n, L, dtype, device = spec.widths[0], len(spec.widths), spec.dtype, spec.device
    x = torch.randn(B, n, dtype=dtype, device=device)
    flops = M * spec.flops(B)
    gen = torch.Generator(device=device).manual_seed(1)
    A = torch.randn(M * L, B, n, dtype=dtype, device=device, generator=gen)
    Wr = torch.randn(M * L, n, n, dtype=dtype, device=device, generator=gen)
    t_ens, t_bmm, t_bmmT = timed([lambda: ens.output(x), lambda: torch.bmm(A, Wr),
                                  lambda: torch.bmm(A, Wr.transpose(1, 2))], repeats, device)
    t_ref = min(t_bmm, t_bmmT)          # the faster layout is the achievable peak
    ratio = t_ref / t_ens
    gf_ens, gf_ref = flops / t_ens / 1e9, flops / t_ref / 1e9
    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    note = ""
    if ratio < 0.5:
        # where does the rest of the time go? time the activation and bias passes alone
        z = ens.forward(x)
        sigma = spec.act.torch[0]
        (t_elem,) = timed([lambda: [sigma(zl) + 1.0 for zl in z]], repeats, device)
        note = (f"elementwise σ(z)+b passes alone take {t_elem * 1e3:.1f} ms of the "
                f"{t_ens * 1e3:.1f} ms forward (bmm: {t_ref * 1e3:.1f} ms)")
    del A, Wr
    return Row(f"1 ({name}, {device.type})",
               f"ensemble forward ÷ one torch.bmm, M={M}, n={n}, L={L}, B={B}, {name}, {device.type}",
               f"{ratio:.2f} ({gf_ens:.1f} / {gf_ref:.1f} GFLOP/s)", "≥ 0.5", ratio >= 0.5, note), t_ref


def _sequential_nets(ens, M_loop):
    """M_loop torch.nn.Sequential MLPs sharing the ensemble's parameters (no copies)."""
    nets = []
    spec = ens.spec
    act = spec.act.torch[0]

    class Act(torch.nn.Module):
        def forward(self, z):
            return act(z)

    for i in range(M_loop):
        layers = []
        for l, (n, m) in enumerate(zip(spec.widths, spec.fan_in)):
            lin = torch.nn.Linear(m, n, device="meta", dtype=spec.dtype)
            lin.weight = torch.nn.Parameter(ens.weights[l][i], requires_grad=False)
            lin.bias = torch.nn.Parameter(ens.biases[l][i], requires_grad=False)
            layers.append(lin)
            if l < len(spec.widths) - 1:
                layers.append(Act())
        nets.append(torch.nn.Sequential(*layers))
    return nets


def row_naive(ens, B, repeats, label, t_gemm=None) -> Row:
    """Ensemble forward vs a Python loop over M separate torch.nn.Sequential networks."""
    spec, M = ens.spec, ens.n_networks
    n, L, dtype, device = spec.widths[0], len(spec.widths), spec.dtype, spec.device
    nets = _sequential_nets(ens, M)
    x = torch.randn(B, n, dtype=dtype, device=device)

    def naive():
        return torch.stack([net(x) for net in nets])

    with torch.no_grad():
        err = (naive() - ens.output(x)).abs().max().item()
        scale = ens.output(x).abs().max().item()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    if not err <= tol * max(scale, 1.0):
        raise AssertionError(f"naive loop and ensemble disagree: max |Δ| = {err:.3g}")
    t_ens, t_loop = timed([lambda: ens.output(x), naive], repeats, device)
    ratio = t_loop / t_ens
    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    note = ""
    if ratio < 10:
        # both sides do the same GEMMs; the loop adds a per-module call overhead. With the
        # GEMM time at its bmm peak (row 1) that bounds the ratio at this shape.
        if t_gemm is None:
            A = torch.randn(M * L, B, n, dtype=dtype, device=device)
            Wr = torch.randn(M * L, n, n, dtype=dtype, device=device)
            t_gemm = min(timed([lambda: torch.bmm(A, Wr), lambda: torch.bmm(A, Wr.transpose(1, 2))],
                               repeats, device))
            del A, Wr
        tiny = torch.nn.Linear(1, 1, dtype=dtype, device=device)
        one = torch.ones(1, 1, dtype=dtype, device=device)
        (t_call,) = timed([lambda: [tiny(one) for _ in range(100)]], repeats, device)
        gemm, calls = t_gemm / M, (2 * L - 1) * t_call / 100
        note = (f"both sides read the same weights and do the same GEMMs; at the bmm rate (row 1) "
                f"those take {gemm * 1e6:.0f} µs per network, and the loop adds {2 * L - 1} module "
                f"calls × {t_call / 100 * 1e6:.1f} µs (measured on a 1×1 Linear), i.e. "
                f"(GEMM + calls) / GEMM ≈ {(gemm + calls) / gemm:.1f}× from call overhead; the rest "
                f"of the measured {ratio:.1f}× is the loop's single small GEMMs running below the "
                f"batched rate. At this weight-bandwidth-bound shape the ratio tracks the machine's "
                f"Python call cost rather than the ensemble code (row 1 compares it with one bmm); the "
                f"overhead-bound notebook shape is the row below")
    return Row(f"2 ({name}, {device.type}, {label})",
               f"ensemble forward ÷ loop over M nn.Sequential, M={M}, n={n}, L={L}, B={B}, {name}, "
               f"{device.type} ({label})",
               f"{ratio:.1f}× ({t_ens / M * 1e6:.1f} vs {t_loop / M * 1e6:.1f} µs/network)",
               "≥ 10×", ratio >= 10, note)


# ---------------------------------------------------------------------------------------
# row 3: streamed statistics in bounded memory (measured in fresh subprocesses)
# ---------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB).

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image.
    (``getrusage``'s ``ru_maxrss`` is *not* reset by exec, so a child started by a big
    parent would report the parent's peak.) Elsewhere: ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def _reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def stream_child(Ms: list, n: int, L: int, B: int) -> list:
    """Run in a fresh interpreter: stream the mean output kernel of M networks for each M in
    turn and report the peak RSS of each (if the peak cannot be reset between them, the later
    peaks include the earlier ones, which can only overstate growth with M)."""
    spec = _spec(n, L, torch.float32, torch.device("cpu"))
    x = torch.randn(B, n, generator=torch.Generator().manual_seed(0))

    def gram(ens):                       # per-network output kernel Ĝ_{αβ}, [m, B, B]
        z = ens.output(x)
        return z @ z.transpose(1, 2) / z.shape[-1]

    ensembles.stream_mean(gram, spec, 2 * ensembles.BLOCK, seed=1)   # warm-up: load kernels
    out = []
    for M in Ms:
        reset = _reset_peak_rss()
        base = peak_rss_mb()
        t0 = time.perf_counter()
        mean, err = ensembles.stream_mean(gram, spec, M, seed=0)
        seconds = time.perf_counter() - t0
        out.append({"M": M, "chunk": ensembles.default_chunk(spec, n_inputs=B, n_networks=M),
                    "peak_mb": peak_rss_mb(), "base_mb": base, "seconds": seconds, "reset": reset,
                    "params": spec.n_parameters, "K00": float(mean[0, 0]),
                    "K00_err": float(err[0, 0]), "K1": float(2.0 * (x[0] @ x[0]) / n),
                    "budget_mb": ensembles.memory_budget() / 2**20})
    return out


def _run_child(Ms, n, L, B, budget_mb) -> list:
    env = dict(os.environ, DLT_MEMORY_MB=str(budget_mb), TQDM_DISABLE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stream-child", json.dumps([Ms, n, L, B])]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"stream child failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def row_stream(M_small, M_large, n, L, B, budget_mb, fresh: bool = True) -> list[Row]:
    """Peak memory at two ensemble sizes: each in its own fresh interpreter (``fresh``), or
    both in one (quick mode: saves an interpreter start)."""
    if fresh:
        (small,), (large,) = (_run_child([M], n, L, B, budget_mb) for M in (M_small, M_large))
    else:
        small, large = _run_child([M_small, M_large], n, L, B, budget_mb)
    ratio = large["peak_mb"] / small["peak_mb"]
    whole_mb = M_large * (4 * large["params"]) / 2**20
    note = ""
    if ratio > 1.5:
        note = (f"streaming added {large['peak_mb'] - large['base_mb']:.0f} MB at M={M_large} vs "
                f"{small['peak_mb'] - small['base_mb']:.0f} MB at M={M_small} (chunks of "
                f"{large['chunk']} and {small['chunk']})")
    shape = f"n={n}, L={L}, B={B}, float32, DLT_MEMORY_MB={budget_mb:g}"
    rows = [Row("3 (memory)",
                f"peak RSS, streamed mean output kernel, M={M_large:,} ÷ M={M_small:,} ({shape})",
                f"{ratio:.2f} ({large['peak_mb']:.0f} / {small['peak_mb']:.0f} MB; chunk "
                f"{large['chunk']}; the whole ensemble at once would be {whole_mb:,.0f} MB)",
                "≤ 1.5×", ratio <= 1.5, note)]
    per_net = large["seconds"] / M_large
    rows.append(Row("3 (time)", f"wall time per network of that statistic, M={M_large:,}",
                    f"{per_net * 1e6:.0f} µs/network ({large['params'] * M_large / large['seconds'] / 1e6:.0f}"
                    f" M parameters drawn/s; {large['seconds']:.1f} s total)", "reported", None,
                    f"sanity: measured G^(L) = {large['K00']:.4g} ± {large['K00_err']:.2g}, exact "
                    f"{large['K1']:.4g} (critical ReLU keeps E[z²] = K^(1) at any width)"))
    return rows


def row_generation(M, n, L, dtype, device, repeats) -> Row:
    """Parameter generation rate (the cost of streaming) vs a bare torch.randn."""
    spec = _spec(n, L, dtype, device)
    buf = spec.parameters(0, 0, M)
    count = M * spec.n_parameters
    flat = torch.empty(count, dtype=torch.float32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    t_par, t_randn = timed([lambda: spec.parameters(0, M, M, out=buf),
                            lambda: flat.normal_(generator=gen)], repeats, device)
    name = {torch.float32: "float32", torch.float64: "float64"}[dtype]
    return Row(f"3 (generation, {name}, {device.type})",
               f"drawing M={M} networks' parameters (n={n}, L={L}, {name}) ÷ one float32 randn of "
               f"the same count",
               f"{t_randn / t_par:.2f} ({count / t_par / 1e6:.0f} vs {count / t_randn / 1e6:.0f} M/s)",
               "reported", None,
               "> 1 when independent blocks are drawn on several threads")


# ---------------------------------------------------------------------------------------
# row 4: flows
# ---------------------------------------------------------------------------------------

def _call_flow(fn, act, C_b, C_W, K1, depth):
    params = inspect.signature(fn).parameters
    known = {"act": act, "activation": act, "C_b": C_b, "C_W": C_W, "K1": K1, "K": K1,
             "depth": depth, "L": depth}
    required = [p for p, v in params.items() if v.default is inspect.Parameter.empty
                and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    missing = [p for p in required if p not in known]
    if missing:
        raise TypeError(f"signature {inspect.signature(fn)} needs {missing}")
    return fn(**{p: known[p] for p in required})


def row_flows(depth, repeats) -> list[Row]:
    act, C_b, C_W = "tanh", 0.0, 1.0
    inputs = {"one input": 1.0, "two inputs": np.array([[1.0, 0.6], [0.6, 1.2]])}
    rows = []
    have = [hasattr(flows, name) for name in ("four_point", "kernel_correction")]
    for label, K1 in inputs.items():
        (t_K,) = timed([lambda: _call_flow(flows.kernel, act, C_b, C_W, K1, depth)], repeats)
        target, met = ("< 50 ms", None) if label == "one input" else ("reported", None)
        if not all(have):
            rows.append(Row(f"4 ({label})", f"flows, depth {depth}, tanh, {label}: kernel only",
                            f"{t_K * 1e3:.1f} ms", target, None,
                            "flows.four_point / flows.kernel_correction not yet available"))
            continue
        try:
            if hasattr(flows, "run"):       # all three statistics in one pass over the layers
                parts = [lambda: _call_flow(flows.run, act, C_b, C_W, K1, depth)]
                how = "flows.run (K, V, K1 in one pass)"
            else:
                parts = [lambda: _call_flow(flows.kernel, act, C_b, C_W, K1, depth),
                         lambda: _call_flow(flows.four_point, act, C_b, C_W, K1, depth),
                         lambda: _call_flow(flows.kernel_correction, act, C_b, C_W, K1, depth)]
                how = "kernel + four_point + kernel_correction"
            reps, warm = (repeats, True) if label == "one input" else (1, False)
            (t_all,) = timed([lambda: [p() for p in parts]], reps, warmup=warm)
            (t_V,) = timed([lambda: _call_flow(flows.four_point, act, C_b, C_W, K1, depth)], reps,
                           warmup=warm)
        except Exception as exc:            # report, don't hide: the row says what failed
            rows.append(Row(f"4 ({label})", f"flows, depth {depth}, tanh, {label}", "failed",
                            target, False, f"{type(exc).__name__}: {exc}"[:300]))
            continue
        if label == "one input":
            met = t_all < 0.050
        note = (f"{how}; for comparison: kernel alone {t_K * 1e3:.1f} ms, four_point alone "
                f"{t_V * 1e3:.1f} ms")
        if label != "one input" and t_all > 1.0:
            note += (f"; the 1/n correction (2-d quadrature per input pair and layer) is the other "
                     f"≈{max(t_all - t_V, 0.0):.1f} s")
        if met is False:
            note = "over target; " + note
        rows.append(Row(f"4 ({label})", f"flows, depth {depth}, tanh: kernel + four-point + 1/n "
                        f"correction, {label}", f"{t_all * 1e3:.1f} ms", target, met, note))
    return rows


# ---------------------------------------------------------------------------------------
# rows 6 and 7 (Chapter 7): empirical NTK and one training step, batched vs per network
# ---------------------------------------------------------------------------------------

def row_ntk(M, n, L, B, repeats) -> Row:
    """tangent.empirical_ntk of M networks ÷ torch.func.jacrev per network plus contraction."""
    from torch.func import jacrev

    from dlt_companion import tangent
    from dlt_companion.network import MLP

    net = MLP(n, [n] * (L - 1) + [1], "tanh", C_b=0.1, C_W=1.5)
    ens = net.ensemble(M, seed=0)
    x = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lam = [1.0 / m for m in net.fan_in] + [1.0] * L          # λ_W/n_(l-1) for weights, λ_b = 1

    def one(m):
        params = [W[m] for W in ens.weights] + [b[m] for b in ens.biases]

        def f(*p):
            return ensembles.apply(p[:L], p[L:], x, net.act, layers="last")[0].reshape(-1)
        J = jacrev(f, argnums=tuple(range(2 * L)))(*params)   # each [B·n_L, *shape]
        return sum(l * Jp.reshape(Jp.shape[0], -1) @ Jp.reshape(Jp.shape[0], -1).T for l, Jp in zip(lam, J))

    def loop():
        return torch.stack([one(m) for m in range(M)])

    batched = tangent.empirical_ntk(ens, x)[:, 0, 0]
    err = float((loop() - batched).abs().max())
    if not err <= 1e-10 * max(1.0, float(batched.abs().max())):
        raise AssertionError(f"empirical_ntk and the jacrev loop disagree: max |Δ| = {err:.3g}")
    t_batch, t_loop = timed([lambda: tangent.empirical_ntk(ens, x), loop], repeats)
    ratio = t_loop / t_batch
    return Row("6 (NTK)", f"tangent.empirical_ntk ÷ torch.func.jacrev per network + contraction, M={M}, "
               f"width {n}, depth {L}, {B} inputs, float64 (equal to {err:.0e})",
               f"{ratio:.0f}× ({t_batch * 1e3:.0f} ms vs {t_loop * 1e3:.0f} ms)", "≥ 10×", ratio >= 10)


def sgd_baseline(net, ens, eta):
    """The baseline of rows 7 and 9: one ``nn.Sequential`` and one ``torch.optim.SGD`` per network.

    Each module starts from network m of ``ens``; its parameter groups carry the book's
    learning-rate tensor (η λ_W/n_{l−1} for weights, η λ_b for biases), so that SGD steps the
    same parameters as :func:`dlt_companion.training.gradient_descent`.
    """
    act = net.act.torch[0]

    class Act(torch.nn.Module):
        def forward(self, z):
            return act(z)

    nets, opts = [], []
    for m in range(ens.n_networks):
        layers, groups = [], []
        for l, (w, fan) in enumerate(zip(net.widths, net.fan_in)):
            lin = torch.nn.Linear(fan, w, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(ens.weights[l][m])
                lin.bias.copy_(ens.biases[l][m])
            layers.append(lin)
            groups += [{"params": [lin.weight], "lr": eta * net.lam_W[l] / fan},
                       {"params": [lin.bias], "lr": eta * net.lam_b[l]}]
            if l < net.depth - 1:
                layers.append(Act())
        nets.append(torch.nn.Sequential(*layers))
        opts.append(torch.optim.SGD(groups))
    return nets, opts


def row_train_step(M, n, L, B, repeats) -> Row:
    """One training.gradient_descent step of M networks ÷ a loop of torch.optim.SGD over nn.Modules."""
    from dlt_companion import training
    from dlt_companion.network import MLP

    net = MLP(10, [n] * (L - 1) + [1], "tanh", C_b=0.0, C_W=1.0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(B, 10, dtype=torch.float64, generator=gen)
    y = torch.randn(B, 1, dtype=torch.float64, generator=gen)
    eta = 0.05
    base = net.ensemble(M, seed=0)
    def sgd_loop(nets, opts):
        out = []
        for model, opt in zip(nets, opts):
            opt.zero_grad()
            with torch.enable_grad():             # timed() runs under no_grad
                loss = 0.5 * ((model(x) - y) ** 2).sum()
                loss.backward()
            opt.step()
            with torch.no_grad():                 # the loss after the step, as gradient_descent reports
                out.append(0.5 * ((model(x) - y) ** 2).sum())
        return torch.stack(out)

    ens = base.clone()
    nets, opts = sgd_baseline(net, ens, eta)
    training.gradient_descent(ens, x, y, eta, 1)
    sgd_loop(nets, opts)
    err = max(float((ens.weights[l] - torch.stack([nets[m][2 * l].weight.detach() for m in range(M)])).abs().max())
              for l in range(L))
    if not err <= 1e-12:
        raise AssertionError(f"batched step and SGD loop disagree: max |ΔW| = {err:.3g}")
    t_batch, t_loop = timed([lambda: training.gradient_descent(ens, x, y, eta, 1),
                             lambda: sgd_loop(nets, opts)], repeats, warmup=False)
    ratio = t_loop / t_batch
    return Row("7 (training step)", f"training.gradient_descent, one step of M={M} networks (width {n}, "
               f"depth {L}, {B} inputs, float64) ÷ loop of torch.optim.SGD over nn.Sequential "
               f"(same parameters after the step, to {err:.0e})",
               f"{ratio:.0f}× ({t_batch * 1e3:.1f} ms vs {t_loop * 1e3:.0f} ms)", "≥ 10×", ratio >= 10)


# ---------------------------------------------------------------------------------------
# row 8: NTK fluctuations (Chapter 8)
# ---------------------------------------------------------------------------------------

def row_ntk_fluctuations(depth, repeats) -> list[Row]:
    """flows.ntk_fluctuations at depth 100 for one and two inputs, with the engine's share.

    Wall time is the minimum over repeats; CPU time (``time.process_time``) of the same call
    is reported beside it because on a shared machine the wall time includes waiting for a
    core. "engine" is the part spent in ``gaussian.Averages`` (building the node rules and the
    averages a layer needs), measured by running just those calls for the same kernels.
    """
    from dlt_companion.gaussian import Averages
    act, C_b, C_W, lam_b, lam_W = "tanh", 0.0, 1.0, 0.5, 1.0
    inputs = {"one input": (1.0, 1.0, 0.050),
              "two inputs": (np.array([[1.0, 0.6], [0.6, 1.2]]), np.array([[1.5, 0.8], [0.8, 1.7]]), 1.0)}
    rows = []
    for label, (K1, T1, limit) in inputs.items():
        if not hasattr(flows, "ntk_fluctuations"):
            rows.append(Row(f"8 ({label})", f"NTK fluctuations, depth {depth}, {label}", "not available",
                            f"< {limit * 1e3:.0f} ms", None))
            continue
        call = lambda: flows.ntk_fluctuations(act, C_b, C_W, lam_b, lam_W, K1, T1, depth)
        Ks = [np.atleast_2d(k) for k in flows.kernel(act, C_b, C_W, K1, depth)[:-1]]

        def engine():
            for K in Ks:
                a = Averages(act, K, _checked=True)
                for orders in ((0, 0), (1, 1), (0, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 1)):
                    a.tensor(orders)
                a.dK((0, 0))
                a.dK((1, 1))
        reps = repeats if label == "one input" else max(2, repeats // 2)
        t_wall, t_engine = timed([call, engine], reps)
        cpu = float("inf")
        for _ in range(reps):
            c0 = time.process_time()
            call()
            cpu = min(cpu, time.process_time() - c0)
        met = t_wall < limit
        note = (f"CPU time {cpu * 1e3:.1f} ms; gaussian.Averages alone (same kernels and averages) "
                f"{t_engine * 1e3:.1f} ms wall, i.e. {100 * t_engine / t_wall:.0f}% of the call")
        if not met:
            note = (f"over target in wall time on a shared machine; " + note
                    + (" (CPU time within target)" if cpu < limit else ""))
        rows.append(Row(f"8 ({label})", f"flows.ntk_fluctuations, depth {depth}, tanh, {label}: "
                        "K, V, Θ, A, B, D, F", f"{t_wall * 1e3:.1f} ms", f"< {limit * 1e3:.0f} ms", met, note))
    return rows


# rows 9-10: training throughput and the dNTK (Chapters 10-11)
# ---------------------------------------------------------------------------------------

def row_train_throughput(M, n, L, B, steps, repeats) -> Row:
    """network-steps/s of training.gradient_descent ÷ a loop of torch.optim.SGD over nn.Modules."""
    from dlt_companion import training
    from dlt_companion.network import MLP

    net = MLP(10, [n] * (L - 1) + [1], "tanh", C_b=0.0, C_W=1.0)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, 10, dtype=torch.float64, generator=gen)
    y = torch.randn(B, 1, dtype=torch.float64, generator=gen)
    eta = 0.05
    base = net.ensemble(M, seed=0)
    def sgd_loop(nets, opts):
        for model, opt in zip(nets, opts):
            for _ in range(steps):
                opt.zero_grad()
                with torch.enable_grad():
                    (0.5 * ((model(x) - y) ** 2).sum()).backward()
                opt.step()

    ens = base.clone()
    nets, opts = sgd_baseline(net, base, eta)
    training.gradient_descent(ens, x, y, eta, steps)
    sgd_loop(nets, opts)
    err = max(float((ens.weights[l] - torch.stack([nets[m][2 * l].weight.detach() for m in range(M)])).abs().max())
              for l in range(L))
    if not err <= 1e-10:
        raise AssertionError(f"batched training and the SGD loop disagree: max |ΔW| = {err:.3g}")
    t_batch, t_loop = timed([lambda: training.gradient_descent(ens, x, y, eta, steps),
                             lambda: sgd_loop(nets, opts)], repeats, warmup=False)
    ratio = t_loop / t_batch
    rate_b, rate_l = M * steps / t_batch, M * steps / t_loop
    return Row("9 (training throughput)", f"training.gradient_descent, {steps} steps of M={M} networks "
               f"(Ch. 10 shape: width {n}, depth {L}, {B} inputs, float64) ÷ loop of torch.optim.SGD over "
               f"nn.Sequential (same weights after training, to {err:.0e})",
               f"{ratio:.0f}× ({rate_b:,.0f} vs {rate_l:,.0f} network-steps/s)", "≥ 10×", ratio >= 10)


def row_dntk(M, n, L, n_L, B, repeats) -> Row:
    """tangent.dntk of M networks ÷ nested torch.func.jacrev (loop over networks, or vmap)."""
    from torch.func import jacrev, vmap

    from dlt_companion import tangent
    from dlt_companion.network import MLP

    net = MLP(10, [n] * (L - 1) + [n_L], "tanh", C_b=0.1, C_W=1.5)
    ens = net.ensemble(M, seed=0)
    x = torch.randn(B, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rates = [net.lam_W[k] / net.fan_in[k] for k in range(L)] + [net.lam_b[k] for k in range(L)]
    args = tuple(range(2 * L))

    def one(*p):                                  # one network: dĤ from the Jacobian of Ĥ = J Λ Jᵀ
        def z(*q):
            return ensembles.apply(q[:L], q[L:], x, net.act, layers="last")[0].reshape(-1)

        def H(*q):
            J = jacrev(z, argnums=args)(*q)
            return sum(r * Jp.flatten(1) @ Jp.flatten(1).T for r, Jp in zip(rates, J))
        J = jacrev(z, argnums=args)(*p)
        dH = jacrev(H, argnums=args)(*p)
        return sum(r * torch.einsum("bcp,ap->abc", d.flatten(2), Jp.flatten(1))
                   for r, d, Jp in zip(rates, dH, J))

    params = list(ens.weights) + list(ens.biases)

    def loop():
        return torch.stack([one(*[p[m] for p in params]) for m in range(M)])

    def vmapped():
        return vmap(one)(*params)

    got = tangent.dntk(ens, x)
    ref = loop().reshape(M, B, n_L, B, n_L, B, n_L).permute(0, 2, 4, 6, 1, 3, 5)
    err = float((got - ref).abs().max())
    if not err <= 1e-10 * max(1.0, float(ref.abs().max())):
        raise AssertionError(f"tangent.dntk and the nested jacrev disagree: max |Δ| = {err:.3g}")
    t_batch, t_loop, t_vmap = timed([lambda: tangent.dntk(ens, x), loop, vmapped], repeats)
    base_t, base_name = min((t_loop, "loop"), (t_vmap, "vmap"))
    ratio = base_t / t_batch
    return Row(f"10 (dNTK, n_L={n_L}, B={B})", f"tangent.dntk ÷ nested torch.func.jacrev (its faster form, "
               f"{base_name} over networks), M={M}, width {n}, depth {L}, {n_L} outputs, {B} inputs, "
               f"float64 (equal to {err:.0e})",
               f"{ratio:.0f}× ({t_batch * 1e3:.0f} ms vs loop {t_loop * 1e3:.0f} ms, vmap {t_vmap * 1e3:.0f} ms)",
               "≥ 10×", ratio >= 10)


# ---------------------------------------------------------------------------------------
# row 5: the book
# ---------------------------------------------------------------------------------------

def row_book(summary: Path) -> list[Row]:
    if not summary.exists():
        return [Row("5", "book in quick mode: seconds per chapter", "run make book first",
                    f"≤ {BOOK_BUDGET_S:.0f} s each", None, f"{summary.relative_to(ROOT)} not found")]
    text = summary.read_text(encoding="utf-8")
    scale = re.search(r"DLT_SCALE=(\w+)", text)
    scale = scale.group(1) if scale else "?"
    rows = []
    for m in re.finditer(r"^\|\s*([^|*]+?)\s*\|\s*([\d.]+)\s*\|\s*(\d+)\s*\|\s*(\w+)\s*\|$", text, re.M):
        chapter, seconds, checks, status = m.group(1), float(m.group(2)), int(m.group(3)), m.group(4)
        ok = seconds <= BOOK_BUDGET_S and status == "ok" and scale == "quick"
        note = "" if scale == "quick" else f"summary is from DLT_SCALE={scale}, not quick"
        if status != "ok":
            note = f"status {status}"
        elif seconds > BOOK_BUDGET_S:
            note = f"{seconds - BOOK_BUDGET_S:.0f} s over the budget"
        rows.append(Row(f"5 ({chapter})", f"book (DLT_SCALE={scale}): {chapter}",
                        f"{seconds:.1f} s, {checks} checks", f"≤ {BOOK_BUDGET_S:.0f} s", ok, note))
    if not rows:
        rows.append(Row("5", "book in quick mode", "no chapter rows in summary", "", None,
                        str(summary.relative_to(ROOT))))
    return rows


# ---------------------------------------------------------------------------------------

def render(rows: list[Row], info: dict, quick: bool, seconds: float) -> str:
    mark = {True: "met", False: "**not met**", None: "—"}
    lines = ["# Benchmark results", "",
             f"Generated by `.venv/bin/python benchmarks/run.py{' --quick' if quick else ''}` on "
             f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC in {seconds:.0f} s"
             + (" (**quick mode: small sizes, targets not meaningful**)" if quick else "") + ".",
             "See `benchmarks/README.md` for what each row measures.", "",
             "| machine | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += ["", "| row | measurement | value | target | status | note |",
              "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.key} | {r.what} | {r.value} | {r.target} | {mark[r.met]} | {r.note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test in seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the table (default benchmarks/RESULTS.md; with --quick "
                             "build/benchmarks-quick.md, so a smoke run never replaces the real table)")
    parser.add_argument("--summary", type=Path, default=ROOT / "build" / "summary.md",
                        help="the book runner's summary (row 5)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA rows even if a GPU is present")
    parser.add_argument("--stream-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.stream_child:
        print(json.dumps(stream_child(*json.loads(args.stream_child))))
        return 0

    if args.out is None:
        args.out = ROOT / ("build/benchmarks-quick.md" if args.quick else "benchmarks/RESULTS.md")
    t0 = time.perf_counter()
    info = machine()
    q = args.quick
    reps = 2 if q else 5
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    rows: list[Row] = []

    def step(name, fn):
        print(f"▶ {name} ...", flush=True)
        out = fn()
        for r in out if isinstance(out, list) else [out]:
            rows.append(r)
            print(f"  {r.key}: {r.value}  [{r.target}]", flush=True)

    for device in devices:
        for dtype in (torch.float32, torch.float64):
            M, n, L, B = (64, 32, 4, 4) if q else (2000, 128, 8, 4)
            ens = ensembles.MLPEnsemble.from_spec(_spec(n, L, dtype, device), M, seed=0)
            gemm = {}

            def forward_vs_bmm():
                row, gemm["t"] = row_bmm(ens, B, reps)
                return row
            step("forward vs bmm", forward_vs_bmm)
            step("forward vs nn.Sequential loop",
                 lambda: row_naive(ens, B, max(2, reps - 2), "issue shape", gemm["t"]))
            M, n, L, B = (64, 8, 4, 1) if q else (2000, 16, 16, 1)
            ens = ensembles.MLPEnsemble.from_spec(_spec(n, L, dtype, device), M, seed=0)
            step("forward vs nn.Sequential loop, notebook shape",
                 lambda: row_naive(ens, B, max(2, reps - 2), "notebook shape"))
            del ens
            gen_shape = (64, 32, 4) if q else (1024, 128, 8)
            step("parameter generation", lambda: row_generation(*gen_shape, dtype, device, reps))
    if q:
        step("streamed memory", lambda: row_stream(100, 3200, 16, 2, 4, 1, fresh=False))
    else:
        step("streamed memory", lambda: row_stream(1_000, 100_000, 64, 4, 4, 64))
    step("flows", lambda: row_flows(10 if q else 100, reps))
    step("empirical NTK", lambda: row_ntk(*((50, 16, 3, 4) if q else (1000, 64, 4, 8)), max(2, reps - 2)))
    step("training step", lambda: row_train_step(*((50, 16, 3, 8) if q else (1000, 32, 3, 8)),
                                                 max(2, reps - 2)))
    step("NTK fluctuations", lambda: row_ntk_fluctuations(10 if q else 100, reps))
    step("training throughput", lambda: row_train_throughput(*((32, 16, 2, 6, 5) if q else (1000, 64, 2, 6, 20)),
                                                             max(2, reps - 2)))
    for shape in ([(16, 16, 3, 4, 1)] if q else [(256, 32, 3, 4, 1), (256, 32, 3, 1, 4)]):
        step("dNTK", lambda shape=shape: row_dntk(*shape, max(2, reps - 2)))
    step("book", lambda: row_book(args.summary))

    text = render(rows, info, q, time.perf_counter() - t0)
    if hasattr(os, "getloadavg"):
        text += f"\nLoad average at the end (1 min): {os.getloadavg()[0]:.2f} on {os.cpu_count()} logical cores.\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
