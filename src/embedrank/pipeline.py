"""Build and drive the Ray Data graph of an embed run: plan, stream, commit shard by shard, publish.

    plan (driver, no model): list shards, check columns and the output, skip committed shards
    from_items(shards) -> prepare (CPU tasks) -> embed (actor pool) -> write (tasks, staging only)
    driver: collect the writer's per-file metadata; a shard whose rows are all accounted for is committed
    publish: _manifest.json and _report.json; staging removed
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import __version__, faults
from .checkpoints import BUILTIN_MODEL, resolve_model_or_builtin
from .config import ConfigError, EmbedJobConfig, to_dict
from .io import storage
from .io.commit import MANIFEST, REPORT, OutputStore, new_run_id
from .io.lock import hold_lock
from .io.sink import CHUNK_COLUMNS, DATA_COLUMNS
from .io.sources import PlanError, Shard, list_shards, peek_columns
from .prepare import needed_columns, template_fields
from .report import RunReport
from .validation import DUPLICATE_ID

# Memory requested per prepare task (a tokenizer and one shard's slice). A request of its own also gives the
# task other remote arguments than the actor stage, which stops Ray Data from fusing prepare into the actors.
PREPARE_MEMORY = 768 * 1024 * 1024  # Ray measured up to ~600 MiB on the sample corpus: keep headroom
DUPLICATE_PARTITIONS = 16  # hash partitions of the cross-shard id check (duplicates.py)
STRING_TYPES = ("string", "large_string", "null", "str")
ID_TYPES = STRING_TYPES + ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "int")


def fingerprint(cfg: EmbedJobConfig, model_source: str) -> dict:
    """Everything that changes a vector: equal fingerprints, interchangeable vectors."""
    return {
        "model": model_source, "revision": cfg.model.revision, "dim": cfg.model.dim,
        "dtype": cfg.model.dtype or "auto", "max_length": cfg.model.max_length,
        "kind": cfg.input.kind, "instruction": cfg.input.instruction if cfg.input.kind == "query" else None,
        "text": cfg.input.template or f"{{{cfg.input.text_column}}}",
        "long_docs": to_dict(cfg.long_docs) if cfg.long_docs.mode == "chunk" else "truncate",
        "embedding_dtype": cfg.output.embedding_dtype,
    }


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EmbedPlan:
    shards: list[Shard]
    pending: list[Shard]
    committed: dict[str, dict]  # shard key -> commit record, for shards kept as they are
    stale: list[str]  # committed shard keys no longer in the input


def check_shard_columns(shard: Shard, columns: dict[str, str], cfg: EmbedJobConfig) -> None:
    if not columns:  # empty file or no parseable line among the first: every row is dead-lettered
        return
    fix = {cfg.input.id_column: "input.id_column", cfg.input.text_column: "input.text_column"}
    for name in needed_columns(cfg.input):
        if name not in columns:
            key = fix.get(name) or ("input.template" if name in template_fields(cfg.input.template or "")
                                    else "input.passthrough")
            raise PlanError(
                f"input shard {shard.uri} has no column {name!r} (columns: {', '.join(sorted(columns))}); "
                f"set {key} to the right column"
            )
    text_cols = template_fields(cfg.input.template) if cfg.input.template else [cfg.input.text_column]
    for name in text_cols:
        if columns[name] not in STRING_TYPES:
            raise PlanError(f"input shard {shard.uri}: column {name!r} holds {columns[name]}, not text; "
                            "point input.text_column (or input.template) at a string column")
    if columns[cfg.input.id_column] not in ID_TYPES:
        raise PlanError(f"input shard {shard.uri}: id column {cfg.input.id_column!r} holds "
                        f"{columns[cfg.input.id_column]}; ids must be strings or integers (set input.id_column)")


def plan_embed(cfg: EmbedJobConfig, fp: dict, store: OutputStore, shards: list[Shard] | None = None) -> EmbedPlan:
    """Everything that can be checked before a model loads. Raises PlanError/ConfigError/StorageError.

    `shards` skips listing the input again when the caller (the nightly run) listed it already.
    """
    reserved = set(DATA_COLUMNS) | set(CHUNK_COLUMNS)
    clash = reserved & set(cfg.input.passthrough)
    if clash:
        raise ConfigError(f"input.passthrough: {sorted(clash)} would overwrite output columns; rename them")
    if cfg.input.kind == "query" and cfg.long_docs.mode == "chunk":
        raise ConfigError("long_docs.mode: chunk cuts the instruction off queries; use truncate for input.kind query")
    if shards is None:
        shards = list_shards(cfg.input.uri, fmt=cfg.input.format, storage_config=cfg.storage)
    committed, pending, stale = split_by_commits(store, shards, fp, "vectors")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for shard, columns in zip(pending, pool.map(lambda s: peek_columns(s, cfg.storage), pending)):
            check_shard_columns(shard, columns, cfg)
    return EmbedPlan(shards, pending, committed, stale)


def split_by_commits(store: OutputStore, shards: list[Shard], fp: dict, what: str):
    """(committed records to keep, pending shards, stale keys) for an output and tonight's shards.

    Refuses an output written with another fingerprint; a shard whose input file changed is pending again,
    and a committed shard whose input file is gone is stale.
    """
    output_uri = store.uri  # writable: the run took its lock there
    records = store.read_commits()
    fp_id = fingerprint_id(fp)
    for record in records.values():
        if record.get("fingerprint_id") != fp_id:
            theirs = record.get("fingerprint", {})
            diff = {k: (theirs.get(k), v) for k, v in fp.items() if theirs.get(k) != v}
            raise PlanError(
                f"{output_uri} already holds {what} made with other settings ({diff}: (there, now)); "
                "write to a new output location, or delete the old one first"
            )
    current = {s.key: s for s in shards}
    committed = {k: r for k, r in records.items() if k in current and r["shard"]["version"] == current[k].version}
    stale = [k for k in records if k not in current]
    if len(committed) < len(current):
        # A shard that gave up rows to an earlier shard's copy of their ids is redone with the rest: that copy
        # may be gone now.
        committed = {k: r for k, r in committed.items() if not r.get("cross_shard_duplicates")}
    pending = [s for s in shards if s.key not in committed]
    return committed, pending, stale


class CommitTracker:
    """Driver-side bookkeeping: a shard commits once its `_seq` ranges cover [0, total) exactly once."""

    def __init__(self, store: OutputStore, pending: list[Shard], report: RunReport, base_record: dict,
                 finalize=None):
        """`finalize(shard_key, staged) -> (staged, extra record fields)` may rewrite a complete shard's staged
        files before they are committed (the rerank job ranks there)."""
        self.finalize = finalize
        self.store = store
        self.shards = {s.key: s for s in pending}
        self.files: dict[str, dict[str, dict]] = {s.key: {} for s in pending}  # key -> path -> meta
        self.totals: dict[str, int] = {}
        self.ends: dict[str, dict] = {}
        self.report = report
        self.base_record = base_record
        self.records: dict[str, dict] = {}

    def add(self, meta: dict) -> None:
        key = meta["shard"]
        if key in self.records:
            raise RuntimeError(f"shard {key} received rows after its commit; refusing to duplicate them")
        if meta["kind"] == "end":
            self.totals[key] = meta["shard_total"]
            self.ends[key] = meta
        else:
            self.files[key][meta["path"]] = meta  # a path seen twice is the same file, rewritten
            faults.driver_point("staged")
        self._maybe_commit(key)

    def _coverage(self, key: str) -> int:
        ranges = sorted(r for m in self.files[key].values() for r in json.loads(m["ranges"]))
        covered, last_end = 0, 0
        for start, end in ranges:
            if start < last_end:
                raise RuntimeError(f"shard {key}: rows {start}..{last_end} were written twice; not committing")
            covered += end - start
            last_end = end
        return covered

    def _maybe_commit(self, key: str) -> None:
        total = self.totals.get(key)
        if total is None or self._coverage(key) != total:
            return
        metas = sorted(self.files[key].values(), key=lambda m: json.loads(m["ranges"])[0][0])
        staged = {kind: [m["path"] for m in metas if m["kind"] == kind] for kind in ("data", "rejected")}
        rows = {"read": self.ends[key]["rows"],
                "embedded": sum(m["rows"] for m in metas if m["kind"] == "data"),
                "rejected": sum(m["rows"] for m in metas if m["kind"] == "rejected")}
        changes: dict[str, int] = {}
        for meta in metas:
            for change, count in json.loads(meta.get("changes") or "{}").items():
                changes[change] = changes.get(change, 0) + count
        record = {**self.base_record, "shard": self.shards[key].to_dict(), "rows": rows, "changes": changes,
                  "deleted": self.ends[key].get("deleted") or 0,
                  "model_rows": sum(m.get("model_rows") or 0 for m in metas)}
        if self.finalize is not None:
            staged, extra = self.finalize(key, staged)
            record.update(extra)
        self.records[key] = self.store.commit_shard(key, staged, record)
        faults.driver_point("committed")
        for meta in [*metas, self.ends[key]]:
            self.report.add_file(meta)
        self.report.shards_committed += 1
        del self.files[key]

    def missing(self) -> list[str]:
        return [k for k in self.shards if k not in self.records]


def init_ray(cfg) -> None:
    """Join the cluster named by the config or RAY_ADDRESS, else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    kwargs = {"include_dashboard": False, "ignore_reinit_error": True, "log_to_driver": True}
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:  # `ray job submit` sets RAY_ADDRESS: join that cluster, whatever the config says
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, **kwargs)


