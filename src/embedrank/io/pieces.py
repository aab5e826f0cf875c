"""Work units: input files cut into pieces of bounded rows, and small files grouped, one unit per CPU task.

A Parquet file with more rows than `max_rows` is cut into row ranges that separate tasks read in parallel, so
that one big file shows progress within a piece's time, needs a piece's memory and reaches the model actors as
many blocks. An uncompressed JSON Lines file of more rows than `max_rows` (estimated from the mean line size seen
in planning) is cut into byte ranges: a piece reads the lines that start inside its range. Compressed JSON
Lines cannot be entered midway and stay whole. Consecutive small files share a unit until it holds `max_rows`
rows or `max_bytes` bytes, so that thousands of tiny files do not cost a task each. Commits stay per input
file: a file commits once all of its pieces are accounted for (runtime/commits.py). Everything here is pure.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass

from .sources import Shard

SEQ_STRIDE = 1 << 40  # `_seq` numbers of piece i of a file start at i * SEQ_STRIDE: unique across pieces


@dataclass(frozen=True)
class Piece:
    shard: Shard
    index: int = 0  # the piece's number within its file
    count: int = 1  # how many pieces the file is cut into
    row_start: int | None = None  # file rows [row_start, row_end); None: the whole file
    row_end: int | None = None
    est_bytes: int = 0  # uncompressed bytes it reads, estimated
    uid: int = 0  # the piece's number among all pieces of a run's plan
    est_rows: int | None = None  # rows it reads: exact for Parquet, estimated for JSON Lines; None: unknown
    byte_start: int | None = None  # JSON Lines: the lines starting in bytes [byte_start, byte_end); None: all
    byte_end: int | None = None

    @property
    def seq_base(self) -> int:
        return self.index * SEQ_STRIDE

    @property
    def byte_range(self) -> tuple[int, int] | None:
        return None if self.byte_start is None else (self.byte_start, self.byte_end)

    @property
    def rows_from_zero(self) -> bool:
        """Its row numbers count from its own first line (a byte range after the first): the commit shifts
        them to the file's numbering once every earlier piece's row count is known (runtime/commits.py)."""
        return self.byte_start is not None and self.index > 0

    @property
    def rows(self) -> range | None:
        return None if self.row_start is None else range(self.row_start, self.row_end)

    def to_dict(self) -> dict:
        return {**asdict(self), "shard": self.shard.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Piece:
        return cls(**{**data, "shard": Shard.from_dict(data["shard"])})


def piece_of_seq(seq: int) -> int:
    return seq // SEQ_STRIDE


def split_file(
    shard: Shard, num_rows: int | None, data_bytes: int | None, max_rows: int | None, row_bytes: float | None = None
) -> list[Piece]:
    """A file as pieces of at most `max_rows` rows each (as equal as possible); one piece when it is small, its
    row count is unknown (then estimated from `row_bytes`, the mean size of a row seen in planning) or
    `max_rows` is None (never cut)."""
    est = data_bytes if data_bytes is not None else shard.size * (4 if shard.compression else 1)
    if (
        num_rows is None
        and max_rows is not None
        and row_bytes
        and shard.format == "jsonl"
        and shard.compression is None
        and shard.size / row_bytes > max_rows
    ):
        count = -(-round(shard.size / row_bytes) // max_rows)
        bounds = [shard.size * i // count for i in range(count + 1)]
        return [
            Piece(
                shard,
                i,
                count,
                est_bytes=bounds[i + 1] - bounds[i],
                est_rows=max(1, round((bounds[i + 1] - bounds[i]) / row_bytes)),
                byte_start=bounds[i],
                byte_end=bounds[i + 1],
            )
            for i in range(count)
        ]
    if num_rows is None or max_rows is None or num_rows <= max_rows:
        rows = num_rows if num_rows is not None else (max(1, round(est / row_bytes)) if row_bytes else None)
        return [Piece(shard, est_bytes=est, est_rows=rows)]
    count = -(-num_rows // max_rows)
    bounds = [num_rows * i // count for i in range(count + 1)]
    return [
        Piece(
            shard,
            i,
            count,
            bounds[i],
            bounds[i + 1],
            est * (bounds[i + 1] - bounds[i]) // num_rows,
            est_rows=bounds[i + 1] - bounds[i],
        )
        for i in range(count)
    ]


def group_pieces(
    pieces: list[Piece], row_counts: dict[str, int | None], max_rows: int, max_bytes: int
) -> list[list[Piece]]:
    """Units of work: a cut file's pieces one per unit; consecutive whole files together up to the limits."""
    units: list[list[Piece]] = []
    rows = size = 0
    for piece in pieces:
        if piece.count > 1:
            units.append([piece])
            continue
        n = row_counts.get(piece.shard.key) or 0
        if units and units[-1][0].count == 1 and rows + n <= max_rows and size + piece.est_bytes <= max_bytes:
            units[-1].append(piece)
            rows, size = rows + n, size + piece.est_bytes
        else:
            units.append([piece])
            rows, size = n, piece.est_bytes
    return units


def unit_row(unit: list[Piece]) -> dict:
    """A unit as one input row of the graph (pieces as JSON)."""
    return {"pieces": json.dumps([p.to_dict() for p in unit])}


def unit_pieces(value: str) -> list[Piece]:
    return [Piece.from_dict(d) for d in json.loads(value)]


def plan_units(
    shards: list[Shard], infos: dict, max_rows: int, max_mb: float, split: bool = True
) -> tuple[list[list[Piece]], dict[str, int]]:
    """(units of work, shard key -> number of pieces) for `shards`, from their ShardInfo (None: unknown).

    `split=False` keeps every file whole (jobs that must see a whole file in one task).
    """
    pieces: list[Piece] = []
    for shard in shards:
        info = infos.get(shard.key)
        rows = info.num_rows if info is not None else None
        data_bytes = info.data_bytes if info is not None else None
        row_bytes = info.row_bytes if info is not None else None
        pieces += split_file(shard, rows, data_bytes, max_rows if split else None, row_bytes)
    pieces = [dataclasses.replace(piece, uid=uid) for uid, piece in enumerate(pieces)]
    counts = {s.key: 0 for s in shards}
    for piece in pieces:
        counts[piece.shard.key] += 1
    row_counts = {s.key: (infos.get(s.key).num_rows if infos.get(s.key) is not None else None) for s in shards}
    return group_pieces(pieces, row_counts, max_rows, int(max_mb * 1e6)), counts


def write_batch_rows(units: list[list[Piece]], rows_per_file: int, min_rows: int) -> int:
    """Rows a write task waits for before it writes: `rows_per_file` (the target file size), but never more
    than the largest piece holds, so that a file's rows are written (and the file committed) soon after they
    went through the model, not at the end of a small run or of a unit of many small files. Never below
    `min_rows` (an actor batch); a piece of unknown size allows the whole `rows_per_file`."""
    pieces = [p.est_rows for unit in units for p in unit]
    largest = rows_per_file if None in pieces or not pieces else max(pieces)
    return max(1, min(rows_per_file, max(min_rows, largest)))


def task_memory(units: list[list[Piece]], memory_mb: float | None = None) -> int:
    """Bytes a CPU task should request: `memory_mb` when set (prepare.memory_mb), else a tokenizer and Python's
    copy of the largest unit, with headroom."""
    if memory_mb:
        return int(memory_mb * (1 << 20))
    largest = max((sum(p.est_bytes for p in unit) for unit in units), default=0)
    return int(min(8 << 30, max(768 << 20, (512 << 20) + 4 * largest)))  # 768 MiB: measured ~600 on the sample
