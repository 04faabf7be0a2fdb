"""The verl reward function on hand-computed cases (math, GPQA letters, LiveCodeBench tests in the real sandbox),
its errors, and the whole verl path: loaded by file as verl loads it, called by verl's NaiveRewardManager (in a
worker thread) on the tensors our agent loop produced."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from omegaconf import OmegaConf
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.trainer.ppo.reward import get_custom_reward_fn

from cleaner import chat
from cleaner.verl_plugin import reward_function
from cleaner.verl_plugin.reward import compute_score

STDIN_TESTS = json.dumps([{"input": "3\n", "output": "6\n", "testtype": "stdin"},
                          {"input": "10\n", "output": "20\n", "testtype": "stdin"}])
APPS_FUNCTIONAL = json.dumps({"inputs": [[2, 3], [5, 5]], "outputs": [5, 10], "fn_name": "add"})


@pytest.mark.parametrize("data_source, response, gold, expected", [
    # AIME 2025 II-5 in the Skywork-OR1 copy: the gold is written 336^\circ; a strict string match fails it
    ("test-math-aime25", "The angles sum to \\boxed{336}.", "336^\\circ",
     {"score": 1.0, "acc": 1.0, "pred": "336", "status": "correct"}),
    ("aime24", "So the answer is \\boxed{025}", "25", {"score": 1.0, "acc": 1.0, "pred": "025", "status": "correct"}),
    ("aime24", "Thus \\boxed{\\frac{1}{2}}", "0.5",
     {"score": 1.0, "acc": 1.0, "pred": "\\frac{1}{2}", "status": "correct"}),
    ("DAPO-17k", "I get \\boxed{335}.", "336", {"score": -1.0, "acc": 0.0, "pred": "335", "status": "wrong"}),
    ("math500", "It is 336.", "336", {"score": -1.0, "acc": 0.0, "pred": None, "status": "no_answer"}),
    ("gpqa_diamond", "Comparing the energies, the answer is (C).", "(C)",
     {"score": 1.0, "acc": 1.0, "pred": "C", "status": "correct"}),
    ("gpqa_diamond", "Final answer: \\boxed{B}", "C", {"score": -1.0, "acc": 0.0, "pred": "B", "status": "wrong"}),
    ("gpqa_diamond", "Either A or B.", "A", {"score": -1.0, "acc": 0.0, "pred": None, "status": "no_answer"}),
])
def test_math_and_choice_cases(data_source, response, gold, expected):
    assert compute_score(data_source, response, gold, extra_info={"index": 0}) == expected


@pytest.mark.parametrize("response, gold, expected", [
    ("```python\nprint(int(input()) * 2)\n```", STDIN_TESTS, (1.0, "passed")),
    ("```python\nprint(int(input()) + 3)\n```", STDIN_TESTS, (-1.0, "wrong_answer")),  # passes the first test only
    ("```python\nprint(int(input()) * 2\n```", STDIN_TESTS, (-1.0, "error")),  # SyntaxError
    ("Just print twice the input.", STDIN_TESTS, (-1.0, "no_code")),
    ("```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```", APPS_FUNCTIONAL,
     (1.0, "passed")),
    # the same tests as the object itself and as a Python literal, both of which the authors' grader accepts
    ("```python\nclass Solution:\n    def add(self, a, b):\n        return a + b\n```", json.loads(APPS_FUNCTIONAL),
     (1.0, "passed")),
    ("```python\nclass Solution:\n    def add(self, a, b):\n        return a - b\n```",
     repr(json.loads(APPS_FUNCTIONAL)), (-1.0, "wrong_answer")),
])
def test_code_cases_run_in_the_sandbox(response, gold, expected):
    result = compute_score("livecodebench_v6", response, gold, extra_info={"index": 0},
                           sandbox={"timeout_s": 5.0})
    assert (result["score"], result["status"]) == expected
    assert result["acc"] == (1.0 if expected[0] > 0 else 0.0) and result["pred"] is None


def test_an_unknown_data_source_is_named_and_can_be_mapped():
    with pytest.raises(ValueError, match="no grader for data_source 'openr1_math'.*data_sources.openr1_math"):
        compute_score("openr1_math", "\\boxed{1}", "1")
    mapped = compute_score("openr1_math", "\\boxed{1}", "1", data_sources=OmegaConf.create({"openr1_math": "math"}))
    assert mapped["score"] == 1.0
    with pytest.raises(ValueError, match="unknown grader 'maths'; valid: math, choice, code"):
        compute_score("openr1_math", "\\boxed{1}", "1", data_sources={"openr1_math": "maths"})
    with pytest.raises(ValueError, match="math-verify cannot parse the gold answer"):
        compute_score("aime24", "\\boxed{1}", "")


def test_math_outside_the_main_thread():
    """verl calls a synchronous reward function from a thread pool, where math-verify's signal.alarm fails; the
    answers are then graded in spawned processes, with the same results."""
    cases = [("\\boxed{336}", "336^\\circ", 1.0), ("\\boxed{7}", "336", -1.0)]
    with ThreadPoolExecutor(2) as threads:
        got = list(threads.map(lambda c: compute_score("aime25", c[0], c[1])["score"], cases))
    assert got == [c[2] for c in cases]


@pytest.mark.asyncio
async def test_verl_loads_it_by_path_and_scores_our_agent_loop_output(tok, make_worker, scripted, batch,
                                                                      sandbox_pools):
    questions = ["What is 6 * 7?", "What is 6 * 8?"]
    server = scripted({
        questions[0]: ["Compute.\n" + chat.hermes_call_text("print(6 * 7)"), "It is \\boxed{42}."],
        questions[1]: ["It is \\boxed{42}."],  # wrong
    })
    data = await make_worker(server).generate_sequences(batch(questions, golds=["42", "48"]))

    path, name = reward_function()
    config = OmegaConf.create({"reward": {"custom_reward_function": {"path": path, "name": name,
                                                                    "reward_kwargs": {}}}})
    manager = NaiveRewardManager(config, tok, get_custom_reward_fn(config))
    results = [await manager.run_single(data[i: i + 1]) for i in range(len(data))]
    assert [r["reward_score"] for r in results] == [1.0, -1.0]
    assert [r["reward_extra_info"]["acc"] for r in results] == [1.0, 0.0]
    assert [r["reward_extra_info"]["pred"] for r in results] == ["42", "42"]
