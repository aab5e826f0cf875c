"""`embedrank export`: the committed vectors of an embed output (or a nightly root's current version) into a
LanceDB table or a bare Lance dataset, mirrored idempotently, with an optional ANN index.

    target.py   --to lancedb://DIR/TABLE | lance://URI -> where the Lance dataset lives
    source.py   the committed vector files as a Ray Dataset, with the table's key column
    sync.py     create the table, or upsert new and changed rows and delete vanished keys (Ray tasks)
    index.py    the ANN index (IVF-PQ, HNSW) built after the load
    run.py      run_export: the steps above in order

Needs the optional extra `embedrank[lancedb]` (lancedb, pylance).
"""

from .run import ExportReport, run_export

__all__ = ["ExportReport", "run_export"]
