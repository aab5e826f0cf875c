"""Ids that appear in more than one piece of input: found after the shards commit, without gathering ids on
the driver.

Within a piece of a file (io/pieces.py; a small file is one piece), the prepare step dead-letters later copies
of an id as it reads. Across pieces and files nothing sees two at once, so the run checks the committed output
before it publishes: each piece's ids are hashed into partitions by a task of their own, each partition is
searched for hashes held by two or more pieces, and only those (few) pairs reach the driver. The copy in the
first piece (in shard-key, then piece order) stays; the later copies are moved to `_rejected/` as
`duplicate_id`, and those shards are committed again.

The hashing and matching functions are pure (numpy and pyarrow); `drop_cross_shard_duplicates` runs them as
Ray tasks from the driver.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..io import storage
from ..io.parquet import read_tables, write_table
from ..report import RunReport
from ..runtime import cluster
from ..runtime.commits import records_digest
from ..runtime.staging import STAGED_SUFFIX
from ..runtime.store import MANIFEST, OutputStore
from ..schema import DUPLICATE_ID

PARTITIONS = 16  # hash partitions of the check: each is searched by a task of its own
MAX_HASH_TASKS = 64  # tasks that hash the ids of the committed pieces (each hashes a group of pieces)

PAIR = np.dtype([("hash", np.uint64), ("shard", np.int32)])


def id_hashes(ids) -> np.ndarray:
    """64-bit hashes of ids (as strings), stable across processes and runs."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def partition(hashes: np.ndarray, shard: int, parts: int) -> list[np.ndarray]:
    """One shard's distinct hashes, split into `parts` partitions by hash: a list of PAIR arrays."""
    distinct = np.unique(hashes)
    pairs = np.empty(distinct.size, dtype=PAIR)
    pairs["hash"], pairs["shard"] = distinct, shard
    return split_by_hash(pairs, parts)


def split_by_hash(keys: np.ndarray, parts: int) -> list[np.ndarray]:
    """Records with a `hash` field, split into `parts` partitions by hash (the same ids land together)."""
    which = (keys["hash"] % np.uint64(parts)).astype(np.int64)
    return [keys[which == p] for p in range(parts)]


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


# -- Ray tasks --------------------------------------------------------------------------------------------


def id_partitions(units: list[tuple[int, list[str]]], parts: int, storage_config) -> tuple:
    """Task: the id hashes of a group of units (each a piece of a committed shard: its index and data files),
    in `parts` partitions of (hash, unit index) pairs, one return value each."""
    split = [[] for _ in range(parts)]
    for index, uris in units:
        table = read_tables(uris, storage_config, columns=["id"])
        hashes = id_hashes(table.column("id").to_pylist()) if table is not None else np.zeros(0, np.uint64)
        for p, pairs in enumerate(partition(hashes, index, parts)):
            split[p].append(pairs)
    merged = [np.concatenate(chunks) if chunks else np.empty(0, dtype=PAIR) for chunks in split]
    return tuple(merged) if parts > 1 else merged[0]


