"""Mirror the source rows into the Lance dataset, idempotently, with Ray tasks.

    no dataset yet, or one made from other vectors (another embedrank.fingerprint: model, dim, dtype...)
        -> Ray tasks write the fragments, one Overwrite commit makes them the table
    a dataset of the same vectors
        -> diff by key (Ray tasks over hash partitions of (key, content_hash) of both sides): rows whose key is
           new or whose content_hash changed are upserted with merge_insert(key), one Lance transaction per
           batch; keys the source no longer holds are deleted

Why this is safe to kill: the create commits once (a killed create leaves no table, or one another run
overwrites); each upsert or delete is a transaction keyed by the row's key, so a rerun diffs again and
applies exactly what is still missing. The driver holds counts, never rows.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FINGERPRINT = "embedrank.fingerprint"


# Lance's Rust logger warns on every fragment written to a table that does not exist yet ("No existing dataset
# at ..., it will be created"), from each Ray worker: errors only, unless LANCE_LOG says otherwise. Set on import,
# which in a worker comes before any Lance import (the tasks below are pickled by reference to this module).
os.environ.setdefault("LANCE_LOG", "error")


def open_dataset(uri: str, storage_options: dict | None):
    """The Lance dataset at `uri`, or None when there is none (yet)."""
    import lance

    try:
        return lance.dataset(uri, storage_options=storage_options)
    except (ValueError, FileNotFoundError, OSError):
        return None


def write_fragment(batch: pa.Table, *, uri: str, schema: pa.Schema, storage_options: dict | None) -> pa.Table:
    """Task: write the batch as Lance fragment files (not yet part of any version); returns their metadata."""
    from lance.fragment import write_fragments

    rows = batch.select(schema.names).cast(schema)
    fragments = write_fragments(rows, uri, schema=schema, storage_options=storage_options)
    return pa.table({"fragment": [json.dumps(f.to_json()) for f in fragments]})


def create(ds, uri: str, schema: pa.Schema, storage_options: dict | None) -> None:
    """Write every source row as a new version of `uri`: Ray tasks write the fragments, then one commit (an
    Overwrite) makes them the table. Only fragment metadata (a few per task) reaches the driver."""
    import lance
    from lance.fragment import FragmentMetadata

    written = ds.map_batches(
        write_fragment,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs=dict(uri=uri, schema=schema, storage_options=storage_options),
    )
    fragments = [FragmentMetadata.from_json(row["fragment"]) for row in written.iter_rows()]
    lance.LanceDataset.commit(uri, lance.LanceOperation.Overwrite(schema, fragments), storage_options=storage_options)


def partitioned(table: pa.Table, key: str, parts: int) -> list[pa.Table]:
    """(key, content_hash) rows split by a hash of the key into `parts` tables."""
    if parts == 1:
        return [table]
    hashes = pc.hash_64(table.column(key)) if hasattr(pc, "hash_64") else None
    if hashes is None:  # pyarrow without hash_64: a stable hash of the key's text
        import zlib

        codes = np.array([zlib.crc32(str(k).encode()) for k in table.column(key).to_pylist()], np.uint64)
    else:
        codes = hashes.to_numpy(zero_copy_only=False).astype(np.uint64)
    part = (codes % parts).astype(np.int64)
    return [table.filter(pa.array(part == i)) for i in range(parts)]


def source_keys(uri: str, *, key: str, make_key: bool, parts: int, storage_config) -> list[pa.Table]:
    """Task: one committed file's (key, content_hash), split into `parts` by key."""
    from ..io.parquet import read_tables
    from .source import shape_batch

    columns = ["id", "chunk_index", "content_hash"] if make_key else [key, "content_hash"]
    table = shape_batch(
        read_tables([uri], storage_config, columns=columns), make_key=make_key, columns=[key, "content_hash"]
    )
    split = partitioned(table, key, parts)
    return split if parts > 1 else split[0]  # a task's returns: one object per partition


def table_keys(uri: str, fragment: int, *, key: str, parts: int, storage_options) -> list[pa.Table]:
    """Task: one Lance fragment's (key, content_hash), split into `parts` by key."""
    table = open_dataset(uri, storage_options).get_fragment(fragment).to_table(columns=[key, "content_hash"])
    split = partitioned(table, key, parts)
    return split if parts > 1 else split[0]


