"""Hostile calls from the Foundation II review, turned into tests: each gets a ValueError that
says what was wrong and what is allowed — never a raw numpy/torch error, a silent wrong
number, a hang or an out-of-memory. (Chapter-specific modules test their own.)"""

import numpy as np
import pytest
import torch

from dlt_companion import activations, ensembles, flows, gaussian, stats, tangent, training
from dlt_companion.network import MLP

CASES = {
    # activations
    "unknown activation": (lambda: activations.get("relux"), "unknown activation"),
    "params with an object": (lambda: activations.get(activations.get("leaky_relu"), slope=0.3),
                              "only be given together with a registry name"),
    "leaky slope nan": (lambda: activations.get("leaky_relu", slope=float("nan")), "finite"),
    "swish beta 0": (lambda: activations.get("swish", beta=0.0), "positive"),
    "bad param name": (lambda: activations.get("tanh", slope=1.0), "bad parameters"),
    # gaussian
    "negative variance": (lambda: gaussian.expect(np.tanh, -1.0), ">= 0"),
    "complex variance": (lambda: gaussian.expect(np.tanh, 1 + 1j), "real"),
    "non-PSD pair": (lambda: gaussian.expect2(np.tanh, np.tanh, 1.0, 2.0, 1.0), "positive semidefinite"),
    "nodes 0": (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(3), nodes=0), "nodes"),
    "nodes 2.7": (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(3), nodes=2.7), "nodes"),
    "nodes 400 (hang)": (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(4), nodes=400), "points"),
    "5 variables": (lambda: gaussian.expect_n(lambda z: z[..., 0], np.eye(5)), "1 to 4"),
    "wick bad index": (lambda: gaussian.wick_moment((0, 3), np.eye(2)), "0..1"),
    "wick 0.5 index": (lambda: gaussian.wick_moment((0, 0.5), np.eye(2)), "integer"),
    "pairings negative": (lambda: list(gaussian.pairings(-2)), ">= 0"),
    # flows
    "n0 = 0": (lambda: flows.first_layer_kernel(np.ones((2, 0)), 0.0, 1.0), "n_0 >= 1"),
    "C_W = 0": (lambda: flows.kernel("tanh", 0.0, 0.0, 1.0, 3), "C_W"),
    "C_b < 0": (lambda: flows.kernel("tanh", -0.1, 1.0, 1.0, 3), "C_b"),
    "depth 0": (lambda: flows.kernel("tanh", 0.0, 1.0, 1.0, 0), "depth"),
    "depth 2.5": (lambda: flows.kernel("tanh", 0.0, 1.0, 1.0, 2.5), "depth"),
    "depth 1e9 (hang)": (lambda: flows.kernel("tanh", 0.0, 1.0, 1.0, 10**9), "more than"),
    "K1 not PSD": (lambda: flows.run("tanh", 0.0, 1.0, np.array([[1.0, 2.0], [2.0, 1.0]]), 3),
                   "positive semidefinite"),
    "K1 not square": (lambda: flows.run("tanh", 0.0, 1.0, np.ones((2, 3)), 3), "square"),
    "K1 complex": (lambda: flows.kernel("tanh", 0.0, 1.0, 1.0 + 1j, 3), "real"),
    "K1 nan": (lambda: flows.kernel("tanh", 0.0, 1.0, float("nan"), 3), "finite"),
    "widths wrong length": (lambda: flows.run("tanh", 0.0, 1.0, 1.0, 5, widths=[8, 8]), "length"),
    "widths negative": (lambda: flows.run("tanh", 0.0, 1.0, 1.0, 3, widths=[8, -8]), "positive"),
    "perceptron finite width": (lambda: flows.run("perceptron", 0.0, 1.0, 1.0, 3), "Dirac"),
    "too many inputs": (lambda: flows.run("tanh", 0.0, 1.0, np.eye(9), 3), "up to 8"),
    "overflow": (lambda: flows.run("relu", 0.0, 3.0, 1.0, 2000), "diverged at layer"),
    "metric n with widths": (lambda: flows.run("tanh", 0.0, 1.0, 1.0, 3, widths=[4, 4]).metric(8),
                             "without n"),
    "metric without correction": (lambda: flows.run("tanh", 0.0, 1.0, np.eye(2), 3,
                                                    correction=False).metric(8), "correction=False"),
    "Theta1 shape": (lambda: flows.ntk_mean("tanh", 0.0, 1.0, 1.0, 1.0, np.eye(2), 1.0, 3), "shape"),
    # network / ensembles
    "seed 1.7": (lambda: MLP(2, [3], "tanh").ensemble(4, seed=1.7), "seed"),
    "first 0.5": (lambda: MLP(2, [3], "tanh").ensemble(4, first=0.5), "first"),
    "1e9 networks (OOM)": (lambda: MLP(16, [64, 64, 1], "tanh").ensemble(10**9), "GiB"),
    "bad dtype": (lambda: MLP(2, [3], "tanh").spec(dtype=torch.int32), "dtype"),
    "inputs wrong width": (lambda: MLP(2, [3], "tanh").ensemble(2).output(np.ones((1, 3))), r"\[B, n_in\]"),
    "complex inputs": (lambda: MLP(2, [3], "tanh").ensemble(2).output(np.ones((1, 2)) * 1j), "real"),
    "chunk 0": (lambda: ensembles.map_networks(lambda e: e.output(np.ones((1, 2))),
                                               MLP(2, [3], "tanh").spec(), 4, chunk=0), "chunk"),
    "fn returns scalar": (lambda: ensembles.map_networks(lambda e: e.output(np.ones((1, 2))).sum(),
                                                         MLP(2, [3], "tanh").spec(), 4), "first axis"),
    "executor not an executor": (lambda: ensembles.map_networks(lambda e: e.output(np.ones((1, 2))),
                                                                MLP(2, [3], "tanh").spec(), 4,
                                                                executor=object()), "Executor"),
    # training / tangent
    "eta < 0": (lambda: training.gradient_descent(MLP(2, [3], "tanh").ensemble(2), np.ones((1, 2)),
                                                  np.ones((1, 3)), -0.1, 1), "eta"),
    "targets shape": (lambda: training.gradient_descent(MLP(2, [3], "tanh").ensemble(2), np.ones((1, 2)),
                                                        np.ones((2, 3)), 0.1, 1), "targets"),
    "steps 1e12": (lambda: training.gradient_descent(MLP(2, [3], "tanh").ensemble(2), np.ones((1, 2)),
                                                     np.ones((1, 3)), 0.1, 10**12), "several calls"),
    "ntk layer 9": (lambda: tangent.empirical_ntk(MLP(2, [3], "tanh").ensemble(2), np.ones((1, 2)),
                                                  layer=9), "layer"),
    # stats
    "assert_agree NaN": (lambda: stats.assert_agree("x", [1.0], [np.nan], [0.1]), "finite"),
    "assert_agree empty": (lambda: stats.assert_agree("x", [], [], []), "no points|nothing"),
    "jackknife 1 block": (lambda: stats.jackknife(np.arange(5.0), lambda m: m, n_blocks=1), "n_blocks"),
    "four_point index 0.5": (lambda: stats.four_point(np.ones((3, 2, 4)), inputs=(0, 0.5, 0, 0)),
                             "4 indices"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_call_gets_a_clear_value_error(name):
    call, match = CASES[name]
    with pytest.raises(ValueError, match=match):
        call()


def test_wick_moment_of_22_indices_returns_instead_of_hanging():
    assert gaussian.wick_moment((0,) * 22, [[1.0]]) == pytest.approx(float(np.prod(np.arange(1, 22, 2))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        MLP(2, [3], "tanh").spec(device="cuda")
