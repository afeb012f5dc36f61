"""Wick's theorem helpers: gaussian.pairings and gaussian.wick_moment (§1.1 of [RY])."""

import numpy as np
import pytest

from dlt_companion import gaussian


@pytest.mark.parametrize("m", range(0, 6))
def test_number_of_pairings_is_double_factorial(m):
    expected = int(np.prod(np.arange(2 * m - 1, 0, -2))) if m else 1
    ps = list(gaussian.pairings(2 * m))
    assert len(ps) == expected
    assert len(set(ps)) == expected                      # all distinct
    for p in ps:                                         # each is a perfect matching
        assert sorted(i for pair in p for i in pair) == list(range(2 * m))


def test_odd_number_of_positions_has_no_pairing():
    assert list(gaussian.pairings(5)) == []


def test_single_variable_moments_are_double_factorial_powers():
    K = 1.7
    for m in range(1, 6):
        df = np.prod(np.arange(2 * m - 1, 0, -2))
        assert gaussian.wick_moment((0,) * (2 * m), [[K]]) == pytest.approx(df * K ** m, rel=1e-14)


def test_odd_moments_vanish():
    K = np.array([[1.0, 0.3], [0.3, 2.0]])
    assert gaussian.wick_moment((0, 1, 1), K) == 0.0
    assert gaussian.wick_moment((0,), K) == 0.0


def test_four_point_includes_all_three_pairings():
    K = np.array([[1.0, 0.4, 0.1], [0.4, 2.0, -0.5], [0.1, -0.5, 1.5]])
    expected = K[0, 1] * K[2, 2] + 2 * K[0, 2] * K[1, 2]
    assert gaussian.wick_moment((0, 1, 2, 2), K) == pytest.approx(expected, rel=1e-14)
    # a "neighbour pairing only" answer would differ
    assert gaussian.wick_moment((0, 1, 2, 2), K) - K[0, 1] * K[2, 2] == pytest.approx(
        2 * K[0, 2] * K[1, 2], abs=1e-14)                      # the two crossed pairings, −0.1


def test_wick_matches_quadrature_for_six_point():
    K = np.array([[1.0, 0.6, -0.3], [0.6, 1.5, 0.4], [-0.3, 0.4, 0.8]])
    for idx in [(0, 0, 1, 1, 2, 2), (0, 1, 1, 1, 2, 2), (2, 2, 2, 2, 0, 1)]:
        quad = gaussian.expect_n(lambda z: np.prod(z[..., list(idx)], axis=-1), K)
        assert gaussian.wick_moment(idx, K) == pytest.approx(quad, rel=1e-10, abs=1e-10)


def test_wick_matches_samples():
    rng = np.random.default_rng(0)
    K = np.array([[1.0, 0.5], [0.5, 2.0]])
    z = rng.multivariate_normal([0, 0], K, size=400_000)
    for idx in [(0, 0, 1, 1), (0, 1, 1, 1)]:
        x = np.prod(z[:, list(idx)], axis=1)
        assert abs(x.mean() - gaussian.wick_moment(idx, K)) < 5 * x.std() / np.sqrt(len(x))


@pytest.mark.parametrize("indices, cov, match", [
    ((0, 2), np.eye(2), "every index"),
    ((0, -1), np.eye(2), "every index"),
    ((0, 1.5), np.eye(2), "every index"),
    (5, np.eye(2), "sequence"),
    ((0, 1), [[1.0, 2.0], [2.0, 1.0]], "positive semidefinite"),
    ((0, 1), [[1.0, 0.0, 0.0]], "square"),
])
def test_bad_input_raises(indices, cov, match):
    with pytest.raises(ValueError, match=match):
        gaussian.wick_moment(indices, cov)


def test_pairings_rejects_negative():
    with pytest.raises(ValueError, match="integer >= 0"):
        list(gaussian.pairings(-2))
