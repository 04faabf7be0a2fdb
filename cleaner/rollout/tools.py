"""The rollout's tool runner on the isolated sandbox: one session per trajectory, and what it does when the sandbox
itself fails.

An infrastructure failure (`infra_error`: the sandbox died, stopped answering, could not start, a remote server
failed or could not be reached) is not the model's doing, so the runner re-runs the call, up to `infra_retries`
times, where a re-run gives the call the same state it would have had:
- a remote session (SandboxFusion): always; the server is stateless and every request replays the session's
  successful cells, so the re-run starts from the same state (what a cell did outside its own process, where the
  server allows that, may happen twice);
- a local session whose state survived (`Session.state_lost` is False): in the same session (the call did not run:
  its session could not be opened, its sandbox could not be restarted);
- a local session whose state was lost (its sandbox died, during this call or another one on the same worker)
  before it held any successful cell: in a fresh session, whose empty state is the one it lost. What the failed run
  did died with its sandbox (bubblewrap: the worker's private /tmp); with `backend="rlimit"`, which does not isolate
  the file system, what it wrote outside its scratch directory stays.
It is NOT re-run when the lost state held a successful cell: the local sandbox never replays cells (a replay would
re-execute their side effects), so the purified history's state cannot be had again. Nor when the pool or the
session is closed (nothing would change). The call's last failure is then the answer (`ToolAnswer.persisted`), and
the episode ends there and is kept out of the loss (`cleaner.rollout.episode`).

A re-run is invisible to the model: the episode gets one answer per call, and the failures before it are only
counted, by cause (`INFRA_CAUSES`, from the sandbox's own message). The sandbox itself never runs a call twice; this
is the one place where a call is sent again.
"""

from __future__ import annotations

from cleaner.rollout.episode import ToolAnswer
from cleaner.sandbox import SandboxPool, Session
from cleaner.sandbox.remote import RemoteSandboxPool, RemoteSession

# The sandbox's infrastructure-failure messages (`cleaner.sandbox.pool`, `.remote`): a phrase each holds, and the
# cause it is counted under. The first phrase found decides (order matters); a message with none is "other".
INFRA_CAUSES = (
    ("the sandbox pool is closed", "pool_closed"),
    ("the session is closed", "session_closed"),
    ("the session's state was lost", "session_lost"),  # its worker restarted since the session's last call
    ("could not open a session", "session_open_failed"),
    ("the sandbox could not be restarted", "restart_failed"),
    ("stopped answering", "worker_unresponsive"),  # the pool's backstop time-out, during a call
    ("during the call", "worker_died"),  # the supervisor died during a call
    ("request to the SandboxFusion server failed", "remote_request_failed"),  # unreachable, an HTTP error
    ("the SandboxFusion server failed", "remote_server_error"),  # the server answered SandboxError
)
PERMANENT = frozenset({"pool_closed", "session_closed"})  # causes a re-run cannot get past


def infra_cause(message: str) -> str:
    """The cause an infrastructure failure's message names (see `INFRA_CAUSES`), else "other"."""
    return next((cause for phrase, cause in INFRA_CAUSES if phrase in message), "other")


class SandboxTools:
    """Runs each trajectory's calls in its own sandbox session, whose state is that of its successful cells (see
    `cleaner.sandbox`), so after a SAAR rollback the interpreter state is that of the purified history. The episode
    truncates what the model sees; the result comes back whole. An infrastructure failure is re-run up to
    `infra_retries` times where that is safe (module docstring)."""

    def __init__(self, pool: SandboxPool | RemoteSandboxPool, infra_retries: int):
        if infra_retries < 0:
            raise ValueError(f"infra_retries must be >= 0, got {infra_retries}")
        self.pool = pool
        self.infra_retries = infra_retries
        self._sessions: dict[str, Session | RemoteSession] = {}
        self._kept: dict[str, int] = {}  # successful cells per session: the state a lost session took with it

    async def run(self, session: str, code: str) -> ToolAnswer:
        if session not in self._sessions:
            self._sessions[session], self._kept[session] = self.pool.session(), 0
        retried: list[str] = []
        while True:
            current = self._sessions[session]
            cells_before = current.cells if isinstance(current, Session) else 0
            result = (await current.run(code)).to_tool_result()  # whole: the episode cuts what the model sees
            if result.status != "infra_error":
                self._kept[session] += result.status == "ok"
                return ToolAnswer(result, tuple(retried))
            cause = infra_cause(result.output)
            if len(retried) == self.infra_retries or cause in PERMANENT or not await self._restore(session,
                                                                                                 cells_before):
                return ToolAnswer(result, tuple(retried), persisted=cause)
            retried.append(cause)

    async def _restore(self, session: str, cells_before: int) -> bool:
        """Give `session` back the state it had before the failed call, without re-executing any cell; False
        when that cannot be done (its successful cells were lost)."""
        current = self._sessions[session]
        if isinstance(current, RemoteSession) or not current.state_lost:
            return True
        if self._kept[session]:
            return False
        await current.close()
        fresh = self._sessions[session] = self.pool.session()
        fresh.cells = cells_before  # the re-run is named in tracebacks as the lost call was
        return True

    async def close(self, session: str) -> None:
        if session in self._sessions:
            self._kept.pop(session)
            await self._sessions.pop(session).close()