def restart_args(pool) -> dict:
    """Actor restarts: Ray Data already restarts forever (-1); pass a limit only when one is configured."""
    return {} if pool.max_restarts == -1 else {"max_restarts": pool.max_restarts}


def _rows_per_file(cfg: EmbedJobConfig) -> int:
    width = cfg.model.dim or 1024
    row_bytes = width * (2 if cfg.output.embedding_dtype == "float16" else 4) + 96
    return max(256, int(cfg.output.target_file_mb * 1e6 / row_bytes))


def crash_ledger():
    """The run's CrashLedger actor (crash_guard.py): lives as long as the driver, needs no CPU."""
    import ray

    from .crash_guard import CrashLedger

    return ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(CrashLedger).remote()


def build_dataset(cfg: EmbedJobConfig, pending: list[Shard], model_source: str, staging_uri: str, metadata: dict,
                  previous: dict[str, list[str]] | None = None):
    import ray
    import ray.data

    opts = json.dumps(storage.storage_options(cfg.storage))
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    from .stages import EmbedActor, prepare_shards, write_embeddings

    ds = ray.data.from_items([{"shard": json.dumps(s.to_dict())} for s in pending],
                             override_num_blocks=len(pending))
    ds = ds.map_batches(
        prepare_shards, batch_size=1, batch_format="numpy", num_cpus=cfg.prepare.num_cpus,
        memory=PREPARE_MEMORY,  # a distinct request also keeps Ray from fusing tokenising into the actors
        fn_kwargs=dict(input_cfg=cfg.input, long_docs=cfg.long_docs, model_source=model_source,
                       revision=cfg.model.revision, max_length=cfg.model.max_length,
                       rows_per_batch=cfg.prepare.rows_per_batch, on_duplicate_id=cfg.output.on_duplicate_id,
                       storage_config=cfg.storage, storage_opts=opts, previous=previous),
    )
    ds = ds.map_batches(
        EmbedActor, batch_size=cfg.embed.rows_per_batch, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=cfg.embed.min_actors, max_size=cfg.embed.max_actors),
        num_gpus=cfg.embed.num_gpus, num_cpus=cfg.embed.num_cpus, **restart_args(cfg.embed),
        fn_constructor_kwargs=dict(model_cfg=cfg.model, model_source=model_source,
                                   embedding_dtype=cfg.output.embedding_dtype, storage_opts=opts,
                                   torch_threads=cfg.embed.torch_threads, ledger=crash_ledger(),
                                   max_worker_crashes=cfg.embed.max_worker_crashes),
    )
    sources = {s.key: s.uri for s in pending}
    return ds.map_batches(
        write_embeddings, batch_size=_rows_per_file(cfg), batch_format="pyarrow", num_cpus=0.25,
        fn_kwargs=dict(staging_uri=staging_uri, sources=sources, chunked=cfg.long_docs.mode == "chunk",
                       passthrough=list(cfg.input.passthrough), metadata=metadata, storage_config=cfg.storage),
    )


