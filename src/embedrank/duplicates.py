"""Ids that appear in more than one shard: found after the shards commit, without gathering ids on the driver.

Within a shard, the prepare step dead-letters later copies of an id as it reads. Across shards nothing sees
two shards at once, so the run checks the committed output before it publishes: each shard's ids are hashed
into partitions by a task of their own, each partition is searched for hashes held by two or more shards, and
only those (few) pairs reach the driver. The copy in the first shard (in shard-key order) stays; the copies in
later shards are moved to `_rejected/` as `duplicate_id`, and those shards are committed again.

The functions here are pure (numpy and pyarrow); the pipeline runs them as Ray tasks.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAIR = np.dtype([("hash", np.uint64), ("shard", np.int32)])


def id_hashes(ids) -> np.ndarray:
    """64-bit hashes of ids (as strings), stable across processes and runs."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little")
                        for i in ids), dtype=np.uint64, count=len(ids))


def partition(hashes: np.ndarray, shard: int, parts: int) -> list[np.ndarray]:
    """One shard's distinct hashes, split into `parts` partitions by hash: a list of PAIR arrays."""
    distinct = np.unique(hashes)
    pairs = np.empty(distinct.size, dtype=PAIR)
    pairs["hash"], pairs["shard"] = distinct, shard
    which = (distinct % np.uint64(parts)).astype(np.int64)
    return [pairs[which == p] for p in range(parts)]


def shared_hashes(*parts: np.ndarray) -> np.ndarray:
    """Of one partition of every shard: the (hash, shard) pairs whose hash is held by two or more shards."""
    pairs = np.concatenate(parts) if parts else np.empty(0, dtype=PAIR)
    if pairs.size == 0:
        return pairs
    hashes, counts = np.unique(pairs["hash"], return_counts=True)
    return pairs[np.isin(pairs["hash"], hashes[counts > 1])]


def later_copies(pairs: np.ndarray) -> dict[int, set[int]]:
    """shard index -> hashes to drop there: every shard holding a shared hash but the first (lowest index)."""
    holders: dict[int, list[int]] = defaultdict(list)
    for h, shard in zip(pairs["hash"].tolist(), pairs["shard"].tolist()):
        holders[h].append(shard)
    drop: dict[int, set[int]] = defaultdict(set)
    for h, shards in holders.items():
        for shard in sorted(set(shards))[1:]:
            drop[shard].add(h)
    return dict(drop)


def split_rows(table: pa.Table, drop: set[int]) -> tuple[pa.Table, pa.Table]:
    """(rows to keep, rows whose id hash is in `drop`) of one shard's committed rows."""
    mask = np.isin(id_hashes(table.column("id").to_pylist()), np.fromiter(drop, dtype=np.uint64, count=len(drop)))
    flags = pa.array(mask)
    return table.filter(pc.invert(flags)), table.filter(flags)
