"""pass@k (unbiased estimator) and mean +- stderr against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cleaner.stats import mean_stderr, pass_at_k


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (5, 2, 1, 0.4),                       # c / n
    (5, 2, 2, 0.7),                       # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (10, 3, 5, 1 - 21 / 252),             # 1 - C(7,5)/C(10,5)
    (5, 0, 3, 0.0),
    (5, 4, 2, 1.0),                       # n - c = 1 < k: every draw holds a correct sample
    (5, 5, 5, 1.0),
    (1, 1, 1, 1.0),
    (1, 0, 1, 0.0),
    (200, 1, 1, 0.005),
])
def test_pass_at_k(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_binomial_formula():
    for n, c, k in [(16, 5, 4), (32, 7, 8), (64, 1, 16)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.0, 2, 1),
                                           (5, True, 1)])
def test_pass_at_k_rejects_invalid_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_mean_stderr():
    mean, stderr = mean_stderr([1, 2, 3, 4])
    assert mean == 2.5
    assert stderr == pytest.approx(math.sqrt(5 / 3) / 2, abs=1e-12)  # sample variance (2.25+.25+.25+2.25)/3
    assert mean_stderr([0.0, 1.0]) == pytest.approx((0.5, 0.5), abs=1e-12)  # std sqrt(0.5), over sqrt(2)
    assert mean_stderr([7]) == (7.0, 0.0)
    assert mean_stderr(iter([3, 3, 3])) == (3.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        mean_stderr([])
