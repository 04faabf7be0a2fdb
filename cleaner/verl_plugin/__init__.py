"""The cluster path: CLEANER's rollout and rewards inside verl 0.9.1, through verl's public extension points only.

Two pieces, each named in verl's config:

    actor_rollout_ref.rollout.agent.agent_loop_config_path=<a YAML file holding agent_loop_config(...)>
    data.* rows with agent_name = AGENT_NAME (or actor_rollout_ref.rollout.agent.default_agent_loop=cleaner_agent)
    reward.custom_reward_function.path, .name = reward_function()

- `agent_loop.CleanerAgentLoop`: a verl `AgentLoopBase` that drives `cleaner.rollout.episode.Episode` (online SAAR,
  its own token buffer) with verl's server manager and the project's sandbox. verl instantiates it from the YAML
  entry with hydra; the entry's extra keys (`rollout`, `sandbox`) arrive as constructor keyword
  arguments, which is how verl 0.9.1 passes them (`AgentLoopWorker._run_agent_loop`). It is not also
  `@register`ed under the same name: the YAML entry is the single source of its parameters.
- `reward.compute_score`: `reward.custom_reward_function` (math via math-verify, GPQA letters, LiveCodeBench tests
  in the sandbox). Reward-function keys live under `reward.custom_reward_function.*`; verl 0.9.1 silently ignores
  top-level ones.

No losses or advantages are shipped, and so no `verl.plugins` entry point: verl 0.9.1 already has everything the
paper's recipe needs. GRPO (`algorithm.adv_estimator=grpo`), token-mean aggregation
(`actor_rollout_ref.actor.loss_agg_mode=token-mean`, its default), clip-higher (`actor.clip_ratio_low=0.2`,
`actor.clip_ratio_high=0.28`), dual clip (`actor.clip_ratio_c`; verl's default is 3.0, the lab's 10.0), no KL
(`algorithm.use_kl_in_reward=False`, `actor.use_kl_loss=False`), and DAPO's overlong buffer
(`reward.reward_manager.name=dapo` with `+reward.reward_kwargs.overlong_buffer_cfg.{enable,len,penalty_factor,log}`
and `+reward.reward_kwargs.max_resp_len`). The paper's reward is +1/-1 (`compute_score` returns it as "score").

Loading. verl logs a failed plugin import only at DEBUG, and its `import verl` sets the root logger to WARNING, so
this package announces itself once when it is imported: at INFO on the logger "cleaner.verl_plugin" when that
logger would show INFO, and otherwise as one line on stderr, so that the line is visible by default (Ray forwards a
worker's stderr to the driver). It never prints both.

On a machine without GPUs, `cpu` holds the shims that run verl's own trainer on the CPU (`cluster=verl_cpu`).
Not verified here: no GPU run, no SGLang or vLLM server (tests drive verl's own agent-loop workers and its whole
trainer on the CPU; see tests/verl_plugin).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from cleaner.rollout.episode import RolloutConfig
from cleaner.sandbox.config import SandboxConfig

AGENT_NAME = "cleaner_agent"
AGENT_LOOP_TARGET = "cleaner.verl_plugin.agent_loop.CleanerAgentLoop"
REWARD_FUNCTION_NAME = "compute_score"

logger = logging.getLogger("cleaner.verl_plugin")


def _plain(value: Any) -> Any:
    """`value` as YAML-able values: dataclasses as dicts, tuples as lists (recursively)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def agent_loop_config(rollout: RolloutConfig, sandbox: SandboxConfig) -> list[dict]:
    """The content of the YAML file at `actor_rollout_ref.rollout.agent.agent_loop_config_path`: one entry naming
    the agent loop, with the rollout limits (incl. SAAR's settings; `rollout.saar.enabled` is the SAAR switch) and
    the sandbox settings as plain values. verl's `response_length` caps `rollout.max_response_tokens` (see
    `agent_loop`)."""
    return [{
        "name": AGENT_NAME,
        "_target_": AGENT_LOOP_TARGET,
        "rollout": _plain(rollout),
        "sandbox": _plain(sandbox),
    }]


def reward_function() -> tuple[str, str]:
    """(absolute path of reward.py, function name) for `reward.custom_reward_function.path` / `.name`."""
    return str(Path(__file__).resolve().with_name("reward.py")), REWARD_FUNCTION_NAME


def _announce() -> None:
    message = (f"cleaner.verl_plugin loaded: agent loop {AGENT_NAME!r} ({AGENT_LOOP_TARGET}), reward function "
               f"{REWARD_FUNCTION_NAME} in {reward_function()[0]}")
    if logger.isEnabledFor(logging.INFO):
        logger.info(message)
    else:  # verl leaves the root logger at WARNING: an INFO record would be dropped
        print(message, file=sys.stderr, flush=True)


_announce()

__all__ = ["AGENT_LOOP_TARGET", "AGENT_NAME", "agent_loop_config", "reward_function"]
