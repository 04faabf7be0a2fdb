"""The rollout state machine driven by a scripted engine: token-by-token buffers for each SAAR path, the contexts
each generation saw, and the limits."""

from __future__ import annotations

import asyncio

import pytest

from cleaner import chat, saar
from cleaner.rollout.drivers import ScriptedTools, make_episodes, run_batched
from cleaner.rollout.engines import SamplingParams, ScriptedEngine
from cleaner.rollout.episode import Episode, RolloutConfig, ToolAnswer
from cleaner.saar import SaarConfig
from cleaner.trajectory import Provenance as P
from cleaner.trajectory import ToolResult, excluded_from_loss

ORIG, SHALLOW, DEEP, OBS, PROMPT = P.ORIGINAL, P.SPLICED_SHALLOW, P.SPLICED_DEEP, P.OBSERVATION, P.PROMPT
HERMES = chat.get_format("hermes")
MESSAGES = [{"role": "user", "content": "What is the mean of 1, 2 and 3?"}]

NAME_ERR = "v = [1, 2, 3]\nprint(sum(v) / len(w))"
FIXED = "v = [1, 2, 3]\nprint(sum(v) / len(v))"
DIV0 = "x = 1/0"
OTHER = "print(sum(range(10)))"
TOOLS = {
    NAME_ERR: ToolResult("error", "NameError: name 'w' is not defined", "NameError"),
    FIXED: ToolResult("ok", "2.0"),
    DIV0: ToolResult("error", "ZeroDivisionError: division by zero", "ZeroDivisionError"),
    OTHER: ToolResult("ok", "45"),
}


def say(reasoning: str, code: str | None = None) -> str:
    return reasoning + (chat.hermes_call_text(code) if code is not None else "")


def rollout(tok, script, cfg=RolloutConfig(), tools=TOOLS):
    engine = ScriptedEngine(tok, {"q/0": list(script)})
    runner = ScriptedTools(tools)
    [episode] = make_episodes(tok, [("q", MESSAGES)], 1, cfg, seed=0)
    [traj] = asyncio.run(run_batched(engine, runner, [episode], SamplingParams()))
    turns = [chat.split_turn(tok, o.ids, o.logprobs, HERMES) for o in engine.outputs]
    obs = {code: chat.observation_span(tok, HERMES, r.output) for code, r in tools.items()}
    return traj, turns, obs, engine, runner


def test_success_at_first_try(tok, expect):
    traj, t, obs, engine, runner = rollout(tok, [say("Mean.\n", FIXED), "\\boxed{2}"])
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[0].call, ORIG), (t[0].stop, ORIG), (obs[FIXED], OBS),
                  (t[1].reasoning, ORIG), (t[1].stop, ORIG)])
    assert traj.text == chat.render_prompt(MESSAGES) + say("Mean.\n", FIXED) + "<|im_end|>" + \
        HERMES.observation_text("2.0") + "\\boxed{2}<|im_end|>"
    assert traj.meta["finish_reason"] == "answer"
    assert (runner.calls, runner.closed) == ([("q/0", FIXED)], ["q/0"])


def test_one_shallow_repair_and_the_contexts_seen(tok, expect):
    traj, t, obs, engine, _ = rollout(tok, [say("Mean.\n", NAME_ERR), say("Typo.\n", FIXED), "\\boxed{2}"])
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[1].call, SHALLOW), (t[1].stop, SHALLOW),
                  (obs[FIXED], OBS), (t[2].reasoning, ORIG), (t[2].stop, ORIG)])
    first, retry, after = (r.context for r in engine.requests)
    assert first == traj.prompt.ids
    assert retry == first + engine.outputs[0].ids + obs[NAME_ERR].ids  # the lookahead sees the error
    assert after == tuple(traj.ids[: len(after)])  # ... the next turn sees only the purified history
    assert (traj.stats["rollbacks_recovered"], traj.stats["splices_shallow"], traj.stats["final_failures"]) == (1, 1, 0)
    assert traj.meta["timing"]["retry_tokens"] == len(engine.outputs[1].ids)


def test_one_deep_repair(tok, expect):
    traj, t, obs, _, _ = rollout(tok, [say("Divide.\n", DIV0), say("Sum instead.\n", OTHER), "\\boxed{45}"])
    expect(traj, [(traj.prompt, PROMPT), (t[1].reasoning, DEEP), (t[1].call, DEEP), (t[1].stop, DEEP),
                  (obs[OTHER], OBS), (t[2].reasoning, ORIG), (t[2].stop, ORIG)])


