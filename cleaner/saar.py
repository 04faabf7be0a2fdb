"""SAAR (Similarity-Aware Adaptive Rollback), the decision and the splice, as pure functions.

One failure event, as the paper and the authors' code run it:
1. A turn's tool call fails with a model error (`triggers`). The turn stays out of the committed history.
2. Lookahead: the model sees the history, the attempt now in place and its error, and writes a retry.
3. `step` replaces the attempt in place by the retry: shallow (keep the reasoning in place, take the retry's call)
   when `similarity(in place, retry) >= gamma`, deep (take the whole retry turn) otherwise.
4. If the retry ran: recovered, continue from the purified history. If it failed by a model error and fewer than
   K retries were made: go to 2, now with the retry in place. After K failed retries: exhausted; the last failure
   and its error stay in the trajectory, as ordinary agent behaviour.

So retry i is sampled after the purified history plus only the latest attempt and its error, not the whole chain,
and similarity compares consecutive attempts. Both as in the authors' code.

Where this departs from the paper and the authors' code, and why:
- Only model errors trigger (`MODEL_ERRORS`); an infrastructure failure (sandbox down, queue time-out) never does
  and is counted apart. The authors roll back on any non-success output.
- Similarity is on the code by default, not on the call text with its JSON wrapper (`cleaner.similarity`).
- gamma, K and p are config values, and p is drawn from a generator seeded by the run seed and the trajectory
  id (`applies_to`), not the unseeded global RNG. The draw is reproducible and independent across trajectories.
- A retry that makes no call, or whose call is not executed (never answered, or unterminated: the turn ended
  inside it, as a length limit cuts it), ends the lookahead as `abandoned`: the failure stays and the retry
  follows it as an ordinary turn. Such a retry is no fix, so it never replaces executed calls and their errors. A
  retry that hits an infrastructure failure ends it as `interrupted`: it stays in place.
  Each event has its own budget of K; SAAR is not switched off for the rest of the trajectory after one exhausted
  event (the authors' code switches it off).
- `max_retries = 0` means SAAR is off, rather than a lookahead that is exhausted before it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from cleaner import chat, seeds, similarity
from cleaner.trajectory import Provenance, SpliceRecord, ToolResult, Turn

# Statuses caused by the model's own code or call. `ok` and `infra_error` are the only others.
MODEL_ERRORS = frozenset({"error", "timeout", "memory_limit", "output_limit", "malformed"})


def triggers(result: ToolResult | None) -> bool:
    """True when this tool result is a model error, the only kind of failure that starts a rollback."""
    return result is not None and result.status in MODEL_ERRORS


def error_class(result: ToolResult) -> str:
    """The class a failure is counted under: the exception name for `error`, else the status."""
    return result.error_type if result.status == "error" and result.error_type else result.status


@dataclass(frozen=True)
class SaarConfig:
    """SAAR settings. Defaults are the paper's (Table 5 and section 3).

    `from_step` is for the paper's post-hoc experiment (SAAR switched on at step 200 of a DAPO baseline): with
    `enabled`, SAAR applies to the rollout of training step `step` (0-based) only when `step >= from_step`, so
    from_step=200 trains steps 1 to 200 (as the metrics count them) as the baseline and SAAR is on from step 201.
    0 (the default): every step, as before. It is a training schedule, resolved per step by `at_step`: evaluation
    does not read it (SAAR at test time is the caller's `enabled`). Where a caller cannot know the step (verl's
    legacy agent-loop worker), from_step > 0 is refused rather than ignored (`active`). It does not load the
    baseline's checkpoint: the run trains its first from_step steps itself, which on the lab path are the
    baseline's exactly given the same seed and thread count (docs/harness.md)."""

    enabled: bool = True  # SAAR on; off reproduces the DAPO-with-tools baseline
    gamma: float = 0.5  # shallow splice when similarity >= gamma, else deep ("gamma = 0.5", paper section 3.2)
    max_retries: int = 3  # K, lookahead retries per failure event ("K = 3")
    rollback_probability: float = 1.0  # p, chance SAAR applies to a trajectory (1.0 for Qwen3-4B, 0.7 for 7B)
    similarity: str = "difflib_code"  # a key of cleaner.similarity.SIMILARITIES
    from_step: int = 0  # 0-based training step from which SAAR applies; earlier steps are the baseline (0: all)

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"saar.gamma must be in [0, 1], got {self.gamma}")
        if self.max_retries < 0:
            raise ValueError(f"saar.max_retries (K) must be >= 0, got {self.max_retries}")
        if not 0.0 <= self.rollback_probability <= 1.0:
            raise ValueError(f"saar.rollback_probability (p) must be in [0, 1], got {self.rollback_probability}")
        similarity.get(self.similarity)
        if self.from_step < 0:
            raise ValueError(f"saar.from_step must be >= 0, got {self.from_step}")


