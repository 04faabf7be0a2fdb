"""The SGLang client against fake `/generate` servers on 127.0.0.1: the exact payload, sticky routing per
trajectory, response parsing and errors. A real SGLang server needs a GPU; what that leaves unverified is listed in
the README."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cleaner import chat
from cleaner.rollout.drivers import ScriptedTools, make_episodes, run_batched
from cleaner.rollout.engines import GenRequest, SamplingParams, SGLangEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.trajectory import ToolResult


def sglang(tok, scripts: dict[str, list[str]], drop_logprob: bool = False):
    """A fake `/generate`: each request gets the next scripted text of its trajectory (the part of `rid` before
    '#'), as token ids with log-probs -0.5 (one missing with `drop_logprob`)."""

    def answer(body):
        text = scripts[body["rid"].split("#")[0]].pop(0)
        ids = tok.encode(text, add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
        ids = ids[: body["sampling_params"]["max_new_tokens"]]
        lps = [[-0.5, i, None] for i in ids][: len(ids) - drop_logprob]
        return {"output_ids": ids, "meta_info": {"output_token_logprobs": lps}}

    return answer


@pytest.fixture
def servers(tok, json_server):
    scripts: dict[str, list[str]] = {}
    return scripts, [json_server(sglang(tok, scripts)), json_server(sglang(tok, scripts))]


def test_payload_is_tokens_in_with_logprobs_and_seed(tok, servers):
    scripts, fakes = servers
    scripts["t"] = ["hello"]
    engine = SGLangEngine([fakes[0].url], stop_token_ids=[2])
    out = asyncio.run(engine.agenerate(GenRequest("t", (5, 6, 7), 16, seed=255), SamplingParams(0.8, 0.9, 0)))
    [body] = fakes[0].requests
    assert body == {"rid": "t#ff", "input_ids": [5, 6, 7], "return_logprob": True, "sampling_params": {
        "max_new_tokens": 16, "temperature": 0.8, "top_p": 0.9, "top_k": -1, "stop_token_ids": [2],
        "sampling_seed": 255, "skip_special_tokens": False, "no_stop_trim": True}}
    assert out.ids == tuple(tok.encode("hello", add_special_tokens=False)) + (2,)
    assert out.logprobs == (-0.5,) * len(out.ids)


def test_a_trajectory_sticks_to_one_server_through_a_rollout(tok, servers):
    scripts, fakes = servers
    call = chat.hermes_call_text("print(1)")
    episodes = make_episodes(tok, [(f"p{i}", [{"role": "user", "content": "q"}]) for i in range(8)], 2,
                             RolloutConfig(), seed=0)
    for e in episodes:
        scripts[e.id] = ["Go.\n" + call, "\\boxed{1}"]
    engine = SGLangEngine([f.url for f in fakes], stop_token_ids=[2])
    trajs = asyncio.run(run_batched(engine, ScriptedTools({"print(1)": ToolResult("ok", "1")}), episodes,
                                    SamplingParams()))
    assert all(t.meta["finish_reason"] == "answer" and len(t.turns) == 2 for t in trajs)
    seen = {i: {b["rid"].split("#")[0] for b in f.requests} for i, f in enumerate(fakes)}
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # spread over both, each trajectory on one server
    for f in fakes:
        for b in f.requests:
            assert b["rid"].split("#")[0] in {e.id for e in episodes}
    second_turns = [b for f in fakes for b in f.requests if len(b["input_ids"]) > len(trajs[0].prompt)]
    assert len(second_turns) == 16  # the second turn resends the first as exact token ids
    by_id = {t.id: t for t in trajs}
    for b in second_turns:
        traj = by_id[b["rid"].split("#")[0]]
        assert b["input_ids"] == traj.ids[: len(b["input_ids"])]


def test_sync_generate_works_inside_the_batched_driver(tok, servers):
    scripts, fakes = servers
    episodes = make_episodes(tok, [("p", [{"role": "user", "content": "q"}])], 2, RolloutConfig(), seed=0)
    for e in episodes:
        scripts[e.id] = ["\\boxed{3}"]
    [a, b] = asyncio.run(run_batched(SGLangEngine([fakes[0].url], [2]), ScriptedTools({}), episodes, SamplingParams()))
    assert a.turns[0].reasoning.text == b.turns[0].reasoning.text == "\\boxed{3}"


def test_errors_are_raised_not_hidden(tok, json_server):
    bad = json_server(sglang(tok, {"t": ["x"]}, drop_logprob=True))
    failing = json_server(sglang(tok, {"t": ["x"]}), status=500)
    with pytest.raises(RuntimeError, match="returned 2 tokens but 1 log-probs"):
        asyncio.run(SGLangEngine([bad.url], [2]).agenerate(GenRequest("t", (1,), 8, 0), SamplingParams()))
    with pytest.raises(httpx.HTTPStatusError, match="500"):
        asyncio.run(SGLangEngine([failing.url], [2]).agenerate(GenRequest("t", (1,), 8, 0), SamplingParams()))
    with pytest.raises(ValueError, match="at least one server"):
        SGLangEngine([], [2])
