"""Numbers for result tables: pass@k, and a mean with its standard error."""

from __future__ import annotations

import math
import statistics


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"):
    1 - C(n-c, k) / C(n, k), the probability that at least one of k samples drawn without replacement from n
    samples, c of them correct, is correct. Computed as 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms the
    large binomials. Not verl's best@N, which is a bootstrap estimate."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name} must be an int, got {value!r}")  # noqa: TRY004 - one error type
    if not (n >= 1 and 0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_stderr(values) -> tuple[float, float]:
    """(mean, standard error of the mean): the sample standard deviation (n - 1 in the denominator) over
    sqrt(n); the standard error is 0.0 for a single value. Raises ValueError for no values."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_stderr needs at least one value")
    if len(values) < 2:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))
