"""Offline SAAR: purify logged agent trajectories with the same functions the online rollout uses.

    python -m cleaner.purify IN.jsonl OUT.jsonl [--gamma G] [--similarity NAME] [--max-retries K]
                             [--rollback-probability P] [--seed S] [--format hermes|markdown] [--tokenizer NAME]

Input: one trajectory per line, `{"id": ..., "messages": [...]}` in OpenAI chat format. Prompt messages (system,
user) come first; then assistant messages, each followed by a `tool` message when it made a tool call. Assistant
content holds the reasoning, then the call (hermes `<tool_call>` or a ```python fence).

Which tool messages are failures: an explicit `"status"` on the tool message wins (one of
`cleaner.trajectory.STATUSES`, or `success`/`failure`); else a call our parser cannot read is `malformed`; else
the output text is read: a Python traceback or a final `SomeError: ...` line is an `error` (named by its class), a
time-out message is a `timeout`, a `MemoryError` is a `memory_limit`, anything else is `ok`.

Offline, the retries a failure event looks ahead to are simply the next assistant turns of the log. A log
recorded without SAAR shows retry i after the whole chain of earlier failures, whereas online SAAR shows it only
the latest attempt; the splice is the same either way.

Output: the same records, unrelated fields kept, `messages` purified, and `purification` holding the stats
(`cleaner.saar.SaarStats`). With `--tokenizer`, token-level trajectories (`cleaner.trajectory`) are also written
beside OUT as `<OUT stem>.tokens.jsonl`. Without it, tokens are counted with the lab tokenizer. Input is read and
checked whole before anything is written, and files are replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleaner import chat, saar
from cleaner.lab.tokenizer import load_tokenizer
from cleaner.trajectory import STATUSES, ToolResult, Trajectory, Turn, write_jsonl, write_lines_atomic

PROMPT_ROLES = ("system", "user")
STATUS_ALIASES = {"success": "ok", "failure": "error"}


class PurifyInputError(ValueError):
    """A malformed input record; the message names the file and line."""


_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Z]\w*(?:Error|Exception|Exit|Interrupt))\b(?::.*)?$")
_TIMEOUT_LINE = re.compile(r"(?i)\b(timed out|time limit exceeded|execution timeout)\b")


def classify_output(output: str) -> ToolResult:
    """Status of a tool output that carries no explicit status (see the module docstring)."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    exceptions = [m.group(1) for ln in lines if (m := _EXCEPTION_LINE.match(ln))]
    if exceptions and (_EXCEPTION_LINE.match(last) or "Traceback (most recent call last)" in output):
        name = exceptions[-1]
        if name == "TimeoutError":
            return ToolResult("timeout", output, name)
        if name == "MemoryError":
            return ToolResult("memory_limit", output, name)
        return ToolResult("error", output, name)
    if _TIMEOUT_LINE.search(last):
        return ToolResult("timeout", output, "Timeout")
    return ToolResult("ok", output)


def _status(tool_msg: dict[str, Any], call: chat.ParsedCall, where: str) -> ToolResult:
    content = tool_msg["content"]
    if "status" in tool_msg:
        status = STATUS_ALIASES.get(tool_msg["status"], tool_msg["status"])
        if status not in STATUSES:
            raise PurifyInputError(f"{where}: unknown tool status {tool_msg['status']!r}; valid: "
                                   f"{', '.join(STATUSES + tuple(STATUS_ALIASES))}")
        error_type = tool_msg.get("error_type") or (classify_output(content).error_type if status == "error" else None)
        return ToolResult(status, content, error_type)
    if call.malformed:
        return ToolResult("malformed", content, "MalformedToolCall")
    return classify_output(content)


