"""The update's length-grouped micro-batches (`cleaner.lab.trainer._log_probs`) compute the mini-batch's loss and
gradient as one right-padded forward of the whole mini-batch did, up to float order.

Deliberate bugs these tests were seen to catch (each made by hand in `cleaner/lab/trainer.py`, then reverted):
each micro-batch cut one column short (`width - 1`); the log-probs put back in the wrong rows (`index` reversed);
a run left out of the partition (`runs[1:]`)."""

from __future__ import annotations

import random

import pytest
import torch

from cleaner.lab.model import tiny_qwen3
from cleaner.lab.trainer import _log_probs
from cleaner.rollout.recompute import length_chunks
from cleaner.rl.losses import PolicyLossConfig, policy_loss

TOL = 1e-5  # float32: another batch shape changes sums in the last digits


def whole_batch_log_probs(model, ids: torch.Tensor, attention: torch.Tensor, temperature: float) -> torch.Tensor:
    """The reference: one forward of the whole right-padded mini-batch (the trainer's code before micro-batches)."""
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def test_length_chunks_by_hand():
    assert length_chunks([10, 100, 10], overhead_tokens=5) == [[0, 2], [1]]  # 2 * 10 + 100 + 10 < 3 * 100 + 5
    assert length_chunks([10, 100, 10], overhead_tokens=500) == [[0, 2, 1]]  # one forward: 300 + 500 < 120 + 1000
    assert length_chunks([7], overhead_tokens=0) == [[0]]
    rng = random.Random(0)
    lengths = [rng.randrange(20, 300) for _ in range(32)]
    runs = length_chunks(lengths)
    assert sorted(i for run in runs for i in run) == list(range(32))  # each row once
    assert [lengths[run[0]] for run in runs] == sorted(lengths[run[0]] for run in runs)  # runs in length order
    padded = sum(len(run) * max(lengths[i] for i in run) for run in runs)
    assert padded < 32 * max(lengths) and len(runs) > 1


@pytest.fixture(scope="module")
def model(tok):
    torch.set_num_threads(1)
    return tiny_qwen3(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, seed=0).train()


def mini_batch(tok, lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ids [B, L], attention [B, L], and a loss mask, old log-probs and advantages [B, L - 1]."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), tok.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(lengths), width), dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(10, len(tok), (n,), generator=gen)
        attention[b, :n] = 1
    mask = attention[:, 1:].float() * (torch.arange(width - 1) >= 8).float()  # a "prompt" of 9 tokens
    old = -torch.rand((len(lengths), width - 1), generator=gen) * 8
    advantages = torch.randn((len(lengths), 1), generator=gen).expand(-1, width - 1) * mask
    return {"ids": ids, "attention": attention, "mask": mask, "old": old, "advantages": advantages}


def loss_and_gradient(model, log_probs, batch, config) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    lp = log_probs(model, batch["ids"], batch["attention"], 0.8)
    loss, _ = policy_loss(lp, batch["old"], batch["advantages"], batch["mask"], config)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("loss_agg_mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batched_loss_and_gradient_equal_the_whole_batch(tok, model, loss_agg_mode):
    lengths = [12, 60, 61, 14, 30, 200, 13, 59]
    batch = mini_batch(tok, lengths)
    assert len(length_chunks(lengths)) > 1  # the forward is split
    lp, ref = (f(model, batch["ids"], batch["attention"], 0.8) for f in (_log_probs, whole_batch_log_probs))
    real = batch["attention"][:, 1:].bool()
    assert torch.allclose(lp[real], ref[real], atol=TOL)  # past a row's end the loss mask is 0
    config = PolicyLossConfig(loss_agg_mode=loss_agg_mode)
    loss, grad = loss_and_gradient(model, _log_probs, batch, config)
    ref_loss, ref_grad = loss_and_gradient(model, whole_batch_log_probs, batch, config)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert ref_grad.abs().max() > 0
    assert torch.allclose(grad, ref_grad, atol=1e-6 * ref_grad.abs().max().item(), rtol=1e-4)
