"""Build and drive the Ray Data graph of a rerank run; the commit protocol is the embed job's.

    plan (driver, no model): list shards, find the input form, check columns, skip committed shards
    from_items(shards) -> pairs (CPU tasks) [-> left join with the corpus on doc_id] -> prompt tokens (CPU tasks)
      -> score (actor pool) -> write (tasks, staging only)
    driver: a shard whose pairs are all accounted for is ranked per query (a Ray task), cut to top_k, committed
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import __version__
from .checkpoints import BUILTIN_MODEL, resolve_model_or_builtin
from .config import RerankJobConfig
from .io import storage
from .io.commit import OutputStore, new_run_id
from .io.lock import hold_lock
from .io.sources import PlanError, Shard, list_shards, peek_columns
from .pipeline import (PREPARE_MEMORY, CommitTracker, crash_ledger, drive, finish_run, fingerprint_id, init_ray,
                       restart_args, split_by_commits)
from .prepare import template_fields
from .report import RunReport
from .rerank_rows import input_form


def rerank_fingerprint(cfg: RerankJobConfig, model_source: str) -> dict:
    return {"model": model_source, "revision": cfg.model.revision, "dtype": cfg.model.dtype or "auto",
            "max_length": cfg.model.max_length, "instruction": cfg.input.instruction, "top_k": cfg.output.top_k}


def rank_scores(table: pa.Table, top_k: int | None) -> tuple[pa.Table, int]:
    """Rank pairs per query (1 = best score, ties broken by doc_id); keep the best `top_k`. -> (table, dropped)."""
    ordered = table.sort_by([("query_id", "ascending"), ("score", "descending"), ("doc_id", "ascending")])
    queries = ordered.column("query_id").to_numpy(zero_copy_only=False)
    index = np.arange(len(queries))
    starts = np.ones(len(queries), dtype=bool)
    starts[1:] = queries[1:] != queries[:-1]
    rank = index - np.maximum.accumulate(np.where(starts, index, 0)) + 1
    ranked = pa.table({
        "query_id": ordered.column("query_id"), "doc_id": ordered.column("doc_id"),
        "score": ordered.column("score"), "rank": pa.array(rank, pa.int32()),
        "n_tokens": ordered.column("n_tokens"), "truncated": ordered.column("truncated"),
    })
    if top_k is None:
        return ranked, 0
    kept = ranked.filter(pc.less_equal(ranked.column("rank"), top_k))
    return kept, ranked.num_rows - kept.num_rows


def rank_shard_files(paths: list[str], out_path: str, top_k: int | None, staging_uri: str, storage_config,
                     metadata: dict) -> int:
    """Read a complete shard's staged scores, rank them, write one file at `out_path`; returns pairs dropped."""
    fs, _ = storage.filesystem(staging_uri, storage_config)
    tables = []
    for path in paths:
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f))
    ranked, dropped = rank_scores(pa.concat_tables(tables), top_k)
    with fs.open(out_path, "wb") as f:
        pq.write_table(ranked.replace_schema_metadata(metadata), f, compression="zstd")
    for path in paths:
        fs.rm_file(path)
    return dropped


@dataclass
class RerankPlan:
    shards: list[Shard]
    pending: list[Shard]
    committed: dict[str, dict]
    stale: list[str]
    corpus: list[Shard]


def _check_columns(shard: Shard, columns: dict, cfg: RerankJobConfig, has_corpus: bool) -> None:
    if not columns:
        return
    c = cfg.input
    if input_form(columns, c) == "lists":
        needed = {c.query_id_column: "input.query_id_column", c.query_column: "input.query_column"}
    else:
        needed = {c.query_id_column: "input.query_id_column", c.query_column: "input.query_column",
                  c.doc_id_column: "input.doc_id_column"}
        if not has_corpus:
            needed[c.document_column] = "input.document_column (or give --corpus for doc-id-only candidates)"
    for name, key in needed.items():
        if name not in columns:
            raise PlanError(f"rerank input shard {shard.uri} has no column {name!r} (columns: "
                            f"{', '.join(sorted(columns)) or 'none'}, and no {c.candidates_column!r} column for "
                            f"candidate lists); set {key}")


def plan_rerank(cfg: RerankJobConfig, fp: dict, store: OutputStore) -> RerankPlan:
    has_corpus = bool(cfg.corpus.uri)
    shards = list_shards(cfg.input.uri, fmt=cfg.input.format, storage_config=cfg.storage)
    corpus = list_shards(cfg.corpus.uri, fmt=cfg.corpus.format, storage_config=cfg.storage) if has_corpus else []
    committed, pending, stale = split_by_commits(store, shards, fp, "scores")
    with ThreadPoolExecutor(max_workers=8) as pool:
        for shard, columns in zip(pending, pool.map(lambda s: peek_columns(s, cfg.storage), pending)):
            _check_columns(shard, columns, cfg, has_corpus)
        needed = [cfg.corpus.id_column, *(template_fields(cfg.corpus.template) if cfg.corpus.template
                                          else [cfg.corpus.text_column])]
        for shard, columns in zip(corpus, pool.map(lambda s: peek_columns(s, cfg.storage), corpus)):
            missing = [n for n in needed if columns and n not in columns]
            if missing:
                raise PlanError(f"corpus shard {shard.uri} has no column {missing[0]!r} "
                                f"(columns: {', '.join(sorted(columns))}); set corpus.id_column / corpus.text_column")
    return RerankPlan(shards, pending, committed, stale, corpus)