def active(cfg: SaarConfig, step: int | None) -> bool:
    """Whether SAAR is on for the rollout of training step `step` (0-based; None: the caller does not know it):
    `enabled`, and `step >= from_step`. With from_step 0 the step is not needed; with from_step > 0 an unknown step
    is an error, never a silent "always on"."""
    if cfg.from_step == 0 or not cfg.enabled:
        return cfg.enabled
    if step is None:
        raise ValueError(f"saar.from_step={cfg.from_step} needs the training step, which this rollout is not given")
    return step >= cfg.from_step


def at_step(cfg: SaarConfig, step: int | None) -> SaarConfig:
    """SAAR as the rollout of training step `step` runs it: `enabled` set by `active`, the schedule resolved
    (from_step 0)."""
    return replace(cfg, enabled=active(cfg, step), from_step=0)


def applies_to(cfg: SaarConfig, seed: int, trajectory_id: str) -> bool:
    """The per-trajectory draw with probability p, from a generator seeded by (seed, trajectory id): the same run
    seed gives the same draws, whatever order trajectories are processed in."""
    if not cfg.enabled or cfg.max_retries == 0:
        return False
    return seeds.unit(seed, trajectory_id) < cfg.rollback_probability


def _attempt(turn: Turn) -> similarity.Attempt:
    assert turn.call is not None, "similarity needs a turn with a tool call"
    return similarity.Attempt(turn.code or "", turn.call.text + turn.stop.text)


@dataclass(frozen=True)
class SpliceDecision:
    mode: str  # "shallow" | "deep"
    similarity: float


def decide(in_place: Turn, retry: Turn, cfg: SaarConfig) -> SpliceDecision:
    sim = similarity.get(cfg.similarity)(_attempt(in_place), _attempt(retry))
    return SpliceDecision("shallow" if sim >= cfg.gamma else "deep", sim)


def splice(in_place: Turn, retry: Turn, decision: SpliceDecision) -> Turn:
    """The turn that replaces `in_place`. Shallow: its reasoning, then the retry's call, stop and observation,
    marked `spliced_shallow`. Deep: the whole retry, marked `spliced_deep`. Tokens and log-probs move with their
    spans, untouched; the log-probs are those sampled in the lookahead context (see rollout recompute)."""
    if decision.mode == "shallow":
        mark, reasoning = Provenance.SPLICED_SHALLOW, in_place.reasoning
    else:
        mark = Provenance.SPLICED_DEEP
        reasoning = retry.reasoning.with_provenance(mark)
    assert retry.call is not None and in_place.result is not None
    call, stop = retry.call.with_provenance(mark), retry.stop.with_provenance(mark)
    kept = len(reasoning) + len(call) + len(stop) + (0 if retry.observation is None else len(retry.observation))
    record = SpliceRecord(
        mode=decision.mode,
        similarity=decision.similarity,
        replaced_code=in_place.code,
        replaced_status=in_place.result.status,
        replaced_error_type=in_place.result.error_type,
        tokens_removed=in_place.num_tokens + retry.num_tokens - kept,  # kept: the new turn's tokens
    )
    return Turn(
        reasoning=reasoning,
        call=call,
        stop=stop,
        code=retry.code,
        result=retry.result,
        observation=retry.observation,
        splices=in_place.splices + (record,),
        meta=retry.meta,
    )


class Outcome(StrEnum):
    RECOVERED = "recovered"  # a retry ran without a model error; it is spliced in
    EXHAUSTED = "exhausted"  # K retries all failed; the last one and its error stay
    ABANDONED = "abandoned"  # a retry made no call, or it was not executed; the failure stays, the retry follows
    INTERRUPTED = "interrupted"  # a retry hit an infrastructure failure; it stays in place
    CUT = "cut"  # a turn or token limit ended the lookahead before a retry (online only); the failure stays


def executed(turn: Turn) -> bool:
    """True when the turn made a complete call that was answered: run, or (malformed) answered with its parse
    error. A call never answered, or one the turn ended inside (`chat.UNTERMINATED`: cut, never complete), was not."""
    return turn.call is not None and turn.result is not None and turn.result.error_type != chat.UNTERMINATED


def step(in_place: Turn, retry: Turn, retries_done: int, cfg: SaarConfig) -> tuple[Turn, Outcome | None]:
    """Advance one failure event by one retry. `retries_done` counts this retry. Returns the turn now in place and
    the outcome, or None while the lookahead goes on. For `abandoned` (the retry was not executed) the turn in
    place is unchanged and `retry` is an ordinary next turn."""
    if not executed(retry):
        return in_place, Outcome.ABANDONED
    new = splice(in_place, retry, decide(in_place, retry, cfg))
    if retry.result.status == "ok":
        return new, Outcome.RECOVERED
    if not triggers(retry.result):
        return new, Outcome.INTERRUPTED
    if retries_done >= cfg.max_retries:
        return new, Outcome.EXHAUSTED
    return new, None


