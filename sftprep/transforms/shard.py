"""Deterministic split and shard assignment from the example id (stable across rebuilds).

>>> assign("0123456789abcdef0123456789abcdef", seed=0, validation_fraction=0.0, num_shards=4)
('train', 3)
"""

from __future__ import annotations

import hashlib
from typing import Tuple


def assign(example_id: str, seed: int, validation_fraction: float, num_shards: int,
           validation_shards: int = 1) -> Tuple[str, int]:
    """(split, shard index). Identical examples land in the same shard, where they are deduplicated."""
    digest = hashlib.sha256(f"{seed}:{example_id}".encode("ascii")).digest()
    split_draw, shard_draw = int.from_bytes(digest[:8], "big"), int.from_bytes(digest[8:16], "big")
    if split_draw < validation_fraction * 2.0**64:
        return "validation", shard_draw % validation_shards
    return "train", shard_draw % num_shards


def shard_name(index: int, count: int, suffix: str) -> str:
    return f"part-{index:05d}-of-{count:05d}{suffix}"
