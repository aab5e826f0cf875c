"""Cutting files into pieces and grouping small ones: pure planning, and reading a row range of a file."""

import dataclasses

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.io.pieces import SEQ_STRIDE, Piece, group_pieces, plan_units, split_file, task_memory, write_batch_rows
from embedrank.io.sources import ShardInfo, iter_rows, list_shards, peek


def shard(name="a.parquet", size=1000, compression=None):
    from embedrank.io.sources import Shard

    return Shard(f"/x/{name}", "parquet", compression, size, "v1", name)


def test_split_covers_every_row_once():
    pieces = split_file(shard(), 1001, 10_000, 300)
    assert [(p.row_start, p.row_end) for p in pieces] == [(0, 250), (250, 500), (500, 750), (750, 1001)]
    assert [p.index for p in pieces] == [0, 1, 2, 3] and {p.count for p in pieces} == {4}
    assert pieces[2].seq_base == 2 * SEQ_STRIDE
    assert sum(p.est_bytes for p in pieces) <= 10_000
    assert [p.est_rows for p in pieces] == [250, 250, 250, 251]
    assert split_file(shard(), 300, None, 300) == [Piece(shard(), est_bytes=1000, est_rows=300)]
    assert split_file(shard(), 1001, None, None) == [Piece(shard(), est_bytes=1000, est_rows=1001)]  # never cut
    unknown = split_file(shard(compression="zstd"), None, None, 300)[0]  # unknown rows: whole
    assert unknown.est_bytes == 4000 and unknown.est_rows is None
    assert split_file(shard(compression="zstd"), None, None, 300, row_bytes=50.0)[0].est_rows == 80


def test_small_files_are_grouped_up_to_the_limits():
    shards = [shard(f"f{i}.parquet", size=10) for i in range(7)]
    infos = {s.key: ShardInfo({}, 40, 10) for s in shards}
    units, counts = plan_units(shards, infos, max_rows=100, max_mb=1)
    assert [len(u) for u in units] == [2, 2, 2, 1] and set(counts.values()) == {1}
    big = shard("big.parquet")
    units, counts = plan_units([shards[0], big, shards[1]], {**infos, big.key: ShardInfo({}, 250, 2500)}, 100, 1)
    assert [[p.shard.key for p in u] for u in units] == [
        ["f0.parquet"],
        ["big.parquet"],
        ["big.parquet"],
        ["big.parquet"],
        ["f1.parquet"],
    ]
    assert counts["big.parquet"] == 3
    whole, counts = plan_units([big], {big.key: ShardInfo({}, 250, 2500)}, 100, 1, split=False)
    assert len(whole) == 1 and counts["big.parquet"] == 1
    by_bytes = group_pieces([Piece(s, est_bytes=600_000) for s in shards[:3]], {}, 10**9, 1_000_000)
    assert [len(u) for u in by_bytes] == [1, 1, 1]
    assert task_memory([]) == 768 << 20 and task_memory([[Piece(big, est_bytes=1 << 30)]]) > 4 << 30


def test_writes_never_wait_for_more_rows_than_a_unit_holds():
    """A write task waits for rows_per_file rows at most, and for no more than the largest piece holds (so
    a small run, or a unit of many small files, commits as it goes); a piece of unknown size allows the whole
    rows_per_file."""

    def unit(*rows):
        return [Piece(shard(f"u{i}.parquet"), est_rows=r) for i, r in enumerate(rows)]

    assert write_batch_rows([unit(100), unit(100, 150)], rows_per_file=30_000, min_rows=64) == 150
    assert write_batch_rows([unit(100)], rows_per_file=30_000, min_rows=512) == 512  # one actor batch at least
    assert write_batch_rows([unit(100), unit(None)], rows_per_file=30_000, min_rows=64) == 30_000
    assert write_batch_rows([unit(90_000)], rows_per_file=30_000, min_rows=64) == 30_000
    assert write_batch_rows([], rows_per_file=30_000, min_rows=64) == 30_000


