"""Infrastructure failures in a rollout, made on purpose: a re-run the model never sees, and a failure that persists
ends the trajectory, kept out of the loss and counted by cause.

The local failures are real: a cell asks the host to kill its sandbox's supervisor (it names its own process
`MARK`; a host-side watcher SIGKILLs the zygote of that worker), the way a crash of the sandbox would happen. That
is an infrastructure failure only where cells cannot signal their supervisor (a uid per cell: bubblewrap as root);
elsewhere the sandbox charges the kill to the code (`SandboxKilled`), by design, and these tests skip. The remote
failures are real too where they can be made deterministically (a closed port: unreachable); a server that fails
once and then answers is a stand-in for SandboxFusion (`json_server`), the one boundary where no real server is
available here.
"""

from __future__ import annotations

import asyncio
import inspect
import shutil
import signal
import socket

import psutil
import pytest

from cleaner import chat
from cleaner.metrics import rollout_metrics
from cleaner.rollout.drivers import make_episodes, run_batched
from cleaner.rollout.engines import SamplingParams, ScriptedEngine
from cleaner.rollout.episode import RolloutConfig
from cleaner.rollout.tools import INFRA_CAUSES, SandboxTools, infra_cause
from cleaner.saar import SaarConfig
from cleaner.sandbox import SandboxConfig, SandboxPool, open_pool, pool as local_pool, remote
from cleaner.trajectory import Provenance, excluded_from_loss

MARK = "cleaner-kill"  # a cell that runs a process of this name asks the host to kill its supervisor
KILL_ME = ("import os, subprocess\n"
           f"if not os.path.lexists('{MARK}'):\n"
           f"    os.symlink('/bin/sleep', '{MARK}')\n"
           f"subprocess.run(['./{MARK}', '1'])\n"
           "print('real output')")
MESSAGES = [{"role": "user", "content": "q"}]


def say(reasoning: str, code: str | None = None) -> str:
    return reasoning + (chat.hermes_call_text(code) if code is not None else "")


class Killer:
    """Host side: watches the pool's processes; the first process named MARK gets its worker's supervisor (the first
    process of the worker's tree that is not bubblewrap) SIGKILLed, once. Counts every marked process it sees, so
    a test knows how many times the cell ran."""

    def __init__(self, pool: SandboxPool):
        self.pool = pool
        self.seen: set[int] = set()
        self.killed: list[int] = []

    async def watch(self) -> None:
        while True:
            for worker in self.pool.worker_pids:
                try:
                    tree = [psutil.Process(worker), *psutil.Process(worker).children(recursive=True)]
                    marked = [p.pid for p in tree if p.name() == MARK]
                except psutil.NoSuchProcess:
                    continue
                self.seen.update(marked)
                if marked and not self.killed:
                    zygote = next(p for p in tree if p.name() != "bwrap")
                    zygote.send_signal(signal.SIGKILL)
                    self.killed.append(zygote.pid)
            await asyncio.sleep(0.005)


