"""Mirror the source rows into the Lance dataset, idempotently, with Ray tasks.

    no dataset yet, or one made from other vectors (another embedrank.fingerprint: model, dim, dtype...)
        -> Ray tasks write the fragments, one Overwrite commit makes them the table
    a dataset of the same vectors
        -> diff by key (Ray Data hash joins): rows whose key is new or whose content_hash changed are upserted
           with merge_insert(key), one Lance transaction per batch; keys the source no longer holds are deleted

Why this is safe to kill: the create commits once (a killed create leaves no table, or one another run
overwrites); each upsert or delete is a transaction keyed by the row's key, so a rerun diffs again and
applies exactly what is still missing. The driver holds counts, never rows.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

PREV_HASH = "_table_content_hash"
FINGERPRINT = "embedrank.fingerprint"


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


def changed_rows(batch: pa.Table) -> pa.Table:
    """Ray Data batch of the left join: rows new to the table or whose content changed."""
    prev = batch.column(PREV_HASH)
    keep = pc.or_(pc.is_null(prev), pc.not_equal(pc.fill_null(prev, ""), batch.column("content_hash")))
    return batch.filter(keep).drop_columns([PREV_HASH])


def upsert_batch(batch: pa.Table, *, uri: str, key: str, storage_options: dict | None) -> pa.Table:
    """Task: one Lance transaction: insert the batch's rows, or replace the rows with the same key."""
    if batch.num_rows:
        dataset = open_dataset(uri, storage_options)
        rows = batch.select(dataset.schema.names).cast(dataset.schema)
        dataset.merge_insert(key).when_matched_update_all().when_not_matched_insert_all().execute(rows)
    return pa.table({"rows": [batch.num_rows]})


def sql_literal(value) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return str(int(value))


def delete_batch(batch: pa.Table, *, uri: str, key: str, storage_options: dict | None) -> pa.Table:
    """Task: one Lance transaction deleting the batch's keys (deleting a missing key changes nothing)."""
    keys = batch.column(key).to_pylist() if batch.num_rows else []
    if keys:
        open_dataset(uri, storage_options).delete(f"{key} IN ({', '.join(sql_literal(k) for k in keys)})")
    return pa.table({"rows": [len(keys)]})


def total(ds) -> int:
    """Sum of the `rows` counts a stage returned (one small row per batch reaches the driver)."""
    return sum(int(row["rows"]) for row in ds.iter_rows())


def apply_changes(
    ds, uri: str, key: str, *, partitions: int, rows_per_batch: int, storage_options: dict | None
) -> tuple[int, int]:
    """Upsert new and changed rows, delete vanished keys. -> (rows upserted, keys deleted)."""
    import ray.data

    table = ray.data.read_lance(uri, columns=[key, "content_hash"], storage_options=storage_options)
    previous = table.map_batches(
        lambda b: b.rename_columns([key, PREV_HASH]), batch_format="pyarrow", batch_size=None
    )  # a map, not rename_columns: Ray Data would push that projection into the join's other side
    joined = ds.join(previous, "left_outer", num_partitions=partitions, on=(key,))
    changed = joined.map_batches(changed_rows, batch_format="pyarrow", batch_size=None)
    options = dict(uri=uri, key=key, storage_options=storage_options)
    # One writer at a time: each batch is its own transaction, and concurrent merges would only retry.
    upserted = changed.map_batches(
        upsert_batch, batch_format="pyarrow", batch_size=rows_per_batch, concurrency=1, fn_kwargs=options
    )
    upserts = total(upserted)
    gone = previous.select_columns([key]).join(
        ds.select_columns([key]), "left_anti", num_partitions=partitions, on=(key,)
    )
    deleted = gone.map_batches(
        delete_batch, batch_format="pyarrow", batch_size=rows_per_batch, concurrency=1, fn_kwargs=options
    )
    return upserts, total(deleted)
