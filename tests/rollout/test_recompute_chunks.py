"""`recompute` with a prompt's responses in groups of like lengths equals `full_recompute` (whole sequences, one
padded batch) when the lengths differ enough to split a group.

Deliberate bugs this test was seen to catch (each made by hand in `cleaner/rollout/recompute.py`, then reverted):
the prompt's cache repeated for the whole group instead of the chunk; a chunk's log-probs written to the rows of
the group's order instead of the chunk's."""

from __future__ import annotations

import random

import pytest
import torch

from cleaner.lab.model import tiny_qwen3
from cleaner.rollout.recompute import full_recompute, length_chunks, recompute
from cleaner.trajectory import Provenance, Span, Trajectory, Turn

TOL = 1e-5  # float32 on CPU: another batch shape changes log-probs in the last digits only


def test_recompute_in_length_groups_equals_full_recompute(tok):
    torch.set_num_threads(1)
    model = tiny_qwen3(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0)
    rng = random.Random(0)
    trajs = []
    for g, prompt_tokens in enumerate((30, 12)):
        prompt = Span(Provenance.PROMPT, tuple(rng.randrange(10, len(tok)) for _ in range(prompt_tokens)), "")
        for k, n in enumerate((5, 160, 7, 150, 6, 9)):
            ids = tuple(rng.randrange(10, len(tok)) for _ in range(n))
            turn = Turn(Span(Provenance.ORIGINAL, ids, "", (0.0,) * n), Span(Provenance.ORIGINAL, (), "", ()))
            trajs.append(Trajectory(f"g{g}/{k}", prompt, (turn,)))
    assert len(length_chunks([5, 160, 7, 150, 6, 9])) > 1  # each prompt's responses run in more than one forward
    reused, full = recompute(model, trajs, tok.pad_token_id), full_recompute(model, trajs, tok.pad_token_id)
    for t, a, b in zip(trajs, reused, full):
        assert len(a) == len(b) == len(t.ids) - len(t.prompt)
        assert a == pytest.approx(b, abs=TOL)
