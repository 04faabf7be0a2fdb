"""Trajectory data model: alignment by construction, the loss mask, and a lossless JSONL round trip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleaner.purify import purify_turns
from cleaner.saar import SaarConfig
from cleaner.trajectory import Provenance, Span, ToolResult, Trajectory, Turn, read_jsonl, write_jsonl


def test_span_rejects_misaligned_logprobs():
    with pytest.raises(ValueError, match="3 ids but 2 log-probs"):
        Span(Provenance.ORIGINAL, (1, 2, 3), "abc", (-0.1, -0.2))


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="unknown tool status 'crashed'"):
        ToolResult("crashed", "")


def test_loss_mask_is_one_only_for_sampled_provenance():
    assert [p.value for p in Provenance if p.trained] == ["original", "spliced_shallow", "spliced_deep"]


def test_flat_logprobs_are_none_when_a_sampled_span_has_none(make):
    t = make.turn("Go.\n", "print(1)", "ok", "1")
    traj = Trajectory("x", make.prompt(), (t,))
    assert traj.logprobs is not None
    unscored = Trajectory("x", make.prompt(), (Turn(Span(Provenance.ORIGINAL, (5,), "x"), t.stop),))
    assert unscored.logprobs is None


STATUS = st.sampled_from(["ok", "error", "timeout", "malformed", "infra_error"])


@settings(max_examples=40, deadline=None)
@given(statuses=st.lists(STATUS, min_size=1, max_size=8), gamma=st.floats(0, 1), k=st.integers(0, 4),
       final_answer=st.booleans())
def test_alignment_and_round_trip_hold_after_any_purification(make, tmp_path_factory, statuses, gamma, k, final_answer):
    codes = ["x = 1/0", "print(sum(range(10)))", "print(10 // 2)", "import numpy", "v = [1, 2]\nprint(v)"]
    turns = [make.turn(f"Step {i}.\n", codes[i % len(codes)], s, f"out {i}", "ValueError" if s == "error" else None)
             for i, s in enumerate(statuses)]
    if final_answer:
        turns.append(make.turn("Done: \\boxed{1}."))
    original = Trajectory("p", make.prompt(), tuple(turns))
    out, stats = purify_turns(original.turns, SaarConfig(gamma=gamma, max_retries=k), applies=True)
    traj = Trajectory("p", original.prompt, out, stats.to_dict(), {"answer": "1"})
    ids, mask, lps, prov = traj.ids, traj.loss_mask, traj.logprobs, traj.provenance
    assert len(ids) == len(mask) == len(lps) == len(prov)
    assert mask == [int(p.trained) for p in prov]
    assert all(lp == 0.0 for lp, m in zip(lps, mask) if m == 0) and all(lp < 0 for lp, m in zip(lps, mask) if m == 1)
    assert stats.tokens_removed == len(original.ids) - len(ids)
    # every sampled log-prob still sits on the token it was sampled with
    sampled = {(lp, i) for s in original.spans() if s.logprobs for lp, i in zip(s.logprobs, s.ids)}
    assert {(lp, i) for lp, i, m in zip(lps, ids, mask) if m} <= sampled
    path = tmp_path_factory.mktemp("rt") / "t.jsonl"
    write_jsonl(path, [traj, original])
    assert read_jsonl(path) == [traj, original]