def diff_part(key: str, n_source: int, *tables: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Task: one hash partition of both sides -> (keys to upsert: new or another content_hash, keys to delete)."""
    source = pa.concat_tables(tables[:n_source])
    table = pa.concat_tables(tables[n_source:])
    pairs = source.join(table, key, join_type="left outer", right_suffix="_table", use_threads=False)
    prev = pairs.column("content_hash_table")
    changed = pc.or_(pc.is_null(prev), pc.not_equal(pc.fill_null(prev, ""), pairs.column("content_hash")))
    gone = pc.invert(pc.is_in(table.column(key), value_set=source.column(key)))
    return pairs.filter(changed).column(key).combine_chunks(), table.column(key).filter(gone).combine_chunks()


def upsert_file(
    file_uri: str,
    *changed: pa.Array,
    uri: str,
    key: str,
    make_key: bool,
    columns: list[str],
    rows_per_batch: int,
    storage_config,
    storage_options,
) -> int:
    """Task: the file's rows whose key is in `changed` upserted by key, one Lance transaction per batch."""
    from ..io.parquet import read_tables
    from .source import shape_batch

    wanted = pa.chunked_array([c for c in changed if len(c)], type=changed[0].type) if changed else None
    if wanted is None or not len(wanted):
        return 0
    table = shape_batch(read_tables([file_uri], storage_config), make_key=make_key, columns=columns)
    rows = table.filter(pc.is_in(table.column(key), value_set=wanted.combine_chunks()))
    for start in range(0, rows.num_rows, rows_per_batch):
        upsert_batch(rows.slice(start, rows_per_batch), uri=uri, key=key, storage_options=storage_options)
    return rows.num_rows


def upsert_batch(batch: pa.Table, *, uri: str, key: str, storage_options: dict | None) -> None:
    """One Lance transaction: insert the batch's rows, or replace the rows with the same key."""
    if batch.num_rows:
        dataset = open_dataset(uri, storage_options)
        rows = batch.select(dataset.schema.names).cast(dataset.schema)
        dataset.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(rows)


def sql_literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def delete_keys(keys: pa.Array, *, uri: str, key: str, rows_per_batch: int, storage_options: dict | None) -> int:
    """Task: delete `keys`, one Lance transaction per batch (deleting a missing key changes nothing)."""
    values = keys.to_pylist()
    for start in range(0, len(values), rows_per_batch):
        chunk = values[start : start + rows_per_batch]
        open_dataset(uri, storage_options).delete(f"{key} IN ({', '.join(sql_literal(k) for k in chunk)})")
    return len(values)


def apply_changes(
    source, uri: str, *, partitions: int, rows_per_batch: int, storage_config, storage_options: dict | None
) -> tuple[int, int]:
    """Upsert new and changed rows, delete vanished keys. -> (rows upserted, keys deleted).

    Keys are compared by Ray tasks over hash partitions (object refs only on the driver); the writing tasks
    run one after another, so that the table's transactions never race."""
    import ray

    key, parts = source.key, max(1, partitions)
    src = ray.remote(num_returns=parts)(source_keys) if parts > 1 else ray.remote(source_keys)
    tab = ray.remote(num_returns=parts)(table_keys) if parts > 1 else ray.remote(table_keys)
    wrap = (lambda refs: refs) if parts > 1 else (lambda ref: [ref])
    source_parts = [
        wrap(src.remote(f, key=key, make_key=source.make_key, parts=parts, storage_config=storage_config))
        for f in source.files
    ]
    fragments = [f.fragment_id for f in open_dataset(uri, storage_options).get_fragments()]
    table_parts = [wrap(tab.remote(uri, i, key=key, parts=parts, storage_options=storage_options)) for i in fragments]
    diff = ray.remote(num_returns=2)(diff_part)
    diffs = [
        diff.remote(key, len(source_parts), *[s[p] for s in source_parts], *[t[p] for t in table_parts])
        for p in range(parts)
    ]
    changed = [d[0] for d in diffs]
    upsert = ray.remote(upsert_file)
    options = dict(uri=uri, key=key, storage_options=storage_options)
    upserts = 0
    for file_uri in source.files:
        upserts += ray.get(
            upsert.remote(
                file_uri,
                *changed,
                make_key=source.make_key,
                columns=source.schema.names,
                rows_per_batch=rows_per_batch,
                storage_config=storage_config,
                **options,
            )
        )
    delete = ray.remote(delete_keys)
    deleted = sum(ray.get(delete.remote(d[1], rows_per_batch=rows_per_batch, **options)) for d in diffs)
    return upserts, deleted
