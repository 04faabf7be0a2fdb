"""The step metrics computed from a step's advantages, by hand."""

from __future__ import annotations

import pytest

from cleaner.metrics import advantage_failure_covariance


def test_the_covariance_of_advantage_and_first_attempt_failure_by_hand():
    """Four trajectories, advantages 1, -1, -1, 1, the two middle ones failed: mean advantage 0, share 0.5, so
    cov = ((1)(-0.5) + (-1)(0.5) + (-1)(0.5) + (1)(-0.5)) / 4 = -0.5 and the failed ones' mean is -1. Checked red:
    the sample covariance (n - 1), the failed ones' mean taken over all trajectories."""
    assert advantage_failure_covariance([1.0, -1.0, -1.0, 1.0], [False, True, True, False]) == {
        "adv_failure_cov": -0.5, "adv_mean_failed": -1.0}
    # uneven: advantages 2, 0, -1, failures on the first only: mean 1/3, share 1/3,
    # cov = ((5/3)(2/3) + (-1/3)(-1/3) + (-4/3)(-1/3)) / 3 = (10/9 + 1/9 + 4/9) / 3 = 5/9
    out = advantage_failure_covariance([2.0, 0.0, -1.0], [True, False, False])
    assert out["adv_failure_cov"] == pytest.approx(5 / 9) and out["adv_mean_failed"] == 2.0


def test_no_failure_or_no_trajectory_gives_zero_covariance_and_no_failed_mean():
    assert advantage_failure_covariance([0.5, -0.5], [False, False]) == {"adv_failure_cov": 0.0,
                                                                         "adv_mean_failed": None}
    assert advantage_failure_covariance([], []) == {"adv_failure_cov": 0.0, "adv_mean_failed": None}
