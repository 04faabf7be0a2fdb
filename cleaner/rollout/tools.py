"""The rollout's tool runner on the isolated sandbox: one session per trajectory."""

from __future__ import annotations

from cleaner.sandbox import SandboxPool, Session
from cleaner.trajectory import ToolResult


class SandboxTools:
    """Runs each trajectory's calls in its own sandbox session, whose state is the replay of its successful cells
    (see `cleaner.sandbox`), so after a SAAR rollback the interpreter state is that of the purified history. The
    episode truncates what the model sees; the result comes back whole."""

    def __init__(self, pool: SandboxPool):
        self.pool = pool
        self._sessions: dict[str, Session] = {}

    async def run(self, session: str, code: str) -> ToolResult:
        if session not in self._sessions:
            self._sessions[session] = self.pool.session()
        result = await self._sessions[session].run(code)
        return result.to_tool_result()  # whole: the episode cuts what the model is shown

    async def close(self, session: str) -> None:
        if session in self._sessions:
            await self._sessions.pop(session).close()
