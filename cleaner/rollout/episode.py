"""One trajectory's multi-turn rollout with online SAAR, as a sans-IO state machine.

The episode owns the token buffer (committed turns as spans, so ids, mask and log-probs stay aligned), the
lookahead state and the counters. It does no I/O: a driver reads `episode.action` and answers it.

    Generate(context, max_new_tokens, seed) -> episode.on_generated(ids, logprobs, seconds)
    Execute(code)                           -> episode.on_tool_result(ToolAnswer(result, ...), seconds)
    Done(reason)                            -> episode.trajectory()

The loop, top to bottom:
1. Generate a turn after the committed history. A turn without a tool call (or cut by the token budget) ends the
   episode. A malformed call is answered at once with its error (nothing is executed).
2. Execute the call. On success, or on a failure when SAAR does not apply, commit the turn and go to 1.
3. On a model error when SAAR applies, the turn goes *in place* (not committed) and the lookahead starts: generate
   a retry after the history plus the turn in place and its error, execute it, and `saar.step` replaces the turn
   in place by the retry. Repeat up to K times; then commit what is in place and go to 1. A retry that is not
   executed (no call, cut by the budget, or ending inside its call) is abandoned: the turn in place is committed
   and the retry follows it as an ordinary turn (step 2 for it, when it was answered with its parse error).

Limits. `max_turns` counts the assistant turns of the final trajectory and `max_response_tokens` its tokens after
the prompt (sampled and rendered); the final trajectory never exceeds either. Retries replace the turn in place, so
by default (`retries_count_against_limits = False`, as in the authors' code) the tokens and turns they discard do
not count; a retry may use the budget left after the history and the turn in place, so whatever the event's
outcome the final trajectory fits. With `True`, every generation counts as a turn and every discarded token counts
against the budget. A limit reached during a lookahead ends it as `cut`: the failure stays. A tool output that
does not fit in what is left of the budget is cut to fit, and the episode ends (`length`).

Interpreter state. The driver runs every call of an episode in one sandbox session whose state is the replay of
its successful cells. A failed cell leaves no trace, so a retry runs in the state of the purified history, and
after a recovery the state is exactly that of the purified trajectory.

Infrastructure failures. The tool runner re-runs a call after an infrastructure failure where that is safe
(`cleaner.rollout.tools`, up to `infra_retries` times); the episode sees only the call's final answer, and counts
the re-runs by cause. A failure the runner could not get past (`ToolAnswer.persisted`) is not the model's doing, and
the session's state may be gone, so the episode ends there (`Done("infra_error")`): the call stays with its result
but without an observation (no text of the failure is in the token stream); a lookahead in progress ends
`interrupted`, the failure in place kept with its error and the retry after it (offline, `saar.step` splices such a
retry in place instead); and the trajectory is kept out of the loss (`excluded_from_loss`; the lab trainer and the
verl agent loop both honour it). Counters in the trajectory's `stats`: `infra_retries`, `infra_retries_by_cause`, and
`infra_excluded_by_cause` (the cause of the failure that ended it). Departure from the paper and the authors' code:
they show the model any sandbox output, and train on it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

from cleaner import chat, saar, seeds
from cleaner.trajectory import Span, ToolResult, Trajectory, Turn


@dataclass(frozen=True)
class RolloutConfig:
    """Limits and formats of one rollout. Paper defaults from its Table 5."""

    max_turns: int = 16  # assistant turns in the final trajectory ("16 turns")
    max_response_tokens: int = 20480  # tokens after the prompt in the final trajectory ("max response 20480")
    max_tokens_per_turn: int | None = None  # cap on one generation; None: only the budget caps it
    max_tool_response_chars: int = 256  # tool output shown to the model, middle-truncated ("256 chars")
    retries_count_against_limits: bool = False  # lookahead retries count as turns and their tokens as budget
    # re-runs of a tool call after an infrastructure failure, where safe (`cleaner.rollout.tools`); 0: none
    infra_retries: int = 2
    format: str = "hermes"  # tool-call format, a key of cleaner.chat.FORMATS
    saar: saar.SaarConfig = field(default_factory=saar.SaarConfig)

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"rollout.max_turns must be >= 1, got {self.max_turns}")
        if self.max_response_tokens < 1:
            raise ValueError(f"rollout.max_response_tokens must be >= 1, got {self.max_response_tokens}")
        if self.max_tokens_per_turn is not None and self.max_tokens_per_turn < 1:
            raise ValueError(f"rollout.max_tokens_per_turn must be >= 1 or None, got {self.max_tokens_per_turn}")
        if self.max_tool_response_chars < 1:
            raise ValueError(f"rollout.max_tool_response_chars must be >= 1, got {self.max_tool_response_chars}")
        if self.infra_retries < 0:
            raise ValueError(f"rollout.infra_retries must be >= 0, got {self.infra_retries}")
        chat.get_format(self.format)


@dataclass(frozen=True)
class Generate:
    context: tuple[int, ...]  # the full context: prompt and history (and, in a lookahead, the turn in place)
    max_new_tokens: int
    seed: int  # for this generation only: derived from (run seed, trajectory id, generation index)
    lookahead: bool


@dataclass(frozen=True)
class Execute:
    code: str


@dataclass(frozen=True)
class Done:
    reason: str  # "answer" | "max_turns" | "length" | "infra_error"


@dataclass(frozen=True)
class ToolAnswer:
    """A tool runner's answer to one `Execute`: the `result`, and the infrastructure failures on the way.
    `retried`: the cause of each failure after which the runner ran the call again. `persisted`: the cause of the
    failure it could not get past, when `result` is that failure (status `infra_error`), else None."""

    result: ToolResult
    retried: tuple[str, ...] = ()
    persisted: str | None = None

    def __post_init__(self) -> None:
        if (self.persisted is not None) != (self.result.status == "infra_error"):
            raise ValueError(f"ToolAnswer.persisted names the cause of an infra_error result, and only of one; got "
                             f"persisted={self.persisted!r} for status {self.result.status!r}")


@dataclass
class Timing:
    """Wall seconds this episode waited on each kind of work, and the tokens it sampled. In a batched driver a
    batch's wall time counts for every episode in it."""

    generate_s: float = 0.0  # generations outside lookahead
    tool_s: float = 0.0  # tool calls outside lookahead
    lookahead_s: float = 0.0  # generations and tool calls of SAAR retries
    generated_tokens: int = 0  # all sampled tokens, retries included
    retry_tokens: int = 0  # tokens sampled in lookahead retries


