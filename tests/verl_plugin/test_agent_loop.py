"""CleanerAgentLoop inside verl 0.9.1's own agent-loop machinery, on CPU: verl's AgentLoopWorker (built from verl's
default config and our YAML) instantiates the loop with hydra, runs it against a fake server manager (scripted
outputs, or the lab's tiny model sampling) and the real sandbox, and post-processes the result into training tensors.
Expected ids, masks and log-probs are written out by hand, token by token."""

from __future__ import annotations

import hydra
import numpy as np
import pytest
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry

from cleaner import chat
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.recompute import score
from cleaner.saar import SaarConfig
from cleaner.verl_plugin import AGENT_NAME
from cleaner.verl_plugin.agent_loop import CleanerAgentLoop, loop_settings

TOL = 1e-4  # float32 on CPU: the sampler's log-probs and a full forward agree to ~1e-6
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}  # verl's

QUESTION = "What is 6 * 7?"
PROMPT_TEXT = "<|im_start|>user\nWhat is 6 * 7?<|im_end|>\n<|im_start|>assistant\n"
CALL_6X7 = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(6 * 7)"}}\n</tool_call>'
OBS_42 = "\n<|im_start|>user\n<tool_response>\n42\n\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
OBS_HEAD = "\n<|im_start|>user\n<tool_response>\n"

X_QUESTION = "Let x = 7. What is x * 6?"
FAILING, FIXED = "print(x * 6)", "x = 7\nprint(x * 6)"
CALL_FIXED = '<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "x = 7\\nprint(x * 6)"}}\n</tool_call>'


def say(reasoning: str, code: str | None = None) -> str:
    return reasoning + (chat.hermes_call_text(code) if code is not None else "")


def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def instantiate(worker) -> CleanerAgentLoop:
    """The agent loop as AgentLoopWorker._run_agent_loop builds it for every trajectory: hydra on the YAML entry."""
    return hydra.utils.instantiate(
        config=_agent_loop_registry[AGENT_NAME], trainer_config=DictConfigWrap(config=worker.config),
        server_manager=worker.llm_client, tokenizer=worker.tokenizer, processor=worker.processor,
        hf_model_type=worker.hf_model_type, dataset_cls=worker.dataset_cls,
        data_config=DictConfigWrap(worker.config.data), tools=ToolListWrap(worker.tools))


def unpadded(data, row: int) -> dict[str, list]:
    """One row of verl's batch without its padding: response ids, mask and log-probs by the attention mask."""
    prompt_width = data.batch["prompts"].shape[1]
    n = int(data.batch["attention_mask"][row, prompt_width:].sum())
    return {"ids": data.batch["responses"][row, :n].tolist(), "mask": data.batch["response_mask"][row, :n].tolist(),
            "logprobs": data.batch["rollout_log_probs"][row, :n].tolist()}


