"""verl's `reward.custom_reward_function`: grade one response with the project's rewards (`cleaner.rewards`).

verl 0.9.1 loads this file by path (`reward.custom_reward_function.path`, `.name = compute_score`) and calls

    compute_score(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **reward_kwargs)

with `reward_kwargs` from `reward.custom_reward_function.reward_kwargs` (and, when a reward model is on,
`reward_router_address` / `reward_model_tokenizer`, ignored here). Its reward managers (`naive`, `dapo`) accept a
float or a dict with "score"; every key of the dict becomes a column of `reward_extra_info`, so the keys are the
same for every data source:

    {"score": +1.0 | -1.0,   the paper's outcome reward (DAPO's manager adds its overlong penalty to it)
     "acc": 1.0 | 0.0,       correctness, which verl's validation metrics average
     "pred": str | None,     the extracted answer (boxed text, or the chosen letter; None for code): maj@N votes
     "status": str}          "correct" | "wrong" | "no_answer"; for code: code_reward's status, or "no_code"

Graders, chosen by `data_source` (exact names; `DATA_SOURCES`, extended or overridden per run with
`+reward.custom_reward_function.reward_kwargs.data_sources.<name>=math|choice|code`). Any other data source is an
error naming it.
- math: the last `\\boxed{}` of the response against the gold with math-verify (`cleaner.rewards.math_reward`).
- choice: the GPQA letter (`cleaner.rewards.choice_reward`); the gold is read as `cleaner.data.gpqa` reads verl rows.
- code: the last ```python block run on the tests in the project's sandbox (`cleaner.rewards.code_reward`); the
  tests are `ground_truth` read as `cleaner.data.livecodebench` reads verl rows (JSON tests or the APPS layout;
  `func_name` from `extra_info`). Each call starts a one-worker sandbox pool, runs the tests and closes it: the
  function is synchronous and verl calls it from a thread pool, where no event loop of ours lives. Sandbox settings
  come from `reward_kwargs.sandbox` (the keys of `SandboxConfig`).

Threads. math-verify bounds its parsing and comparison with `signal.alarm`, which works only in a main thread, and
verl runs a synchronous reward function in a thread pool. So when called outside the main thread, math answers are
graded in a small pool of spawned processes (as verl's own math-verify scorer does); in the main thread, in place.

Departures: the authors graded math with a strict `\\boxed` string match (`336^\\circ` fails against 336; see
`cleaner.rewards.math`). verl hands over the whole decoded response (tool calls and tool outputs included, special
tokens removed), and the last box or code block in it is graded, wherever it stands. Not verified: a run inside
verl's Ray reward workers (tests call it directly and through verl's `NaiveRewardManager` on CPU).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from cleaner.data import DATASETS
from cleaner.data.gpqa import gpqa_problems
from cleaner.data.livecodebench import lcb_problems
from cleaner.rewards import choice_reward, code_reward, extract_boxed, extract_choice, extract_code, math_reward
from cleaner.rl.dapo import outcome_reward
from cleaner.sandbox import SandboxConfig, open_pool

GRADERS = ("math", "choice", "code")

# data_source -> grader: the data set names of `cleaner.data`, and the names written in the public verl copies it reads
DATA_SOURCES: dict[str, str] = {
    **{name: spec.kind for name, spec in DATASETS.items()},  # our loaders' names (`harness.prepare_data` writes them)
    "DAPO-17k": "math",  # dapo_math_17k.parquet
    "test-math-aime24": "math",  # Skywork-OR1's aime24.parquet
    "test-math-aime25": "math",  # Skywork-OR1's aime25.parquet
}

_math_processes: ProcessPoolExecutor | None = None
_math_processes_lock = threading.Lock()


def _math_pool() -> ProcessPoolExecutor:
    global _math_processes
    with _math_processes_lock:
        if _math_processes is None:
            _math_processes = ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                  mp_context=multiprocessing.get_context("spawn"))
        return _math_processes


def _grade_math(response: str, ground_truth: Any) -> bool:
    if threading.current_thread() is threading.main_thread():
        return math_reward(response, ground_truth)
    return _math_pool().submit(math_reward, response, ground_truth).result()


def _verl_row(ground_truth: Any, extra_info: Mapping | None) -> dict:
    """A one-row verl record around `ground_truth`, so the data loaders' parsers read it as they read a file."""
    return {"prompt": [{"role": "user", "content": ""}], "reward_model": {"ground_truth": ground_truth},
            "extra_info": dict(extra_info or {})}


async def _run_tests(code: str, tests: list[dict], func_name: str | None, config: SandboxConfig) -> dict:
    async with open_pool(config) as pool:
        return await code_reward(code, tests, pool, func_name)


def grader_for(data_source: str, data_sources: Mapping | None = None) -> str:
    """The grader of `data_source`: `DATA_SOURCES` updated with `data_sources`; an unknown name is an error."""
    kinds = {**DATA_SOURCES, **dict(data_sources or {})}
    if data_source not in kinds:
        raise ValueError(f"no grader for data_source {data_source!r}; known: {', '.join(sorted(kinds))}. Name its "
                         f"grader ({', '.join(GRADERS)}) with +reward.custom_reward_function.reward_kwargs."
                         f"data_sources.{data_source}=math")
    kind = kinds[data_source]
    if kind not in GRADERS:
        raise ValueError(f"data_source {data_source!r}: unknown grader {kind!r}; valid: {', '.join(GRADERS)}")
    return kind


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None = None,
                  data_sources: Mapping | None = None, sandbox: Mapping | None = None, **kwargs: Any) -> dict:
    """Grade `solution_str` against `ground_truth` with the grader of `data_source` (module docstring)."""
    kind = grader_for(data_source, data_sources)
    if kind == "math":
        pred = extract_boxed(solution_str)
        correct = pred is not None and _grade_math(solution_str, ground_truth)
        status = "no_answer" if pred is None else "correct" if correct else "wrong"
    elif kind == "choice":
        [problem] = gpqa_problems(data_source, Path("<verl row>"), [_verl_row(ground_truth, extra_info)])
        pred = extract_choice(solution_str)
        correct = choice_reward(solution_str, problem.answer)
        status = "no_answer" if pred is None else "correct" if correct else "wrong"
    else:
        [problem] = lcb_problems(data_source, Path("<verl row>"), [_verl_row(ground_truth, extra_info)])
        pred, code = None, extract_code(solution_str)
        if code is None:
            correct, status = False, "no_code"
        else:
            config = SandboxConfig(**{"workers": 1, **dict(sandbox or {})})
            result = asyncio.run(_run_tests(code, problem.meta["tests"], problem.meta["func_name"], config))
            correct, status = result["passed"], result["status"]
    return {"score": outcome_reward(correct), "acc": float(correct), "pred": pred, "status": status}
