"""SAAR purification cases, asserted token by token: ids, loss mask, log-probs and provenance of the final
trajectory are compared with the spans each case says must survive, in order."""

from __future__ import annotations

import math

import pytest

from cleaner import chat, saar
from cleaner.purify import purify, purify_turns
from cleaner.saar import Outcome, SaarConfig, SaarStats
from cleaner.trajectory import Provenance as P
from cleaner.trajectory import Trajectory

ORIG, SHALLOW, DEEP, OBS = P.ORIGINAL, P.SPLICED_SHALLOW, P.SPLICED_DEEP, P.OBSERVATION

AVG_NAME = "v = [1, 2, 3]\nprint(sum(v) / len(w))"  # NameError
AVG_SYNTAX = "v = [1, 2, 3]\nprint(sum(v) / len(v)"  # SyntaxError; similarity to AVG_NAME 0.96
AVG_OK = "v = [1, 2, 3]\nprint(sum(v) / len(v))"  # similarity to AVG_SYNTAX 0.99
DIV0 = "x = 1/0"
SUM10_SYNTAX = "print(sum(range(10))"  # similarity to DIV0 on the code: 0.15 -> deep
SUM10 = "print(sum(range(10)))"


def run(make, turns, cfg=SaarConfig(), applies=True):
    prompt = make.prompt()
    out, stats = purify_turns(tuple(turns), cfg, applies)
    return prompt, Trajectory("t", prompt, out), stats


def test_success_at_first_try_is_untouched(make, expect):
    t0 = make.turn("Compute it.\n", "print(6 * 7)", "ok", "42")
    t1 = make.turn("The answer is \\boxed{42}.")
    prompt, traj, stats = run(make, [t0, t1])
    expect(traj, [(prompt, P.PROMPT), (t0.reasoning, ORIG), (t0.call, ORIG), (t0.stop, ORIG), (t0.observation, OBS),
                  (t1.reasoning, ORIG), (t1.stop, ORIG)])
    assert (stats.first_attempt_calls, stats.rollbacks_triggered, stats.final_calls) == (1, 0, 1)


def test_shallow_keeps_original_reasoning_tokens(make, expect):
    t0 = make.turn("Average the list.\n", AVG_NAME, "error", "NameError: name 'w' is not defined", "NameError")
    t1 = make.turn("Typo: w should be v.\n", AVG_OK, "ok", "2.0")
    t2 = make.turn("The mean is \\boxed{2}.")
    prompt, traj, stats = run(make, [t0, t1, t2])
    expect(traj, [(prompt, P.PROMPT), (t0.reasoning, ORIG), (t1.call, SHALLOW), (t1.stop, SHALLOW),
                  (t1.observation, OBS), (t2.reasoning, ORIG), (t2.stop, ORIG)])
    assert traj.text == (prompt.text + "Average the list.\n" + chat.hermes_call_text(AVG_OK) + "<|im_end|>"
                         + chat.get_format("hermes").observation_text("2.0") + "The mean is \\boxed{2}.<|im_end|>")
    assert [r.mode for r in traj.turns[0].splices] == ["shallow"]
    assert traj.turns[0].splices[0].replaced_error_type == "NameError"
    assert (stats.rollbacks_recovered, stats.splices_shallow, stats.splices_deep, stats.final_failures) == (1, 1, 0, 0)
    removed = t0.call.ids + t0.stop.ids + t0.observation.ids + t1.reasoning.ids
    assert stats.tokens_removed == len(removed) == traj.turns[0].splices[0].tokens_removed


def test_deep_takes_the_corrections_reasoning(make, expect):
    t0 = make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError: division by zero", "ZeroDivisionError")
    t1 = make.turn("Different approach: sum directly.\n", SUM10, "ok", "45")
    prompt, traj, stats = run(make, [t0, t1])
    expect(traj, [(prompt, P.PROMPT), (t1.reasoning, DEEP), (t1.call, DEEP), (t1.stop, DEEP), (t1.observation, OBS)])
    assert traj.turns[0].splices[0].similarity == pytest.approx(0.142857, abs=1e-6)  # 2*2/(7+21)
    assert (stats.splices_shallow, stats.splices_deep) == (0, 1)