@pytest.mark.asyncio
async def test_output_is_the_trajectory_token_by_token_and_verl_postprocesses_it(tok, make_worker, scripted,
                                                                                  sandbox_pools):
    server = scripted({QUESTION: [say("Let me compute.\n", "print(6 * 7)"), "\\boxed{42}"]})
    worker = make_worker(server, prompt_length=64, response_length=256)
    loop = instantiate(worker)
    assert isinstance(loop, CleanerAgentLoop) and loop.rollout_cfg == RolloutConfig(max_response_tokens=256)
    messages = [{"role": "user", "content": QUESTION}]
    out = await loop.run(dict(SAMPLING), raw_prompt=messages, priority=3, index=0)

    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt = enc(tok, PROMPT_TEXT)
    gen1, gen2 = server.outputs
    assert gen1.token_ids == enc(tok, "Let me compute.\n" + CALL_6X7) + [im_end]
    assert gen2.token_ids == enc(tok, "\\boxed{42}") + [im_end]
    obs = enc(tok, OBS_42)  # the sandbox printed "42\n"
    assert out.prompt_ids == prompt
    assert out.response_ids == gen1.token_ids + obs + gen2.token_ids
    assert out.response_mask == [1] * len(gen1.token_ids) + [0] * len(obs) + [1] * len(gen2.token_ids)
    assert out.response_logprobs == gen1.log_probs + [0.0] * len(obs) + gen2.log_probs
    assert out.num_turns == 4  # prompt, assistant, tool, assistant (verl's count)
    assert out.extra_fields["finish_reason"] == "answer"
    assert out.extra_fields["saar_stats"]["final_calls"] == 1
    assert out.extra_fields["saar_stats"]["rollbacks_triggered"] == 0
    assert out.metrics.tool_calls > 0 and out.metrics.generate_sequences > 0

    # tokens in: each request is the exact token context; one sticky request id for the trajectory
    first, second = server.requests
    assert first["prompt_ids"] == prompt
    assert second["prompt_ids"] == prompt + gen1.token_ids + obs
    assert first["request_id"] == second["request_id"] == out.extra_fields["trajectory_id"]
    assert first["sampling_params"] == {**SAMPLING, "max_tokens": 256, "stop_token_ids": [im_end]}
    assert second["sampling_params"]["max_tokens"] == 256 - len(gen1.token_ids) - len(obs)
    assert first["priority"] == 3

    # verl's own post-processing: padding, masks, positions, log-probs
    internal = await worker._agent_loop_postprocess(out, validate=False, raw_prompt=messages)
    data = worker._postprocess([internal])
    pad = tok.pad_token_id
    n_p, n_r = len(prompt), len(out.response_ids)
    assert data.batch["prompts"][0].tolist() == [pad] * (64 - n_p) + prompt
    assert data.batch["responses"][0].tolist() == out.response_ids + [pad] * (256 - n_r)
    assert data.batch["response_mask"][0].tolist() == out.response_mask + [0] * (256 - n_r)
    attention = [0] * (64 - n_p) + [1] * (n_p + n_r) + [0] * (256 - n_r)
    assert data.batch["attention_mask"][0].tolist() == attention
    assert data.batch["input_ids"][0].tolist() == [pad] * (64 - n_p) + prompt + out.response_ids + [pad] * (256 - n_r)
    last = n_p + n_r - 1  # verl's positions: cumsum(attention) - 1, clipped at 0
    assert data.batch["position_ids"][0].tolist() == [0] * (64 - n_p) + list(range(last + 1)) + [last] * (256 - n_r)
    assert data.batch["rollout_log_probs"][0].tolist() == pytest.approx(out.response_logprobs + [0.0] * (256 - n_r))
    assert data.non_tensor_batch["__num_turns__"].tolist() == [4]
    assert data.non_tensor_batch["finish_reason"].tolist() == ["answer"]
    assert data.non_tensor_batch["raw_prompt"].tolist() == [messages]


