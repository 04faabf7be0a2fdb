"""`CleanerAgentLoop`: verl 0.9.1's agent-loop interface over CLEANER's rollout (online SAAR, tokens in, tokens out).

verl's own `ToolAgentLoop` only appends tokens, so a rollback that takes a failed call back out of the context
needs its own token buffer. Here that buffer is `cleaner.rollout.episode.Episode` (the same state machine the lab
runs): this class reads its actions and answers them, generations with verl's server manager and tool calls with
the project's sandbox, then hands verl the final, purified trajectory.

    verl AgentLoopWorker -> hydra.utils.instantiate(YAML entry, trainer_config=..., server_manager=..., ...)
      -> CleanerAgentLoop.run(sampling_params, raw_prompt=..., **dataset fields)
           Generate(context, max_new_tokens) -> server_manager.generate(request_id, prompt_ids=context, ...)
           Execute(code)                     -> a sandbox session of this trajectory
           Done                              -> AgentLoopOutput from Episode.trajectory()

Configuration. The YAML entry's extra keys (`rollout`, `sandbox`, `saar_enabled`; see
`cleaner.verl_plugin.agent_loop_config`) reach `__init__` as keyword arguments: verl 0.9.1 instantiates each
entry with `hydra.utils.instantiate(config=entry, trainer_config=..., server_manager=..., tokenizer=..., ...)`,
once per trajectory. They arrive as plain values or omegaconf containers; both are read as mappings. verl's
sampling settings (temperature, top_p, top_k, `calculate_log_probs`, validation overrides) come from verl as
`sampling_params`, unchanged.

Token budget. The final trajectory never exceeds verl's `rollout.response_length`: the episode runs with
`max_response_tokens = min(rollout.max_response_tokens, response_length)`, and the episode guarantees that its
final trajectory fits that budget (a tool output that does not fit is cut and the episode ends `length`). Each
generation asks the server for at most the episode's `max_new_tokens` (`max_tokens` in verl's sampling params;
the server may clamp it further to the model's context, which the episode treats as a length stop). A prompt
longer than `rollout.prompt_length` is an error (verl would left-truncate it, cutting off the system prompt).

Sandbox pool. One pool per (event loop, SandboxConfig) in each worker process, started by the first trajectory
and shared by all trajectories of that loop; one session per trajectory, closed when it ends. Why: verl creates a
new agent-loop instance for every trajectory, so the pool cannot live on the instance; a pool's subprocess pipes
belong to the event loop that started it, and an `AgentLoopWorker` (a Ray actor) runs all its trajectories on one
loop for its whole life. The loop never closes the pool: it lives as long as the worker process (the sandboxes
end with it: bubblewrap's --die-with-parent, and end of input for the supervisor); `close_sandbox_pools()` closes
the pools of the running loop (tests, scripts). Size it with `sandbox.workers`: the default, every CPU, applies in
each of the node's `rollout.agent.num_workers` agent-loop workers.

Departures from the authors' code and the paper, and what this does not do:
- The prompt is rendered by `cleaner.chat.prompt_span` (ChatML, as the lab does), not by the tokenizer's chat
  template through verl's Continuous Token builder: no tool schema is injected and `data.apply_chat_template_kwargs`
  is not applied; the data's system prompt must describe the tool. For Qwen3 and Qwen2.5 with plain text messages
  the two renderings are the same tokens.
- Stop: `<|im_end|>` is added to the server's `stop_token_ids`, as the rollout's turns end there; a generation that
  ends otherwise counts as cut by length.
- Trajectory identity: verl gives `run()` no stable per-trajectory id, so each trajectory gets a fresh uuid4, used
  as the sticky request id (one server, one radix-cache prefix per trajectory) and as the episode id that seeds the
  SAAR draw with probability p. The draw is therefore reproducible only given the ids (logged in `extra_fields`).
  The episode's per-generation seeds are not sent to the server (verl's servers seed sampling themselves).
- Log-probs are the server's, each in the context it was sampled in; the spliced tokens' log-probs were sampled in
  the lookahead context (see `cleaner.rollout.recompute`). verl's actor recomputes `old_log_prob` on the final
  sequence; rollout-IS corrections that use `rollout_log_probs` must stay off or use recomputed values.
- Validation runs through the same entry (verl does not tell an agent loop that it is validating), so SAAR at test
  time follows `saar_enabled`. To validate with SAAR off, give the validation rows another `agent_name` whose entry
  has `saar_enabled: false`.
- Not supported: multimodal prompts, partial rollouts / fully-async training (no `global_steps` bookkeeping),
  routed-expert replay, rewards computed inside the loop.
- Not verified: no GPU run, no SGLang or vLLM server (whether they keep the stop token in `token_ids`, as the
  episode needs, is untested); tests drive verl's `AgentLoopWorker` on CPU with fake server managers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from cleaner import chat
from cleaner.rollout.episode import Done, Episode, Execute, Generate, RolloutConfig
from cleaner.saar import SaarConfig
from cleaner.sandbox import SandboxConfig, open_pool
from cleaner.trajectory import Trajectory

_pools: dict[tuple[asyncio.AbstractEventLoop, SandboxConfig], asyncio.Future] = {}


async def sandbox_pool(config: SandboxConfig):  # -> SandboxPool | RemoteSandboxPool
    """The started pool for `config` in the running event loop (started on first use; see the module docstring).
    Concurrent first callers share one start."""
    key = (asyncio.get_running_loop(), config)
    if key not in _pools:
        _pools[key] = asyncio.ensure_future(open_pool(config).start())
    return await _pools[key]


async def close_sandbox_pools() -> None:
    """Close the pools of the running event loop."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _pools if k[0] is loop]:
        pool = await _pools.pop(key)
        await pool.close()


