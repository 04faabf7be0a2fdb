"""The driver: advance episodes by answering their actions with an engine and a tool runner.

`run_batched` sends, each round, every episode that wants a generation to the engine in one batch (all G samples of
all prompts at once), then runs every pending tool call concurrently. A local engine pads the batch; the SGLang
client sends its requests concurrently and the servers batch them. Trajectories do not depend on the batching:
sampling is seeded per generation by the episode, and tool results do not depend on timing. verl's agent loop
drives one episode per coroutine itself (`cleaner.verl_plugin.agent_loop`), through the same `Episode`.

    trajectories = await rollout(engine, tokenizer, [("q1", messages)], group_size=8, cfg=RolloutConfig(),
                                 sampling=SamplingParams(temperature=1.0), seed=0, pool=pool)
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from cleaner import chat
from cleaner.rollout.engines import Engine, GenRequest, SamplingParams
from cleaner.rollout.episode import Episode, Execute, Generate, RolloutConfig, ToolAnswer
from cleaner.rollout.tools import SandboxTools
from cleaner.trajectory import ToolResult, Trajectory


class ToolRunner(Protocol):
    """Runs code in a per-trajectory session. Failures of the runner itself come back as `infra_error` results,
    never as exceptions, so one broken call cannot take a batch down; the runner re-runs a call after one where it
    can (`cleaner.rollout.tools`) and says so in its answer."""

    async def run(self, session: str, code: str) -> ToolAnswer: ...

    async def close(self, session: str) -> None: ...


class ScriptedTools:
    """Tool results looked up by code, for tests of the state machine; unknown code is an infrastructure error. Nothing
    is re-run: an infrastructure error persists (cause "unscripted", or "scripted" for one in `results`)."""

    def __init__(self, results: dict[str, ToolResult]):
        self.results = results
        self.calls: list[tuple[str, str]] = []
        self.closed: list[str] = []

    async def run(self, session: str, code: str) -> ToolAnswer:
        self.calls.append((session, code))
        if code not in self.results:
            return ToolAnswer(ToolResult("infra_error", f"no scripted result for {code!r}"), persisted="unscripted")
        result = self.results[code]
        return ToolAnswer(result, persisted="scripted" if result.status == "infra_error" else None)

    async def close(self, session: str) -> None:
        self.closed.append(session)


def make_episodes(tokenizer: Any, prompts: list[tuple[str, list[dict[str, Any]]]], group_size: int,
                  cfg: RolloutConfig, seed: int) -> list[Episode]:
    """`group_size` episodes per (prompt id, messages), with ids `<prompt id>/<k>` and the prompt id as group."""
    episodes = []
    for prompt_id, messages in prompts:
        prompt = chat.prompt_span(tokenizer, messages)
        for k in range(group_size):
            episodes.append(Episode(f"{prompt_id}/{k}", prompt, tokenizer, cfg, seed, group=prompt_id))
    return episodes


def _request(e: Episode) -> GenRequest:
    assert isinstance(e.action, Generate)
    return GenRequest(e.id, e.action.context, e.action.max_new_tokens, e.action.seed)


async def _run_tool(tools: ToolRunner, e: Episode) -> tuple[ToolAnswer, float]:
    assert isinstance(e.action, Execute)
    start = time.perf_counter()
    answer = await tools.run(e.id, e.action.code)
    return answer, time.perf_counter() - start


async def run_batched(engine: Engine, tools: ToolRunner, episodes: list[Episode],
                      sampling: SamplingParams) -> list[Trajectory]:
    try:
        while True:
            generating = [e for e in episodes if isinstance(e.action, Generate)]
            if generating:
                start = time.perf_counter()
                # in a worker thread: an engine may run its own event loop (the SGLang client does)
                outputs = await asyncio.to_thread(engine.generate, [_request(e) for e in generating], sampling)
                seconds = time.perf_counter() - start
                for e, out in zip(generating, outputs):
                    e.on_generated(out.ids, out.logprobs, seconds)
            executing = [e for e in episodes if isinstance(e.action, Execute)]
            if executing:
                results = await asyncio.gather(*(_run_tool(tools, e) for e in executing))
                for e, (answer, seconds) in zip(executing, results):
                    e.on_tool_result(answer, seconds)
            if not generating and not executing:
                return [e.trajectory() for e in episodes]
    finally:
        await asyncio.gather(*(tools.close(e.id) for e in episodes))


async def rollout(engine: Engine, tokenizer: Any, prompts: list[tuple[str, list[dict[str, Any]]]], group_size: int,
                  cfg: RolloutConfig, sampling: SamplingParams, seed: int, pool: Any,
                  batch_trajectories: int = 64) -> list[Trajectory]:
    """`group_size` trajectories per (prompt id, messages), run by the batched driver in chunks of
    `batch_trajectories`, with one sandbox session per trajectory in `pool` (`cleaner.sandbox.open_pool`), a call
    re-run up to `cfg.infra_retries` times after an infrastructure failure (`cleaner.rollout.tools`). SAAR applies
    as `cfg.saar` says: test-time SAAR is the caller's `replace(cfg.saar, enabled=...)`."""
    episodes = make_episodes(tokenizer, prompts, group_size, cfg, seed)
    out: list[Trajectory] = []
    for start in range(0, len(episodes), batch_trajectories):
        tools = SandboxTools(pool, cfg.infra_retries)
        out += await run_batched(engine, tools, episodes[start : start + batch_trajectories], sampling)
    return out