def task_groups(count: int, max_tasks: int = MAX_HASH_TASKS) -> list[range]:
    """Consecutive unit indexes split into at most `max_tasks` groups of near-equal size: many small files make
    a few tasks with a few return values each, not one task and `parts` object refs per file."""
    per_task = -(-count // max_tasks) if count else 1
    return [range(start, min(start + per_task, count)) for start in range(0, count, per_task)]


def rewrite_without(
    units: list[tuple[list[str], list[int]]], rejected_uris: list[str], staging_uri: str, source: str, storage_config
) -> tuple[dict[str, list[str]], int]:
    """Task: a committed shard again, without the rows of each unit (a piece's data files) whose id hash is in
    that unit's drop list; those join the shard's dead letters as `duplicate_id`. Returns (staged files by
    kind, ids moved). The shard's data becomes one file (its pieces hold no id twice any more)."""
    fs, root = storage.filesystem(staging_uri, storage_config)
    kept_parts, moved_parts = [], []
    for uris, drop in units:
        kept, moved = split_rows(read_tables(uris, storage_config), set(drop))
        kept_parts.append(kept)
        moved_parts.append(moved)
    kept, moved = pa.concat_tables(kept_parts), pa.concat_tables(moved_parts)
    ids = pc.unique(moved.column("id"))
    dead = pa.table(
        {
            "id": ids.cast(pa.string()),
            "source": pa.array([source] * len(ids), pa.string()),
            "row": pa.nulls(len(ids), pa.int64()),
            "reason": pa.array([DUPLICATE_ID] * len(ids), pa.string()),
        }
    )
    old = read_tables(rejected_uris, storage_config)
    if old is not None:
        dead = pa.concat_tables([old, dead.cast(old.schema)])
    staged: dict[str, list[str]] = {"data": [], "rejected": []}
    for kind, table in (("data", kept), ("rejected", dead)):
        if table.num_rows:
            path = f"{root}/{kind}{STAGED_SUFFIX}"
            write_table(fs, path, table)
            staged[kind].append(path)
    return staged, len(ids)


# -- the driver's step --------------------------------------------------------------------------------------


def id_units(store: OutputStore, records: dict[str, dict]) -> list[tuple[str, list[str]]]:
    """(shard key, data file URIs) per piece of every committed shard, in shard-key then piece order: the
    units that each hold an id at most once (prepare drops repeats within a piece)."""
    units = []
    for key in sorted(records):
        names = records[key]["files"].get("data", [])
        pieces = records[key].get("data_pieces") or [0] * len(names)
        for piece in sorted(set(pieces)):
            units.append((key, [store.uri_of(store.path(n)) for n, p in zip(names, pieces) if p == piece]))
    return units


def drop_cross_shard_duplicates(
    cfg, store: OutputStore, records: dict[str, dict], report: RunReport, log
) -> dict[str, dict]:
    """Move copies of ids that an earlier shard holds to the dead letters as duplicate_id; returns the records.

    Skipped when the manifest says these very records were checked (a rerun that found nothing to do).
    """
    units = id_units(store, records)
    if len(units) < 2:
        return records
    manifest = store.read_json(store.path(MANIFEST)) or {}
    if manifest.get("duplicates_checked") == records_digest(records):
        return records
    import ray

    cluster.init_ray(cfg)
    parts = min(PARTITIONS, len(units))
    hash_group = cluster.remote_task(id_partitions, num_returns=parts)
    by_group = [
        hash_group.remote([(i, units[i][1]) for i in group], parts, cfg.storage) for group in task_groups(len(units))
    ]
    by_group = [refs if parts > 1 else [refs] for refs in by_group]
    find = cluster.remote_task(shared_hashes)
    drop = later_copies(np.concatenate(ray.get([find.remote(*[refs[p] for refs in by_group]) for p in range(parts)])))
    if not drop:
        return records
    rewrite = cluster.remote_task(rewrite_without)
    staging = store.uri_of(store.staging_dir(f"{report.run_id}-duplicates"))
    futures = {}
    for key in sorted({units[i][0] for i in drop}):
        shard_units = [(uris, sorted(drop.get(i, ()))) for i, (k, uris) in enumerate(units) if k == key]
        rejected = [store.uri_of(store.path(name)) for name in records[key]["files"].get("rejected", [])]
        futures[key] = rewrite.remote(
            shard_units, rejected, f"{staging}/{key}", records[key]["shard"]["uri"], cfg.storage
        )
    total = 0
    for key, future in futures.items():
        staged, moved = ray.get(future)
        old = records[key]
        record = {k: v for k, v in old.items() if k not in ("files", "committed_at")}
        record["rows"] = {
            **old["rows"],
            "embedded": old["rows"]["embedded"] - moved,
            "rejected": old["rows"]["rejected"] + moved,
        }
        record["rows_written"] = record["rows"]["embedded"]
        record["data_pieces"] = [0] * len(staged["data"])
        record["cross_shard_duplicates"] = old.get("cross_shard_duplicates", 0) + moved
        records[key] = store.commit_shard(key, staged, record)
        report.rows_rejected += moved
        report.rejected_by_reason[DUPLICATE_ID] += moved
        if old.get("run_id") == report.run_id:
            report.rows_embedded -= moved
        total += moved
    log(
        f"embedrank: {total} ids appear in more than one input file (or piece of a file): the copies after the "
        "first (by file name, then position) "
        f"are in _rejected/ as duplicate_id, from {len(futures)} shards"
    )
    return records