class FailureEvent:
    """One failure event, as the purifier and the online episode both run it: opened by a turn whose call failed
    by a model error, fed the retries that follow (`offer`), ended by its outcome. It holds the turn in place and
    keeps the event's counts in `stats`: the trigger, each executed retry, the outcome."""

    def __init__(self, failed: Turn, stats: SaarStats):
        stats.count_trigger(failed)
        self.in_place, self.stats, self.retries = failed, stats, 0
        self.outcome: Outcome | None = None

    def offer(self, retry: Turn, cfg: SaarConfig) -> Outcome | None:
        """Advance by one retry (`step`); returns the outcome once the event has ended, else None. An abandoned
        retry (not executed) leaves the failure in place and is not counted: the caller keeps it as the next turn."""
        self.retries += 1
        self.in_place, outcome = step(self.in_place, retry, self.retries, cfg)
        if outcome is not Outcome.ABANDONED:
            self.stats.count_call(retry, lookahead=True)
        if outcome is not None:
            self.end(outcome)
        return outcome

    def end(self, outcome: Outcome) -> None:
        """End the event with `outcome` (also for causes outside it: a limit, a log that ends)."""
        self.outcome = outcome
        self.stats.count_outcome(outcome)


@dataclass
class SaarStats:
    """Per-trajectory counters. Each name says what it counts; `*_by_class` split a count by `error_class`."""

    saar_applied: bool = False  # the draw with probability p chose SAAR for this trajectory
    first_attempt_calls: int = 0  # executed calls made in the trajectory's own context (not lookahead retries)
    first_attempt_failures: int = 0  # of those, calls that failed by a model error
    lookahead_calls: int = 0  # executed retries made during SAAR lookahead
    infra_failures: int = 0  # executed calls of either kind that failed by infrastructure (never trigger)
    rollbacks_triggered: int = 0  # failure events that started a lookahead
    rollbacks_recovered: int = 0
    rollbacks_exhausted: int = 0
    rollbacks_abandoned: int = 0
    rollbacks_interrupted: int = 0
    rollbacks_cut: int = 0
    splices_shallow: int = 0  # replacements that kept the reasoning in place (one event may splice several times)
    splices_deep: int = 0  # replacements of the whole turn
    tokens_removed: int = 0  # tokens (sampled and rendered) that splices took out of the trajectory
    final_calls: int = 0  # executed calls left in the final trajectory
    final_failures: int = 0  # of those, model-error failures
    first_attempt_failures_by_class: dict[str, int] = field(default_factory=dict)
    rollbacks_triggered_by_class: dict[str, int] = field(default_factory=dict)
    final_failures_by_class: dict[str, int] = field(default_factory=dict)

    def count_call(self, turn: Turn, lookahead: bool) -> None:
        """Count one executed call, as a first attempt or as a lookahead retry."""
        if turn.result is None:
            return
        if turn.result.status == "infra_error":
            self.infra_failures += 1
        if lookahead:
            self.lookahead_calls += 1
            return
        self.first_attempt_calls += 1
        if triggers(turn.result):
            self.first_attempt_failures += 1
            _bump(self.first_attempt_failures_by_class, error_class(turn.result))

    def count_trigger(self, turn: Turn) -> None:
        assert turn.result is not None
        self.rollbacks_triggered += 1
        _bump(self.rollbacks_triggered_by_class, error_class(turn.result))

    def count_outcome(self, outcome: Outcome) -> None:
        name = f"rollbacks_{outcome.value}"
        setattr(self, name, getattr(self, name) + 1)

    def count_final(self, turns: tuple[Turn, ...] | list[Turn]) -> None:
        """Count what the final trajectory holds: calls, failures and the splices recorded on its turns."""
        for turn in turns:
            for record in turn.splices:
                self.tokens_removed += record.tokens_removed
                if record.mode == "shallow":
                    self.splices_shallow += 1
                else:
                    self.splices_deep += 1
            if turn.result is None:
                continue
            self.final_calls += 1
            if triggers(turn.result):
                self.final_failures += 1
                _bump(self.final_failures_by_class, error_class(turn.result))

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(sorted(v.items())) if isinstance(v, dict) else v) for k, v in vars(self).items()}

    @classmethod
    def total(cls, many: list[dict[str, Any]]) -> dict[str, Any]:
        """Sum of several trajectories' stats (dicts from `to_dict`); `saar_applied` becomes a count."""
        out: dict[str, Any] = {}
        for stats in many:
            for k, v in stats.items():
                if isinstance(v, dict):
                    counts = out.setdefault(k, {})
                    for name, n in v.items():
                        counts[name] = counts.get(name, 0) + n
                else:
                    out[k] = out.get(k, 0) + int(v)
        for k, v in out.items():  # as Counter addition leaves them: sorted, counts above zero only
            if isinstance(v, dict):
                out[k] = {name: n for name, n in sorted(v.items()) if n > 0}
        return out


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1
