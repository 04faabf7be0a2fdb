"""Drivers: advance episodes by answering their actions with an engine and a tool runner.

- `run_batched`: for local engines. Each round sends every episode that wants a generation to the engine in one
  batch (all G samples of all prompts at once), then runs every pending tool call concurrently.
- `run_async`: for server engines. One coroutine per episode; the server batches concurrent requests itself.

Both give the same trajectories for the same seeds: sampling is seeded per generation by the episode, and tool
results do not depend on timing. Both are coroutines, so the sandbox pool they use lives in the same event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from cleaner import chat
from cleaner.rollout.engines import Engine, GenRequest, SamplingParams
from cleaner.rollout.episode import Episode, Execute, Generate, RolloutConfig
from cleaner.trajectory import ToolResult, Trajectory


class ToolRunner(Protocol):
    """Runs code in a per-trajectory session. Failures of the runner itself come back as `infra_error` results,
    never as exceptions, so one broken call cannot take a batch down."""

    async def run(self, session: str, code: str) -> ToolResult: ...

    async def close(self, session: str) -> None: ...


class ScriptedTools:
    """Tool results looked up by code, for tests of the state machine; unknown code is an infrastructure error."""

    def __init__(self, results: dict[str, ToolResult]):
        self.results = results
        self.calls: list[tuple[str, str]] = []
        self.closed: list[str] = []

    async def run(self, session: str, code: str) -> ToolResult:
        self.calls.append((session, code))
        return self.results.get(code, ToolResult("infra_error", f"no scripted result for {code!r}"))

    async def close(self, session: str) -> None:
        self.closed.append(session)


def make_episodes(tokenizer: Any, prompts: list[tuple[str, list[dict[str, Any]]]], group_size: int,
                  cfg: RolloutConfig, seed: int, saar_enabled: bool = True) -> list[Episode]:
    """`group_size` episodes per (prompt id, messages), with ids `<prompt id>/<k>`."""
    episodes = []
    for prompt_id, messages in prompts:
        prompt = chat.prompt_span(tokenizer, messages)
        for k in range(group_size):
            episodes.append(Episode(f"{prompt_id}/{k}", prompt, tokenizer, cfg, seed, saar_enabled))
    return episodes


def _request(e: Episode) -> GenRequest:
    assert isinstance(e.action, Generate)
    return GenRequest(e.id, e.action.context, e.action.max_new_tokens, e.action.seed)


async def _run_tool(tools: ToolRunner, e: Episode) -> tuple[ToolResult, float]:
    assert isinstance(e.action, Execute)
    start = time.perf_counter()
    result = await tools.run(e.id, e.action.code)
    return result, time.perf_counter() - start


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
                for e, (result, seconds) in zip(executing, results):
                    e.on_tool_result(result, seconds)
            if not generating and not executing:
                return [e.trajectory() for e in episodes]
    finally:
        await asyncio.gather(*(tools.close(e.id) for e in episodes))


async def run_async(engine: Engine, tools: ToolRunner, episodes: list[Episode], sampling: SamplingParams) -> list[Trajectory]:
    async def one(e: Episode) -> Trajectory:
        try:
            while True:
                if isinstance(e.action, Generate):
                    start = time.perf_counter()
                    out = await engine.agenerate(_request(e), sampling)
                    e.on_generated(out.ids, out.logprobs, time.perf_counter() - start)
                elif isinstance(e.action, Execute):
                    e.on_tool_result(*await _run_tool(tools, e))
                else:
                    return e.trajectory()
        finally:
            await tools.close(e.id)

    return list(await asyncio.gather(*(one(e) for e in episodes)))