def test_k_exhausted_keeps_the_last_failure(tok, expect):
    script = [say("Divide.\n", DIV0), say("Again.\n", DIV0), say("Once more.\n", DIV0), "\\boxed{0}"]
    traj, t, obs, _, runner = rollout(tok, script, RolloutConfig(saar=SaarConfig(max_retries=2)))
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[2].call, SHALLOW), (t[2].stop, SHALLOW),
                  (obs[DIV0], OBS), (t[3].reasoning, ORIG), (t[3].stop, ORIG)])
    assert len(runner.calls) == 3  # every attempt ran once, none twice
    s = traj.stats
    assert (s["rollbacks_exhausted"], s["lookahead_calls"], s["final_failures"]) == (1, 2, 1)


def test_errors_at_two_turns(tok, expect):
    script = [say("Mean.\n", NAME_ERR), say("Typo.\n", FIXED), say("Now divide.\n", DIV0),
              say("Sum instead.\n", OTHER), "\\boxed{45}"]
    traj, t, obs, _, _ = rollout(tok, script)
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[1].call, SHALLOW), (t[1].stop, SHALLOW),
                  (obs[FIXED], OBS), (t[3].reasoning, DEEP), (t[3].call, DEEP), (t[3].stop, DEEP), (obs[OTHER], OBS),
                  (t[4].reasoning, ORIG), (t[4].stop, ORIG)])
    assert traj.stats["rollbacks_triggered_by_class"] == {"NameError": 1, "ZeroDivisionError": 1}


def test_malformed_call_is_answered_without_execution(tok, expect):
    bad = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "x = 1/0"}\n</tool_call>'
    traj, t, obs, engine, runner = rollout(tok, ["Divide.\n" + bad, say("Sum.\n", OTHER), "\\boxed{45}"])
    expect(traj, [(traj.prompt, PROMPT), (t[1].reasoning, DEEP), (t[1].call, DEEP), (t[1].stop, DEEP),
                  (obs[OTHER], OBS), (t[2].reasoning, ORIG), (t[2].stop, ORIG)])
    assert runner.calls == [("q/0", OTHER)]
    error = HERMES.parse(bad).error
    assert engine.requests[1].context[-len(chat.observation_span(tok, HERMES, error).ids):] == \
        chat.observation_span(tok, HERMES, error).ids  # the model was shown the parser's message
    assert traj.stats["rollbacks_triggered_by_class"] == {"malformed": 1}


def test_unterminated_retry_is_abandoned_not_spliced(tok, expect):
    """Online, a retry that closes its turn inside its call is answered with the parser's error but never run: the
    executed failure stays, the retry follows it as an ordinary turn (and starts its own failure event, which the
    answer abandons). Breakages checked: `saar.executed` without its UNTERMINATED check (the retry's tokens replaced
    the executed call and its error); `Episode.on_tool_result` without its abandoned branch (the retry turn was
    lost)."""
    cut = "Sum instead.\n" + chat.hermes_call_text(OTHER).removesuffix("\n</tool_call>")  # ends inside the call
    traj, t, obs, engine, runner = rollout(tok, [say("Divide.\n", DIV0), cut, "\\boxed{45}"])
    error = chat.observation_span(tok, HERMES, HERMES.parse(cut).error)
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[0].call, ORIG), (t[0].stop, ORIG), (obs[DIV0], OBS),
                  (t[1].reasoning, ORIG), (t[1].call, ORIG), (t[1].stop, ORIG), (error, OBS),
                  (t[2].reasoning, ORIG), (t[2].stop, ORIG)])
    assert runner.calls == [("q/0", DIV0)]  # the cut call never ran
    s = traj.stats
    assert (s["rollbacks_triggered"], s["rollbacks_abandoned"], s["first_attempt_calls"], s["lookahead_calls"],
            s["final_failures"]) == (2, 2, 2, 0, 2)


