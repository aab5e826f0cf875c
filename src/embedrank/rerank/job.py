"""The rerank job: candidate lists or flat pairs -> scores ranked per query, one commit per input shard.

plan (driver, no model): list shards, find the input form, check columns, skip committed shards
shards -> pairs (CPU tasks) [-> left join with the corpus on doc_id] -> prompt tokens (CPU tasks)
  -> RerankActor pool -> write (tasks, staging only)
a shard whose pairs are all accounted for is ranked per query (a Ray task), cut to top_k, committed
"""

from __future__ import annotations

import dataclasses
import json

from .. import __version__
from ..config import RerankJobConfig
from ..errors import PlanError
from ..io import storage
from ..io.pieces import plan_units, task_memory, write_batch_rows
from ..io.sources import Shard, list_shards, peek_all
from ..metrics import EvaluatedReport, QualitySums, evaluate_file, read_qrels
from ..report import RunReport
from ..runtime import cluster
from ..runtime.commits import split_by_commits
from ..runtime.job import Job, JobPlan, preview_job, run_job
from ..runtime.store import OutputStore, check_separate
from ..templates import text_columns
from .pairs import input_form
from .ranking import rank_shard_files


@dataclasses.dataclass
class RerankPlan(JobPlan):
    corpus: list = dataclasses.field(default_factory=list)  # corpus units, when candidates carry only ids


def _check_columns(shard: Shard, columns: dict, cfg: RerankJobConfig, has_corpus: bool) -> None:
    if not columns:
        return
    c = cfg.input
    if input_form(columns, c) == "lists":
        needed = {c.query_id_column: "input.query_id_column", c.query_column: "input.query_column"}
    else:
        needed = {
            c.query_id_column: "input.query_id_column",
            c.query_column: "input.query_column",
            c.doc_id_column: "input.doc_id_column",
        }
        if not has_corpus:
            needed[c.document_column] = "input.document_column (or give --corpus for doc-id-only candidates)"
    for name, key in needed.items():
        if name not in columns:
            raise PlanError(
                f"rerank input shard {shard.uri} has no column {name!r} (columns: "
                f"{', '.join(sorted(columns)) or 'none'}, and no {c.candidates_column!r} column for "
                f"candidate lists); set {key}"
            )


def _rows_per_file(cfg: RerankJobConfig) -> int:
    return max(1024, int(cfg.output.target_file_mb * 1e6 / 64))