def build_rerank_dataset(cfg: RerankJobConfig, plan: RerankPlan, model_source: str, staging_uri: str):
    import ray
    import ray.data

    from .stages import RerankActor, prepare_pairs, read_corpus, tokenize_pairs, write_scores

    ray.data.DataContext.get_current().enable_progress_bars = cfg.ray.progress_bars
    opts = json.dumps(storage.storage_options(cfg.storage))
    shard_rows = lambda shards: [{"shard": json.dumps(s.to_dict())} for s in shards]  # noqa: E731
    pairs = ray.data.from_items(shard_rows(plan.pending), override_num_blocks=len(plan.pending)).map_batches(
        prepare_pairs, batch_size=1, batch_format="numpy", num_cpus=cfg.prepare.num_cpus,
        memory=PREPARE_MEMORY,  # a distinct request also keeps Ray from fusing tokenising into the actors
        fn_kwargs=dict(input_cfg=cfg.input, has_corpus=bool(plan.corpus), rows_per_batch=cfg.prepare.rows_per_batch,
                       storage_config=cfg.storage),
    )
    if plan.corpus:
        corpus = ray.data.from_items(shard_rows(plan.corpus), override_num_blocks=len(plan.corpus)).map_batches(
            read_corpus, batch_size=1, batch_format="numpy", num_cpus=cfg.prepare.num_cpus,
            fn_kwargs=dict(corpus_cfg=cfg.corpus, rows_per_batch=cfg.prepare.rows_per_batch,
                           storage_config=cfg.storage),
        )
        # A distributed hash join: the corpus is never collected on the driver.
        pairs = pairs.join(corpus, join_type="left_outer", on=("doc_id",),
                           num_partitions=max(2, len(plan.pending) + len(plan.corpus)))
    prompts = pairs.map_batches(
        tokenize_pairs, batch_size=cfg.prepare.rows_per_batch, batch_format="pyarrow", num_cpus=cfg.prepare.num_cpus,
        memory=PREPARE_MEMORY,  # keeps tokenising out of the model actors (no fusion)
        fn_kwargs=dict(model_source=model_source, revision=cfg.model.revision, max_length=cfg.model.max_length,
                       default_instruction=cfg.input.instruction, storage_opts=opts),
    )
    scored = prompts.map_batches(
        RerankActor, batch_size=cfg.rerank.rows_per_batch, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=cfg.rerank.min_actors, max_size=cfg.rerank.max_actors),
        num_gpus=cfg.rerank.num_gpus, num_cpus=cfg.rerank.num_cpus, **restart_args(cfg.rerank),
        fn_constructor_kwargs=dict(model_cfg=cfg.model, model_source=model_source, storage_opts=opts,
                                   torch_threads=cfg.rerank.torch_threads, ledger=crash_ledger(),
                                   max_worker_crashes=cfg.rerank.max_worker_crashes),
    )
    rows_per_file = max(1024, int(cfg.output.target_file_mb * 1e6 / 64))
    return scored.map_batches(
        write_scores, batch_size=rows_per_file, batch_format="pyarrow", num_cpus=0.25,
        fn_kwargs=dict(staging_uri=staging_uri, sources={s.key: s.uri for s in plan.pending},
                       storage_config=cfg.storage),
    )


def run_rerank(cfg: RerankJobConfig, log=print) -> RunReport:
    """Run (or finish) a rerank job. Safe to rerun: committed shards are skipped."""
    model_source = resolve_model_or_builtin(cfg.model.source, log=log, kind="reranker")
    fp = rerank_fingerprint(cfg, model_source)
    run_id = new_run_id()
    store = OutputStore(cfg.output.uri, cfg.storage)
    with hold_lock(store, run_id, cfg.output.lock_timeout_s, log):
        plan = plan_rerank(cfg, fp, store)
        report = RunReport(output=cfg.output.uri, model=model_source, run_id=run_id, job="rerank",
                           shards_total=len(plan.shards), shards_skipped=len(plan.committed),
                           builtin_model=model_source == BUILTIN_MODEL)
        records = dict(plan.committed)
        if plan.pending:
            log(f"embedrank rerank: {len(plan.pending)} of {len(plan.shards)} shards to score "
                f"({len(plan.committed)} already committed), model {model_source}")
            records.update(execute_rerank(cfg, plan, model_source, fp, store, report, log))
        else:
            log(f"embedrank rerank: nothing to score, all {len(plan.shards)} shards are already committed")
        return finish_run(store, plan.stale, records, fp, report)


def execute_rerank(cfg: RerankJobConfig, plan: RerankPlan, model_source: str, fp: dict, store: OutputStore,
                   report: RunReport, log) -> dict[str, dict]:
    """Score the pending shards; each complete shard is ranked (a Ray task), cut to top_k and committed."""
    import ray

    init_ray(cfg)
    staging_uri = store.uri_of(store.staging_dir(report.run_id))
    metadata = {"embedrank.version": __version__, "embedrank.model": model_source,
                "embedrank.revision": cfg.model.revision or "", "embedrank.score": "P(yes)",
                "embedrank.top_k": str(cfg.output.top_k or "")}
    rank = ray.remote(num_cpus=0.25)(rank_shard_files)

    def finalize(key: str, staged: dict) -> tuple[dict, dict]:
        if not staged.get("data"):
            return staged, {"below_top_k": 0}
        out_path = staged["data"][0].rsplit("/", 1)[0] + "/ranked.parquet"
        dropped = ray.get(rank.remote(staged["data"], out_path, cfg.output.top_k, staging_uri, cfg.storage,
                                      metadata))
        report.below_top_k += dropped
        return {**staged, "data": [out_path]}, {"below_top_k": dropped}

    ds = build_rerank_dataset(cfg, plan, model_source, staging_uri)
    tracker = CommitTracker(store, plan.pending, report,
                            {"fingerprint": fp, "fingerprint_id": fingerprint_id(fp), "run_id": report.run_id},
                            finalize=finalize)
    return drive(ds, tracker, report, cfg.progress_interval_s, log)
