"""A truncated or corrupt compressed or Parquet shard is an error naming the shard, never a shorter shard."""

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from embedrank.errors import BadShardError
from embedrank.io.sources import iter_rows, list_shards

ROWS = 2000


def jsonl() -> bytes:
    return "".join(
        json.dumps({"id": f"r{i}", "text": f"row {i} " + "word " * (i % 40)}) + "\n" for i in range(ROWS)
    ).encode()


def parquet() -> bytes:
    buf = io.BytesIO()
    table = pa.table(
        {"id": [f"r{i}" for i in range(ROWS)], "text": [f"row {i} " + "word " * (i % 40) for i in range(ROWS)]}
    )
    pq.write_table(table, buf, row_group_size=500)
    return buf.getvalue()


FORMATS = {
    "rows.jsonl.zst": lambda: zstandard.ZstdCompressor().compress(jsonl()),
    "rows.jsonl.gz": lambda: gzip.compress(jsonl()),
    "rows.parquet": parquet,
}


def count_rows(path) -> int:
    (shard,) = list_shards(str(path))
    return sum(len(raw.rows) for raw in iter_rows(shard, 256))


@pytest.mark.parametrize("name", FORMATS)
def test_whole_file_reads_every_row(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(FORMATS[name]())
    assert count_rows(path) == ROWS


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("fraction", [0.05, 0.33, 0.5, 0.67, 0.9, 0.999])
def test_truncated_file_is_an_error_never_fewer_rows(tmp_path, name, fraction):
    data = FORMATS[name]()
    path = tmp_path / name
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(BadShardError) as info:
        count_rows(path)
    message = str(info.value)
    assert str(path) in message and "truncated or corrupt" in message and "\n" not in message


@pytest.mark.parametrize("name", FORMATS)
def test_corrupt_bytes_in_the_middle_are_an_error(tmp_path, name):
    data = bytearray(FORMATS[name]())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # zeroed block: a broken frame, deflate block or Parquet page
    path = tmp_path / name
    path.write_bytes(bytes(data))
    try:
        rows = count_rows(path)
    except BadShardError:
        return
    # A format without a checksum over the zeroed bytes may still parse: then no row may be missing.
    assert rows == ROWS


def test_utf8_bom_is_not_a_bad_row(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl())
    (shard,) = list_shards(str(path))
    raws = list(iter_rows(shard, 5000))
    assert raws[0].problems[0] is None and raws[0].rows[0]["id"] == "r0"
    assert sum(len(r.rows) for r in raws) == ROWS