def trajectory_from_messages(record: dict[str, Any], tokenizer: Any, fmt: chat.ChatFormat, where: str) -> Trajectory:
    """Token-level trajectory of one logged record. Each assistant message is encoded whole and split with
    `chat.split_turn`, exactly as a sampled turn would be."""
    messages = record["messages"]
    first = _first_assistant(messages)
    if first in (0, len(messages)):
        raise PurifyInputError(f"{where}: needs prompt messages ({'/'.join(PROMPT_ROLES)}) and then an assistant message")
    for k, m in enumerate(messages[:first]):
        if m.get("role") not in PROMPT_ROLES:
            raise PurifyInputError(f"{where}: message {k} has role {m.get('role')!r} before the first assistant "
                                   f"message; valid there: {', '.join(PROMPT_ROLES)}")
    prompt = chat.prompt_span(tokenizer, messages[:first])
    im_end = tokenizer.convert_tokens_to_ids(chat.IM_END)
    turns, k = [], first
    while k < len(messages):
        m = messages[k]
        if m.get("role") != "assistant":
            raise PurifyInputError(f"{where}: message {k} has role {m.get('role')!r}; after the prompt only "
                                   "assistant messages, each followed by a tool message when it calls a tool, are valid")
        split = chat.split_turn(tokenizer, tokenizer.encode(m["content"], add_special_tokens=False) + [im_end], None, fmt)
        nxt = messages[k + 1] if k + 1 < len(messages) else None
        meta = {"assistant": _extra(m)}
        if split.parsed is None:
            if nxt is not None:
                raise PurifyInputError(f"{where}: message {k} makes no tool call ({fmt.name} format), so it must be "
                                       f"the last message, but message {k + 1} (role {nxt.get('role')!r}) follows")
            turns.append(Turn(split.reasoning, split.stop, meta=meta))
            break
        code = split.parsed.code
        result, observation = None, None
        if nxt is not None and nxt.get("role") == "tool":
            result = _status(nxt, split.parsed, f"{where}: message {k + 1}")
            observation = chat.observation_span(tokenizer, fmt, nxt["content"])
            meta["tool"] = _extra(nxt)
            k += 2
        elif nxt is None:
            result = chat.malformed_result(split.parsed) if split.parsed.malformed else None
            k += 1
        else:
            raise PurifyInputError(f"{where}: message {k} makes a tool call, so message {k + 1} must be a tool "
                                   f"message, not role {nxt.get('role')!r}")
        turns.append(Turn(split.reasoning, split.stop, split.call, code, result, observation, meta=meta))
    extra = {key: v for key, v in record.items() if key not in ("id", "messages")}
    return Trajectory(str(record["id"]), prompt, tuple(turns), meta=extra)


def _first_assistant(messages: list[dict[str, Any]]) -> int:
    return next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))


def _extra(message: dict[str, Any]) -> dict[str, Any]:
    return {key: v for key, v in message.items() if key not in ("role", "content")}


def purify_turns(turns: tuple[Turn, ...], cfg: saar.SaarConfig, applies: bool) -> tuple[tuple[Turn, ...], saar.SaarStats]:
    """Walk the logged turns once; at each model error (when SAAR applies) run one failure event over the next
    turns with `saar.step`, and keep what it leaves in place."""
    stats = saar.SaarStats(saar_applied=applies)
    out: list[Turn] = []
    i = 0
    while i < len(turns):
        turn = turns[i]
        i += 1
        stats.count_call(turn, lookahead=False)
        if not (applies and saar.triggers(turn.result)):
            out.append(turn)
            continue
        stats.count_trigger(turn)
        in_place, outcome, retries = turn, None, 0
        while outcome is None:
            if i == len(turns):
                outcome = saar.Outcome.ABANDONED
                break
            retries += 1
            in_place, outcome = saar.step(in_place, turns[i], retries, cfg)
            if outcome is not saar.Outcome.ABANDONED:
                stats.count_call(turns[i], lookahead=True)
                i += 1
        stats.count_outcome(outcome)
        out.append(in_place)
    stats.count_final(out)
    return tuple(out), stats


def purify(traj: Trajectory, cfg: saar.SaarConfig, seed: int) -> Trajectory:
    turns, stats = purify_turns(traj.turns, cfg, saar.applies_to(cfg, seed, traj.id))
    return Trajectory(traj.id, traj.prompt, turns, stats.to_dict(), traj.meta)


def to_messages(turns: tuple[Turn, ...]) -> list[dict[str, Any]]:
    out = []
    for turn in turns:
        out.append({"role": "assistant", "content": turn.content, **turn.meta.get("assistant", {})})
        if turn.observation is not None:
            assert turn.result is not None
            out.append({"role": "tool", "content": turn.result.output, **turn.meta.get("tool", {})})
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    """Parse and check every line before anything is done with them."""
    records, seen = [], set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PurifyInputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PurifyInputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("messages"), list):
            raise PurifyInputError(f'{where}: expected an object {{"id": ..., "messages": [...]}}')
        if str(record["id"]) in seen:
            raise PurifyInputError(f"{where}: duplicate id {record['id']!r}")
        seen.add(str(record["id"]))
        for k, m in enumerate(record["messages"]):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise PurifyInputError(f"{where}: message {k} must be an object with a string 'content'")
        records.append(record)
    return records