def test_several_retries_at_one_turn_chain_shallow_splices(make, expect):
    t0 = make.turn("Average.\n", AVG_NAME, "error", "NameError: name 'w' is not defined", "NameError")
    t1 = make.turn("Fix the name.\n", AVG_SYNTAX, "error", "SyntaxError: '(' was never closed", "SyntaxError")
    t2 = make.turn("Close the parenthesis.\n", AVG_OK, "ok", "2.0")
    prompt, traj, stats = run(make, [t0, t1, t2])
    expect(traj, [(prompt, P.PROMPT), (t0.reasoning, ORIG), (t2.call, SHALLOW), (t2.stop, SHALLOW),
                  (t2.observation, OBS)])
    records = traj.turns[0].splices
    assert [(r.mode, r.replaced_error_type) for r in records] == [("shallow", "NameError"), ("shallow", "SyntaxError")]
    assert (stats.lookahead_calls, stats.rollbacks_triggered, stats.rollbacks_recovered) == (2, 1, 1)
    assert stats.tokens_removed == t0.num_tokens + t1.num_tokens + t2.num_tokens - traj.turns[0].num_tokens


def test_deep_then_shallow_keeps_the_deep_reasoning(make, expect):
    t0 = make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError: division by zero", "ZeroDivisionError")
    t1 = make.turn("Sum instead.\n", SUM10_SYNTAX, "error", "SyntaxError: '(' was never closed", "SyntaxError")
    t2 = make.turn("Close it.\n", SUM10, "ok", "45")
    prompt, traj, _ = run(make, [t0, t1, t2])
    expect(traj, [(prompt, P.PROMPT), (t1.reasoning, DEEP), (t2.call, SHALLOW), (t2.stop, SHALLOW),
                  (t2.observation, OBS)])


def test_failures_at_two_turns(make, expect):
    t0 = make.turn("Average.\n", AVG_NAME, "error", "NameError: name 'w' is not defined", "NameError")
    t1 = make.turn("Typo.\n", AVG_OK, "ok", "2.0")
    t2 = make.turn("Now divide.\n", DIV0, "error", "ZeroDivisionError: division by zero", "ZeroDivisionError")
    t3 = make.turn("Sum instead.\n", SUM10, "ok", "45")
    t4 = make.turn("Done: \\boxed{45}.")
    prompt, traj, stats = run(make, [t0, t1, t2, t3, t4])
    expect(traj, [(prompt, P.PROMPT), (t0.reasoning, ORIG), (t1.call, SHALLOW), (t1.stop, SHALLOW),
                  (t1.observation, OBS), (t3.reasoning, DEEP), (t3.call, DEEP), (t3.stop, DEEP), (t3.observation, OBS),
                  (t4.reasoning, ORIG), (t4.stop, ORIG)])
    assert stats.rollbacks_triggered_by_class == {"NameError": 1, "ZeroDivisionError": 1}
    assert (stats.first_attempt_calls, stats.first_attempt_failures, stats.final_calls, stats.final_failures) == (2, 2, 2, 0)


