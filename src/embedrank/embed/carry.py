"""Nightly by document: which of tonight's documents the previous version holds, in whatever file they were.

Both sides are hash-partitioned by id in Ray tasks, never gathered on the driver:
    tonight's pieces  -> (id hash, piece)            from the id column alone
    previous files    -> (id hash, file, row)        for every committed row (every chunk), ids only
A task per partition matches them: for each piece, the previous rows whose id it holds, and how many of the
previous version's ids no piece holds any more (deleted). The match arrays stay in Ray's object store; each
prepare task takes its piece's rows from them, reads just those previous rows (id, content hash, vector) and
carries a document whose content hash is unchanged. No vector moves unless its document is carried.

Renamed files, a new dated prefix, Spark's fresh part-<uuid> names or documents moving between files thus
re-embed only new and changed documents. Files unchanged since the previous version are copied whole before
any of this (embed/nightly.py).
"""

from __future__ import annotations

import numpy as np

from ..ids import STRING, row_id_problem
from ..io.parquet import read_tables
from ..io.pieces import Piece
from ..io.sources import iter_rows
from ..schema import CHUNK_COLUMNS
from .dedupe import id_hashes, split_by_hash

PARTITIONS = 16
TONIGHT = np.dtype([("hash", np.uint64), ("piece", np.int32)])
PREVIOUS = np.dtype([("hash", np.uint64), ("file", np.int32), ("row", np.int64)])
MATCH = np.dtype([("piece", np.int32), ("file", np.int32), ("row", np.int64)])


def _split(keys: np.ndarray, parts: int) -> tuple:
    """Partitions as a task's return values (one value when there is one partition)."""
    split = split_by_hash(keys, parts)
    return tuple(split) if parts > 1 else split[0]


def tonight_keys(
    pieces: list[dict], parts: int, id_column: str, rows_per_batch: int, storage_config, id_type: str = STRING
) -> tuple:
    """Task: (id hash, piece uid) of the valid ids (ids.row_id_problem) of tonight's pieces, in `parts`
    partitions."""
    chunks = []
    for data in pieces:
        piece = Piece.from_dict(data)
        for raw in iter_rows(piece.shard, rows_per_batch, [id_column], storage_config, piece.rows, piece.byte_range):
            ids = [
                str(row.get(id_column))
                for row in raw.rows
                if row is not None and row_id_problem(row.get(id_column), id_type) is None
            ]
            keys = np.empty(len(ids), dtype=TONIGHT)
            keys["hash"], keys["piece"] = id_hashes(ids), piece.uid
            chunks.append(keys)
    return _split(np.unique(np.concatenate(chunks)) if chunks else np.empty(0, TONIGHT), parts)


def previous_keys(uri: str, file_index: int, parts: int, storage_config) -> tuple:
    """Task: (id hash, file, row) of every row of one committed file of the previous version."""
    table = read_tables([uri], storage_config, columns=["id"])
    keys = np.empty(table.num_rows, dtype=PREVIOUS)
    keys["hash"] = id_hashes(table.column("id").to_pylist())
    keys["file"], keys["row"] = file_index, np.arange(table.num_rows)
    return _split(keys, parts)


def match_partition(*sides: np.ndarray, n_tonight: int) -> tuple[np.ndarray, int]:
    """Task: one partition's tonight keys (the first `n_tonight` arrays) against its previous keys.

    Returns (MATCH rows sorted by piece: the previous rows of every id a piece holds, the number of distinct
    previous ids that no piece holds)."""
    tonight = np.concatenate(sides[:n_tonight]) if n_tonight else np.empty(0, TONIGHT)
    previous = np.concatenate(sides[n_tonight:]) if len(sides) > n_tonight else np.empty(0, PREVIOUS)
    deleted = int(np.setdiff1d(np.unique(previous["hash"]), tonight["hash"]).size)
    order = np.argsort(previous["hash"], kind="stable")
    previous = previous[order]
    lo = np.searchsorted(previous["hash"], tonight["hash"], side="left")
    hi = np.searchsorted(previous["hash"], tonight["hash"], side="right")
    counts = hi - lo
    out = np.empty(int(counts.sum()), dtype=MATCH)
    if out.size:
        take = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi) if b > a])
        out["piece"] = np.repeat(tonight["piece"], counts)
        out["file"], out["row"] = previous["file"][take], previous["row"][take]
        out = out[np.argsort(out["piece"], kind="stable")]
    return out, deleted


def rows_for_piece(matches: list[np.ndarray], uid: int) -> np.ndarray:
    """The MATCH rows of one piece, from every partition's sorted array."""
    found = [m[np.searchsorted(m["piece"], uid, "left") : np.searchsorted(m["piece"], uid, "right")] for m in matches]
    return np.concatenate(found) if found else np.empty(0, MATCH)


def previous_rows(matches: np.ndarray, files: list[str], chunked: bool, storage_config):
    """The previous version's rows named by `matches` (id, content hash, vector...), chunks in order."""
    import pyarrow as pa

    columns = ["id", "content_hash", "embedding", "n_tokens", "truncated"] + (list(CHUNK_COLUMNS) if chunked else [])
    tables = []
    for file_index in np.unique(matches["file"]).tolist():
        rows = np.sort(matches["row"][matches["file"] == file_index])
        tables.append(read_tables([files[file_index]], storage_config, columns=columns).take(pa.array(rows)))
    if not tables:
        return None
    table = pa.concat_tables(tables)
    return table.sort_by([("id", "ascending"), ("chunk_index", "ascending")]) if chunked else table


class CarryPlan:
    """What tonight's prepare tasks need to carry documents: the match arrays (object refs) and the files."""

    def __init__(self, match_refs: list, files: list[str]):
        self.match_refs = match_refs
        self.files = files
        self._matches = None

    def __getstate__(self):
        return {"match_refs": self.match_refs, "files": self.files, "_matches": None}

    def previous_for(self, piece: Piece, chunked: bool, storage_config):
        import ray

        if self._matches is None:
            self._matches = ray.get(self.match_refs)
        rows = rows_for_piece(self._matches, piece.uid)
        return previous_rows(rows, self.files, chunked, storage_config) if rows.size else None


def match_previous(cfg, pieces: list[Piece], previous_files: list[str], id_type: str) -> tuple[CarryPlan, int]:
    """Run the key and match tasks (the driver only waits for the deleted counts). -> (plan, deleted ids)."""
    import ray

    from ..runtime import cluster

    cluster.init_ray(cfg)
    parts = PARTITIONS
    tonight_task = cluster.remote_task(tonight_keys, num_returns=parts)
    previous_task = cluster.remote_task(previous_keys, num_returns=parts)
    match_task = cluster.remote_task(match_partition, num_returns=2)
    groups = [pieces[i : i + 64] for i in range(0, len(pieces), 64)]  # a task per group of pieces
    tonight = [
        tonight_task.remote(
            [p.to_dict() for p in group], parts, cfg.input.id_column, cfg.prepare.batch_size, cfg.storage, id_type
        )
        for group in groups
    ]
    previous = [previous_task.remote(uri, i, parts, cfg.storage) for i, uri in enumerate(previous_files)]
    matches, deleted = [], []
    for p in range(parts):
        match, gone = match_task.remote(
            *[refs[p] for refs in tonight], *[refs[p] for refs in previous], n_tonight=len(tonight)
        )
        matches.append(match)
        deleted.append(gone)
    return CarryPlan(matches, previous_files), int(sum(ray.get(deleted)))
