"""Training order and augmentation as pure functions of (seed, epoch, position).

A run resumed from any epoch-end checkpoint replays exactly the batches and
augmentations an uninterrupted run would have drawn, whatever ran before and
however many DataLoader workers (persistent or not) do the loading. Under DDP
each process takes its own share (Lightning's sampler replacement is off:
`use_distributed_sampler: false` in `conf/trainer/default.yaml`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class SeededShuffleSampler(Sampler[tuple[int, int]]):
    """Shuffles `0..n-1` anew each epoch and pairs every index with an augmentation seed.

    Lightning calls `set_epoch` as each epoch starts (also after a resume); the
    dataset receives `(index, seed)` keys and seeds its augmentation with `seed`.
    With `repeats > 1` each image appears that many times per epoch (each time
    a different random patch): useful for few, large images.
    """

    def __init__(
        self, num_samples: int, seed: int, repeats: int = 1, rank: int = 0, world_size: int = 1
    ) -> None:
        if repeats < 1:
            raise ValueError(f"data.train_repeats must be >= 1, got {repeats}")
        self.total = num_samples * repeats
        self.size = num_samples
        self.seed = int(seed)
        self.rank, self.world_size = rank, world_size
        self.num_samples = -(-self.total // world_size)  # this process's share, rounded up
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.total) % self.size
        seeds = rng.integers(0, 2**31 - 1, self.total)
        # pad so every process gets as many batches (the first items again), then deal
        pad = self.num_samples * self.world_size - self.total
        order, seeds = np.concatenate([order, order[:pad]]), np.concatenate([seeds, seeds[:pad]])
        share = slice(self.rank, None, self.world_size)
        return iter(zip(order[share].tolist(), seeds[share].tolist(), strict=True))


class UnsizedShardSampler(Sampler[int]):
    """Validation and test under DDP: process `rank` takes items rank, rank + world, ...,
    with no length: for a split smaller than the process count (`ShardSampler` otherwise).

    Lightning skips the evaluation loop of a process whose loader has length 0, and that
    process then misses the epoch-end sums the others wait for. Without a length every
    process runs the loop (an empty share: no step, and its zero counts in the sums).
    Every process must choose this class alike (Lightning sums the lengths across them).
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


class ShardSampler(UnsizedShardSampler):
    """`UnsizedShardSampler`'s shares, with their length.

    Nothing is repeated to even out the shares, so metrics summed over processes
    count every image exactly once. The shares may differ by one, and a split with
    fewer images than processes leaves some processes none: `UnsizedShardSampler`.
    """

    def __len__(self) -> int:
        return len(self.indices)
