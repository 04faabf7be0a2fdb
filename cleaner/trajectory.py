"""Token-exact agent trajectories: a prompt, then turns of (reasoning, tool call, observation).

A trajectory is stored as spans, never as flat arrays. Each span owns its token ids, its optional log-probs (one
per id, checked on construction) and its provenance. The flat `ids`, `loss_mask` and `logprobs` are
concatenations over spans, so they have equal lengths by construction, whatever splice happened before.

The loss mask is set in one place, `Provenance.trained`: 1 only for tokens the policy sampled.

Layout of one assistant turn (hermes format, Qwen3 chat template)::

    reasoning   "Let me compute it.\\n"                         sampled        (mask 1)
    call        "<tool_call>\\n{...}\\n</tool_call>"            sampled        (mask 1)
    stop        "<|im_end|>"                                    sampled        (mask 1)
    observation "\\n<|im_start|>user\\n<tool_response>\\n...    rendered by us (mask 0)
                 </tool_response><|im_end|>\\n<|im_start|>assistant\\n"

`call` is None for a turn without a tool call (a final answer); `stop` is empty when generation ended without the
stop token (length limit). `call` runs from the start of the call to the end of the generation, like the authors'
split, so text a model writes after `</tool_call>` stays with the call.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Provenance(StrEnum):
    PROMPT = "prompt"  # the task prompt, rendered by the chat template
    OBSERVATION = "observation"  # tool output and the template tokens around it, rendered by us
    ORIGINAL = "original"  # sampled by the policy in the context it now stands in
    SPLICED_SHALLOW = "spliced_shallow"  # sampled in a lookahead context; spliced after the original reasoning
    SPLICED_DEEP = "spliced_deep"  # sampled in a lookahead context; the whole turn was replaced

    @property
    def trained(self) -> bool:
        """The loss mask: 1 only for tokens the policy sampled (spliced tokens were sampled too)."""
        return self in (Provenance.ORIGINAL, Provenance.SPLICED_SHALLOW, Provenance.SPLICED_DEEP)


@dataclass(frozen=True)
class Span:
    """A run of tokens with one provenance. `text` is the decoded text of `ids` (kept for readers and for
    rebuilding chat messages). `logprobs`, when present, has one entry per id: the log-prob of that token under
    the policy that sampled it, in the context it was sampled in."""

    provenance: Provenance
    ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if type(self.provenance) is not Provenance:  # convert only what needs it: most spans come typed
            object.__setattr__(self, "provenance", Provenance(self.provenance))
        if type(self.ids) is not tuple:
            object.__setattr__(self, "ids", tuple(self.ids))
        if self.logprobs is not None:
            object.__setattr__(self, "logprobs", tuple(float(x) for x in self.logprobs))
            if len(self.logprobs) != len(self.ids):
                raise ValueError(f"span has {len(self.ids)} ids but {len(self.logprobs)} log-probs")

    def __len__(self) -> int:
        return len(self.ids)

    def with_provenance(self, provenance: Provenance) -> Span:
        return Span(provenance, self.ids, self.text, self.logprobs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "provenance": self.provenance.value,
            "ids": list(self.ids),
            "text": self.text,
            "logprobs": None if self.logprobs is None else list(self.logprobs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        return cls(d["provenance"], d["ids"], d["text"], d["logprobs"])


# Tool-result statuses. The sandbox returns one of the first six; `malformed` is set by the chat parser when the
# model's tool call cannot be parsed, so nothing was executed.
STATUSES = ("ok", "error", "timeout", "memory_limit", "output_limit", "infra_error", "malformed")


@dataclass(frozen=True)
class ToolResult:
    """What one tool call returned. `error_type` names the exception class for status `error` (`NameError`,
    `SyntaxError`, ...). `output` is the text shown to the model."""

    status: str
    output: str
    error_type: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown tool status {self.status!r}; valid: {', '.join(STATUSES)}")


@dataclass(frozen=True)
class SpliceRecord:
    """One SAAR replacement at this turn: the attempt that was in place was replaced by a later attempt."""

    mode: str  # "shallow" or "deep"
    similarity: float
    replaced_code: str | None
    replaced_status: str
    replaced_error_type: str | None
    tokens_removed: int  # tokens of both attempts (and their observations) that left the trajectory


@dataclass(frozen=True)
class Turn:
    """One assistant turn and the observation that follows it. `code` is the extracted code (for a malformed call,
    what `cleaner.chat.ParsedCall` salvaged); `result` is None when the turn made no call or the call was never
    executed."""

    reasoning: Span
    stop: Span
    call: Span | None = None
    code: str | None = None
    result: ToolResult | None = None
    observation: Span | None = None
    splices: tuple[SpliceRecord, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)  # where it came from (offline: its source message index)

    @property
    def spans(self) -> tuple[Span, ...]:
        parts = (self.reasoning, self.call, self.stop, self.observation)
        return tuple(s for s in parts if s is not None)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.spans)

    @property
    def content(self) -> str:
        """The assistant message text: reasoning and call, without the stop token."""
        return self.reasoning.text + (self.call.text if self.call is not None else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "reasoning": self.reasoning.to_dict(),
            "call": None if self.call is None else self.call.to_dict(),
            "stop": self.stop.to_dict(),
            "code": self.code,
            "result": None if self.result is None else vars(self.result).copy(),
            "observation": None if self.observation is None else self.observation.to_dict(),
            "splices": [vars(s).copy() for s in self.splices],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        def span(key: str) -> Span | None:
            return None if d[key] is None else Span.from_dict(d[key])

        return cls(
            reasoning=Span.from_dict(d["reasoning"]),
            stop=Span.from_dict(d["stop"]),
            call=span("call"),
            code=d["code"],
            result=None if d["result"] is None else ToolResult(**d["result"]),
            observation=span("observation"),
            splices=tuple(SpliceRecord(**s) for s in d["splices"]),
            meta=d["meta"],
        )


@dataclass(frozen=True)
class Trajectory:
    """A prompt and its turns. `stats` holds per-trajectory counters (see `cleaner.saar.SaarStats`); `meta` holds
    whatever else the source record carried (ground truth, data source, ...); `group` names the prompt the
    trajectory was sampled for (GRPO's group; "" when unknown)."""

    id: str
    prompt: Span
    turns: tuple[Turn, ...]
    stats: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    group: str = ""

    def spans(self) -> Iterator[Span]:
        yield self.prompt
        for turn in self.turns:
            yield from turn.spans

    @property
    def ids(self) -> list[int]:
        return [i for s in self.spans() for i in s.ids]

    @property
    def loss_mask(self) -> list[int]:
        return [int(s.provenance.trained) for s in self.spans() for _ in s.ids]

    @property
    def provenance(self) -> list[Provenance]:
        return [s.provenance for s in self.spans() for _ in s.ids]

    @property
    def logprobs(self) -> list[float] | None:
        """Per-token log-probs, 0.0 where the mask is 0 (verl's convention); None when a sampled span has none."""
        out: list[float] = []
        for s in self.spans():
            if s.provenance.trained:
                if s.logprobs is None:
                    return None
                out.extend(s.logprobs)
            else:
                out.extend([0.0] * len(s))
        return out

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.spans())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt.to_dict(),
            "turns": [t.to_dict() for t in self.turns],
            "stats": self.stats,
            "meta": self.meta,
            "group": self.group,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        return cls(
            id=d["id"],
            prompt=Span.from_dict(d["prompt"]),
            turns=tuple(Turn.from_dict(t) for t in d["turns"]),
            stats=d["stats"],
            meta=d["meta"],
            group=d.get("group", ""),
        )


def write_jsonl(path: str | Path, trajectories: list[Trajectory]) -> None:
    """Write one trajectory per line, atomically (a temporary file renamed into place)."""
    write_lines_atomic(path, (json.dumps(t.to_dict(), ensure_ascii=False) for t in trajectories))


def read_jsonl(path: str | Path) -> list[Trajectory]:
    with open(path, encoding="utf-8") as f:
        return [Trajectory.from_dict(json.loads(line)) for line in f if line.strip()]


def write_lines_atomic(path: str | Path, lines: Iterator[str]) -> None:
    """Write lines to `path` through a temporary file in the same folder, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    tmp.replace(path)


def excluded_from_loss(trajectory: Trajectory) -> bool:
    """Whether an infrastructure failure persisted in `trajectory` (it ended `infra_error`): no token of it is
    trained on, on either path (the lab trainer, the verl agent loop)."""
    return trajectory.meta["finish_reason"] == "infra_error"