def test_an_infrastructure_failure_that_persists_in_a_lookahead_ends_the_episode(tok, expect):
    """The runner could not get past an infrastructure failure of a SAAR retry (ScriptedTools: unscripted code):
    the lookahead ends `interrupted`, the failure in place stays with its error, the retry follows it as sampled
    but with no observation, and the episode ends `infra_error`, excluded from the loss. Breakages checked: the
    episode showing the failure as an observation and going on (a third generation); the retry spliced over the
    failure in place, as `saar.step` does for an `interrupted` retry (the DIV0 call gone)."""
    unscripted = "print('no result scripted')"
    traj, t, obs, engine, runner = rollout(tok, [say("Divide.\n", DIV0), say("Print.\n", unscripted), "\\boxed{0}"])
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[0].call, ORIG), (t[0].stop, ORIG), (obs[DIV0], OBS),
                  (t[1].reasoning, ORIG), (t[1].call, ORIG), (t[1].stop, ORIG)])
    assert len(engine.requests) == 2 and traj.meta["finish_reason"] == "infra_error" and excluded_from_loss(traj)
    assert runner.calls == [("q/0", DIV0), ("q/0", unscripted)]
    assert traj.turns[-1].result.status == "infra_error" and traj.turns[-1].observation is None
    s = traj.stats
    assert (s["rollbacks_interrupted"], s["lookahead_calls"], s["infra_failures"], s["final_failures"]) == (1, 1, 1, 1)
    assert (s["infra_excluded_by_cause"], s["infra_retries"]) == ({"unscripted": 1}, 0)


def test_turn_limit_reached_during_lookahead_when_retries_count(tok, expect):
    cfg = RolloutConfig(max_turns=2, retries_count_against_limits=True)
    traj, t, obs, engine, _ = rollout(tok, [say("Divide.\n", DIV0), say("Again.\n", DIV0)], cfg)
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[1].call, SHALLOW), (t[1].stop, SHALLOW),
                  (obs[DIV0], OBS)])
    assert len(engine.requests) == 2 and traj.meta["finish_reason"] == "max_turns"
    assert (traj.stats["rollbacks_cut"], traj.stats["final_failures"]) == (1, 1)


def test_turn_limit_does_not_stop_a_lookahead_by_default(tok, expect):
    traj, t, obs, engine, _ = rollout(tok, [say("Divide.\n", DIV0), say("Again.\n", DIV0), say("Sum.\n", OTHER)],
                                      RolloutConfig(max_turns=1))
    expect(traj, [(traj.prompt, PROMPT), (t[2].reasoning, DEEP), (t[2].call, DEEP), (t[2].stop, DEEP),
                  (obs[OTHER], OBS)])
    assert traj.meta["finish_reason"] == "max_turns" and traj.stats["rollbacks_recovered"] == 1


def test_response_budget_hit_during_lookahead(tok, expect):
    first = len(tok.encode(say("Divide.\n", DIV0), add_special_tokens=False)) + 1
    budget = first + len(chat.observation_span(tok, HERMES, TOOLS[DIV0].output)) + 5
    traj, t, obs, engine, _ = rollout(tok, [say("Divide.\n", DIV0), say("Sum instead of dividing.\n", OTHER)],
                                      RolloutConfig(max_response_tokens=budget))
    assert engine.requests[1].max_new_tokens == 5  # the budget left after the history and the turn in place
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[0].call, ORIG), (t[0].stop, ORIG), (obs[DIV0], OBS),
                  (t[1].reasoning, ORIG)])  # the cut retry follows the failure as an ordinary (unfinished) turn
    assert len(traj.ids) - len(traj.prompt) == budget
    assert traj.meta["finish_reason"] == "length"
    assert (traj.stats["rollbacks_abandoned"], traj.stats["final_failures"]) == (1, 1)


def test_retry_tokens_count_against_the_budget_when_asked(tok):
    first = len(tok.encode(say("Divide.\n", DIV0), add_special_tokens=False)) + 1
    budget = 2 * (first + len(chat.observation_span(tok, HERMES, TOOLS[DIV0].output)))
    script = [say("Divide.\n", DIV0), say("Divide.\n", DIV0), say("Divide.\n", DIV0), "\\boxed{0}"]
    cfg = RolloutConfig(max_response_tokens=budget, retries_count_against_limits=True)
    traj, _, _, engine, _ = rollout(tok, script, cfg)
    # the retry may use what the turn in place leaves; after it, the discarded attempt uses up the rest
    assert [r.max_new_tokens for r in engine.requests] == [budget, budget // 2]
    assert traj.meta["finish_reason"] == "length"
    assert traj.stats["rollbacks_cut"] == 1


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="max_turns"):
        RolloutConfig(max_turns=0)
    with pytest.raises(ValueError, match="unknown chat format"):
        RolloutConfig(format="xml")