def run_embed(cfg: EmbedJobConfig, log=print) -> RunReport:
    """Run (or finish) an embed job. Safe to rerun: committed shards are skipped."""
    model_source = resolve_model_or_builtin(cfg.model.source, log=log)
    fp = fingerprint(cfg, model_source)
    run_id = new_run_id()
    store = OutputStore(cfg.output.uri, cfg.storage)
    with hold_lock(store, run_id, cfg.output.lock_timeout_s, log):
        plan = plan_embed(cfg, fp, store)
        faults.driver_point("planned")
        report = RunReport(output=cfg.output.uri, model=model_source, run_id=run_id,
                           shards_total=len(plan.shards), shards_skipped=len(plan.committed),
                           builtin_model=model_source == BUILTIN_MODEL)
        records = dict(plan.committed)
        if plan.pending:
            log(f"embedrank embed: {len(plan.pending)} of {len(plan.shards)} shards to embed "
                f"({len(plan.committed)} already committed), model {model_source}")
            records.update(execute_embed(cfg, model_source, fp, store, plan.pending, report, log))
        else:
            log(f"embedrank embed: nothing to embed, all {len(plan.shards)} shards are already committed")
        records = drop_cross_shard_duplicates(cfg, store, records, report, log)
        return finish_run(store, plan.stale, records, fp, report, {"duplicates_checked": records_digest(records)})


