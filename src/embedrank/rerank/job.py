"""The rerank job: candidate lists or flat pairs -> scores ranked per query, one commit per input shard.

plan (driver, no model): list shards, find the input form, check columns, skip committed shards
shards -> pairs (CPU tasks) [-> left join with the corpus on doc_id] -> prompt tokens (CPU tasks)
  -> RerankActor pool -> write (tasks, staging only)
a shard whose pairs are all accounted for is ranked per query (a Ray task), cut to top_k, committed

Ids keep their type (ids.py): query_id and doc_id are written int64 or string as planning settles them from the
input files (rerank/id_types.py); inside the run pairs carry them as text.
"""

from __future__ import annotations

import dataclasses
import json

from .. import __version__
from ..config import RerankJobConfig
from ..errors import PlanError
from ..ids import committed_schema
from ..io import storage
from ..io.pieces import plan_units, task_memory, write_batch_rows
from ..io.sources import Shard, list_shards, peek_all
from ..metrics import EvaluatedReport
from ..report import RunReport
from ..runtime import cluster
from ..runtime.job import Job, JobPlan, merging_finalizer
from ..runtime.quality import evaluate
from ..runtime.staging import STAGED_SUFFIX
from ..runtime.store import OutputStore
from ..templates import text_columns
from .id_types import settle_score_ids
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
    POOL = "rerank"

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

    def check_columns(self, shard: Shard, columns: dict[str, str]) -> None:
        _check_columns(shard, columns, self.cfg, bool(self.cfg.corpus.uri))

    def plan(self, root: OutputStore, report: RunReport) -> RerankPlan:
        cfg = self.cfg
        shards = self.plan_start(root)
        corpus = (
            list_shards(cfg.corpus.uri, fmt=cfg.corpus.format, storage_config=cfg.storage) if cfg.corpus.uri else []
        )
        # Pairs files stay whole (duplicate pairs are found within a file); the corpus is cut freely.
        plan = self.plan_shards(root, shards, split=False)
        kept = committed_schema(plan.store, {**plan.committed, **plan.stale})
        plan.id_types = settle_score_ids(cfg, plan.pending, plan.infos, kept)
        # Every corpus file is needed: one that cannot be read would turn its documents into missing_document.
        corpus_infos, _ = peek_all(corpus, cfg.storage)
        needed = [cfg.corpus.id_column, *text_columns(cfg.corpus)]
        for shard in corpus:
            columns = corpus_infos[shard.key].columns
            missing = [n for n in needed if columns and n not in columns]
            if missing:
                raise PlanError(
                    f"corpus shard {shard.uri} has no column {missing[0]!r} "
                    f"(columns: {', '.join(sorted(columns))}); set corpus.id_column / corpus.text_column"
                )
        corpus_units, _ = plan_units(corpus, corpus_infos, cfg.prepare.rows_per_task, cfg.prepare.mb_per_task)
        return RerankPlan(**vars(plan), corpus=corpus_units)

    def build_graph(self, plan: RerankPlan, staging_uri: str, report: RunReport):
        from .stages import RerankActor, prepare_pairs, read_corpus, tokenize_pairs, write_scores

        cfg = self.cfg
        opts = json.dumps(storage.storage_options(cfg.storage))
        memory = task_memory(plan.units + plan.corpus, cfg.prepare.memory_mb)
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
                rows_per_batch=cfg.prepare.batch_size,
                storage_config=cfg.storage,
                id_types=plan.id_types,
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
                    corpus_cfg=cfg.corpus, rows_per_batch=cfg.prepare.batch_size, storage_config=cfg.storage
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
            batch_size=cfg.prepare.batch_size,
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
        batch_rows = write_batch_rows(plan.units, _rows_per_file(cfg), cfg.rerank.batch_size)
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

        def rank(task, key: str, files: list, out_path: str, record: dict) -> dict:
            if not files:
                return {"below_top_k": 0}
            dropped = ray.get(
                task.remote(files, out_path, cfg.output.top_k, staging_uri, cfg.storage, metadata, plan.id_types)
            )
            report.below_top_k += dropped
            return {"below_top_k": dropped, "rows_written": record["rows_written"] - dropped}

        return merging_finalizer(rank_shard_files, "ranked" + STAGED_SUFFIX, rank)

    def new_report(self, run_id: str) -> RunReport:
        return EvaluatedReport.of(super().new_report(run_id))

    def after_commits(self, plan: RerankPlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        if self.cfg.qrels:
            report.quality = rerank_quality(self.cfg, plan, records, self.log)
        return records


def rerank_quality(cfg: RerankJobConfig, plan: RerankPlan, records: dict[str, dict], log=print) -> dict:
    """nDCG@10, recall@k and MRR@10 of the candidates in the order they came in and in the reranked order, over
    the committed shards of the current input."""
    c = cfg.input
    shards = [s for s in plan.shards if s.key in records]
    columns = dict(
        query_id_column=c.query_id_column, doc_id_column=c.doc_id_column, candidates_column=c.candidates_column
    )
    before = [(s.uri, s.format, columns) for s in shards]
    after = [
        (plan.store.uri_of(plan.store.path(name)), "parquet", {"rank_column": "rank"})
        for s in shards
        for name in records[s.key]["files"].get("data", [])
    ]
    return evaluate(cfg, {"before_rerank": before, "after_rerank": after}, log)