def test_exhaustion_after_k_keeps_the_last_failure_and_goes_on(make, expect):
    err = ("error", "ModuleNotFoundError: No module named 'numpy'", "ModuleNotFoundError")
    t0 = make.turn("Use numpy.\n", "import numpy", *err)
    t1 = make.turn("Again.\n", "import numpy as np", *err)
    t2 = make.turn("Once more.\n", "from numpy import linalg", *err)
    t3 = make.turn("By hand then.\n", "print(2*4 - 1*7)", "ok", "1")
    t4 = make.turn("\\boxed{1}")
    prompt, traj, stats = run(make, [t0, t1, t2, t3, t4], SaarConfig(max_retries=2))
    # import numpy -> import numpy as np: 0.8 (shallow); -> from numpy import linalg: 12/28 = 0.43 (deep)
    assert [r.mode for r in traj.turns[0].splices] == ["shallow", "deep"]
    expect(traj, [(prompt, P.PROMPT), (t2.reasoning, DEEP), (t2.call, DEEP), (t2.stop, DEEP),
                  (t2.observation, OBS), (t3.reasoning, ORIG), (t3.call, ORIG), (t3.stop, ORIG),
                  (t3.observation, OBS), (t4.reasoning, ORIG), (t4.stop, ORIG)])
    assert traj.turns[0].result.output == "ModuleNotFoundError: No module named 'numpy'"
    assert (stats.rollbacks_exhausted, stats.lookahead_calls, stats.first_attempt_calls) == (1, 2, 2)
    assert (stats.final_failures, stats.final_failures_by_class) == (1, {"ModuleNotFoundError": 1})


def test_p_zero_leaves_the_trajectory_untouched(make):
    turns = (make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError", "ZeroDivisionError"),
             make.turn("Sum.\n", SUM10, "ok", "45"))
    cfg = SaarConfig(rollback_probability=0.0)
    out, stats = purify_turns(turns, cfg, saar.applies_to(cfg, seed=0, trajectory_id="t"))
    assert out == turns
    assert (stats.saar_applied, stats.first_attempt_calls, stats.first_attempt_failures) == (False, 2, 1)
    assert (stats.rollbacks_triggered, stats.final_failures) == (0, 1)


def test_infrastructure_failure_never_triggers(make):
    turns = (make.turn("Go.\n", SUM10, "infra_error", "Sandbox unavailable"), make.turn("Again.\n", SUM10, "ok", "45"))
    out, stats = purify_turns(turns, SaarConfig(), applies=True)
    assert out == turns
    assert (stats.infra_failures, stats.rollbacks_triggered, stats.first_attempt_failures) == (1, 0, 0)


def test_malformed_call_triggers(make, expect):
    raw = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(sum(range(10)))"}\n</tool_call>'
    t0 = make.turn("Sum.\n", raw_call=raw, status="malformed", output="Error: malformed tool call", error_type=None)
    assert t0.code == SUM10  # salvaged from the broken JSON, so the retry compares as shallow
    t1 = make.turn("Add the brace.\n", SUM10, "ok", "45")
    prompt, traj, stats = run(make, [t0, t1])
    expect(traj, [(prompt, P.PROMPT), (t0.reasoning, ORIG), (t1.call, SHALLOW), (t1.stop, SHALLOW),
                  (t1.observation, OBS)])
    assert stats.rollbacks_triggered_by_class == {"malformed": 1}


def test_retry_without_a_call_abandons_and_keeps_the_failure(make):
    t0 = make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError", "ZeroDivisionError")
    t1 = make.turn("I give up: \\boxed{0}.")
    out, stats = purify_turns((t0, t1), SaarConfig(), applies=True)
    assert out == (t0, t1)
    assert (stats.rollbacks_abandoned, stats.lookahead_calls, stats.final_failures) == (1, 0, 1)


def test_unterminated_retry_abandons_and_keeps_the_failure(make):
    """A retry that ends inside its call (cut; the parser marks it `chat.UNTERMINATED`) was not executed: the
    lookahead ends as abandoned, the failure stays, and the retry follows as an ordinary turn whose own failure
    event the next turn (no call) abandons too. Breakages checked: `saar.executed` without its UNTERMINATED check
    (the cut retry was spliced over the executed failure)."""
    t0 = make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError", "ZeroDivisionError")
    cut = chat.hermes_call_text(SUM10).removesuffix("\n</tool_call>")
    t1 = make.turn("Sum instead.\n", raw_call=cut, status="malformed", output=chat.get_format("hermes").parse(cut).error,
                   error_type=chat.UNTERMINATED)
    t2 = make.turn("I give up: \\boxed{0}.")
    out, stats = purify_turns((t0, t1, t2), SaarConfig(), applies=True)
    assert out == (t0, t1, t2)
    assert (stats.rollbacks_triggered, stats.rollbacks_abandoned, stats.lookahead_calls, stats.first_attempt_calls,
            stats.final_failures) == (2, 2, 0, 2, 2)
    assert stats.rollbacks_triggered_by_class == {"ZeroDivisionError": 1, "malformed": 1}


