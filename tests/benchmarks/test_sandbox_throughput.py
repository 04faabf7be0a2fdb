"""Throughput and latency of the sandbox pool against a process per call, measured in the same run.

Methods:
- pool: SandboxPool (bwrap where available), os.cpu_count() workers, one fork per call.
- subprocess: `subprocess.run([python, "-I", "-S", "-c", code])` per call (no isolation at all).
- bwrap_per_call: the pool's own bubblewrap command line, a new sandbox per call (equal isolation).
Codes: `print(1)`, and a cell that burns 50 ms of CPU time (a busy loop on time.process_time(), not a sleep, so
the machine's cores bound every method alike). Concurrency: 1, 8, 64 calls in flight; latency is measured from
issuing a call to its result, so it includes waiting for a free worker. For each code and concurrency the three
methods run in interleaved rounds, so that the machine's load (it may be shared) weighs on them alike.
Sessions: a cell after N = 10 successful cells vs a fresh session's first cell vs a one-off call, and the cost of
rebuilding the same state by replaying the 10 cells (what a stateless executor has to do).
Preloading: a cell that imports numpy and sympy and uses them, in a one-worker pool that preloads both
(`preload_modules`) vs one that only has their site-packages on the path (each call imports them).

Run: .venv/bin/python -m pytest -o addopts="--import-mode=importlib -p no:cacheprovider" \\
         tests/benchmarks/test_sandbox_throughput.py --benchmark-only
The summary table is printed at the end; each test's numbers are also in its benchmark `extra_info`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import time
from dataclasses import replace

import pytest

from cleaner.sandbox import SandboxConfig, SandboxPool
from cleaner.sandbox.backends import SANDBOX_ENV, plan, preload_paths, real_python
from cleaner.sandbox.remote import replay_program

CONFIG = SandboxConfig(timeout_s=10.0, cpu_time_s=10.0)
CODES = {
    "print(1)": "print(1)",
    "50ms CPU": "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.05:\n    pass",
}
ROUNDS = {CODES["print(1)"]: 6, CODES["50ms CPU"]: 3}  # rounds per method
BATCH = {CODES["print(1)"]: 40, CODES["50ms CPU"]: 10}  # calls per method and round (at least 2 x concurrency)
CONCURRENCY = (1, 8, 64)
SESSION_CELL = "y = sum(range(1000))"
HISTORY = [f"x{i} = sum(range(300_000))" for i in range(10)]  # each prior cell does ~5-10 ms of work
PRELOAD_CELL = "import numpy, sympy\nprint(int(numpy.arange(10).sum()), sympy.Integer(3) + 1)"
SUMMARY: dict[tuple[str, str, int], dict[str, float]] = {}
SESSION_SUMMARY: dict[str, float] = {}
PRELOAD_SUMMARY: dict[str, float] = {}
HAVE_BWRAP = shutil.which("bwrap") is not None


def stats(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ordered = sorted(latencies_s)
    return {
        "calls_per_s": len(ordered) / wall_s,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


async def timed_batch(call, n: int, concurrency: int) -> tuple[float, list[float]]:
    """n calls with `concurrency` in flight: (wall seconds, latencies from issue to result)."""
    slots = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0, latencies


def process_call(prefix: list[str], code: str):
    argv = [*prefix, real_python(), "-I", "-S", "-c", code]

    async def call() -> None:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE, env=SANDBOX_ENV)
        _out, err = await proc.communicate()
        assert proc.returncode == 0, err

    return call


async def compare(code: str, concurrency: int) -> dict[str, dict[str, float]]:
    """The methods run in interleaved rounds (pool, subprocess, bwrap_per_call, pool, ...): on a shared machine a
    change of load then hits them alike, and their ratios hold."""
    rounds, batch = ROUNDS[code], max(2 * concurrency, BATCH[code])
    async with SandboxPool(CONFIG) as pool:
        async def pool_call() -> None:
            result = await pool.run(code)
            assert result.status == "ok", result

        calls = {"pool": pool_call, "subprocess": process_call([], code)}
        if HAVE_BWRAP:
            calls["bwrap_per_call"] = process_call(list(plan(CONFIG).prefix), code)
        for call in calls.values():  # warm-up
            await timed_batch(call, 4, 1)
        wall = dict.fromkeys(calls, 0.0)
        latencies: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(rounds):
            for name, call in calls.items():
                seconds, observed = await timed_batch(call, batch, concurrency)
                wall[name] += seconds
                latencies[name] += observed
        out = {name: stats(latencies[name], wall[name]) for name in calls}
        out["pool"]["backend"] = pool.backend  # type: ignore[assignment]
    return out


@pytest.mark.parametrize("concurrency", CONCURRENCY)
@pytest.mark.parametrize("code_name", list(CODES))
def test_throughput(benchmark, code_name: str, concurrency: int) -> None:
    result = benchmark.pedantic(lambda: asyncio.run(compare(CODES[code_name], concurrency)), rounds=1,
                                iterations=1)
    for method, figures in result.items():
        benchmark.extra_info[method] = figures
        SUMMARY[(method, code_name, concurrency)] = figures


async def session_costs(repeats: int) -> dict[str, float]:
    async with SandboxPool(CONFIG) as pool:
        one_off, fresh, after_history = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            assert (await pool.run(SESSION_CELL)).ok
            one_off.append(time.perf_counter() - t0)
            async with pool.session() as session:
                t0 = time.perf_counter()
                assert (await session.run(SESSION_CELL)).ok
                fresh.append(time.perf_counter() - t0)
            async with pool.session() as session:
                for cell in HISTORY:
                    assert (await session.run(cell)).ok
                t0 = time.perf_counter()
                assert (await session.run(SESSION_CELL)).ok
                after_history.append(time.perf_counter() - t0)
        replay = []
        program = replay_program(HISTORY, SESSION_CELL)
        for _ in range(repeats):
            t0 = time.perf_counter()
            assert (await pool.run(program)).ok
            replay.append(time.perf_counter() - t0)
    median_ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    return {
        "one_off_ms": median_ms(one_off),
        "fresh_session_first_cell_ms": median_ms(fresh),
        "cell_after_10_cells_ms": median_ms(after_history),
        "replaying_10_cells_then_cell_ms": median_ms(replay),
    }


def test_session_replay_cost(benchmark) -> None:
    result = benchmark.pedantic(lambda: asyncio.run(session_costs(30)), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    SESSION_SUMMARY.update(result)


async def preload_costs(repeats: int) -> dict[str, float]:
    """Median latency of PRELOAD_CELL, one call at a time, with and without preloading."""
    preloaded = replace(CONFIG, workers=1, preload_modules=("numpy", "sympy"))
    on_path = replace(CONFIG, workers=1, python_paths=tuple(preload_paths(("numpy", "sympy"))))
    out = {}
    for name, config in (("preloaded_ms", preloaded), ("imported_per_call_ms", on_path)):
        async with SandboxPool(config) as pool:
            assert (await pool.run(PRELOAD_CELL)).stdout == "45 4\n"
            latencies = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                assert (await pool.run(PRELOAD_CELL)).ok
                latencies.append(time.perf_counter() - t0)
        out[name] = 1000 * statistics.median(latencies)
    return out


def test_preload_cost(benchmark) -> None:
    result = benchmark.pedantic(lambda: asyncio.run(preload_costs(10)), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    PRELOAD_SUMMARY.update(result)


@pytest.fixture(scope="module", autouse=True)
def print_summary(request):
    yield
    if not SUMMARY and not SESSION_SUMMARY and not PRELOAD_SUMMARY:
        return
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        write_summary(request.config.pluginmanager.get_plugin("terminalreporter").write_line)


def write_summary(write) -> None:
    write("")
    write(f"sandbox throughput ({os.cpu_count()} CPUs; pool backend: "
          f"{next((r['backend'] for k, r in SUMMARY.items() if k[0] == 'pool'), '?')})")
    write("| code | concurrency | method | calls/s | p50 ms | p99 ms | pool speed-up |")
    write("|---|---|---|---|---|---|---|")
    for code_name in CODES:
        for concurrency in CONCURRENCY:
            pool = SUMMARY.get(("pool", code_name, concurrency))
            for method in ("pool", "subprocess", "bwrap_per_call"):
                r = SUMMARY.get((method, code_name, concurrency))
                if r is None:
                    continue
                ratio = "" if method == "pool" or pool is None else f"{pool['calls_per_s'] / r['calls_per_s']:.2f}x"
                write(f"| {code_name} | {concurrency} | {method} | {r['calls_per_s']:.0f} | {r['p50_ms']:.1f} | "
                      f"{r['p99_ms']:.1f} | {ratio} |")
    if SESSION_SUMMARY:
        write("session cost (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in SESSION_SUMMARY.items()))
    if PRELOAD_SUMMARY:
        write("import numpy, sympy in a cell (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in
                                                                      PRELOAD_SUMMARY.items()))