@dataclass(frozen=True)
class Report:
    trajectories: int
    tokens_before: int
    tokens_after: int
    stats: dict[str, Any]
    tokenizer: str

    def table(self) -> str:
        s = self.stats
        removed = self.tokens_before - self.tokens_after
        share = removed / self.tokens_before if self.tokens_before else 0.0
        rows = [
            ("trajectories", self.trajectories),
            ("SAAR applied (draw with p)", s.get("saar_applied", 0)),
            ("first-attempt calls", s.get("first_attempt_calls", 0)),
            ("first-attempt failures (model errors)", s.get("first_attempt_failures", 0)),
            ("infrastructure failures (never trigger)", s.get("infra_failures", 0)),
            ("rollbacks triggered", s.get("rollbacks_triggered", 0)),
            ("  recovered", s.get("rollbacks_recovered", 0)),
            ("  exhausted (K retries failed)", s.get("rollbacks_exhausted", 0)),
            ("  abandoned (retry made no call)", s.get("rollbacks_abandoned", 0)),
            ("  interrupted (infrastructure)", s.get("rollbacks_interrupted", 0)),
            ("splices shallow", s.get("splices_shallow", 0)),
            ("splices deep", s.get("splices_deep", 0)),
            ("failures left in final trajectories", s.get("final_failures", 0)),
            (f"tokens before -> after ({self.tokenizer} tokenizer)", f"{self.tokens_before} -> {self.tokens_after}"),
            ("tokens removed", f"{removed} ({share:.1%})"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value:>14}" for name, value in rows)


def run(
    src: Path,
    dst: Path,
    cfg: saar.SaarConfig,
    seed: int = 0,
    fmt: str = "hermes",
    tokenizer: str | None = None,
) -> Report:
    records = read_records(src)
    tok = load_tokenizer(tokenizer or "lab")
    chat_format = chat.get_format(fmt)
    originals = [trajectory_from_messages(r, tok, chat_format, f"{src}:{r['id']}") for r in records]
    purified = [purify(t, cfg, seed) for t in originals]
    out_records = []
    for record, traj in zip(records, purified):
        prompt = record["messages"][: _first_assistant(record["messages"])]
        out_records.append({**record, "messages": prompt + to_messages(traj.turns), "purification": traj.stats})
    write_lines_atomic(dst, (json.dumps(r, ensure_ascii=False) for r in out_records))
    if tokenizer is not None:
        write_jsonl(dst.with_name(dst.name.removesuffix(".jsonl") + ".tokens.jsonl"), purified)
    return Report(
        trajectories=len(purified),
        tokens_before=sum(len(t.ids) for t in originals),
        tokens_after=sum(len(t.ids) for t in purified),
        stats=saar.SaarStats.total([t.stats for t in purified]),
        tokenizer=tokenizer or "lab",
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cleaner.purify", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, metavar="IN.jsonl")
    p.add_argument("dst", type=Path, metavar="OUT.jsonl")
    d = saar.SaarConfig()
    p.add_argument("--gamma", type=float, default=d.gamma, help="shallow splice when similarity >= gamma (default 0.5)")
    p.add_argument("--similarity", default=d.similarity, help="difflib_code (default), difflib_segment, token, ast")
    p.add_argument("--max-retries", type=int, default=d.max_retries, help="K, lookahead retries per failure (default 3)")
    p.add_argument("--rollback-probability", type=float, default=d.rollback_probability, help="p (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seeds the per-trajectory draw with probability p")
    p.add_argument("--format", default="hermes", help="tool-call format: hermes (default) or markdown")
    p.add_argument("--tokenizer", help="`lab` or a local Hugging Face tokenizer folder; also writes OUT.tokens.jsonl")
    args = p.parse_args(argv)
    try:
        cfg = saar.SaarConfig(True, args.gamma, args.max_retries, args.rollback_probability, args.similarity)
        chat.get_format(args.format)
        report = run(args.src, args.dst, cfg, args.seed, args.format, args.tokenizer)
    except (PurifyInputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"purified {args.src} -> {args.dst}")
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
