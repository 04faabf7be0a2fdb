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

Configuration. The YAML entry's extra keys (`rollout`, whose `saar.enabled` is the SAAR switch, and `sandbox`; see
`cleaner.verl_plugin.agent_loop_config`) reach `__init__` as keyword arguments: verl 0.9.1 instantiates each
entry with `hydra.utils.instantiate(config=entry, trainer_config=..., server_manager=..., tokenizer=..., ...)`,
once per trajectory. They arrive as plain values or omegaconf containers; both are read as mappings. verl's
sampling settings (temperature, top_p, top_k, `calculate_log_probs`, validation overrides) come from verl as
`sampling_params`, unchanged.

Training step (`saar.from_step`). SAAR applies from a given training step on (`cleaner.saar.at_step`), so the loop
needs the step: verl 0.9.1's V1 trainer (`trainer.use_v1=true`, its default, which `harness.verl` runs) sets
`global_steps` on each batch it hands the agent loops (`tu.assign_non_tensor_data(batch, "global_steps",
self.global_steps)` in `verl/trainer/ppo/v1/trainer_base.py`, for training, validation and re-issued prompts), and
`AgentLoopWorkerTQ.generate_sequences` (`verl/trainer/ppo/v1/agent_loop_tq.py`) copies every key of the batch into
each prompt's keyword arguments, which `AgentLoopWorker._run_agent_loop` passes to `run()`: so `run()` gets
`global_steps=<int>`. verl counts training steps from 1 (`self.global_steps += 1` before the first), so the 0-based
step is `global_steps - 1`; the validation before training has `global_steps` 0 (SAAR off when from_step > 0), and
one after step g has g (SAAR as for step g). A resumed verl run restores `global_steps` from its checkpoint folder,
so it switches at the same step. verl's legacy worker (`trainer.use_v1=false`,
`verl/experimental/agent_loop/agent_loop.py`) keeps the step in `batch.meta_info["global_steps"]` and passes only
`non_tensor_batch` to `run()`: there, from_step > 0 is refused by `run()` with one line (`rollout_for_step`).
Read in the installed verl 0.9.1 (the version pinned in pyproject.toml), not in another.

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
the pools of the running loop (tests, scripts). Size it with `sandbox.workers`, which applies in each of the node's
`rollout.agent.num_workers` agent-loop workers (`harness.verl` shares the job's CPUs among them).

What verl reads back. verl's own loops copy the server's per-generation `extra_fields` into their output, and its
V1 trainer (the default in 0.9.1) reads `min_global_steps` / `max_global_steps` from every output as ints: they
are kept as verl's `ToolAgentLoop` keeps them (`merge_server_fields`). SAAR's counters go to `extra_fields` and,
since verl's metrics have no place for per-trajectory values, to our rollout log (`log_trajectory`).

Infrastructure failures. Tool calls go through `cleaner.rollout.tools.SandboxTools`, as in the lab: a call is re-run
after an infrastructure failure up to `rollout.infra_retries` times where that is safe, and one that persists ends
the trajectory (`finish_reason` "infra_error"; see `cleaner.rollout.episode`). Such a trajectory reaches verl with
an all-zero `response_mask`, which is what keeps tokens out of verl 0.9.1's loss (read in its source): the legacy
worker's `_postprocess` multiplies our mask into `batch["response_mask"]`, the V1 worker (`AgentLoopWorkerTQ`)
stores it as `loss_mask` too; the actor aggregates every loss term with it (`core_algos.agg_loss`: token-mean divides
by the masked-in tokens, the seq-mean modes leave fully masked sequences out of their count), and GRPO multiplies
the advantages by it. What it does NOT do: verl's GRPO (`compute_grpo_outcome_advantage`) still puts the
trajectory's reward (that of an unfinished answer) into its group's mean and std, which the lab trainer does not
(`cleaner.lab.trainer`), and `algorithm.filter_groups` still sees it; closing that needs an advantage estimator of
our own. A mini-batch of excluded trajectories only would divide by zero tokens in verl (the sandbox was down for
the whole step). Not taken: raising from `run()`, which in V1 fails the prompt's whole group (its samples are
dropped) and fails the step with the legacy worker. The counters (`infra_retries`, `infra_retries_by_cause`,
`infra_excluded_by_cause`) are in `saar_stats`.

