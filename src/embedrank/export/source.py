"""What an export reads: the committed vector files of an embed output or of a nightly root's current version
(runtime/store.committed_files: commit records, never a folder listing), as a Ray Dataset with a key column.

The key is what the table is upserted and deleted by: `id` for one vector per document; for chunked outputs
`chunk_id` (the output's own column when it has one, else "{id}#{chunk_index}" made here).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import PlanError
from ..io import storage
from ..runtime.store import committed_files


@dataclass(frozen=True)
class Source:
    files: list[str]  # committed vector files
    columns: list[str]  # the columns exported, in file order
    key: str  # id | chunk_id
    make_key: bool  # chunk_id is made from id and chunk_index
    metadata: dict  # the first file's embedrank.* metadata (model, dtypes, int8 range)
    schema: pa.Schema | None = None  # the table's: key first, then the exported columns, with `metadata`
    rows: int = 0  # committed rows (from the footers)


def plan_source(uri: str, storage_config=None) -> Source:
    files = committed_files(uri, storage_config)
    if not files:
        raise PlanError(f"{uri} holds no committed vectors: run the embed job that writes it first")
    file_schema = read_schema(files[0], storage_config)
    columns = list(file_schema.names)
    if "id" not in columns or "embedding" not in columns:
        raise PlanError(f"{files[0]} has no id and embedding columns: point the export at an embed output")
    chunked = "chunk_index" in columns
    key = "chunk_id" if chunked else "id"
    # What a reader of the table needs: the vectors' model, fingerprint, columns and int8 range.
    found = {k.decode(): v.decode() for k, v in (file_schema.metadata or {}).items()}
    meta = {k: v for k, v in found.items() if k.startswith("embedrank.")}
    meta.setdefault("embedrank.fingerprint", "")
    make_key = chunked and "chunk_id" not in columns
    fields = [pa.field("chunk_id", pa.string())] if make_key else [file_schema.field(key)]
    fields += [file_schema.field(c) for c in columns if c != key]
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = sum(pool.map(lambda f: row_count(f, storage_config), files))
    return Source(files, columns, key, make_key, meta, pa.schema(fields, metadata=meta), rows)


def row_count(uri: str, storage_config=None) -> int:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri, storage_config)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows


def read_schema(uri: str, storage_config=None) -> pa.Schema:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri, storage_config)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def shape_batch(batch: pa.Table, *, make_key: bool, columns: list[str]) -> pa.Table:
    """Ray Data batch -> the table's columns, key first: chunk_id = "{id}#{chunk_index}" is made when the
    output has no key column of its own. (A map, not select_columns: Ray Data pushes projections into the
    read, which then lacks the columns the join needs.)"""
    if make_key:
        key = pc.binary_join_element_wise(
            batch.column("id").cast(pa.string()), batch.column("chunk_index").cast(pa.string()), "#"
        )
        batch = batch.append_column("chunk_id", key)
    return batch.select(columns)


def source_dataset(source: Source, storage_config=None):
    """The committed rows as a Ray Dataset (read by Ray tasks) in the table's schema."""
    import ray.data
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, _ = storage.filesystem(source.files[0], storage_config)
    paths = [storage.filesystem(f, storage_config)[1] for f in source.files]
    ds = ray.data.read_parquet(paths, filesystem=PyFileSystem(FSSpecHandler(fs)), partitioning=None)
    return ds.map_batches(
        shape_batch,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"make_key": source.make_key, "columns": source.schema.names},
    )
