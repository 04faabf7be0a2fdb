"""Loss aggregation: a per-token loss matrix and its mask to one scalar. Separate from the loss formulas.

Registry (`AGGREGATIONS`), each `fn(loss_per_token, response_mask, *, global_num_tokens, global_num_seqs,
loss_scale_factor) -> scalar`; a mode ignores the keywords it does not use. Definitions follow verl 0.9.1's
`agg_loss` (m is the mask, S the sequences with at least one masked-in token):
- `token-mean` (paper default, "token-mean loss", DAPO): sum_{i,t} m l / N, N = number of masked-in tokens.
- `token-sum`: sum_{i,t} m l.
- `seq-mean-token-mean`: mean over S of each sequence's token mean.
- `seq-mean-token-sum`: mean over S of each sequence's token sum.
- `seq-mean-token-sum-norm` (Dr. GRPO): `seq-mean-token-sum` / loss_scale_factor; when it is None, the padded
  length T, as verl. T changes with the longest response of a batch, so pass a constant (max_response_tokens)
  to keep the scale fixed over training.

Global counts: one optimizer step may sum the aggregated losses of several micro-batches. Pass the step's
`global_num_tokens` (token modes) or `global_num_seqs` (seq modes) so the summed micro-batch losses equal the
loss of the whole mini-batch, as verl's `batch_num_tokens` / `global_batch_size`. When left None, this batch's own
count is used.

Departures from verl: no `dp_size` factor (verl multiplies by it because data-parallel gradient averaging divides
by it; this is a single process). A zero denominator (no masked-in token or sequence and no global count) raises
ValueError instead of returning NaN. The per-sequence token mean divides by max(n_i, 1) instead of n_i + 1e-8,
which differs from verl by a relative 1e-8 / n_i. Masked-out entries never reach the sum, even when NaN or inf,
as verl's `masked_sum`; mask values multiply the loss (a 0/1 mask is the intended use).
"""

from __future__ import annotations

from typing import Protocol

import torch

from cleaner.registry import Registry

Count = int | torch.Tensor


class AggregationFn(Protocol):
    def __call__(self, loss_per_token: torch.Tensor, response_mask: torch.Tensor, *,
                 global_num_tokens: Count | None = None, global_num_seqs: Count | None = None,
                 loss_scale_factor: float | None = None) -> torch.Tensor: ...


AGGREGATIONS = Registry("loss_agg_mode")
register = AGGREGATIONS.register
get = AGGREGATIONS.__getitem__


def aggregate(loss_per_token: torch.Tensor, response_mask: torch.Tensor, loss_agg_mode: str, *,
              global_num_tokens: Count | None = None, global_num_seqs: Count | None = None,
              loss_scale_factor: float | None = None) -> torch.Tensor:
    """loss_per_token [B, T], response_mask [B, T] -> scalar, by `loss_agg_mode`."""
    return get(loss_agg_mode)(loss_per_token, response_mask, global_num_tokens=global_num_tokens,
                              global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor)


def _masked(loss_per_token: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    # [B, T], [B, T] -> [B, T]: loss times mask, masked-out entries exactly 0 even if the loss there is NaN/inf
    if loss_per_token.dim() != 2 or loss_per_token.shape != response_mask.shape:
        raise ValueError(f"loss_per_token and response_mask must both be [B, T], got {tuple(loss_per_token.shape)} "
                         f"and {tuple(response_mask.shape)}")
    mask = response_mask.to(loss_per_token.dtype)
    return torch.where(response_mask.bool(), loss_per_token, torch.zeros_like(loss_per_token)) * mask


def _denominator(local: torch.Tensor, global_count: Count | None, what: str) -> Count:
    count = local if global_count is None else global_count
    if not count > 0:
        raise ValueError(f"cannot average over {what}: the count is {count} "
                         f"({'given' if global_count is not None else 'no masked-in entries in this batch'})")
    return count


@register("token-mean")
def token_mean(loss_per_token: torch.Tensor, response_mask: torch.Tensor, *, global_num_tokens: Count | None = None,
               global_num_seqs: Count | None = None, loss_scale_factor: float | None = None) -> torch.Tensor:
    """[B, T], [B, T] -> scalar: sum of masked losses / (global_num_tokens or the mask's sum)."""
    masked = _masked(loss_per_token, response_mask)
    return masked.sum() / _denominator(response_mask.to(masked.dtype).sum(), global_num_tokens, "tokens")


@register("token-sum")
def token_sum(loss_per_token: torch.Tensor, response_mask: torch.Tensor, *, global_num_tokens: Count | None = None,
              global_num_seqs: Count | None = None, loss_scale_factor: float | None = None) -> torch.Tensor:
    """[B, T], [B, T] -> scalar: sum of masked losses."""
    return _masked(loss_per_token, response_mask).sum()


def _seq_mean(per_seq: torch.Tensor, response_mask: torch.Tensor, global_num_seqs: Count | None) -> torch.Tensor:
    # per_seq [B] (0 for fully masked rows) -> scalar: sum / (global_num_seqs or number of non-empty rows)
    non_empty = (response_mask.to(per_seq.dtype).sum(dim=-1) > 0).to(per_seq.dtype).sum()
    return per_seq.sum() / _denominator(non_empty, global_num_seqs, "sequences")


@register("seq-mean-token-mean")
def seq_mean_token_mean(loss_per_token: torch.Tensor, response_mask: torch.Tensor, *,
                        global_num_tokens: Count | None = None, global_num_seqs: Count | None = None,
                        loss_scale_factor: float | None = None) -> torch.Tensor:
    """[B, T], [B, T] -> scalar: mean over non-empty sequences of each one's token mean."""
    masked = _masked(loss_per_token, response_mask)
    num_tokens = response_mask.to(masked.dtype).sum(dim=-1)  # [B]
    per_seq = masked.sum(dim=-1) / num_tokens.clamp_min(1)  # [B]
    return _seq_mean(per_seq, response_mask, global_num_seqs)


@register("seq-mean-token-sum")
def seq_mean_token_sum(loss_per_token: torch.Tensor, response_mask: torch.Tensor, *,
                       global_num_tokens: Count | None = None, global_num_seqs: Count | None = None,
                       loss_scale_factor: float | None = None) -> torch.Tensor:
    """[B, T], [B, T] -> scalar: mean over non-empty sequences of each one's token sum."""
    per_seq = _masked(loss_per_token, response_mask).sum(dim=-1)  # [B]
    return _seq_mean(per_seq, response_mask, global_num_seqs)


@register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss_per_token: torch.Tensor, response_mask: torch.Tensor, *,
                            global_num_tokens: Count | None = None, global_num_seqs: Count | None = None,
                            loss_scale_factor: float | None = None) -> torch.Tensor:
    """[B, T], [B, T] -> scalar: `seq-mean-token-sum` / (loss_scale_factor or T)."""
    scale = loss_per_token.shape[-1] if loss_scale_factor is None else loss_scale_factor
    if not scale > 0:
        raise ValueError(f"loss_scale_factor must be > 0, got {scale}")
    return seq_mean_token_sum(loss_per_token, response_mask, global_num_seqs=global_num_seqs) / scale