def finish_run(store: OutputStore, stale: list[str], records: dict, fp: dict, report: RunReport,
               manifest_extra: dict | None = None) -> RunReport:
    """Forget shards gone from the input, then publish the manifest and the report."""
    for key in stale:
        store.remove_shard(key)
        report.shards_removed += 1
    publish(store, records, fp, report.finish(), manifest_extra)
    return report


def records_digest(records: dict[str, dict]) -> str:
    """Names one state of the committed shards (every commit has its own time)."""
    state = sorted((key, record.get("committed_at")) for key, record in records.items())
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:16]


def drop_cross_shard_duplicates(cfg: EmbedJobConfig, store: OutputStore, records: dict[str, dict],
                                report: RunReport, log) -> dict[str, dict]:
    """Move copies of ids that an earlier shard holds to `_rejected/` (duplicates.py); returns the records.

    Skipped when the manifest says these very records were checked (a rerun that found nothing to do).
    """
    if len(records) < 2:
        return records
    manifest = store.read_json(store.path(MANIFEST)) or {}
    if manifest.get("duplicates_checked") == records_digest(records):
        return records
    import ray

    from .duplicates import later_copies, shared_hashes
    from .stages import rewrite_without, shard_id_partitions

    init_ray(cfg)
    keys = sorted(records)

    def files(key: str, kind: str) -> list[str]:
        return [store.uri_of(store.path(name)) for name in records[key]["files"].get(kind, [])]

    parts = min(DUPLICATE_PARTITIONS, len(keys))
    hash_shard = ray.remote(num_returns=parts, num_cpus=0.25)(shard_id_partitions)
    by_shard = [hash_shard.remote(files(key, "data"), i, parts, cfg.storage) for i, key in enumerate(keys)]
    by_shard = [refs if parts > 1 else [refs] for refs in by_shard]
    find = ray.remote(num_cpus=0.25)(shared_hashes)
    drop = later_copies(np.concatenate(ray.get([find.remote(*[refs[p] for refs in by_shard])
                                                for p in range(parts)])))
    if not drop:
        return records
    rewrite = ray.remote(num_cpus=0.25)(rewrite_without)
    staging = store.uri_of(store.staging_dir(f"{report.run_id}-duplicates"))
    futures = {keys[i]: rewrite.remote(files(keys[i], "data"), files(keys[i], "rejected"), sorted(hashes),
                                       f"{staging}/{keys[i]}", records[keys[i]]["shard"]["uri"], cfg.storage)
               for i, hashes in sorted(drop.items())}
    total = 0
    for key, future in futures.items():
        staged, moved = ray.get(future)
        old = records[key]
        record = {k: v for k, v in old.items() if k not in ("files", "committed_at")}
        record["rows"] = {**old["rows"], "embedded": old["rows"]["embedded"] - moved,
                          "rejected": old["rows"]["rejected"] + moved}
        record["cross_shard_duplicates"] = old.get("cross_shard_duplicates", 0) + moved
        records[key] = store.commit_shard(key, staged, record)
        report.rows_rejected += moved
        report.rejected_by_reason[DUPLICATE_ID] += moved
        if old.get("run_id") == report.run_id:
            report.rows_embedded -= moved
        total += moved
    log(f"embedrank: {total} ids appear in more than one input file: the copies after the first (by file name) "
        f"are in _rejected/ as duplicate_id, from {len(futures)} shards")
    return records