@pytest.mark.asyncio
@pytest.mark.parametrize("saar", [True, False])
async def test_a_rolled_back_call_is_replaced_by_its_fix(tok, make_worker, scripted, batch, sandbox_pools, saar):
    server = scripted({X_QUESTION: [say("Compute.\n", FAILING), say("Define x first.\n", FIXED), "\\boxed{42}"]})
    worker = make_worker(server, saar=saar)
    data = await worker.generate_sequences(batch([X_QUESTION]))

    prompt = enc(tok, PROMPT_TEXT.replace(QUESTION, X_QUESTION))
    gen1, gen2, gen3 = (o.token_ids for o in server.outputs)
    lp1, lp2, lp3 = (o.log_probs for o in server.outputs)
    obs = enc(tok, OBS_42)
    lookahead_context = server.requests[1]["prompt_ids"]
    error_obs = lookahead_context[len(prompt) + len(gen1):]  # the real sandbox's NameError, as the model saw it
    assert lookahead_context[: len(prompt) + len(gen1)] == prompt + gen1
    assert "NameError: name 'x' is not defined" in tok.decode(error_obs)
    row = unpadded(data, 0)
    stats = data.non_tensor_batch["saar_stats"][0]

    if saar:  # shallow splice (similarity 0.8 >= 0.5): reasoning of the failed turn, call of the fix
        cut1 = gen1.index(tok.convert_tokens_to_ids("<tool_call>"))
        cut2 = gen2.index(tok.convert_tokens_to_ids("<tool_call>"))
        assert gen1[:cut1] == enc(tok, "Compute.\n")
        assert gen2[cut2:] == enc(tok, CALL_FIXED) + [tok.convert_tokens_to_ids("<|im_end|>")]
        assert row["ids"] == gen1[:cut1] + gen2[cut2:] + obs + gen3
        assert row["mask"] == [1] * cut1 + [1] * (len(gen2) - cut2) + [0] * len(obs) + [1] * len(gen3)
        assert row["logprobs"] == pytest.approx(lp1[:cut1] + lp2[cut2:] + [0.0] * len(obs) + lp3, abs=1e-7)
        text = tok.decode(row["ids"])
        assert "NameError" not in text and "Define x first" not in text and '"print(x * 6)"' not in text
        assert server.requests[2]["prompt_ids"] == prompt + gen1[:cut1] + gen2[cut2:] + obs  # the purified context
        assert stats["rollbacks_triggered"] == stats["rollbacks_recovered"] == stats["splices_shallow"] == 1
        assert stats["rollbacks_triggered_by_class"] == {"NameError": 1}
        assert stats["final_failures"] == 0 and stats["lookahead_calls"] == 1
        assert stats["tokens_removed"] == len(gen1) - cut1 + len(error_obs) + cut2
    else:  # the baseline: the failure and its error stay, the fix follows as the next turn
        assert row["ids"] == gen1 + error_obs + gen2 + obs + gen3
        assert row["mask"] == ([1] * len(gen1) + [0] * len(error_obs) + [1] * len(gen2) + [0] * len(obs)
                               + [1] * len(gen3))
        assert row["logprobs"] == pytest.approx(lp1 + [0.0] * len(error_obs) + lp2 + [0.0] * len(obs) + lp3, abs=1e-7)
        assert stats["saar_applied"] is False and stats["rollbacks_triggered"] == 0
        assert stats["final_failures_by_class"] == {"NameError": 1}
    assert data.non_tensor_batch["finish_reason"].tolist() == ["answer"]
    assert len({r["request_id"] for r in server.requests}) == 1


class VersionBumpingServer:
    """The scripted server whose weights version rises by one after every generation (as in verl's asynchronous
    training, where weights change during a trajectory)."""

    def __init__(self, server, first_version: int):
        self.server = server
        server.weights_version = first_version

    async def generate(self, request_id, **kwargs):
        out = await self.server.generate(request_id, **kwargs)
        self.server.weights_version += 1
        return out


@pytest.mark.asyncio
async def test_the_weights_versions_reach_verls_trainers(tok, make_worker, scripted, batch, sandbox_pools):
    """verl 0.9.1's V1 trainer (its default) tags every output with min/max_global_steps from `extra_fields` and
    reads them as ints (`AgentLoopWorkerTQ._agent_loop_postprocess`, `trainer_base._compute_metrics`); without them
    its first step fails with a TypeError. Kept as verl's ToolAgentLoop keeps them: the first generation's fields,
    the last generation's max. Breakages checked: output fields without the server's (the step-1 crash), the max
    kept from the first generation. The V1 worker itself runs in test_main_ppo (slow)."""
    server = scripted({QUESTION: [say("Let me compute.\n", "print(6 * 7)"), "\\boxed{42}"]})
    worker = make_worker(VersionBumpingServer(server, first_version=3))
    loop = instantiate(worker)
    out = await loop.run(dict(SAMPLING), raw_prompt=[{"role": "user", "content": QUESTION}])
    assert [out.extra_fields[k] for k in ("global_steps", "min_global_steps", "max_global_steps")] == [3, 3, 4]
    tags = [{"min_global_steps": out.extra_fields.get("min_global_steps"),
             "max_global_steps": out.extra_fields.get("max_global_steps")}]  # as AgentLoopWorkerTQ writes them
    assert np.array([t["max_global_steps"] for t in tags], dtype=int) - np.array(  # as the V1 trainer reads them
        [t["min_global_steps"] for t in tags], dtype=int) + 1 == [2]  # trajectory_spans: two weight versions
    server.scripts[QUESTION] = [say("Let me compute.\n", "print(6 * 7)"), "\\boxed{42}"]
    data = await worker.generate_sequences(batch([QUESTION]))  # the legacy worker: non-tensor columns
    assert (data.non_tensor_batch["min_global_steps"].tolist(), data.non_tensor_batch["max_global_steps"].tolist()) == (
        [5], [6])