def test_jsonl_rows_are_estimated_from_the_lines_read_in_planning(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"id": "{i:04d}", "text": "row"}}\n' for i in range(1000)))
    (one,) = list_shards(str(path))
    info = peek(one)
    assert info.num_rows is None and info.row_bytes == len('{"id": "0000", "text": "row"}\n')
    (unit,), _ = plan_units([one], {one.key: info}, max_rows=10_000, max_mb=64)
    assert unit[0].est_rows == 1000 and unit[0].byte_range is None  # fewer rows than a piece: whole


@pytest.mark.parametrize("start,stop", [(0, 1000), (0, 1), (399, 401), (250, 999), (800, 1000), (999, 1000)])
def test_a_row_range_reads_exactly_those_rows(tmp_path, start, stop):
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(1000)], "text": ["x"] * 1000}), path, row_group_size=400)
    (s,) = list_shards(str(path))
    assert peek(s).num_rows == 1000
    raws = list(iter_rows(s, 64, ["id"], None, range(start, stop)))
    numbers = [n for r in raws for n in r.row_numbers]
    assert numbers == list(range(start, stop))
    assert [row["id"] for r in raws for row in r.rows] == [f"r{i}" for i in range(start, stop)]


def test_byte_ranges_read_every_line_of_a_jsonl_file_once(tmp_path):
    """Cut anywhere (inside a line, on a line end, on a blank line, inside a CRLF, the BOM), consecutive byte
    ranges yield every row of the file once, in order; a long line straddling several cuts belongs to one."""
    import json
    import random

    lines = [
        json.dumps({"id": f"r{i}", "text": "x" * (i * 7 % 50) + ("y" * 3000 if i == 40 else "")}) for i in range(120)
    ]
    body = "".join(line + ("\r\n" if i % 3 else "\n") + ("\n" if i % 17 == 4 else "") for i, line in enumerate(lines))
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    (one,) = list_shards(str(path))
    whole = [r["id"] for raw in iter_rows(one, 7) for r in raw.rows]
    assert whole == [f"r{i}" for i in range(120)]
    rng = random.Random(5)
    size = path.stat().st_size
    for cuts in [[1, 2, 3], [size - 1], list(range(100, size, 97)), sorted(rng.sample(range(1, size), 30))]:
        bounds = [0, *cuts, size]
        got, numbers = [], []
        for start, end in zip(bounds, bounds[1:]):
            rows = [raw for raw in iter_rows(one, 5, byte_range=(start, end))]
            got += [r["id"] for raw in rows for r in raw.rows]
            numbers.append([n for raw in rows for n in raw.row_numbers])
        assert got == whole, cuts
        assert all(n == list(range(len(n))) for n in numbers)  # each range numbers its rows from 0


def test_a_big_uncompressed_jsonl_file_is_cut_by_bytes_a_compressed_one_is_not(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(f'{{"id": "{i:05d}", "text": "some words here"}}\n' for i in range(1000)))
    (big,) = list_shards(str(path))
    (units, counts) = plan_units([big], {big.key: peek(big)}, max_rows=300, max_mb=64)
    pieces = [p for unit in units for p in unit]
    assert counts[big.key] == len(pieces) == 4 and all(len(unit) == 1 for unit in units)
    assert [p.byte_range[0] for p in pieces][0] == 0 and pieces[-1].byte_end == big.size
    assert all(a.byte_end == b.byte_start for a, b in zip(pieces, pieces[1:]))
    assert [p.rows_from_zero for p in pieces] == [False, True, True, True]
    assert sum(len(raw.rows) for p in pieces for raw in iter_rows(big, 100, byte_range=p.byte_range)) == 1000
    packed = split_file(dataclasses.replace(big, compression="gzip"), None, None, 300, row_bytes=40.0)
    assert len(packed) == 1 and packed[0].byte_range is None