def execute_embed(cfg: EmbedJobConfig, model_source: str, fp: dict, store: OutputStore, pending: list[Shard],
                  report: RunReport, log, previous: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Embed `pending` shards into `store`, committing each; `previous` lets unchanged documents be carried."""
    init_ray(cfg)
    metadata = {
        "embedrank.version": __version__, "embedrank.model": model_source,
        "embedrank.revision": cfg.model.revision or "", "embedrank.normalized": "l2",
        "embedrank.kind": cfg.input.kind, "embedrank.instruction": cfg.input.instruction or "",
        "embedrank.fingerprint": fingerprint_id(fp),
    }
    staging_uri = store.uri_of(store.staging_dir(report.run_id))
    ds = build_dataset(cfg, pending, model_source, staging_uri, metadata, previous)
    tracker = CommitTracker(store, pending, report,
                            {"fingerprint": fp, "fingerprint_id": fingerprint_id(fp), "run_id": report.run_id})
    return drive(ds, tracker, report, cfg.progress_interval_s, log)


def drive(ds, tracker: CommitTracker, report: RunReport, interval_s: float, log) -> dict[str, dict]:
    """Stream the writer's metadata into the tracker (which commits shards), with a progress line."""
    last_line = stream_start = time.time()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for meta in batch.to_pylist():
            tracker.add(meta)
        if time.time() - last_line >= interval_s:
            last_line = time.time()
            elapsed = max(time.time() - report.started, 1e-9)
            log(f"progress: {report.shards_committed}/{len(tracker.shards)} shards committed, "
                f"{report.rows_embedded / elapsed:.0f} rows/s, {report.tokens / elapsed:.0f} tokens/s")
    report.stream_s = time.time() - stream_start
    missing = tracker.missing()
    if missing:
        raise RuntimeError(f"{len(missing)} shards did not complete ({missing[:3]}...); rerun the same command "
                           "to finish them")
    return tracker.records


def publish(store: OutputStore, records: dict[str, dict], fp: dict, report: RunReport,
            manifest_extra: dict | None = None) -> None:
    """Write the manifest (every committed file) and the report, then drop staging."""
    store.check_guard()
    files = sorted(f for r in records.values() for f in r["files"].get("data", []))
    rejected = sorted(f for r in records.values() for f in r["files"].get("rejected", []))
    store.write_json(store.path(MANIFEST), {
        "version": __version__, "fingerprint": fp, "fingerprint_id": fingerprint_id(fp),
        "files": files, "rejected_files": rejected, "shards": sorted(records),
        "rows": sum(r["rows"]["embedded"] - r.get("below_top_k", 0) for r in records.values()),
        "rejected_rows": sum(r["rows"]["rejected"] for r in records.values()),
        "published_at": time.time(), **(manifest_extra or {}),
    })
    faults.driver_point("published")
    store.write_json(store.path(REPORT), report.to_dict())
    store.clear_staging()


def run_combined(cfg, log=print) -> dict[str, RunReport]:
    """Embed and rerank in one Ray job: two Ray Data graphs run at once, each with its own actor pool.

    Each is driven from its own thread (a Ray Data graph is consumed by one iterator); the cluster's scheduler
    shares the resources between the two pools. The first error stops the job after both threads end.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .rerank_pipeline import run_rerank

    init_ray(cfg)
    jobs = {}
    if cfg.embed_job is not None:
        jobs["embed"] = lambda: run_embed(cfg.embed_job, log=lambda line: log(f"[embed] {line}"))
    if cfg.rerank_job is not None:
        jobs["rerank"] = lambda: run_rerank(cfg.rerank_job, log=lambda line: log(f"[rerank] {line}"))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]
    return {name: f.result() for name, f in futures.items()}
