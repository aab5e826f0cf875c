"""Stage a batch's output as Parquet under the run's staging folder; describe each file for the driver.

Each file's name comes from its shard and the first `_seq` number it holds, so a retried write task replaces
its own earlier attempt instead of adding a copy. The writer returns one FILE_META row per file: which `_seq`
numbers it holds (as ranges), so that the driver can prove a shard complete before committing it. The
embed and rerank jobs differ only in how a batch's good rows and dead letters become output tables.
"""

from __future__ import annotations

import json
import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import schema as S
from ..io import storage
from ..io.parquet import write_table
from ..io.pieces import SEQ_STRIDE
from ..testing import faults

# Staged files are Parquet named `*.staged`: a `**/*.parquet` glob over the output (DuckDB walks into `_` folders)
# never reads a running or killed run's rows; the commit gives each file its final name.
STAGED_SUFFIX = ".staged"


def row_ranges(rows: np.ndarray) -> list[list[int]]:
    """Row numbers -> [[start, end), ...] runs of the distinct values."""
    if rows.size == 0:
        return []
    rows = np.unique(rows)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return [[int(run[0]), int(run[-1]) + 1] for run in np.split(rows, breaks)]


def shift_rows(fs, path: str, offset: int) -> None:
    """Add `offset` to the `row` numbers of a staged dead-letter file (a JSON Lines piece numbers its rows from
    its own first line; the file's numbering is known once every earlier piece has ended)."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    index = table.schema.get_field_index("row")
    shifted = pc.add(table.column(index), pa.scalar(offset, table.schema.field(index).type))
    write_table(fs, path, table.set_column(index, "row", shifted))


def rejected_table(part: pa.Table, source: str, id_columns: tuple[str, ...] = ("id",)) -> pa.Table:
    """Dead letters: the row's id column(s), the shard it came from, its row number there, and why."""
    columns = {name: part.column(name).cast(pa.string()) for name in id_columns}
    columns.update(
        source=pa.array([source] * part.num_rows, pa.string()), row=part.column(S.ROW), reason=part.column(S.REJECT)
    )
    return pa.table(columns)


def _data_meta(good: pa.Table) -> dict:
    """Token, cost and change counts of a file of good rows, for the report."""
    names = good.column_names
    # Tokens count what the model ran: carried rows (nightly) cost nothing.
    through_model = (
        good.column(S.EMBEDDED).to_numpy(zero_copy_only=False)
        if S.EMBEDDED in names
        else np.ones(good.num_rows, dtype=bool)
    )
    n_tokens = np.where(through_model, good.column("n_tokens").to_numpy(), 0)
    computed = good.column(S.COMPUTED).to_numpy() if S.COMPUTED in names else n_tokens
    actors: dict[str, list[float]] = {}
    if S.ACTOR in names:
        busy = good.column(S.BUSY_S).to_numpy()
        for i, actor in enumerate(good.column(S.ACTOR).to_pylist()):
            entry = actors.setdefault(actor, [0.0, 0])
            entry[0] += float(busy[i])
            entry[1] += int(n_tokens[i])
    changes: dict[str, int] = {}
    if S.CHANGE in names:
        docs = good.filter(good.column(S.LAST)).column(S.CHANGE).to_pylist()
        changes = dict(Counter(c for c in docs if c))
    chunked_rows = 0
    if "chunk_index" in names:
        chunked_rows = int(pc.sum(pc.greater(pc.fill_null(good.column("chunk_index"), 0), 0)).as_py() or 0)
    return dict(
        rows=int(pc.sum(good.column(S.LAST)).as_py() or 0),
        tokens=int(n_tokens.sum()),
        computed_tokens=int(computed.sum()),
        truncated=int(pc.sum(good.column("truncated")).as_py() or 0),
        chunked_rows=chunked_rows,
        actors=actors,
        changes=changes,
        model_rows=int(through_model.sum()),
    )


def write_staged(
    batch: pa.Table, *, staging_uri: str, sources: dict[str, str], to_data, to_rejected, storage_config=None
) -> pa.Table:
    """Write one batch (rows of any shards) under `staging_uri`; return one FILE_META row per file.

    `to_data(rows)` and `to_rejected(rows, source)` build the output tables (picklable: module functions or
    functools.partial).
    """
    fs, root = storage.filesystem(staging_uri, storage_config)
    metas: list[dict] = []

    def record(shard, kind, path, rows, ranges, **counts):
        meta = {name: 0 for name in S.FILE_META_SCHEMA.names}
        meta.update(shard=shard, kind=kind, path=path, rows=rows, ranges=ranges, shard_total=None, **counts)
        metas.append(
            {
                k: json.dumps(meta[k] or ({} if k != "ranges" else [])) if k in S.FILE_META_JSON else meta[k]
                for k in S.FILE_META_SCHEMA.names
            }
        )

    def stage(path: str, table: pa.Table) -> None:
        write_table(fs, path, table)
        faults.after_upload()

    for shard in pc.unique(batch.column(S.SHARD)).to_pylist():
        part = batch.filter(pc.equal(batch.column(S.SHARD), shard))
        reject = part.column(S.REJECT)
        is_end = pc.fill_null(pc.equal(reject, S.END_OF_SHARD), False)
        is_bad = pc.fill_null(pc.equal(reject, S.BAD_SHARD), False)
        for end in part.filter(is_end).select([S.ROW, S.SEQ, S.PIECE]).to_pylist():
            record(shard, "end", "", end[S.ROW], [], piece=end[S.PIECE] or 0)
            metas[-1]["shard_total"] = end[S.SEQ]
        for bad in part.filter(is_bad).select([S.PIECE, S.ERROR]).to_pylist():
            record(shard, "bad", "", 0, [], piece=bad[S.PIECE] or 0, reasons={"error": bad[S.ERROR]})
        rows = part.filter(pc.invert(pc.or_(is_end, is_bad)))
        # One file per piece of a file and kind, so that every committed file belongs to one piece.
        pieces = rows.column(S.SEQ).to_numpy() // SEQ_STRIDE
        for piece in np.unique(pieces).tolist():
            in_piece = rows.filter(pa.array(pieces == piece))
            reject = in_piece.column(S.REJECT)
            rejected, good = in_piece.filter(pc.is_valid(reject)), in_piece.filter(pc.is_null(reject))
            if rejected.num_rows:
                seqs = rejected.column(S.SEQ).to_numpy()
                path = posixpath.join(root, shard, f"rejected-{int(seqs.min()):020d}{STAGED_SUFFIX}")
                stage(path, to_rejected(rejected, sources[shard]))
                record(
                    shard,
                    "rejected",
                    path,
                    rejected.num_rows,
                    row_ranges(seqs),
                    piece=piece,
                    reasons=dict(Counter(rejected.column(S.REJECT).to_pylist())),
                )
            if good.num_rows:
                seqs = good.column(S.SEQ).to_numpy()
                path = posixpath.join(root, shard, f"data-{int(seqs.min()):020d}{STAGED_SUFFIX}")
                stage(path, to_data(good))
                counts = _data_meta(good)
                record(shard, "data", path, counts.pop("rows"), row_ranges(seqs), piece=piece, **counts)
    return pa.Table.from_pylist(metas, schema=S.FILE_META_SCHEMA)
