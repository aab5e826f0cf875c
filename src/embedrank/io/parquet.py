"""Parquet files on any filesystem: write one table, read a list of files back as one table."""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.parquet as pq

from . import storage


def write_table(fs, path: str, table: pa.Table) -> None:
    """Write `table` at `path` (zstd); a storage failure becomes a StorageError naming the location."""
    try:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path, "wb") as f:
            pq.write_table(table, f, compression="zstd")
    except OSError as exc:  # denied, bucket gone, endpoint down: retries are spent, the user must act
        raise storage.explain(exc, storage.to_uri(fs, path)) from None


def read_tables(uris: list[str], storage_config=None, columns=None) -> pa.Table | None:
    """Parquet files (URIs) as one table, in the order given; None for no files."""
    tables = []
    for uri in uris:
        fs, path = storage.filesystem(uri, storage_config)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables) if tables else None