def _dataclass_from(cls: type, values: Mapping, where: str) -> Any:
    """`cls(**values)`, with one clear message for a key `cls` does not have."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(names)}")
    return cls(**values)


def loop_settings(rollout: Mapping, sandbox: Mapping) -> tuple[RolloutConfig, SandboxConfig]:
    """The rollout and sandbox settings from the YAML entry's plain values (see `agent_loop_config`)."""
    rollout = dict(rollout)
    rollout["saar"] = _dataclass_from(SaarConfig, dict(rollout.get("saar", {})), "agent loop rollout.saar")
    return (_dataclass_from(RolloutConfig, rollout, "agent loop rollout"),
            _dataclass_from(SandboxConfig, dict(sandbox), "agent loop sandbox"))


def _prompt_messages(raw_prompt: Any) -> list[dict[str, str]]:
    messages = [dict(m) for m in raw_prompt]
    for m in messages:
        if not isinstance(m.get("content"), str):
            raise TypeError(f"{__name__}: only text messages are supported; got content "
                             f"{type(m.get('content')).__name__} in a {m.get('role')!r} message")
    return messages


def num_chat_turns(trajectory: Trajectory) -> int:
    """verl's count of chat turns: the prompt, each assistant turn and each tool response (as ToolAgentLoop)."""
    return 1 + len(trajectory.turns) + sum(t.observation is not None for t in trajectory.turns)


def to_output(trajectory: Trajectory, generate_s: float, tool_s: float) -> AgentLoopOutput:
    """verl's output from a final trajectory: prompt / response split at the prompt span; ids, mask and log-probs
    are the trajectory's flat arrays (equal lengths by construction); log-probs are None when the server returned
    none. SAAR counters, the finish reason, the episode's timing and the trajectory id go to `extra_fields`."""
    n = len(trajectory.prompt)
    ids, mask, logprobs = trajectory.ids, trajectory.loss_mask, trajectory.logprobs
    return AgentLoopOutput(
        prompt_ids=ids[:n],
        response_ids=ids[n:],
        response_mask=mask[n:],
        response_logprobs=None if logprobs is None else logprobs[n:],
        num_turns=num_chat_turns(trajectory),
        metrics=AgentLoopMetrics(generate_sequences=generate_s, tool_calls=tool_s),
        extra_fields={
            "turn_scores": [],  # the keys verl's own loops always set, so batches from mixed loops concatenate
            "tool_rewards": [],
            "trajectory_id": trajectory.id,
            "finish_reason": trajectory.meta["finish_reason"],
            "saar_stats": trajectory.stats,
            "rollout_timing": trajectory.meta["timing"],
        },
    )


class CleanerAgentLoop(AgentLoopBase):
    """CLEANER's rollout as a verl agent loop (module docstring). `rollout`, `sandbox`: the plain values of a
    `RolloutConfig` and a `SandboxConfig`; `saar_enabled`: SAAR on for this run (off: the DAPO-with-tools
    baseline, failures stay)."""

    def __init__(self, *args: Any, rollout: Mapping, sandbox: Mapping, saar_enabled: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)  # verl also passes `name` and `tools`; AgentLoopBase takes **kwargs
        rollout_cfg, self.sandbox_cfg = loop_settings(rollout, sandbox)
        self.response_length = int(self.rollout_config.response_length)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.rollout_cfg = replace(rollout_cfg,
                                   max_response_tokens=min(rollout_cfg.max_response_tokens, self.response_length))
        self.saar_enabled = bool(saar_enabled)
        self.stop_id = self.tokenizer.convert_tokens_to_ids(chat.IM_END)

    async def run(self, sampling_params: dict[str, Any], *, raw_prompt: Any, priority: int = 0,
                  **kwargs: Any) -> AgentLoopOutput:
        prompt = chat.prompt_span(self.tokenizer, _prompt_messages(raw_prompt))
        if len(prompt) > self.prompt_length:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds actor_rollout_ref.rollout.prompt_length="
                             f"{self.prompt_length}; raise it or filter long prompts (data.filter_overlong_prompts)")
        trajectory_id = uuid.uuid4().hex
        episode = Episode(trajectory_id, prompt, self.tokenizer, self.rollout_cfg, seed=0,
                          saar_enabled=self.saar_enabled)
        want_logprobs = bool(sampling_params.get("logprobs"))
        stop = sorted(set(sampling_params.get("stop_token_ids") or []) | {self.stop_id})
        pool = await sandbox_pool(self.sandbox_cfg)
        generate_s = tool_s = 0.0
        async with pool.session() as session:
            while not isinstance(episode.action, Done):
                action = episode.action
                start = time.perf_counter()
                if isinstance(action, Generate):
                    params = {**sampling_params, "max_tokens": action.max_new_tokens, "stop_token_ids": stop}
                    out = await self.server_manager.generate(request_id=trajectory_id, prompt_ids=list(action.context),
                                                             sampling_params=params, priority=int(priority))
                    seconds = time.perf_counter() - start
                    generate_s += seconds
                    episode.on_generated(out.token_ids, out.log_probs if want_logprobs else None, seconds)
                else:
                    assert isinstance(action, Execute)
                    result = await session.run(action.code)
                    seconds = time.perf_counter() - start
                    tool_s += seconds
                    # whole output: the episode cuts what the model sees to rollout.max_tool_response_chars
                    episode.on_tool_result(result.to_tool_result(max_chars=sys.maxsize), seconds)
        output = to_output(episode.trajectory(), generate_s, tool_s)
        assert len(output.response_ids) <= self.response_length, "the episode exceeded its token budget"
        return output
