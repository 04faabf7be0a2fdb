"""Numbers for result tables: pass@k, a mean with its standard error, paired differences with their t interval
and p-value, the first step a learning curve reaches a level, and whether a search's best value is at the edge of
the values it tried."""

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


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (Lentz's method), accurate to
    about 1e-12 for the arguments a t-distribution needs."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point: use the symmetry
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * result


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on `student_t_cdf` (to 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_t_quantile needs 0 < p < 1, got {p}")
    low, high = -1e3, 1e3
    while high - low > 1e-10:
        mid = (low + high) / 2
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def paired_difference(a, b, confidence: float = 0.95) -> dict[str, float]:
    """The paired comparison of two methods measured on the same units (seeds): the mean of a - b, its standard
    error, Student's t interval at `confidence`, and the two-sided p-value of the paired t-test (mean 0). Needs
    at least two pairs."""
    diffs = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    if len(diffs) < 2:
        raise ValueError("paired_difference needs at least two pairs")
    mean, stderr = mean_stderr(diffs)
    df = len(diffs) - 1
    half = student_t_quantile(0.5 + confidence / 2, df) * stderr
    t = mean / stderr if stderr > 0 else math.copysign(math.inf, mean) if mean else 0.0
    p = 2 * (1 - student_t_cdf(abs(t), df)) if math.isfinite(t) else 0.0
    return {"n": len(diffs), "mean": mean, "stderr": stderr, "low": mean - half, "high": mean + half, "t": t,
            "p_value": p, "confidence": confidence}


def first_step_reaching(curve, threshold: float) -> int | None:
    """The first step of `curve` ((step, value) pairs, in step order) whose value is at least `threshold`; None
    when none is."""
    return next((step for step, value in curve if value >= threshold), None)


def at_the_edge(best: dict, tried: list[dict]) -> dict[str, str]:
    """The keys whose best value is the lowest or the highest any finished trial tried ("lowest", "highest"): there,
    the optimum may lie beyond what was explored, and the choice is not tuning but a bound."""
    edges = {}
    for key, value in best.items():
        values = [params[key] for params in tried if key in params]
        if len(set(values)) > 1 and value in (min(values), max(values)):
            edges[key] = "lowest" if value == min(values) else "highest"
    return edges
