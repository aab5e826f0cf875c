"""Write embedded batches as staged Parquet files: vectors and dead letters, one file per shard and batch.

Each file's name comes from its shard and the first `_seq` number it holds, so a retried write task replaces
its own earlier attempt instead of adding a copy. The function returns one metadata row per file: which `_seq`
numbers it holds (as ranges), so that the driver can prove a shard complete before committing it.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import faults
from . import storage

END_OF_SHARD = "_end_of_shard"  # the marker row a prepare task emits after a shard's last row
CHUNK_COLUMNS = ("chunk_index", "chunk_start", "chunk_end")
DATA_COLUMNS = ("id", "embedding", "n_tokens", "truncated", "content_hash")
META_SCHEMA = pa.schema([
    # rows: input rows completed in this file (end marker: the shard's input row count);
    # ranges: the `_seq` numbers it holds; shard_total: the shard's number of `_seq` values (end marker only).
    ("shard", pa.string()), ("kind", pa.string()), ("path", pa.string()), ("rows", pa.int64()),
    ("ranges", pa.string()), ("shard_total", pa.int64()), ("tokens", pa.int64()), ("computed_tokens", pa.int64()),
    ("truncated", pa.int64()), ("chunked_rows", pa.int64()), ("reasons", pa.string()), ("actors", pa.string()),
    # changes: documents per kind (new | changed | carried); model_rows: rows that went through the model;
    # deleted (end marker): documents of the previous version's shard that are gone.
    ("changes", pa.string()), ("model_rows", pa.int64()), ("deleted", pa.int64()),
])


def row_ranges(rows: np.ndarray) -> list[list[int]]:
    """Row numbers -> [[start, end), ...] runs of the distinct values."""
    if rows.size == 0:
        return []
    rows = np.unique(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [[int(run[0]), int(run[-1]) + 1] for run in np.split(rows, breaks)]


def data_table(part: pa.Table, *, chunked: bool, passthrough: list[str], metadata: dict) -> pa.Table:
    columns = list(DATA_COLUMNS) + (list(CHUNK_COLUMNS) if chunked else [])
    table = part.select(columns)
    for name in passthrough:
        table = table.append_column(name, part.column(f"pass.{name}"))
    return table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})


def rejected_table(part: pa.Table, source: str, id_columns: tuple[str, ...] = ("id",)) -> pa.Table:
    """Dead letters: the row's id column(s), the shard it came from, its row number there, and why."""
    columns = {name: part.column(name).cast(pa.string()) for name in id_columns}
    columns.update(source=pa.array([source] * part.num_rows, pa.string()), row=part.column("_row"),
                   reason=part.column("_reject"))
    return pa.table(columns)


def write_table(fs, path: str, table: pa.Table) -> None:
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")
    except OSError as exc:  # denied, bucket gone, endpoint down: retries are spent, the user must act
        raise storage.explain(exc, storage.to_uri(fs, path)) from None
    faults.after_upload()


def write_staged(batch: pa.Table, *, staging_uri: str, sources: dict[str, str], to_data, to_rejected,
                 storage_config=None) -> pa.Table:
    """Write one batch (rows of any shards) under `staging_uri`; return one META_SCHEMA row per file.

    `to_data(rows)` and `to_rejected(rows, source)` build the output tables (picklable: module functions or
    functools.partial), so that the embed and rerank jobs share this bookkeeping.
    """
    fs, root = storage.filesystem(staging_uri, storage_config)
    meta = {name: [] for name in META_SCHEMA.names}

    def record(shard, kind, path, rows, ranges, total=None, tokens=0, computed=0, truncated=0, chunked_rows=0,
               reasons=None, actors=None, changes=None, model_rows=0, deleted=0):
        for key, value in zip(META_SCHEMA.names, (shard, kind, path, rows, json.dumps(ranges), total, tokens,
                                                  computed, truncated, chunked_rows, json.dumps(reasons or {}),
                                                  json.dumps(actors or {}), json.dumps(changes or {}), model_rows,
                                                  deleted)):
            meta[key].append(value)

    for shard in pc.unique(batch.column("_shard")).to_pylist():
        part = batch.filter(pc.equal(batch.column("_shard"), shard))
        reject = part.column("_reject")
        is_end = pc.fill_null(pc.equal(reject, END_OF_SHARD), False)
        end_columns = ["_row", "_seq"] + (["_deleted"] if "_deleted" in part.column_names else [])
        for end in part.filter(is_end).select(end_columns).to_pylist():
            record(shard, "end", "", end["_row"], [], total=end["_seq"], deleted=end.get("_deleted") or 0)
        rejected = part.filter(pc.and_(pc.is_valid(reject), pc.invert(is_end)))
        good = part.filter(pc.is_null(reject))
        if rejected.num_rows:
            seqs = rejected.column("_seq").to_numpy()
            path = posixpath.join(root, shard, f"rejected-{int(seqs.min()):012d}.parquet")
            write_table(fs, path, to_rejected(rejected, sources[shard]))
            record(shard, "rejected", path, rejected.num_rows, row_ranges(seqs),
                   reasons=dict(Counter(rejected.column("_reject").to_pylist())))
        if good.num_rows:
            seqs = good.column("_seq").to_numpy()
            path = posixpath.join(root, shard, f"data-{int(seqs.min()):012d}.parquet")
            write_table(fs, path, to_data(good))
            # Tokens count what the model ran: carried rows (nightly) cost nothing.
            through_model = (good.column("_embedded").to_numpy(zero_copy_only=False)
                             if "_embedded" in good.column_names else np.ones(good.num_rows, dtype=bool))
            n_tokens = np.where(through_model, good.column("n_tokens").to_numpy(), 0)
            computed = good.column("_computed").to_numpy() if "_computed" in good.column_names else n_tokens
            actors: dict[str, list[float]] = {}
            if "_actor" in good.column_names:
                busy = good.column("_busy_s").to_numpy()
                for i, actor in enumerate(good.column("_actor").to_pylist()):
                    entry = actors.setdefault(actor, [0.0, 0])
                    entry[0] += float(busy[i])
                    entry[1] += int(n_tokens[i])
            changes: dict[str, int] = {}
            if "_change" in good.column_names:
                docs = good.filter(good.column("_last")).column("_change").to_pylist()
                changes = dict(Counter(c for c in docs if c))
            chunked_rows = 0
            if "chunk_index" in good.column_names:
                chunked_rows = int(pc.sum(pc.greater(pc.fill_null(good.column("chunk_index"), 0), 0)).as_py() or 0)
            record(shard, "data", path, int(pc.sum(good.column("_last")).as_py() or 0), row_ranges(seqs),
                   tokens=int(n_tokens.sum()), computed=int(computed.sum()),
                   truncated=int(pc.sum(good.column("truncated")).as_py() or 0),
                   chunked_rows=chunked_rows, actors=actors, changes=changes, model_rows=int(through_model.sum()))
    return pa.table(meta, schema=META_SCHEMA)
