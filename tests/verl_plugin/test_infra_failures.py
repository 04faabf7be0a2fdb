"""A sandbox that fails for good, inside verl 0.9.1's own agent-loop worker: the trajectory reaches verl with an
all-zero response_mask, and verl's own advantage and policy-loss code give it no weight. The failure is real: a
remote sandbox on a closed port (unreachable), retried as `rollout.infra_retries` says, then left as it is."""

from __future__ import annotations

import socket

import hydra
import numpy as np
import pytest
import torch
from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
from verl.trainer.ppo import core_algos
from verl.workers.config.actor import ActorConfig

from cleaner import chat
from cleaner.sandbox import SandboxConfig
from cleaner.verl_plugin import AGENT_NAME

TOOL_QUESTION, PLAIN_QUESTION = "What is 6 * 7?", "What is 2 + 2?"
SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "logprobs": True}
MODES = ["token-mean", "token-sum", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def unreachable_sandbox() -> SandboxConfig:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed
    return SandboxConfig(backend="remote", remote_url=url, timeout_s=1.0, workers=1)


def scripts() -> dict[str, list[str]]:
    return {TOOL_QUESTION: ["Let me compute.\n" + chat.hermes_call_text("print(6 * 7)"), "\\boxed{42}"],
            PLAIN_QUESTION: ["\\boxed{4}"]}


@pytest.mark.asyncio
async def test_an_excluded_trajectory_has_no_weight_in_verls_loss(tok, make_worker, scripted, batch, sandbox_pools):
    """Two samples of one group through the legacy worker: one answers without the tool, the other's call meets
    the unreachable sandbox. verl's batch holds the second with a zero response_mask; its GRPO advantages are zero,
    and verl's vanilla policy loss, under every aggregation and whatever the advantage, equals the loss of the
    first row alone, with zero gradient on the second. Breakages checked: `to_output` without the exclusion (the
    mask is ones; with the mask's and the advantages' assertions taken out, the token-mean loss differs); the agent
    loop's SandboxTools given 0 re-runs instead of `rollout.infra_retries`."""
    server = scripted(scripts())
    worker = make_worker(server, sandbox=unreachable_sandbox())
    data = await worker.generate_sequences(batch([PLAIN_QUESTION, TOOL_QUESTION]))

    assert data.non_tensor_batch["finish_reason"].tolist() == ["answer", "infra_error"]
    stats = data.non_tensor_batch["saar_stats"][1]
    assert stats["infra_retries_by_cause"] == {"remote_request_failed": 2}  # rollout.infra_retries, default 2
    assert stats["infra_excluded_by_cause"] == {"remote_request_failed": 1}
    assert sum(TOOL_QUESTION in tok.decode(r["prompt_ids"]) for r in server.requests) == 1  # never shown the failure
    mask = data.batch["response_mask"]
    response = data.batch["responses"][1][data.batch["attention_mask"][1, -mask.shape[1]:].bool()]
    assert len(response) > 0 and "SandboxError" not in tok.decode(response.tolist())
    assert mask[0].sum() > 0 and mask[1].sum() == 0

    rewards = torch.zeros(mask.shape)
    rewards[0, 0], rewards[1, 0] = 1.0, -1.0
    advantages, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, np.array(["u", "u"], dtype=object))
    assert advantages[1].abs().sum() == 0 and advantages[0].abs().sum() > 0

    gen = torch.Generator().manual_seed(0)
    old_log_prob = -torch.rand(mask.shape, generator=gen)
    log_prob = (old_log_prob + 0.1 * torch.randn(mask.shape, generator=gen)).requires_grad_(True)
    any_advantage = torch.randn(mask.shape, generator=gen)  # the mask alone must keep the row out
    for mode in MODES:
        config = ActorConfig(strategy="fsdp", rollout_n=2, ppo_micro_batch_size_per_gpu=1, loss_agg_mode=mode)
        both, _ = core_algos.compute_policy_loss_vanilla(old_log_prob, log_prob, any_advantage, mask.float(),
                                                         loss_agg_mode=mode, config=config)
        alone, _ = core_algos.compute_policy_loss_vanilla(old_log_prob[:1], log_prob[:1], any_advantage[:1],
                                                          mask[:1].float(), loss_agg_mode=mode, config=config)
        torch.testing.assert_close(both, alone, rtol=0.0, atol=1e-7, msg=mode)
        (grad,) = torch.autograd.grad(both, log_prob)
        assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0, mode


@pytest.mark.asyncio
async def test_the_output_verls_v1_worker_stores_has_the_zero_mask(tok, make_worker, scripted, sandbox_pools):
    """verl's V1 worker (`AgentLoopWorkerTQ`, its default) stores `AgentLoopOutput.as_dict()` and uses its
    response_mask as the loss mask (`field["loss_mask"] = field["response_mask"]`): it is all zero."""
    worker = make_worker(scripted(scripts()), sandbox=unreachable_sandbox())
    loop = hydra.utils.instantiate(
        config=_agent_loop_registry[AGENT_NAME], trainer_config=DictConfigWrap(config=worker.config),
        server_manager=worker.llm_client, tokenizer=worker.tokenizer, processor=worker.processor,
        hf_model_type=worker.hf_model_type, dataset_cls=worker.dataset_cls,
        data_config=DictConfigWrap(worker.config.data), tools=ToolListWrap(worker.tools))
    out = await loop.run(dict(SAMPLING), raw_prompt=[{"role": "user", "content": TOOL_QUESTION}])
    assert out.extra_fields["finish_reason"] == "infra_error"
    assert len(out.response_ids) > 0 and out.response_mask == [0] * len(out.response_ids)
    assert out.as_dict()["response_mask"].sum() == 0
