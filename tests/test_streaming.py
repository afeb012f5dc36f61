"""Streaming ensembles: same networks and statistics at any chunk size, bounded memory, benchmarks.

The book's Monte Carlo checks run over ensembles far larger than memory, so
``dlt_companion.ensembles`` draws network i from a generator seeded by its block
(i // BLOCK) alone. These tests pin that contract and the memory bound, and smoke-test
``benchmarks/run.py --quick``.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dlt_companion import ensembles, stats
from dlt_companion.ensembles import BLOCK, EnsembleSpec, MLPEnsemble

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = [1, 7, BLOCK, 50, 3 * BLOCK, 1000]          # incl. sizes that are not multiples of BLOCK


def _spec(dtype=torch.float64, act="tanh"):
    return EnsembleSpec.build(5, [9, 11, 3], act, C_b=[0.1, 0.2, 0.3], C_W=[1.0, 2.0, 1.5], dtype=dtype)


def _params_by_chunks(spec, M, seed, chunk, reuse):
    Ws, bs = [], []
    for ens in ensembles.iter_chunks(spec, M, seed=seed, chunk=chunk, reuse=reuse):
        Ws.append([W.clone() for W in ens.weights])   # clone: reuse=True overwrites the buffers
        bs.append([b.clone() for b in ens.biases])
    L = len(spec.widths)
    return ([torch.cat([w[l] for w in Ws]) for l in range(L)],
            [torch.cat([b[l] for b in bs]) for l in range(L)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reuse", [False, True])
def test_chunking_yields_the_same_networks(dtype, reuse):
    spec, M = _spec(dtype), 150
    whole = MLPEnsemble.from_spec(spec, M, seed=4)
    for chunk in CHUNKS:
        Ws, bs = _params_by_chunks(spec, M, 4, chunk, reuse)
        for a, b in zip(whole.weights + whole.biases, Ws + bs):
            assert torch.equal(a, b), f"chunk={chunk} changed the networks"


def test_sub_ranges_are_slices_of_the_whole_ensemble():
    spec = _spec()
    whole = MLPEnsemble.from_spec(spec, 200, seed=9)
    for first, count in [(0, 1), (5, 3), (31, 2), (30, 70), (64, 64), (7, 193)]:
        part = MLPEnsemble.from_spec(spec, count, seed=9, first=first)
        for a, b in zip(whole.weights + whole.biases, part.weights + part.biases):
            assert torch.equal(a[first:first + count], b)


def test_generation_stream_is_pinned():
    """Network i is torch.randn (float32) of its block's generator, scaled: stored notebook
    outputs depend on this exact stream, so a faster generator must reproduce it."""
    spec, seed = _spec(torch.float64), 3
    ens = MLPEnsemble.from_spec(spec, 2 * BLOCK, seed=seed)
    for block in range(2):
        gen = torch.Generator().manual_seed(ensembles._block_seed(seed, block))
        for l, (n, m) in enumerate(zip(spec.widths, spec.fan_in)):
            W = torch.randn((BLOCK, n, m), generator=gen, dtype=torch.float32).double()
            b = torch.randn((BLOCK, n), generator=gen, dtype=torch.float32).double()
            rows = slice(block * BLOCK, (block + 1) * BLOCK)
            assert torch.equal(ens.weights[l][rows], W * (spec.C_W[l] / m) ** 0.5)
            assert torch.equal(ens.biases[l][rows], b * spec.C_b[l] ** 0.5)


def test_float32_and_float64_hold_the_same_networks():
    e32 = MLPEnsemble.from_spec(_spec(torch.float32), 40, seed=1)
    e64 = MLPEnsemble.from_spec(_spec(torch.float64), 40, seed=1)
    for a, b in zip(e32.weights, e64.weights):
        np.testing.assert_allclose(a.double().numpy(), b.numpy(), rtol=1e-6)


def test_thread_count_does_not_change_networks():
    spec, before = _spec(torch.float32), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = MLPEnsemble.from_spec(spec, 5 * BLOCK + 3, seed=2, first=4)
        torch.set_num_threads(2)
        two = MLPEnsemble.from_spec(spec, 5 * BLOCK + 3, seed=2, first=4)
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(one.weights + one.biases, two.weights + two.biases))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_statistics_do_not_depend_on_chunk_size(dtype):
    spec, M = _spec(dtype, act="relu"), 300
    x = np.linspace(-1, 1, 10).reshape(2, 5)

    def per_net(ens):                                   # per-network Ĝ of the output, [m, 2, 2]
        z = ens.output(x)
        return z @ z.transpose(1, 2) / z.shape[-1]

    ref = ensembles.map_networks(per_net, spec, M, seed=5, chunk=M)
    ref_mean, ref_err = stats.mean(ref)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    for chunk in CHUNKS:
        got = ensembles.map_networks(per_net, spec, M, seed=5, chunk=chunk)
        np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
        mean, err = ensembles.stream_mean(per_net, spec, M, seed=5, chunk=chunk)
        np.testing.assert_allclose(mean, ref_mean, rtol=rtol)
        np.testing.assert_allclose(err, ref_err, rtol=rtol)


def test_stream_mean_is_accurate_for_a_large_offset():
    """Running sums must not lose the spread when the mean is 1e6 times larger."""
    spec = _spec(torch.float64)
    x = np.ones((1, 5))
    fn = lambda ens: ens.output(x)[:, 0, 0] + 1e6       # noqa: E731
    ref = stats.mean(ensembles.map_networks(fn, spec, 500, seed=0, chunk=500))
    got = ensembles.stream_mean(fn, spec, 500, seed=0, chunk=7)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-8)


def test_default_chunk_follows_the_memory_budget(monkeypatch):
    spec = EnsembleSpec.build(64, [64] * 4, "relu", 0.0, 2.0, dtype=torch.float32)
    per = spec.bytes_per_network(4)
    scratch = torch.get_num_threads() * spec._scratch_bytes()
    chunks = []
    for mb in (8, 16, 48):                           # budgets below the preferred chunk size
        monkeypatch.setenv("DLT_MEMORY_MB", str(mb))
        c = ensembles.default_chunk(spec, n_inputs=4)
        assert c % BLOCK == 0
        assert scratch + c * per <= mb * 2**20 < scratch + (c + BLOCK) * per   # fills the budget
        chunks.append(c)
    assert chunks == sorted(chunks) and len(set(chunks)) == 3
    monkeypatch.setenv("DLT_MEMORY_MB", "100000")    # a huge budget: the CPU keeps a cache-sized chunk
    preferred = max(ensembles.PREFERRED_MIN_CHUNK, ensembles.PREFERRED_CHUNK_BYTES // per)
    assert ensembles.default_chunk(spec, 4) == preferred // BLOCK * BLOCK
    assert ensembles.default_chunk(spec, 4, n_networks=10) == 10   # never more than needed
    monkeypatch.setenv("DLT_MEMORY_MB", "0.0001")
    assert ensembles.default_chunk(spec) == 1                  # the budget wins over the block size
    for bad in ("lots", "-5", "0", "nan"):
        monkeypatch.setenv("DLT_MEMORY_MB", bad)
        with pytest.raises(ValueError, match="DLT_MEMORY_MB"):
            ensembles.default_chunk(spec)


def test_bad_arguments_raise_clear_errors():
    spec = _spec()
    with pytest.raises(ValueError, match="chunk"):
        ensembles.map_networks(lambda e: e.output(np.ones((1, 5))), spec, 10, chunk=0)
    with pytest.raises(ValueError, match="first axis"):
        ensembles.map_networks(lambda e: e.output(np.ones((1, 5))).sum(), spec, 10)
    with pytest.raises(ValueError, match="at least 2 networks"):
        ensembles.stream_mean(lambda e: e.output(np.ones((1, 5))), spec, 1)
    small = spec.parameters(0, 0, 4)
    with pytest.raises(ValueError, match="out buffers"):
        spec.parameters(0, 0, 8, out=small)
    with pytest.raises(ValueError, match="device"):
        EnsembleSpec.build(5, [3], "tanh", 0.0, 1.0, device="not-a-device")


_CHILD = textwrap.dedent("""
    import json, sys, torch
    from dlt_companion import ensembles

    def peak_kb():        # VmHWM: this process image's peak RSS (ru_maxrss survives exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    spec = ensembles.EnsembleSpec.build(32, [32] * 3, "relu", 0.0, 2.0, dtype=torch.float32)
    x = torch.ones(4, 32)
    fn = lambda ens: (ens.output(x) ** 2).mean(-1)
    ensembles.stream_mean(fn, spec, 2 * ensembles.BLOCK, seed=1)          # load every kernel
    out = {"bytes_per_net": 4 * spec.n_parameters}
    for M in map(int, sys.argv[1:]):  # the high-water mark only rises: later peaks include earlier
        mean, err = ensembles.stream_mean(fn, spec, M, seed=0)
        out[M] = {"peak_kb": peak_kb(), "chunk": ensembles.default_chunk(spec, 4, M)}
    print(json.dumps(out))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="reads VmHWM from /proc/self/status")