def test_infrastructure_failure_during_lookahead_interrupts(make, expect):
    t0 = make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError", "ZeroDivisionError")
    t1 = make.turn("Sum.\n", SUM10, "infra_error", "Sandbox unavailable")
    prompt, traj, stats = run(make, [t0, t1])
    expect(traj, [(prompt, P.PROMPT), (t1.reasoning, DEEP), (t1.call, DEEP), (t1.stop, DEEP), (t1.observation, OBS)])
    assert (stats.rollbacks_interrupted, stats.infra_failures, stats.final_failures) == (1, 1, 0)


def test_step_reports_each_outcome(make):
    fail = make.turn("a\n", DIV0, "error", "ZeroDivisionError", "ZeroDivisionError")
    cfg = SaarConfig(max_retries=2)
    assert saar.step(fail, make.turn("b\n", SUM10, "ok", "45"), 1, cfg)[1] is Outcome.RECOVERED
    assert saar.step(fail, make.turn("b\n", DIV0, "timeout", "timed out"), 1, cfg)[1] is None
    assert saar.step(fail, make.turn("b\n", DIV0, "timeout", "timed out"), 2, cfg)[1] is Outcome.EXHAUSTED
    assert saar.step(fail, make.turn("no call"), 1, cfg) == (fail, Outcome.ABANDONED)
    cut = make.turn("b\n", raw_call="<tool_call>\n{", status="malformed", output="Error", error_type=chat.UNTERMINATED)
    assert saar.step(fail, cut, 1, cfg) == (fail, Outcome.ABANDONED)
    bad = make.turn("b\n", raw_call="<tool_call>\n{</tool_call>", status="malformed", output="Error",
                    error_type="MalformedToolCall")
    assert saar.step(fail, bad, 1, cfg)[1] is None  # a complete call that does not parse is a failed retry