Re-scoring. When verl corrects for the rollout/trainer mismatch (`algorithm.rollout_correction`), the spliced
spans' rollout log-probs are re-scored under the purified context through the same server (`ServerScorer`,
`cleaner.rollout.recompute.rescore_spliced`) before the trajectory goes to verl, and the gap is logged.

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
- Log-probs are the server's, each in the context it was sampled in; without rollout correction the spliced tokens
  keep the log-probs they had in the lookahead context, and verl's actor recomputes `old_log_prob` on the final,
  purified sequence (the paper's recompute step).
- Validation runs through the same entry (verl does not tell an agent loop that it is validating), so SAAR at test
  time follows `rollout.saar.enabled` (and `from_step`, at the step verl passes). To validate with SAAR switched
  the other way, the harness evaluates a finished run with its own entry (`test_time_saar`, from_step 0).
- Not supported: multimodal prompts, partial rollouts / fully-async training (no `global_steps` bookkeeping),
  routed-expert replay, rewards computed inside the loop.
- Not verified: no GPU run, no SGLang or vLLM server (whether they keep the stop token in `token_ids`, as the
  episode needs, and SGLang's log-prob convention for re-scoring, are untested). Tests drive verl's legacy
  `AgentLoopWorker` with fake server managers, and verl's whole V1 trainer on the CPU with a transformers server
  (`cluster=verl_cpu`, tests/verl_plugin/test_main_ppo.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput
from verl.experimental.agent_loop.tool_agent_loop import SPEC_DECODE_EXTRA_KEYS

from cleaner import chat
from cleaner.rollout.episode import Done, Episode, Execute, Generate, RolloutConfig
from cleaner.rollout.recompute import first_spliced, logprob_gap, rescore_spliced
from cleaner.rollout.tools import SandboxTools
from cleaner.saar import SaarConfig, at_step
from cleaner.sandbox import SandboxConfig, open_pool
from cleaner.trajectory import Trajectory, excluded_from_loss

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


def rollout_for_step(cfg: RolloutConfig, global_steps: Any) -> RolloutConfig:
    """The rollout config for the trajectory of verl's training step `global_steps` (1-based; None when verl did not
    pass it): SAAR resolved by `cleaner.saar.at_step` at the 0-based step `global_steps - 1` (module docstring)."""
    if global_steps is None and cfg.saar.enabled and cfg.saar.from_step > 0:
        raise ValueError(f"saar.from_step={cfg.saar.from_step} needs the training step, but verl passed no "
                         "global_steps to the agent loop (its legacy worker does not; run verl's V1 trainer, "
                         "trainer.use_v1=true)")
    step = None if global_steps is None else int(global_steps) - 1
    return replace(cfg, saar=at_step(cfg.saar, step))


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


def merge_server_fields(fields: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The server's per-generation `extra_fields` over one trajectory, kept as verl's own `ToolAgentLoop` keeps them:
    the first generation's fields whole (the weights' version `global_steps`, `min_global_steps`,
    `max_global_steps`, ...), then each later generation's `max_global_steps` and the sums of the
    speculative-decoding counters. verl 0.9.1's V1 trainer reads min/max_global_steps of every output as ints
    (`trainer_base._compute_metrics`): without them its first step fails."""
    if not fields:
        return dict(new)
    out = dict(fields)
    if new.get("max_global_steps") is not None:
        out["max_global_steps"] = new["max_global_steps"]
    for key in SPEC_DECODE_EXTRA_KEYS:
        if key in new and key in out:
            out[key] = int(out[key]) + int(new[key])
    return out


class ServerScorer:
    """`cleaner.rollout.recompute.rescore_spliced`'s engine over verl's server manager: the log-probs of a
    trajectory's tokens from `start` on, under its own (purified) context, through the same sticky server that
    sampled it. verl 0.9.1's servers score a prompt with `prompt_logprobs=0` (its SGLang server sets
    `logprob_start_len=0`, so SGLang prefills the whole sequence: the radix cache cannot serve positions whose
    log-probs are asked for). One token is generated and ignored: with `max_tokens=0` SGLang returns one output
    log-prob for no output id, and verl's server logs an ERROR for that mismatch on every call
    (`async_sglang_server.py`, "output_token_logprobs length (1) != output_ids length (0)")."""

    def __init__(self, server_manager: Any, sampling_params: Mapping[str, Any]):
        self.server_manager = server_manager
        self.params = {**sampling_params, "max_tokens": 1, "prompt_logprobs": 0, "logprobs": False}

    async def arescore(self, request_id: str, ids: tuple[int, ...], start: int) -> list[float]:
        out = await self.server_manager.generate(request_id=request_id, prompt_ids=list(ids),
                                                 sampling_params=dict(self.params))
        if "prompt_logprobs" not in (out.extra_fields or {}):
            raise RuntimeError(
                "the rollout server returned no prompt_logprobs, which SAAR's re-scoring of spliced tokens needs: "
                "verl's fully-async and one-step-off-policy trainers rebuild the server's output without them; run "
                "verl.trainer.main_ppo (as harness.train does)")
        rows = out.extra_fields["prompt_logprobs"]  # row k: the log-prob of token k + 1; the last row is a dummy
        assert len(rows) == len(ids), f"{len(rows)} prompt log-prob rows for {len(ids)} tokens"
        return [float(rows[k - 1][0]) for k in range(start, len(ids))]


def to_output(trajectory: Trajectory, generate_s: float, tool_s: float, server_fields: Mapping[str, Any],
              response_logprobs: list[float] | None = None) -> AgentLoopOutput:
    """verl's output from a final trajectory: prompt / response split at the prompt span; ids, mask and log-probs
    are the trajectory's flat arrays (equal lengths by construction), the mask all zero for a trajectory kept out of
    the loss (`excluded_from_loss`); log-probs are the sampled ones (None when the server returned none) unless
    `response_logprobs` (re-scored) replaces them. `extra_fields`: the server's fields (`merge_server_fields`), then
    the keys verl's own loops always set, and ours: SAAR and infrastructure counters, the finish reason, the
    episode's timing and the trajectory id."""
    n = len(trajectory.prompt)
    ids, mask, logprobs = trajectory.ids, trajectory.loss_mask, trajectory.logprobs
    if excluded_from_loss(trajectory):
        mask = [0] * len(ids)
    if response_logprobs is None and logprobs is not None:
        response_logprobs = logprobs[n:]
    assert response_logprobs is None or len(response_logprobs) == len(ids) - n
    return AgentLoopOutput(
        prompt_ids=ids[:n],
        response_ids=ids[n:],
        response_mask=mask[n:],
        response_logprobs=response_logprobs,
        num_turns=num_chat_turns(trajectory),
        metrics=AgentLoopMetrics(generate_sequences=generate_s, tool_calls=tool_s),
        extra_fields={
            **server_fields,
            "turn_scores": [],  # the keys verl's own loops always set, so batches from mixed loops concatenate
            "tool_rewards": [],
            "trajectory_id": trajectory.id,
            "finish_reason": trajectory.meta["finish_reason"],
            "saar_stats": trajectory.stats,
            "rollout_timing": trajectory.meta["timing"],
        },
    )


def rescoring_enabled(trainer_config: Any) -> bool:
    """Whether verl corrects for the rollout/trainer mismatch with the rollout log-probs (importance sampling or
    rejection, `algorithm.rollout_correction`): then the spliced spans' log-probs are re-scored first."""
    correction = trainer_config.algorithm.rollout_correction
    return bool(correction.rollout_is or correction.rollout_rs)


def log_trajectory(record: dict[str, Any]) -> None:
    """Append one trajectory's record to `$CLEANER_ROLLOUT_LOG_DIR/rollouts.<pid>.jsonl` when that folder is set
    (the harness sets it for a run; verl's own metrics have no place for per-trajectory SAAR counters). One file
    per process, so concurrent agent-loop workers never interleave lines."""
    folder = os.environ.get("CLEANER_ROLLOUT_LOG_DIR")
    if folder:
        with open(os.path.join(folder, f"rollouts.{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")


class CleanerAgentLoop(AgentLoopBase):
    """CLEANER's rollout as a verl agent loop (module docstring). `rollout`, `sandbox`: the plain values of a
    `RolloutConfig` (its `saar.enabled` is the SAAR switch: off gives the DAPO-with-tools baseline, failures stay)
    and a `SandboxConfig`."""

    def __init__(self, *args: Any, rollout: Mapping, sandbox: Mapping, **kwargs: Any):
        super().__init__(*args, **kwargs)  # verl also passes `name` and `tools`; AgentLoopBase takes **kwargs
        rollout_cfg, self.sandbox_cfg = loop_settings(rollout, sandbox)
        self.response_length = int(self.rollout_config.response_length)
        self.prompt_length = int(self.rollout_config.prompt_length)
        self.rollout_cfg = replace(rollout_cfg,
                                   max_response_tokens=min(rollout_cfg.max_response_tokens, self.response_length))
        self.stop_id = self.tokenizer.convert_tokens_to_ids(chat.IM_END)
        self.rescore = rescoring_enabled(self.config)

    async def run(self, sampling_params: dict[str, Any], *, raw_prompt: Any, priority: int = 0,
                  **kwargs: Any) -> AgentLoopOutput:
        prompt = chat.prompt_span(self.tokenizer, _prompt_messages(raw_prompt))
        if len(prompt) > self.prompt_length:
            raise ValueError(f"prompt of {len(prompt)} tokens exceeds actor_rollout_ref.rollout.prompt_length="
                             f"{self.prompt_length}; raise it or filter long prompts (data.filter_overlong_prompts)")
        trajectory_id = uuid.uuid4().hex
        step = kwargs.get("global_steps")  # V1 passes the step with each prompt; the legacy worker does not
        rollout_cfg = rollout_for_step(self.rollout_cfg, step)
        episode = Episode(trajectory_id, prompt, self.tokenizer, rollout_cfg, seed=0)
        want_logprobs = bool(sampling_params.get("logprobs"))
        stop = sorted(set(sampling_params.get("stop_token_ids") or []) | {self.stop_id})
        tools = SandboxTools(await sandbox_pool(self.sandbox_cfg), self.rollout_cfg.infra_retries)
        generate_s = tool_s = 0.0
        server_fields: dict[str, Any] = {}
        try:
            while not isinstance(episode.action, Done):
                action = episode.action
                start = time.perf_counter()
                if isinstance(action, Generate):
                    params = {**sampling_params, "max_tokens": action.max_new_tokens, "stop_token_ids": stop}
                    out = await self.server_manager.generate(request_id=trajectory_id, prompt_ids=list(action.context),
                                                             sampling_params=params, priority=int(priority))
                    seconds = time.perf_counter() - start
                    generate_s += seconds
                    server_fields = merge_server_fields(server_fields, out.extra_fields)
                    episode.on_generated(out.token_ids, out.log_probs if want_logprobs else None, seconds)
                else:
                    assert isinstance(action, Execute)
                    # whole output: the episode cuts what the model sees to rollout.max_tool_response_chars
                    answer = await tools.run(trajectory_id, action.code)
                    seconds = time.perf_counter() - start
                    tool_s += seconds
                    episode.on_tool_result(answer, seconds)
        finally:
            await tools.close(trajectory_id)
        trajectory = episode.trajectory()
        rescored, gap = None, None
        if (self.rescore and want_logprobs and not excluded_from_loss(trajectory)
                and first_spliced(trajectory) is not None):
            [rescored] = await rescore_spliced(ServerScorer(self.server_manager, sampling_params), [trajectory])
            gap = logprob_gap(trajectory, rescored)
        output = to_output(trajectory, generate_s, tool_s, server_fields, rescored)
        assert len(output.response_ids) <= self.response_length, "the episode exceeded its token budget"
        log_trajectory({"global_steps": None if step is None else int(step), "uid": kwargs.get("uid"),
                        "saar_active": rollout_cfg.saar.enabled,
                        "split": (kwargs.get("extra_info") or {}).get("split"),
                        "trajectory_id": trajectory_id, "finish_reason": trajectory.meta["finish_reason"],
                        "weights": [server_fields.get("min_global_steps"), server_fields.get("max_global_steps")],
                        "weights_digest": server_fields.get("weights_digest"),
                        "saar_stats": trajectory.stats, "rescore_gap": gap})
        return output
