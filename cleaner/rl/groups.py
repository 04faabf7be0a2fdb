"""Group ids to dense group indices, shared by the advantage estimators and DAPO's dynamic sampling.

A group is the set of responses sampled for one prompt (GRPO's G, `group_size` 16 in the paper). Callers identify
groups by anything hashable: verl passes a numpy array of uid strings, the lab trainer an int tensor. Group members
need not be adjacent in the batch.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Union

import numpy as np
import torch

GroupIds = Union[torch.Tensor, np.ndarray, Sequence[Hashable]]


def group_index(group_ids: GroupIds, batch_size: int) -> tuple[torch.Tensor, int]:
    """Dense indices of `group_ids`, numbered in order of first appearance.

    group_ids [B] (int tensor, numpy array or sequence of hashables) -> (index [B] int64 on CPU in 0..G-1, G).
    """
    if isinstance(group_ids, torch.Tensor):
        if group_ids.dim() != 1 or group_ids.is_floating_point() or group_ids.is_complex():
            raise ValueError(f"group_ids tensor must be 1-D integer, got shape {tuple(group_ids.shape)} "
                             f"dtype {group_ids.dtype}")
        keys = group_ids.tolist()
    elif isinstance(group_ids, np.ndarray):
        if group_ids.ndim != 1:
            raise ValueError(f"group_ids array must be 1-D, got shape {group_ids.shape}")
        keys = group_ids.tolist()
    else:
        keys = list(group_ids)
    if len(keys) != batch_size:
        raise ValueError(f"got {len(keys)} group ids for a batch of {batch_size}")
    ordinal: dict[Hashable, int] = {}
    index = [ordinal.setdefault(key, len(ordinal)) for key in keys]
    return torch.tensor(index, dtype=torch.int64), len(ordinal)