class Episode:
    def __init__(self, trajectory_id: str, prompt: Span, tokenizer: Any, cfg: RolloutConfig, seed: int = 0,
                 group: str = ""):
        self.id = trajectory_id
        self.group = group
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.seed = seed
        self.fmt = chat.get_format(cfg.format)
        applies = saar.applies_to(cfg.saar, seed, trajectory_id)
        self.stats = saar.SaarStats(saar_applied=applies)
        self.timing = Timing()
        self.committed: list[Turn] = []
        self.event: saar.FailureEvent | None = None  # a failure event under lookahead
        self.pending: Turn | None = None  # a turn waiting for its tool result
        self.generations = 0
        self.infra_retries: dict[str, int] = {}  # re-runs after an infrastructure failure, by cause
        self.infra_excluded: str | None = None  # the cause of the infrastructure failure that ended the episode
        self.action: Generate | Execute | Done = self._next()

    # -- what the driver calls ---------------------------------------------------------------------------------

    def on_generated(self, ids: list[int] | tuple[int, ...], logprobs: list[float] | tuple[float, ...] | None,
                     seconds: float = 0.0) -> None:
        assert isinstance(self.action, Generate), f"episode {self.id} expected no generation now"
        lookahead = self.action.lookahead
        self.generations += 1
        self.timing.generated_tokens += len(ids)
        if lookahead:
            self.timing.lookahead_s += seconds
            self.timing.retry_tokens += len(ids)
        else:
            self.timing.generate_s += seconds
        split = chat.split_turn(self.tokenizer, ids, logprobs, self.fmt)
        ended = len(split.stop) > 0
        if split.parsed is None or not ended:
            turn = Turn(split.reasoning, split.stop, split.call, None if split.parsed is None else split.parsed.code)
            if self.event is not None:  # the retry made no call (or was cut): the failure stays, then this turn
                self.event.end(saar.Outcome.ABANDONED)
                self._end_lookahead()
            self.committed.append(turn)
            self.action = Done("answer" if ended else "length")
            return
        self.pending = Turn(split.reasoning, split.stop, split.call, split.parsed.code)
        if split.parsed.malformed:
            self.on_tool_result(ToolAnswer(chat.malformed_result(split.parsed)))
        else:
            self.action = Execute(split.parsed.code)

    def on_tool_result(self, answer: ToolAnswer, seconds: float = 0.0) -> None:
        assert self.pending is not None, f"episode {self.id} has no call waiting for a result"
        if self.event is not None:
            self.timing.lookahead_s += seconds
        else:
            self.timing.tool_s += seconds
        for cause in answer.retried:
            self.infra_retries[cause] = self.infra_retries.get(cause, 0) + 1
        if answer.persisted is not None:
            self._end_by_infrastructure(answer)
            return
        result = answer.result
        output = chat.truncate_middle(result.output, self.cfg.max_tool_response_chars)
        turn = replace(self.pending, result=replace(result, output=output),
                       observation=chat.observation_span(self.tokenizer, self.fmt, output))
        self.pending = None
        if self.event is not None:
            outcome = self.event.offer(turn, self.cfg.saar)
            if outcome is not None:
                self._end_lookahead()
            if outcome is not saar.Outcome.ABANDONED:  # abandoned (unterminated): the retry follows the failure
                self.action = self._next()
                return
        self.stats.count_call(turn, lookahead=False)
        if self.stats.saar_applied and saar.triggers(turn.result):
            self.event = saar.FailureEvent(turn, self.stats)
        else:
            self.committed.append(turn)
        self.action = self._next()

    def trajectory(self) -> Trajectory:
        assert isinstance(self.action, Done), f"episode {self.id} is not done"
        stats = copy.deepcopy(self.stats)
        stats.count_final(self.committed)
        infra = {"infra_retries": sum(self.infra_retries.values()),
                 "infra_retries_by_cause": dict(sorted(self.infra_retries.items())),
                 "infra_excluded_by_cause": {} if self.infra_excluded is None else {self.infra_excluded: 1}}
        meta = {"finish_reason": self.action.reason, "timing": vars(self.timing).copy()}
        return Trajectory(self.id, self.prompt, tuple(self.committed), {**stats.to_dict(), **infra}, meta, self.group)

    # -- internals ---------------------------------------------------------------------------------------------

    def _end_by_infrastructure(self, answer: ToolAnswer) -> None:
        """The runner could not get past an infrastructure failure: commit the call with its result and no
        observation (the model never sees the failure), end a lookahead `interrupted`, and end the episode."""
        assert answer.persisted is not None and self.pending is not None
        output = chat.truncate_middle(answer.result.output, self.cfg.max_tool_response_chars)
        turn = replace(self.pending, result=replace(answer.result, output=output))
        self.pending = None
        self.stats.count_call(turn, lookahead=self.event is not None)
        if self.event is not None:  # the failure in place stays, then the retry that met the infrastructure
            self.event.end(saar.Outcome.INTERRUPTED)
            self._end_lookahead()
        self.committed.append(turn)
        self.infra_excluded = answer.persisted
        self.action = Done("infra_error")

    def _end_lookahead(self) -> None:
        """Commit the turn an ended failure event left in place."""
        assert self.event is not None and self.event.outcome is not None
        self.committed.append(self.event.in_place)
        self.event = None

    def _next(self) -> Generate | Done:
        """The next generation, or the end, from the limits (see the module docstring)."""
        lookahead = self.event is not None
        kept = self.committed + ([self.event.in_place] if lookahead else [])
        over = sum(t.num_tokens for t in kept) - self.cfg.max_response_tokens
        if over > 0:  # the last tool output did not fit: keep what fits of it, and stop
            last = kept[-1]
            assert last.observation is not None and over <= len(last.observation), "sampled tokens exceed the budget"
            ids = last.observation.ids[: len(last.observation) - over]
            cut = replace(last, observation=replace(last.observation, ids=ids, text=chat.decode(self.tokenizer, ids)))
            if lookahead:
                self.event.in_place = cut
                self.event.end(saar.Outcome.CUT)
                self._end_lookahead()
            else:
                self.committed[-1] = cut
            return Done("length")
        splices = sum(len(t.splices) for t in kept)
        turns = len(kept) + (splices if self.cfg.retries_count_against_limits else 0)
        used = sum(t.num_tokens for t in kept)
        if self.cfg.retries_count_against_limits:
            used += sum(r.tokens_removed for t in kept for r in t.splices)
        budget = self.cfg.max_response_tokens - used
        if self.cfg.max_tokens_per_turn is not None:
            budget = min(budget, self.cfg.max_tokens_per_turn)
        turn_limit = turns >= self.cfg.max_turns and (not lookahead or self.cfg.retries_count_against_limits)
        if turn_limit or budget <= 0:
            if lookahead:
                self.event.end(saar.Outcome.CUT)
                self._end_lookahead()
            return Done("max_turns" if turn_limit else "length")
        context = self.prompt.ids + tuple(i for t in kept for s in t.spans for i in s.ids)
        return Generate(context, budget, self._generation_seed(), lookahead)

    def _generation_seed(self) -> int:
        return seeds.derive(self.seed, self.id, self.generations)
