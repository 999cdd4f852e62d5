"""Which examples each process trains on, batch by batch: seeded epoch orders and their data-parallel shards.

Re-exported by :mod:`headstart.training.loop`, whose tasks build their ``batches(epoch)`` hooks with them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

__all__ = ["process_rank", "shard_batches", "shuffled_batches"]


def process_rank() -> int:
    """This process's global rank in a data-parallel run (Fabric's launcher or torchrun set RANK/LOCAL_RANK);
    0 in a plain process. Valid before Fabric is created, so callers can decide who writes files."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def shard_batches(batches: Sequence[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Every ``world_size``-th batch from ``rank``; the list is padded by wrapping around so every process runs
    the same number of steps (data-parallel processes synchronise at each step).

    >>> shard_batches([[0], [1], [2]], 1, 2)
    [[1], [0]]
    """
    per_process = math.ceil(len(batches) / world_size)
    padded = list(batches) + list(batches[: per_process * world_size - len(batches)])
    return padded[rank::world_size]


def shuffled_batches(n_items: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The items of one epoch in a seeded random order, cut into batches (the last one may be smaller).

    >>> shuffled_batches(5, 2, seed=0, epoch=0) == shuffled_batches(5, 2, seed=0, epoch=0)
    True
    """
    order = np.random.default_rng([seed, epoch]).permutation(n_items).tolist()
    return [order[start:start + batch_size] for start in range(0, n_items, batch_size)]