def test_streamed_statistic_memory_does_not_grow_with_M():
    env = dict(os.environ, DLT_MEMORY_MB="4", OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-c", _CHILD, "512", "16384"], env=env, capture_output=True,
                         text=True, check=True, timeout=120)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    small, large = out["512"], out["16384"]
    assert small["chunk"] == large["chunk"] < 512
    whole_mb = 16_384 * out["bytes_per_net"] / 2**20          # ≈ 200 MB if held at once
    grew_mb = (large["peak_kb"] - small["peak_kb"]) / 1024
    assert grew_mb < 0.1 * whole_mb, f"peak RSS grew {grew_mb:.0f} MB from M=512 to 16384"


def test_benchmark_quick_smoke(tmp_path):
    summary = tmp_path / "summary.md"
    summary.write_text("Book run (DLT_SCALE=quick):\n\n| chapter | seconds | checks passed | status |\n"
                       "|---|---:|---:|---|\n| 00_initialization | 26.9 | 6 | ok |\n"
                       "| 99_slow | 75.0 | 3 | ok |\n| **total** | 101.9 | 9 | ok |\n")
    out = tmp_path / "RESULTS.md"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-cuda",
                          "--out", str(out), "--summary", str(summary)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    assert "| CPU |" in text and "| torch threads |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | " in line]
    keys = [r.split("|")[1].strip() for r in rows]
    for prefix in ("1 (float32", "1 (float64", "2 (float32", "2 (float64", "3 (memory)", "3 (time)",
                   "4 (one input)", "4 (two inputs)"):
        assert any(k.startswith(prefix) for k in keys), f"row {prefix} missing"
    book = {k: r for k, r in zip(keys, rows) if k.startswith("5")}
    assert set(book) == {"5 (00_initialization)", "5 (99_slow)"}          # total row skipped
    assert "| met |" in book["5 (00_initialization)"]
    assert "**not met**" in book["5 (99_slow)"] and "15 s over" in book["5 (99_slow)"]