@pytest.mark.asyncio
async def test_the_trajectory_never_exceeds_verls_response_length(tok, make_worker, scripted, batch, sandbox_pools):
    """A per-turn cap above verl's response_length: the server is asked for at most response_length tokens, and a
    tool output that does not fit is cut so the response is exactly response_length long."""
    server = scripted({QUESTION: [say("Print.\n", 'print("7" * 300)')]})
    worker = make_worker(server, rollout=RolloutConfig(max_tokens_per_turn=1000), response_length=48)
    data = await worker.generate_sequences(batch([QUESTION]))

    [request] = server.requests  # the cut observation ends the episode: no second generation
    assert request["sampling_params"]["max_tokens"] == 48
    [gen] = [o.token_ids for o in server.outputs]
    row = unpadded(data, 0)
    assert len(row["ids"]) == 48 and data.batch["responses"].shape[1] == 48
    assert row["ids"] == gen + enc(tok, OBS_HEAD + "7" * 100)[: 48 - len(gen)]  # one token per digit
    assert row["mask"] == [1] * len(gen) + [0] * (48 - len(gen))
    assert data.non_tensor_batch["finish_reason"].tolist() == ["length"]


@pytest.mark.asyncio
async def test_tiny_model_rollouts_are_tokens_in_tokens_out(tok, tiny_model, make_worker, model_server, batch,
                                                            sandbox_pools):
    """The lab's tiny model samples through verl's worker: 2 prompts x 2 samples. Budget: our 24-token limit
    under verl's 32. Each sampled token's log-prob is the model's in the final sequence, which holds only if every
    request's context was the exact token prefix (no re-tokenisation)."""
    questions = ["What is 12 * 12?", "Sum 1..10?"]
    worker = make_worker(model_server, rollout=RolloutConfig(max_response_tokens=24), response_length=32)
    data = await worker.generate_sequences(batch(questions, repeat=2))

    assert data.batch["responses"].shape == (4, 32) and data.batch["prompts"].shape == (4, 64)
    ids = data.non_tensor_batch["trajectory_id"].tolist()
    assert len(set(ids)) == 4
    assert {r["request_id"] for r in model_server.requests} == set(ids)
    for row, trajectory_id in enumerate(ids):
        prompt = enc(tok, PROMPT_TEXT.replace(QUESTION, questions[row // 2]))
        requests = [r for r in model_server.requests if r["request_id"] == trajectory_id]
        assert requests[0]["prompt_ids"] == prompt and requests[0]["sampling_params"]["max_tokens"] == 24
        assert all(r["prompt_ids"][: len(prompt)] == prompt for r in requests)
        got = unpadded(data, row)
        # with these seeds the random model never stops within 24 tokens, and no lookahead ran, so every sampled
        # token was sampled in the context it stands in
        assert len(got["ids"]) == 24 and data.non_tensor_batch["finish_reason"][row] == "length"
        assert data.non_tensor_batch["saar_stats"][row]["lookahead_calls"] == 0
        expected = score(tiny_model, prompt, got["ids"])
        sampled = [i for i, m in enumerate(got["mask"]) if m]
        assert len(sampled) > 0
        assert [got["logprobs"][i] for i in sampled] == pytest.approx([expected[i] for i in sampled], abs=TOL)


FAIL_THEN_FIX = [say("Compute.\n", FAILING), say("Define x first.\n", FIXED), "\\boxed{42}"]


def saar_outcome(stats: dict) -> tuple[bool, int, int]:
    return stats["saar_applied"], stats["rollbacks_triggered"], stats["final_failures"]


@pytest.mark.asyncio
async def test_from_step_applies_saar_from_verls_global_step(make_worker, scripted, batch, sandbox_pools):
    """saar.from_step=2 (0-based): verl's training steps count from 1 and each prompt's `global_steps` reaches
    run() as a keyword (the V1 worker copies the batch's keys into each prompt; module docstring). Steps 1 and 2
    (0-based 0, 1 < from_step) are the baseline: the failure stays, no rollback; step 3 (0-based 2 >= from_step)
    and later have SAAR. Run as verl's worker builds and runs the loop, and through the legacy worker's
    generate_sequences with `global_steps` as a per-sample column (how its keywords reach run()). Breakages
    caught: the episode given the loop's config unresolved (SAAR at every step); the step taken as 0-based
    (`int(global_steps)`, SAAR from verl's step 2); `>` for `>=` in `saar.active` (step 3 stays the baseline)."""
    server = scripted({X_QUESTION: FAIL_THEN_FIX * 6})
    worker = make_worker(server, rollout=RolloutConfig(saar=SaarConfig(from_step=2)))
    messages = [{"role": "user", "content": X_QUESTION}]
    got = {}
    for step in (1, 2, 3, 4):
        out = await instantiate(worker).run(dict(SAMPLING), raw_prompt=messages, global_steps=step)
        got[step] = saar_outcome(out.extra_fields["saar_stats"])
    assert got == {1: (False, 0, 1), 2: (False, 0, 1), 3: (True, 1, 0), 4: (True, 1, 0)}
    for step, expected in ((2, (False, 0, 1)), (3, (True, 1, 0))):
        data = batch([X_QUESTION])
        data.non_tensor_batch["global_steps"] = np.array([step])
        out = await worker.generate_sequences(data)
        assert saar_outcome(out.non_tensor_batch["saar_stats"][0]) == expected


@pytest.mark.asyncio
async def test_from_step_without_verls_global_step_is_refused(make_worker, scripted, batch, sandbox_pools):
    """verl's legacy worker keeps the step in `meta_info` and never passes it to run(): with from_step > 0 the loop
    refuses in one line rather than applying SAAR at every step; from_step 0 and SAAR off need no step. Breakages
    caught: the loop's own check removed (`saar.active`'s generic message, which does not say what verl lacks);
    that check and `saar.active`'s both removed (no error, SAAR at every step)."""
    messages = [{"role": "user", "content": X_QUESTION}]
    worker = make_worker(scripted({X_QUESTION: FAIL_THEN_FIX}), rollout=RolloutConfig(saar=SaarConfig(from_step=2)))
    with pytest.raises(ValueError, match=r"^saar.from_step=2 needs the training step, but verl passed no "
                                         r"global_steps to the agent loop"):
        await worker.generate_sequences(batch([X_QUESTION]))  # meta_info["global_steps"] = 1, no column
    for saar, from_step, expected in ((True, 0, (True, 1, 0)), (False, 2, (False, 0, 1))):
        worker = make_worker(scripted({X_QUESTION: FAIL_THEN_FIX}), saar=saar,
                             rollout=RolloutConfig(saar=SaarConfig(from_step=from_step)))
        out = await instantiate(worker).run(dict(SAMPLING), raw_prompt=messages)
        assert saar_outcome(out.extra_fields["saar_stats"]) == expected


def test_loop_settings_read_the_yaml_values_and_name_a_bad_key():
    rollout, sandbox = loop_settings({"max_turns": 4, "saar": {"gamma": 0.7}}, {"timeout_s": 2.0, "workers": 1})
    assert rollout.max_turns == 4 and rollout.saar.gamma == 0.7 and rollout.saar.max_retries == 3
    assert sandbox.timeout_s == 2.0 and sandbox.workers == 1
    with pytest.raises(ValueError, match="unknown key.*max_turn\\b.*valid: .*max_turns"):
        loop_settings({"max_turn": 4}, {})
    with pytest.raises(ValueError, match="rollout.saar: unknown key.*K"):
        loop_settings({"saar": {"K": 2}}, {})


@pytest.mark.asyncio
async def test_bad_prompts_are_errors(make_worker, scripted, sandbox_pools):
    loop = instantiate(make_worker(scripted({}), prompt_length=8))
    with pytest.raises(ValueError, match="prompt of 1[0-9] tokens exceeds .*prompt_length=8"):
        await loop.run(dict(SAMPLING), raw_prompt=[{"role": "user", "content": QUESTION}])
    image = [{"type": "image"}, {"type": "text", "text": QUESTION}]
    with pytest.raises(TypeError, match="only text messages are supported; got content list in a 'user' message"):
        await loop.run(dict(SAMPLING), raw_prompt=[{"role": "user", "content": image}])


@pytest.mark.asyncio
async def test_without_calculate_log_probs_there_are_none(make_worker, scripted, sandbox_pools):
    """verl's `rollout.calculate_log_probs=False` sends `logprobs: False`; the loop then hands verl no log-probs
    (whatever the server returned), and verl's batch has no `rollout_log_probs`."""
    worker = make_worker(scripted({QUESTION: ["\\boxed{42}"]}))
    messages = [{"role": "user", "content": QUESTION}]
    out = await instantiate(worker).run({**SAMPLING, "logprobs": False}, raw_prompt=messages)
    assert out.response_logprobs is None and out.response_mask == [1] * len(out.response_ids)
    internal = await worker._agent_loop_postprocess(out, validate=False, raw_prompt=messages)
    assert set(worker._postprocess([internal]).batch.keys()) == {
        "prompts", "responses", "response_mask", "input_ids", "attention_mask", "position_ids"}


class ScoringServer:
    """verl's server manager answering a re-scoring request in the layout verl 0.9.1's SGLang server gives
    `extra_fields["prompt_logprobs"]` (`_extract_prompt_logprobs_sglang`, which needs sglang to import): one row per
    position from the second on, then a dummy row; here token k's log-prob is -k/10. `drop` leaves the field out, as
    the clients of verl's async trainers do."""

    def __init__(self, drop: bool = False):
        self.requests: list[dict] = []
        self.drop = drop

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        from verl.workers.rollout.replica import TokenOutput

        self.requests.append(dict(sampling_params))
        rows = [[-k / 10] for k in range(1, len(prompt_ids))] + [[0.0]]
        return TokenOutput(token_ids=[7], log_probs=[-0.5], extra_fields={} if self.drop else {"prompt_logprobs": rows})


@pytest.mark.asyncio
async def test_rescoring_asks_for_one_token_and_reads_the_prompts_log_probs():
    """Token k's log-prob is row k - 1 of verl's layout (here -k/10, hand-set): positions 3..5 of a 6-token
    sequence are -0.3, -0.4, -0.5. One token is asked for, not 0: verl's SGLang server logs an ERROR for every
    max_tokens=0 request (a phantom output log-prob). Checked red: rows read without the shift; max_tokens=0."""
    from cleaner.verl_plugin.agent_loop import ServerScorer

    server = ScoringServer()
    scorer = ServerScorer(server, {"temperature": 1.0, "logprobs": True})
    assert await scorer.arescore("r", (11, 12, 13, 14, 15, 16), 3) == pytest.approx([-0.3, -0.4, -0.5])
    assert server.requests == [{"temperature": 1.0, "logprobs": False, "max_tokens": 1, "prompt_logprobs": 0}]


@pytest.mark.asyncio
async def test_a_server_output_without_prompt_log_probs_is_one_clear_error():
    """verl's fully-async and one-step-off trainers rebuild the server's output without `extra_fields`: a KeyError
    deep in the rollout before; now one line naming the cause and the trainer that works."""
    from cleaner.verl_plugin.agent_loop import ServerScorer

    with pytest.raises(RuntimeError, match=r"returned no prompt_logprobs.*run verl\.trainer\.main_ppo"):
        await ServerScorer(ScoringServer(drop=True), {}).arescore("r", (1, 2, 3), 1)