def rollout_with_killer(tok, script, cfg):
    """One trajectory of `script` on a real one-worker bubblewrap pool, with a Killer watching."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed here")

    async def main():
        async with SandboxPool(SandboxConfig(timeout_s=5.0, workers=1)) as pool:
            if not pool.uid_isolation:
                pytest.skip("cells share the supervisor's uid here (not root): killing it is charged to the code")
            killer = Killer(pool)
            watcher = asyncio.ensure_future(killer.watch())
            engine = ScriptedEngine(tok, {"q/0": list(script)})
            try:
                [traj] = await run_batched(engine, SandboxTools(pool, cfg.infra_retries),
                                           make_episodes(tok, [("q", MESSAGES)], 1, cfg, seed=0), SamplingParams())
            finally:
                watcher.cancel()
            return traj, engine, killer

    return asyncio.run(main())


def no_failure_text(traj, engine) -> None:
    """Neither the trajectory's tokens nor any context the model was given hold the sandbox's failure text."""
    assert "SandboxError" not in traj.text
    assert all("SandboxError" not in engine.tokenizer.decode(r.context) for r in engine.requests)


def test_a_call_whose_sandbox_died_is_rerun_and_the_model_sees_only_the_real_output(tok):
    """The supervisor dies during the session's first call: its state held no successful cell, so a fresh session
    runs the call again and the model sees the real output. Breakages checked: `SandboxTools.run` without its
    retry loop (the trajectory ended `infra_error`); `_restore` returning False for a lost state with no kept
    cells (the same); `Episode.on_tool_result` not counting `retried` (infra_retries 0)."""
    traj, engine, killer = rollout_with_killer(tok, [say("Run it.\n", KILL_ME), "\\boxed{1}"],
                                               RolloutConfig(infra_retries=2))
    assert len(killer.killed) == 1 and len(killer.seen) == 2  # killed once, and the cell ran once more
    assert traj.meta["finish_reason"] == "answer" and not excluded_from_loss(traj)
    assert (traj.turns[0].result.status, traj.turns[0].result.output) == ("ok", "real output\n")
    obs = chat.observation_span(tok, chat.get_format("hermes"), "real output\n")
    assert engine.requests[1].context[-len(obs):] == obs.ids  # the next turn saw the real output
    no_failure_text(traj, engine)
    s = traj.stats
    assert (s["infra_retries"], s["infra_retries_by_cause"]) == (1, {"worker_died": 1})
    assert s["infra_excluded_by_cause"] == {}
    assert s["infra_failures"] == 0  # the call the model made did not fail


def test_a_rerun_after_failed_cells_only_reads_as_the_lost_call_would_have(tok):
    """Only a failed cell before (SAAR off, so it stays): the lost state held no successful cell, the call runs
    again in a fresh session, and its traceback names it `<cell-2>`, as without the failure. Breakage checked: the
    fresh session without `cells` carried over (`<cell-1>`)."""
    fails_late = KILL_ME.replace("print('real output')", "1 / 0")
    script = [say("Try.\n", "undefined_name"), say("Run it.\n", fails_late), "\\boxed{1}"]
    traj, engine, killer = rollout_with_killer(tok, script, RolloutConfig(infra_retries=1,
                                                                          saar=SaarConfig(enabled=False)))
    assert len(killer.seen) == 2 and traj.meta["finish_reason"] == "answer"
    assert [t.result.error_type for t in traj.turns[:2]] == ["NameError", "ZeroDivisionError"]
    assert 'File "<cell-2>", line 5, in <module>' in traj.turns[1].result.output
    assert traj.stats["infra_retries_by_cause"] == {"worker_died": 1}


def test_with_no_retries_the_failure_persists_and_ends_the_trajectory(tok):
    """`infra_retries=0`: the first failure is the answer. Breakage checked: the runner's bound fixed at 2 (the call
    ran again)."""
    traj, engine, killer = rollout_with_killer(tok, [say("Run it.\n", KILL_ME), "\\boxed{1}"],
                                               RolloutConfig(infra_retries=0))
    assert len(killer.seen) == 1 and len(engine.requests) == 1  # never re-run, and the model never saw the failure
    assert traj.meta["finish_reason"] == "infra_error" and excluded_from_loss(traj)
    assert (traj.stats["infra_retries"], traj.stats["infra_excluded_by_cause"]) == (0, {"worker_died": 1})


def test_a_lost_session_state_is_never_rebuilt_and_the_trajectory_is_excluded(tok):
    """The supervisor dies during the second call, after a successful one: the state (`x`) is gone and the local
    sandbox never replays cells, so the call is not re-run; the episode ends there, the call kept without an
    observation, and the trajectory is excluded. Breakages checked: `_restore` without its kept-cells check (the
    call ran again in a fresh, empty session: seen 2, and NameError charged to the model); `Episode` committing the
    failure as an observation and going on (a third generation, and the failure text in the trajectory)."""
    uses_x = KILL_ME.replace("print('real output')", "print(x + 1)")
    script = [say("Set x.\n", "x = 41"), say("Use it.\n", uses_x), "\\boxed{42}"]
    traj, engine, killer = rollout_with_killer(tok, script, RolloutConfig(infra_retries=2))
    assert len(killer.seen) == 1  # the call ran once
    assert len(engine.requests) == 2 and traj.meta["finish_reason"] == "infra_error" and excluded_from_loss(traj)
    last = traj.turns[-1]
    assert (last.result.status, last.observation) == ("infra_error", None)
    assert [s.provenance for s in last.spans] == [Provenance.ORIGINAL] * 3  # reasoning, call, stop: no observation
    no_failure_text(traj, engine)
    s = traj.stats
    assert (s["infra_retries"], s["infra_excluded_by_cause"]) == (0, {"worker_died": 1})
    metrics = rollout_metrics([traj], [False])
    assert (metrics["infra_excluded_trajectories"], metrics["infra_excluded_by_cause"]) == (1, {"worker_died": 1})
    assert metrics["finish_reasons"] == {"infra_error": 1}


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket is closed


def remote_rollout(tok, url: str, infra_retries: int):
    script = [say("Compute.\n", "print(6 * 7)"), "\\boxed{42}"]
    cfg = RolloutConfig(infra_retries=infra_retries)

    async def main():
        async with open_pool(SandboxConfig(backend="remote", remote_url=url, timeout_s=1.0, workers=1)) as pool:
            engine = ScriptedEngine(tok, {"q/0": script})
            [traj] = await run_batched(engine, SandboxTools(pool, infra_retries),
                                       make_episodes(tok, [("q", MESSAGES)], 1, cfg, seed=0), SamplingParams())
            return traj, engine

    return asyncio.run(main())


def test_an_unreachable_remote_sandbox_is_retried_then_excluded_and_counted(tok):
    """Nothing listens on the port: every request fails, the call is sent 1 + 2 times, and the trajectory is
    excluded and counted. Breakages checked: no retry loop; re-runs not counted by the episode; the metric not
    counting exclusions; the cause table matching the server-error phrase first (a substring of this one)."""
    traj, engine = remote_rollout(tok, closed_port_url(), infra_retries=2)
    assert traj.meta["finish_reason"] == "infra_error" and len(engine.requests) == 1
    s = traj.stats
    assert (s["infra_retries"], s["infra_retries_by_cause"]) == (2, {"remote_request_failed": 2})
    assert s["infra_excluded_by_cause"] == {"remote_request_failed": 1}
    metrics = rollout_metrics([traj, traj], [False, False])
    assert (metrics["infra_retries"], metrics["infra_retries_by_cause"]) == (4, {"remote_request_failed": 4})
    assert metrics["infra_excluded_trajectories"] == 2
    no_failure_text(traj, engine)


def test_a_remote_server_error_once_is_retried_and_the_model_sees_the_answer(tok, json_server):
    """A SandboxFusion server that reports SandboxError on its first request and answers the second (a stand-in:
    no real server here). Every request carries the same program (the session replays nothing yet). Breakage
    checked: no retry loop (the trajectory ended `infra_error`)."""
    answers = [{"status": "SandboxError", "message": "executor pod unavailable", "run_result": None},
               {"status": "Success", "message": "", "run_result": {"status": "Finished", "execution_time": 0.01,
                                                                  "return_code": 0, "stdout": "42\n", "stderr": ""}}]
    server = json_server(lambda body: answers[min(len(server.requests), 2) - 1])
    traj, engine = remote_rollout(tok, server.url, infra_retries=2)
    assert len(server.requests) == 2 and server.requests[0]["code"] == server.requests[1]["code"]
    assert traj.meta["finish_reason"] == "answer" and traj.turns[0].result.output == "42\n"
    assert traj.stats["infra_retries_by_cause"] == {"remote_server_error": 1}
    assert traj.stats["infra_excluded_by_cause"] == {}
    no_failure_text(traj, engine)


def test_a_closed_pool_is_not_retried():
    """Nothing changes by re-running on a closed pool: the failure is the answer at once. Breakage checked: without
    `PERMANENT` the runner tried to open a fresh session for the lost (empty) state and raised."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed here")

    async def main():
        pool = await SandboxPool(SandboxConfig(timeout_s=5.0, workers=1)).start()
        tools = SandboxTools(pool, infra_retries=2)
        first = await tools.run("t", "undefined_name")  # opens the session; no successful cell
        await pool.close()
        return first, await tools.run("t", "print(1)")

    first, answer = asyncio.run(main())
    assert first.result.error_type == "NameError"
    assert (answer.result.status, answer.retried, answer.persisted) == ("infra_error", (), "pool_closed")


def test_every_cause_names_a_message_the_sandbox_gives():
    """The causes are read from the sandbox's messages: each phrase must still be in its source. Breakage checked:
    "supervisor died" as a phrase (the message is built as "supervisor {what}")."""
    source = inspect.getsource(local_pool) + inspect.getsource(remote)
    for phrase, cause in INFRA_CAUSES:
        assert phrase in source, f"{cause}: {phrase!r} is no longer a sandbox message"
    assert infra_cause("SandboxError: something new\n") == "other"


def test_infra_retries_is_checked_and_flows_from_the_recipe():
    from cleaner.recipe import AlgoConfig

    with pytest.raises(ValueError, match="rollout.infra_retries must be >= 0, got -1"):
        RolloutConfig(infra_retries=-1)
    with pytest.raises(ValueError, match="algo.infra_retries must be >= 0, got -1"):
        AlgoConfig(infra_retries=-1)
    assert AlgoConfig(infra_retries=5).rollout_config(SaarConfig(), "hermes").infra_retries == 5
    assert AlgoConfig().infra_retries == RolloutConfig().infra_retries == 2