def test_a_huge_network_draws_a_small_block_not_thirty_two():
    """A 4096² layer is 64 MiB in float32: its block shrinks so that one network does not
    draw 31 others (2 GiB); small networks keep the pinned 32-network blocks."""
    big = EnsembleSpec.build(4096, [4096], "relu", 0.0, 2.0, dtype=torch.float32)
    assert big.block * 4 * 4096 * 4096 <= ensembles.BLOCK_BYTES and big.block < BLOCK
    assert _spec().block == BLOCK


def _square_output(ens):                      # module level: process pools pickle it
    return ens.output(torch.ones(2, 5, dtype=ens.spec.dtype)) ** 2


def test_executor_results_are_identical_to_the_serial_run():
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    spec = _spec()
    serial = ensembles.map_networks(_square_output, spec, 150, seed=4, chunk=40)
    mean, err = ensembles.stream_mean(_square_output, spec, 150, seed=4, chunk=40)
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as pool:
        farmed = ensembles.map_networks(_square_output, spec, 150, seed=4, chunk=40, executor=pool)
        fmean, ferr = ensembles.stream_mean(_square_output, spec, 150, seed=4, chunk=40,
                                            executor=pool)
    np.testing.assert_array_equal(farmed, serial)
    np.testing.assert_array_equal(fmean, mean)
    np.testing.assert_array_equal(ferr, err)


def test_dask_executor_matches_the_serial_run():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                      "(pip install 'dlt-companion[cluster]')")
    spec = _spec()
    serial = ensembles.stream_mean(_square_output, spec, 100, seed=2, chunk=30)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        farmed = ensembles.stream_mean(_square_output, spec, 100, seed=2, chunk=30,
                                       executor=client.get_executor())
    np.testing.assert_array_equal(farmed.value, serial.value)
    np.testing.assert_array_equal(farmed.stderr, serial.stderr)


def test_map_networks_can_differentiate_the_networks_of_a_chunk():
    spec = _spec()
    x = torch.ones(1, 5, dtype=torch.float64)

    def grad_norm(ens):                          # autograd inside fn needs grad=True
        W = ens.weights[0].requires_grad_(True)
        out = ens.output(x).sum()
        (g,) = torch.autograd.grad(out, W)
        W.requires_grad_(False)
        return g.flatten(1).norm(dim=1)
    got = ensembles.map_networks(grad_norm, spec, 40, seed=0, grad=True)
    assert got.shape == (40,) and np.all(got > 0)
    with pytest.raises(RuntimeError):
        ensembles.map_networks(grad_norm, spec, 40, seed=0)        # default: no_grad


def test_an_ensemble_too_large_for_memory_is_refused_with_its_size():
    with pytest.raises(ValueError, match=r"GiB.*stream"):
        MLPEnsemble(5, [64, 64, 1], "tanh", 0.0, 1.0, n_networks=10**9)


@pytest.mark.parametrize("kw,match", [
    (dict(seed=1.7), "seed"), (dict(seed=-1), "seed"), (dict(first=0.5), "first"),
    (dict(n_networks=0), "n_networks"), (dict(C_W=0.0), "C_W"), (dict(C_b=-1.0), "C_b"),
    (dict(widths=[4, -2]), "widths"), (dict(act="relux"), "unknown activation"),
    (dict(C_W=[1.0, 2.0]), "length 3"), (dict(C_W=1 + 2j), "real"),
])
def test_bad_ensemble_arguments_raise_value_errors(kw, match):
    args = dict(n_in=5, widths=[7, 6, 3], act="tanh", C_b=0.2, C_W=1.5, n_networks=4, seed=0)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        MLPEnsemble(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        EnsembleSpec.build(5, [3], "tanh", 0.0, 1.0, device="cuda")
