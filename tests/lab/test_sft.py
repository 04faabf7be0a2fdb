"""SFT schedule and batching."""

from __future__ import annotations

import random

import pytest

from cleaner.lab.sft import length_buckets, lr_at
from cleaner.lab.config import SftConfig


def test_learning_rate_schedule_by_hand():
    cfg = SftConfig(lr=1.0, warmup_steps=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)  # (0 + 1) / 10
    assert lr_at(9, cfg) == pytest.approx(1.0)  # end of warm-up
    assert lr_at(10, cfg) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(60, cfg) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert lr_at(110, cfg) == pytest.approx(0.1)  # floor at 10%


def test_length_buckets_cover_an_epoch_with_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(50, 400) for _ in range(1000)]
    batches = length_buckets(lengths, batch_size=10, rng=random.Random(1), window=5)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 1000 and all(len(b) == 10 for b in batches)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    random_spread = sum(max(lengths[k:k + 10]) - min(lengths[k:k + 10]) for k in range(0, 1000, 10)) / 100
    assert spread < random_spread / 2  # sorted windows pad far less than random batches
    assert batches != length_buckets(lengths, batch_size=10, rng=random.Random(2), window=5)


def test_config_hash_changes_with_any_field():
    assert SftConfig().hash() != SftConfig(steps=801).hash() != SftConfig(data_version=2).hash()
    assert SftConfig().hash() == SftConfig().hash()