@pytest.mark.parametrize(
    "kwargs, field",
    [({"gamma": 1.5}, "gamma"), ({"gamma": -0.1}, "gamma"), ({"max_retries": -1}, "max_retries"),
     ({"rollback_probability": 1.01}, "rollback_probability"), ({"similarity": "cosine"}, "similarity"),
     ({"from_step": -1}, "from_step")],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SaarConfig(**kwargs)


def test_rollback_draw_is_seeded_per_trajectory_and_has_rate_p():
    cfg = SaarConfig(rollback_probability=0.7)
    ids = [f"traj-{i}" for i in range(4000)]
    draws = [saar.applies_to(cfg, 1, i) for i in ids]
    assert draws == [saar.applies_to(cfg, 1, i) for i in reversed(ids)][::-1]  # order does not matter
    assert abs(sum(draws) / len(draws) - 0.7) < 0.03  # 4 standard errors of a Bernoulli(0.7) mean at n=4000
    assert draws != [saar.applies_to(cfg, 2, i) for i in ids]  # another seed, other draws
    assert not any(saar.applies_to(SaarConfig(max_retries=0), 1, i) for i in ids[:50])
    assert not any(saar.applies_to(SaarConfig(enabled=False), 1, i) for i in ids[:50])
    assert all(saar.applies_to(SaarConfig(), 1, i) for i in ids[:50])


def test_similarity_exactly_gamma_is_shallow(make):
    """The paper's rule is shallow when similarity >= gamma: at gamma equal to the measured similarity the splice is
    shallow, one float step above it deep (the deliberate bug `sim > cfg.gamma` fails the first assertion)."""
    t0 = make.turn("Average the list.\n", AVG_NAME, "error", "NameError: name 'w' is not defined", "NameError")
    t1 = make.turn("Typo: w should be v.\n", AVG_OK, "ok", "2.0")
    sim = saar.decide(t0, t1, SaarConfig()).similarity
    assert 0.5 < sim < 1.0
    assert saar.decide(t0, t1, SaarConfig(gamma=sim)).mode == "shallow"
    assert saar.decide(t0, t1, SaarConfig(gamma=math.nextafter(sim, 1.0))).mode == "deep"


def test_the_purifier_honours_p_per_trajectory(make):
    """p = 0.5: each logged trajectory is purified exactly when its seeded draw says so, and both happen (the
    deliberate bug of ignoring p, purifying every trajectory, fails)."""
    prompt = make.prompt()
    turns = (make.turn("Divide.\n", DIV0, "error", "ZeroDivisionError: division by zero", "ZeroDivisionError"),
             make.turn("Sum.\n", SUM10, "ok", "45"))
    cfg = SaarConfig(rollback_probability=0.5)
    applied = []
    for i in range(24):
        out = purify(Trajectory(f"log-{i}", prompt, turns), cfg, seed=7)
        applied.append(saar.applies_to(cfg, 7, f"log-{i}"))
        assert out.stats["saar_applied"] == applied[-1]
        assert len(out.turns) == (1 if applied[-1] else 2)  # the failure spliced away, or kept
    assert 0 < sum(applied) < len(applied)


def test_stats_total_sums_counts_and_classes_sorted():
    """The run's summary sums per-trajectory stats: counts added, `saar_applied` counted, classes merged and
    sorted, the inputs untouched. Breakages checked: classes left in the order met; the first trajectory's class
    dict updated in place."""
    a = {"saar_applied": True, "rollbacks_triggered": 2, "final_failures_by_class": {"SyntaxError": 1, "NameError": 1}}
    b = {"saar_applied": False, "rollbacks_triggered": 1, "final_failures_by_class": {"NameError": 1, "KeyError": 2}}
    c = {"saar_applied": True, "rollbacks_triggered": 0, "final_failures_by_class": {}}
    total = SaarStats.total([a, b, c])
    assert total == {"saar_applied": 2, "rollbacks_triggered": 3,
                     "final_failures_by_class": {"KeyError": 2, "NameError": 2, "SyntaxError": 1}}
    assert list(total["final_failures_by_class"]) == ["KeyError", "NameError", "SyntaxError"]
    assert a["final_failures_by_class"] == {"SyntaxError": 1, "NameError": 1}
    assert SaarStats.total([]) == {} and SaarStats.total([c]) == {**c, "saar_applied": 1}


@pytest.mark.parametrize("enabled, from_step, step, expected", [
    (True, 0, 0, True), (True, 0, None, True),  # the default: every step; the step is not needed
    (True, 3, 2, False), (True, 3, 3, True), (True, 3, 4, True),  # 0-based: steps 0-2 are the baseline
    (False, 0, 5, False), (False, 3, 5, False), (False, 3, None, False),  # off stays off, whatever the step
])
def test_from_step_switches_saar_on_at_that_0_based_step(enabled, from_step, step, expected):
    """Breakages checked: `step > from_step` (the boundary step 3 stays baseline), `enabled` ignored after the
    switch, the step compared with from_step - 1."""
    cfg = SaarConfig(enabled=enabled, from_step=from_step)
    assert saar.active(cfg, step) is expected
    assert saar.at_step(cfg, step) == SaarConfig(enabled=expected)  # the schedule resolved: from_step back to 0


def test_from_step_refuses_an_unknown_step():
    """Not "always on" when the caller does not know the step. Breakage checked: `step is None` read as on."""
    with pytest.raises(ValueError, match=r"^saar.from_step=3 needs the training step"):
        saar.active(SaarConfig(from_step=3), None)
