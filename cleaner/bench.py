"""Benchmark evaluation through the agent loop: a model (in process or on SGLang servers), problems from `cleaner.data`, answers graded by
`cleaner.rewards`, the metrics of every rollout (`cleaner.metrics`).

    problems = data.load("aime24")[:30]
    result = await evaluate(transformers_engine(model, tokenizer), tokenizer, "aime24", problems, rollout_cfg,
                            samples=4, sampling=..., seed=0, pool=pool)

Prompts. A model with tool support (`hermes`: Qwen3, the lab model) gets one system prompt naming the tool. A model
without it (`markdown`: SmolLM2) gets a system prompt and one worked example in the conversation: a call, its
error, the fix, its output and the boxed answer, and its task line asks for code first, since without both
SmolLM2-135M made no parseable call. The task line says how to answer: `\\boxed{}` for math, a boxed letter for
GPQA, a final ```python block for LiveCodeBench (which needs `hermes`: in `markdown` a final code block is a call).

Grading (the registry `GRADERS`, keyed by the data set's kind, `cleaner.data.kind_of`): the text of the final
answer turn only; a trajectory cut by the limits is wrong. Math: math-verify on the last `\\boxed{}`; GPQA: the extracted letter;
LiveCodeBench: every test passes in the sandbox.

The paper's evaluation decodes with SGLang at top_p 0.6 on 16-32 samples per problem; here the engine, the samples
and top_p are the caller's (the harness takes `engine`, `algo.eval_samples` and `algo.eval_top_p`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from cleaner.data import Problem, kind_of
from cleaner.metrics import final_answer_text, rollout_metrics
from cleaner.registry import Registry
from cleaner.rewards import choice_reward, code_reward, extract_code, math_reward
from cleaner.rollout.drivers import rollout
from cleaner.rollout.engines import Engine, SamplingParams
from cleaner.rollout.episode import RolloutConfig

TASK_LINES = {  # (chat format, kind) -> the line after the question
    ("hermes", "math"): "Put the final answer in \\boxed{}.",
    ("hermes", "choice"): "Answer with the letter of the correct choice in \\boxed{}, for example \\boxed{B}.",
    ("hermes", "code"): "When your program is ready, give it as the final answer in one ```python block.",
    # without this request SmolLM2-135M made no call in 8 of 8 trajectories on MATH-500
    ("markdown", "math"): "First write Python code in a ```python block to compute it. Then put the final answer "
                          "in \\boxed{}.",
    ("markdown", "choice"): "First write Python code in a ```python block to work it out. Then answer with the "
                            "letter of the correct choice in \\boxed{}.",
}

HERMES_SYSTEM = (
    "You are a helpful assistant. You can run Python code with the tool code_interpreter: write\n"
    '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "..."}}\n</tool_call>\n'
    "and read what it printed inside <tool_response>. Use it to compute and to check your work.")

MARKDOWN_SYSTEM = (
    "You are a helpful assistant that solves problems with Python. To run code, write one ```python block and "
    "stop; its output comes back in an ```output block. Print the values you need. When you know the answer, "
    "write it as \\boxed{answer}.")

MARKDOWN_EXAMPLE = [  # one worked example for models without tool support: a call, its error, the fix, the answer
    {"role": "user", "content": "What is the sum of the squares of the integers from 1 to 10?\n\n"
                                + TASK_LINES["markdown", "math"]},
    {"role": "assistant", "content": "I will add the squares with Python.\n```python\n"
                                     "print(sum(i ** 2 for i in range(1, 11))\n```"},
    {"role": "user", "content": "```output\nSyntaxError: '(' was never closed\n```"},
    {"role": "assistant", "content": "A parenthesis is missing.\n```python\n"
                                     "print(sum(i ** 2 for i in range(1, 11)))\n```"},
    {"role": "user", "content": "```output\n385\n```"},
    {"role": "assistant", "content": "The sum is \\boxed{385}."},
]


def prompt_messages(problem: Problem, kind: str, chat_format: str) -> list[dict[str, str]]:
    """The conversation a problem starts with (module docstring)."""
    if chat_format == "markdown" and kind == "code":
        raise ValueError("code benchmarks need chat_format hermes: in markdown a final code block is a tool call")
    if (chat_format, kind) not in TASK_LINES:
        raise ValueError(f"no benchmark prompt for chat format {chat_format!r}; valid: hermes, markdown")
    question = {"role": "user", "content": f"{problem.question}\n\n{TASK_LINES[chat_format, kind]}"}
    if chat_format == "hermes":
        return [{"role": "system", "content": HERMES_SYSTEM}, question]
    return [{"role": "system", "content": MARKDOWN_SYSTEM}, *MARKDOWN_EXAMPLE, question]


Grader = Callable[[Problem, str, Any], Awaitable[bool]]  # (problem, answer text, sandbox pool)
GRADERS: Registry = Registry("grader")


@GRADERS.register("math")
async def _grade_math(problem: Problem, text: str, pool: Any) -> bool:
    return math_reward(text, problem.answer)


@GRADERS.register("choice")
async def _grade_choice(problem: Problem, text: str, pool: Any) -> bool:
    return choice_reward(text, problem.answer)


@GRADERS.register("code")
async def _grade_code(problem: Problem, text: str, pool: Any) -> bool:
    code = extract_code(text)
    if code is None:
        return False
    return (await code_reward(code, problem.meta["tests"], pool, problem.meta.get("func_name")))["passed"]


async def evaluate(engine: Engine, tokenizer: Any, name: str, problems: list[Problem], cfg: RolloutConfig,
                   samples: int, sampling: SamplingParams, seed: int, pool: Any) -> tuple[dict[str, Any], list[Any]]:
    """(metrics, trajectories) of `samples` rollouts per problem of the data set `name`, SAAR as `cfg.saar` says.
    `wall_s` in the metrics covers the rollouts only (grading excluded), so SAAR's latency overhead compares like
    with like."""
    kind = kind_of(name)
    prompts = [(p.id, prompt_messages(p, kind, cfg.format)) for p in problems]
    start = time.perf_counter()
    trajs = await rollout(engine, tokenizer, prompts, samples, cfg, sampling, seed, pool)
    wall_s = time.perf_counter() - start
    by_id = {p.id: p for p in problems}
    grade = GRADERS[kind]
    correct = [await grade(by_id[t.group], final_answer_text(t), pool) for t in trajs]
    return {**rollout_metrics(trajs, correct), "wall_s": wall_s}, trajs