def test_saar_off_commits_failures(tok, expect):
    engine = ScriptedEngine(tok, {"q/0": [say("Divide.\n", DIV0), say("Sum.\n", OTHER), "\\boxed{45}"]})
    [episode] = make_episodes(tok, [("q", MESSAGES)], 1, RolloutConfig(saar=SaarConfig(enabled=False)), seed=0)
    [traj] = asyncio.run(run_batched(engine, ScriptedTools(TOOLS), [episode], SamplingParams()))
    t = [chat.split_turn(tok, o.ids, o.logprobs, HERMES) for o in engine.outputs]
    o = {c: chat.observation_span(tok, HERMES, r.output) for c, r in TOOLS.items()}
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[0].call, ORIG), (t[0].stop, ORIG), (o[DIV0], OBS),
                  (t[1].reasoning, ORIG), (t[1].call, ORIG), (t[1].stop, ORIG), (o[OTHER], OBS),
                  (t[2].reasoning, ORIG), (t[2].stop, ORIG)])
    assert (traj.stats["saar_applied"], traj.stats["first_attempt_failures"], traj.stats["final_failures"]) == (False, 1, 1)


def test_tool_output_is_truncated_in_the_middle(tok):
    long = ToolResult("ok", "A" * 300 + "END")
    traj, *_ = rollout(tok, [say("Go.\n", OTHER), "\\boxed{1}"], RolloutConfig(max_tool_response_chars=60),
                       {OTHER: long})
    # 60 = 19 head + 23 marker + 18 tail; 303 - 37 kept = 266 cut
    assert traj.turns[0].result.output == "A" * 19 + "\n...[266 chars cut]...\n" + "A" * 15 + "END"


def test_episode_refuses_an_out_of_order_answer(tok):
    e = Episode("x", chat.prompt_span(tok, MESSAGES), tok, RolloutConfig())
    with pytest.raises(AssertionError, match="no call waiting"):
        e.on_tool_result(ToolAnswer(ToolResult("ok", "1")))


def test_a_tool_output_that_does_not_fit_is_cut_and_the_episode_ends(tok, expect):
    first = len(tok.encode(say("Mean.\n", FIXED), add_special_tokens=False)) + 1
    traj, t, obs, engine, _ = rollout(tok, [say("Mean.\n", FIXED), "\\boxed{2}"],
                                      RolloutConfig(max_response_tokens=first + 4))
    kept = obs[FIXED].__class__(OBS, obs[FIXED].ids[:4], chat.decode(tok, obs[FIXED].ids[:4]))
    expect(traj, [(traj.prompt, PROMPT), (t[0].reasoning, ORIG), (t[0].call, ORIG), (t[0].stop, ORIG), (kept, OBS)])
    assert len(traj.ids) - len(traj.prompt) == first + 4 and len(engine.requests) == 1
    assert traj.meta["finish_reason"] == "length" and traj.turns[0].result.output == "2.0"


def test_the_episode_honours_p_per_trajectory(tok):
    """p = 0.5: a trajectory rolls back its failure exactly when its seeded draw says so, and both happen (the
    deliberate bug of ignoring p in the episode, applying SAAR to every trajectory, fails)."""
    cfg = RolloutConfig(saar=SaarConfig(rollback_probability=0.5))
    episodes = make_episodes(tok, [("q", MESSAGES)], 16, cfg, seed=3)
    scripts = {e.id: [say("Divide.\n", DIV0), say("Sum.\n", OTHER), "\\boxed{45}"] for e in episodes}
    trajs = asyncio.run(run_batched(ScriptedEngine(tok, scripts), ScriptedTools(TOOLS), episodes, SamplingParams()))
    draws = [saar.applies_to(cfg.saar, 3, t.id) for t in trajs]
    assert [t.stats["saar_applied"] for t in trajs] == draws
    assert [t.stats["rollbacks_triggered"] for t in trajs] == [int(d) for d in draws]
    assert [t.stats["final_failures"] for t in trajs] == [int(not d) for d in draws]
    assert 0 < sum(draws) < len(draws)
