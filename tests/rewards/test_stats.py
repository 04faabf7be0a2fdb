"""pass@k (unbiased estimator) and mean +- stderr against hand-computed values."""

from __future__ import annotations

import math

import pytest

from cleaner.stats import (at_the_edge, first_step_reaching, mean_stderr, paired_difference, pass_at_k,
                           student_t_quantile)


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


@pytest.mark.parametrize("p, df, expected", [(0.975, 4, 2.776445), (0.975, 9, 2.262157), (0.975, 1, 12.706205),
                                             (0.95, 30, 1.697261), (0.025, 4, -2.776445), (0.5, 7, 0.0)])
def test_student_t_quantiles_match_the_tables(p, df, expected):
    """Printed t-tables (6 decimals). Breakage checked: the incomplete beta's symmetry branch off (wrong tails)."""
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=2e-6)


def test_a_paired_difference_by_hand():
    """Differences 0.1, 0.2, 0.0, 0.3, 0.1: mean 0.14, sample sd sqrt(0.013) = 0.114018, stderr 0.050990; t =
    2.745626 on 4 degrees of freedom, two-sided p = 0.051606 (numerical integration of the density); the 95% interval is
    0.14 +- 2.776445 x 0.050990. Breakage checked: pairing ignored (the difference of means' stderr), a one-sided
    p-value."""
    out = paired_difference([0.6, 0.7, 0.5, 0.8, 0.6], [0.5, 0.5, 0.5, 0.5, 0.5])
    assert (out["n"], out["mean"]) == (5, pytest.approx(0.14))
    assert out["stderr"] == pytest.approx(0.0509902, abs=1e-7) and out["t"] == pytest.approx(2.745626, abs=1e-5)
    assert out["p_value"] == pytest.approx(0.051606, abs=1e-6)
    assert (out["low"], out["high"]) == (pytest.approx(0.14 - 0.141571, abs=2e-6),
                                         pytest.approx(0.14 + 0.141571, abs=2e-6))
    assert paired_difference([1, 2, 3], [2, 3, 4])["p_value"] == 0.0  # a constant difference: no variance
    with pytest.raises(ValueError, match="at least two pairs"):
        paired_difference([1], [2])


def test_first_step_reaching_a_level():
    curve = [(0, 0.5), (10, 0.7), (20, 0.65), (30, 0.8)]
    assert (first_step_reaching(curve, 0.7), first_step_reaching(curve, 0.8), first_step_reaching(curve, 0.9)) == (
        10, 30, None)


def test_a_best_value_at_the_edge_of_the_values_tried_is_named():
    """Hand-made trials: lr's best is the lowest tried, K's best lies between its tried values. Checked red: the
    bounds of the space compared instead of the values tried, a single value tried counted as an edge."""
    tried = [{"lr": 1e-5, "k": 1}, {"lr": 3e-5, "k": 3}, {"lr": 1e-4, "k": 2}]
    assert at_the_edge({"lr": 1e-5, "k": 2}, tried) == {"lr": "lowest"}
    assert at_the_edge({"lr": 1e-4, "k": 3}, tried) == {"lr": "highest", "k": "highest"}
    assert at_the_edge({"lr": 3e-5, "k": 2}, tried) == {}
    assert at_the_edge({"lr": 1e-5}, [{"lr": 1e-5}, {"lr": 1e-5}]) == {}  # one value: no range to be inside