class RerankJob(Job):
    NAME = "rerank"
    VERB = "score"
    MODEL_KIND = "reranker"
    DATA_FOLDER = "scores"

    def fingerprint(self) -> dict:
        cfg = self.cfg
        return {
            "model": self.model_source,
            "revision": cfg.model.revision,
            "dtype": cfg.model.dtype or "auto",
            "max_length": cfg.model.max_length,
            "instruction": cfg.input.instruction,
            "top_k": cfg.output.top_k,
        }

    def pool(self):
        return self.cfg.rerank

    def plan(self, root: OutputStore, report: RunReport) -> RerankPlan:
        cfg = self.cfg
        has_corpus = bool(cfg.corpus.uri)
        check_separate(cfg.input.uri, cfg.output.uri, cfg.storage)
        check_separate(cfg.corpus.uri, cfg.output.uri, cfg.storage, key="corpus.uri")
        if cfg.qrels:
            read_qrels(cfg.qrels, cfg.storage)  # a qrels mistake stops the run before any work
        root.refuse_layout("nightly", "rerank", "Choose another output.uri")
        shards = list_shards(cfg.input.uri, fmt=cfg.input.format, storage_config=cfg.storage)
        corpus = list_shards(cfg.corpus.uri, fmt=cfg.corpus.format, storage_config=cfg.storage) if has_corpus else []
        committed, pending, stale = split_by_commits(root, shards, self.fp, "scores")
        infos, bad = peek_all(pending, cfg.storage, skip_bad=cfg.input.on_bad_shard == "skip")
        pending = [s for s in pending if s.key not in bad]
        # Every corpus file is needed: one that cannot be read would turn its documents into missing_document.
        corpus_infos, _ = peek_all(corpus, cfg.storage)
        for shard in pending:
            _check_columns(shard, infos[shard.key].columns, cfg, has_corpus)
        needed = [cfg.corpus.id_column, *text_columns(cfg.corpus)]
        for shard in corpus:
            columns = corpus_infos[shard.key].columns
            missing = [n for n in needed if columns and n not in columns]
            if missing:
                raise PlanError(
                    f"corpus shard {shard.uri} has no column {missing[0]!r} "
                    f"(columns: {', '.join(sorted(columns))}); set corpus.id_column / corpus.text_column"
                )
        # Pairs files stay whole (duplicate pairs are found within a file); the corpus is cut freely.
        max_rows, max_mb = cfg.prepare.rows_per_task, cfg.prepare.mb_per_task
        units, pieces = plan_units(pending, infos, max_rows, max_mb, split=False)
        corpus_units, _ = plan_units(corpus, corpus_infos, max_rows, max_mb)
        return RerankPlan(root, shards, pending, committed, stale, units, pieces, bad, corpus=corpus_units)

    def build_graph(self, plan: RerankPlan, staging_uri: str, report: RunReport):
        from .stages import RerankActor, prepare_pairs, read_corpus, tokenize_pairs, write_scores

        cfg = self.cfg
        opts = json.dumps(storage.storage_options(cfg.storage))
        memory = task_memory(plan.units + plan.corpus)
        pairs = cluster.cpu_stage(
            cluster.units_dataset(plan.units),
            prepare_pairs,
            num_cpus=cfg.prepare.num_cpus,
            memory=memory,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs=dict(
                input_cfg=cfg.input,
                has_corpus=bool(plan.corpus),
                rows_per_batch=cfg.prepare.rows_per_batch,
                storage_config=cfg.storage,
            ),
            board=self.progress_board,
        )
        if plan.corpus:
            corpus = cluster.cpu_stage(
                cluster.units_dataset(plan.corpus),
                read_corpus,
                num_cpus=cfg.prepare.num_cpus,
                memory=memory,
                batch_size=1,
                batch_format="numpy",
                fn_kwargs=dict(
                    corpus_cfg=cfg.corpus, rows_per_batch=cfg.prepare.rows_per_batch, storage_config=cfg.storage
                ),
            )
            # A distributed hash join: the corpus is never collected on the driver.
            pairs = pairs.join(
                corpus,
                join_type="left_outer",
                on=("doc_id",),
                num_partitions=max(2, len(plan.units) + len(plan.corpus)),
            )
        prompts = cluster.cpu_stage(
            pairs,
            tokenize_pairs,
            num_cpus=cfg.prepare.num_cpus,
            memory=memory,
            batch_size=cfg.prepare.rows_per_batch,
            batch_format="pyarrow",
            fn_kwargs=dict(
                model_source=self.model_source,
                revision=cfg.model.revision,
                max_length=cfg.model.max_length,
                default_instruction=cfg.input.instruction,
                storage_opts=opts,
            ),
            board=self.progress_board,
        )
        scored = cluster.actor_stage(
            prompts,
            RerankActor,
            pool=cfg.rerank,
            board=self.progress_board,
            constructor_kwargs=dict(model_cfg=cfg.model, model_source=self.model_source, storage_opts=opts),
        )
        # A candidate list is many pairs, so for lists this waits for fewer pairs than a unit holds: more, smaller
        # staged files, which cost nothing more (each shard is ranked into one file at commit).
        batch_rows = write_batch_rows(plan.units, _rows_per_file(cfg), cfg.rerank.rows_per_batch)
        return cluster.write_stage(
            scored,
            write_scores,
            rows_per_file=batch_rows,
            fn_kwargs=dict(
                staging_uri=staging_uri, sources={s.key: s.uri for s in plan.pending}, storage_config=cfg.storage
            ),
        )

    def finalizer(self, plan: RerankPlan, staging_uri: str, report: RunReport):
        """Rank each complete shard (a Ray task) and cut it to top_k before it commits."""
        import ray

        cfg = self.cfg
        metadata = {
            "embedrank.version": __version__,
            "embedrank.model": self.model_source,
            "embedrank.revision": cfg.model.revision or "",
            "embedrank.score": "P(yes)",
            "embedrank.top_k": str(cfg.output.top_k or ""),
        }
        rank = cluster.remote_task(rank_shard_files)

        def finalize(key: str, staged: dict, record: dict) -> tuple[dict, dict]:
            if not staged.get("data"):
                return staged, {"below_top_k": 0}
            out_path = staged["data"][0].rsplit("/", 1)[0] + "/ranked.parquet"
            dropped = ray.get(
                rank.remote(staged["data"], out_path, cfg.output.top_k, staging_uri, cfg.storage, metadata)
            )
            report.below_top_k += dropped
            return {**staged, "data": [out_path]}, {
                "below_top_k": dropped,
                "data_pieces": [0],
                "rows_written": record["rows_written"] - dropped,
            }

        return finalize

    def new_report(self, run_id: str) -> RunReport:
        return EvaluatedReport.of(super().new_report(run_id))

    def after_commits(self, plan: RerankPlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        if self.cfg.qrels:
            report.quality = rerank_quality(self.cfg, plan, records)
        return records


def rerank_quality(cfg: RerankJobConfig, plan: RerankPlan, records: dict[str, dict]) -> dict:
    """nDCG@10, recall@k and MRR@10 of the candidates in the order they came in and in the reranked order, over
    the committed shards of the current input: one Ray task per file, only sums reach the driver."""
    import ray

    cluster.init_ray(cfg)  # a run with nothing left to do has not started Ray yet
    qrels, task, c = ray.put(read_qrels(cfg.qrels, cfg.storage)), cluster.remote_task(evaluate_file), cfg.input
    shards = [s for s in plan.shards if s.key in records]
    before = [
        task.remote(
            s.uri,
            qrels,
            cfg.storage,
            s.format,
            query_id_column=c.query_id_column,
            doc_id_column=c.doc_id_column,
            candidates_column=c.candidates_column,
        )
        for s in shards
    ]
    after = [
        task.remote(plan.store.uri_of(plan.store.path(name)), qrels, cfg.storage, "parquet", rank_column="rank")
        for s in shards
        for name in records[s.key]["files"].get("data", [])
    ]
    return {
        "qrels": cfg.qrels,
        "before_rerank": sum(ray.get(before), QualitySums()).averages(),
        "after_rerank": sum(ray.get(after), QualitySums()).averages(),
    }


def run_rerank(cfg: RerankJobConfig, log=print, dry_run: bool = False) -> RunReport:
    """Run (or finish) a rerank job. Safe to rerun: committed shards are skipped. `dry_run`: preview only."""
    return preview_job(RerankJob(cfg, log)) if dry_run else run_job(RerankJob(cfg, log))
