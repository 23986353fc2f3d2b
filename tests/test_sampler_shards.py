"""Evaluation shards under DDP cover every image once, also when a split is smaller than the
process count (a real two-process run with a 1-image test split: `test_ddp.py`)."""

from __future__ import annotations

import pytest

from unet_seg.data.sampler import ShardSampler, UnsizedShardSampler


def test_shards_cover_every_image_once() -> None:
    for sampler in (ShardSampler, UnsizedShardSampler):
        for n, world in ((1, 2), (3, 2), (5, 4)):
            shares = [list(sampler(n, rank, world)) for rank in range(world)]
            assert sorted(sum(shares, [])) == list(range(n)), (sampler, n, world)
    with pytest.raises(TypeError):  # no length: Lightning then runs every process's loop
        len(UnsizedShardSampler(1, 1, 2))
