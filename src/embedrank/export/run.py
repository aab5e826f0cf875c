"""run_export: plan the source, create or sync the Lance dataset, then build the index. The CLI's
`embedrank export` calls it; it is also usable from Python."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from ..errors import UserError
from .index import build_index
from .source import plan_source, source_dataset
from .sync import FINGERPRINT, apply_changes, create, open_dataset
from .target import parse_target

ROWS_PER_PARTITION = 500_000


@dataclass
class ExportReport:
    source: str
    target: str
    mode: str = ""  # created (the whole table written) | synced (only the differences)
    rows: int = 0  # rows the table holds afterwards
    upserted: int = 0  # rows written by a sync (new or changed)
    deleted: int = 0  # keys a sync deleted
    index: str | None = None
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        done = f"{self.rows} rows" if self.mode == "created" else f"{self.upserted} upserted, {self.deleted} deleted"
        index = f", index {self.index}" if self.index else ""
        return f"embedrank export: {self.source} -> {self.target}: {self.mode}, {done}{index} ({self.wall_s:.1f} s)"


def run_export(
    source_uri: str,
    to: str,
    *,
    index: str | None = None,
    index_params: dict | None = None,
    vector_column: str = "embedding",
    metric: str = "dot",
    rows_per_batch: int = 10000,
    partitions: int | None = None,
    storage_config=None,
    lance_storage_options: dict | None = None,
    log=print,
) -> ExportReport:
    """Mirror the committed vectors at `source_uri` (embed output or nightly root) into `to`
    (lancedb://DIR/TABLE or lance://URI); then build `index` (ivf_pq | hnsw) with `index_params`
    (ivf_pq: num_partitions, num_sub_vectors; hnsw: m, ef_construction). Safe to rerun after a kill.

    `partitions`: hash partitions of the diff's joins (None: one per ROWS_PER_PARTITION rows, at most 64)."""
    try:
        import lance  # noqa: F401
    except ImportError:
        raise UserError("embedrank export needs LanceDB: pip install 'embedrank[lancedb]'") from None
    import ray

    start = time.perf_counter()
    target = parse_target(to)
    source = plan_source(source_uri, storage_config)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=True)
    report = ExportReport(source_uri, str(target))
    existing = open_dataset(target.uri, lance_storage_options)
    fingerprint = (existing.schema.metadata or {}).get(FINGERPRINT.encode(), b"").decode() if existing else None
    if existing is None or fingerprint != source.metadata[FINGERPRINT]:
        create(source_dataset(source, storage_config), target.uri, source.schema, lance_storage_options)
        report.mode = "created"
    else:
        report.upserted, report.deleted = apply_changes(
            source,
            target.uri,
            storage_config=storage_config,
            partitions=partitions or min(64, 1 + source.rows // ROWS_PER_PARTITION),
            rows_per_batch=rows_per_batch,
            storage_options=lance_storage_options,
        )
        report.mode = "synced"
    dataset = open_dataset(target.uri, lance_storage_options)
    report.rows = dataset.count_rows()
    if index:
        build_index(dataset, index, column=vector_column, metric=metric, params=index_params or {})
        report.index = index
    report.wall_s = time.perf_counter() - start
    log(report.summary())
    return report
