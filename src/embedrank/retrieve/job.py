"""The retrieve job: embedded queries x embedded corpus -> each query's top k documents by inner product,
one commit per query-vector file.

    plan (driver, footers only): the committed vector files of both embed outputs; query files grouped into
         units, corpus files into partitions; widths and models checked; committed query shards skipped
    (query unit x corpus partition) work items -> scoring tasks (stages.score_items) -> partial top-k per
         query shard and partition, staged
    a query shard whose partitions are all staged is merged (a Ray task) into candidate lists and committed
    with qrels: nDCG@10, recall@k and MRR@10 of every committed shard's candidates, in the report

Exact: every (query, vector) inner product is computed; a document with several vectors (chunks) scores its
best one and appears once; ties are broken by doc_id. The driver only ever holds file names and counts.

Ids keep their type (ids.py), settled in planning from the footers (`settle_ids`): query_id takes the query
vectors' id type, each candidate's doc_id the corpus's (int64 or string); output.id_type: string writes both as
text, and an output that holds candidate lists keeps their types.
"""

from __future__ import annotations

import dataclasses
import json

from .. import __version__
from ..errors import PlanError
from ..ids import committed_schema, settle_id_type
from ..io.pieces import plan_units
from ..io.sources import ShardInfo
from ..metrics import EvaluatedReport, quality_lines
from ..report import RunReport
from ..runtime.cluster import Resources
from ..runtime.commits import split_by_commits
from ..runtime.job import Job, JobPlan, merging_finalizer
from ..runtime.quality import evaluate
from ..runtime.staging import STAGED_SUFFIX
from ..runtime.store import OutputStore
from .candidates import list_id_types
from .vectors import (
    VectorFile,
    check_files,
    files_digest,
    partition_files,
    plan_search,
    read_footer,
    read_footers,
    vector_files,
)

BYTES_PER_ID = 80  # a corpus id in a scoring task's memory (Arrow string, its key, the sort)
UNBOUNDED_MB = 1e12  # query units are bounded by retrieve.queries_per_task alone


@dataclasses.dataclass
class RetrievePlan(JobPlan):
    partitions: list = dataclasses.field(default_factory=list)  # corpus partitions: lists of VectorFile
    dim: int = 0
    queries: int = 0  # query vectors to score in this run
    unit_rows: list = dataclasses.field(default_factory=list)  # query vectors of each unit
    corpus_vectors: int = 0
    search: dict | None = None  # vectors.plan_search: what the scoring tasks search and rescore


@dataclasses.dataclass
class RetrieveReport(EvaluatedReport):
    """The run report of a retrieve job: queries instead of rows, scored pairs instead of tokens."""

    top_k: int = 0
    corpus_vectors: int = 0
    search: dict | None = None  # vectors.plan_search: what the scoring tasks search and rescore
    candidates: int = 0  # (query, document) candidates committed in this run
    recall: dict | None = None  # a compact search's recall@k against exact float32 (stages.recall_of)

    @property
    def done_word(self) -> str:
        return "retrieved"

    def to_dict(self) -> dict:
        wall = self.wall_s or 1e-9
        busy = sum(b for b, _ in self.actors.values())  # the scoring tasks' seconds, over every worker process
        return {
            **super().to_dict(),
            "retrieve": {
                "top_k": self.top_k,
                "corpus_vectors": self.corpus_vectors,
                "candidates": self.candidates,
                "pairs_scored": self.model_rows,
                "pairs_per_s": round(self.model_rows / wall, 1),
                "workers": len(self.actors),
                "pairs_per_s_per_busy_worker": round(self.model_rows / busy, 1) if busy else 0.0,
                **({"recall_vs_exact_float32": self.recall} if self.recall else {}),
            },
        }

    def summary(self) -> str:
        d = self.to_dict()
        r = d["retrieve"]
        lines = [
            f"embedrank retrieve: {self.output}",
            f"  shards     {self.shards_total} query files ({self.shards_committed} committed now, "
            f"{self.shards_skipped} already committed)",
            f"  queries    read {self.rows_read}; retrieved {self.rows_embedded}, top {self.top_k} of "
            f"{self.corpus_vectors} corpus vectors each ({self.candidates} candidates)",
            f"  scored     {self.model_rows} query x corpus pairs, {r['pairs_per_s']:.0f} pairs/s overall, "
            f"{r['pairs_per_s_per_busy_worker']:.0f} per scoring task while busy "
            f"({plural(r['workers'], 'worker')})",
            f"  time       {self.wall_s:.1f} s",
        ]
        if self.shards_kept_not_in_input:
            lines.append(
                f"  kept       {len(self.shards_kept_not_in_input)} committed query files no longer in the "
                "input; --prune removes them"
            )
        if self.shards_removed:
            lines.append(f"  removed    {self.shards_removed} committed query files no longer in the input (prune)")
        if self.shards_total and not self.shards_committed and not self.rows_read:
            lines.append("  nothing to retrieve: every query file was already committed with these settings")
        return "\n".join([*lines, *quality_lines(self.quality)])


class RetrieveJob(Job):
    NAME = "retrieve"
    VERB = "retrieve"
    DATA_FOLDER = "candidates"
    MODEL_STAGE = False  # its tasks score vectors; no model actors report progress

    def resolve_model(self) -> str:
        """No model to load: the vectors are made. The model that made the corpus's vectors, read from their
        footer; the corpus files are pinned here, because they are part of the fingerprint."""
        self.corpus_shards = vector_files(self.cfg.corpus.uri, self.cfg.storage, "corpus.uri")
        return read_footer(self.corpus_shards[0], self.cfg.storage).model or "unknown model"

    def fingerprint(self) -> dict:
        cfg, r = self.cfg, self.cfg.retrieve
        search = [r.search, r.rescore, r.rescore_k]
        return {
            "corpus": files_digest(self.corpus_shards),
            "model": self.model_source,
            "top_k": cfg.output.top_k,
            "query_text": cfg.input.text_column,
            # Only where set: outputs made before compact searches keep their fingerprint.
            **({"search": search} if search != ["auto", "auto", 100] else {}),
        }

    def check_model(self) -> None:
        """Nothing to load: widths and models of the vectors are checked in planning."""

    def resources(self) -> Resources:
        """One scoring task, and the 0.25-CPU task that merges a finished query shard."""
        r = self.cfg.retrieve
        return Resources(1, 1, r.num_cpus, r.num_gpus, 0.25)

    def list_inputs(self) -> list:
        return vector_files(self.cfg.input.uri, self.cfg.storage, "input.uri")

    def new_report(self, run_id: str) -> RunReport:
        return RetrieveReport.of(super().new_report(run_id), top_k=self.cfg.output.top_k)

    def plan(self, root: OutputStore, report: RunReport) -> RetrievePlan:
        cfg = self.cfg
        queries = self.plan_start(root)
        committed, pending, stale = split_by_commits(root, queries, self.fp, self.DATA_FOLDER)
        query_files = read_footers(pending, cfg.storage)
        corpus_files = read_footers(self.corpus_shards, cfg.storage)
        text = cfg.input.text_column
        if text and any(f.columns and text not in f.columns for f in query_files):
            raise PlanError(
                f"the query vectors at {cfg.input.uri} have no column {text!r} with the query text that "
                f"rerank needs: embed the queries with input.passthrough: [{text}], or set "
                "input.text_column (null: candidate lists without the text)"
            )
        query_dim = check_files(query_files, "input.uri")
        dim = check_files(corpus_files, "corpus.uri")
        corpus_vectors = sum(f.rows for f in corpus_files)
        if not corpus_vectors:
            raise PlanError(f"corpus.uri {cfg.corpus.uri} holds no vectors; embed the corpus first")
        if query_dim is not None and query_dim != dim:
            raise PlanError(
                f"query vectors have {query_dim} dimensions, corpus vectors {dim}: embed both with the "
                "same model and model.dim"
            )
        models = {f.model for f in query_files if f.model} - {self.model_source}
        if models and self.model_source != "unknown model":
            raise PlanError(
                f"the queries were embedded with {sorted(models)[0]}, the corpus with {self.model_source}: "
                "their vectors do not compare; embed both with the same model"
            )
        if any(f.kind == "document" for f in query_files):
            self.log(
                "embedrank retrieve: warning: the query vectors were embedded as documents (no instruction); "
                "Qwen3-Embedding expects queries embedded with input.kind: query"
            )
        infos = {f.shard.key: ShardInfo({}, f.rows, f.rows * dim * 4) for f in query_files}
        # Whole query files only: a file is the unit of commit, and a unit holds few enough for one task.
        units, pieces = plan_units(pending, infos, cfg.retrieve.queries_per_task, UNBOUNDED_MB, split=False)
        partitions = partition_files(corpus_files, cfg.retrieve.corpus_rows_per_task)
        r = cfg.retrieve
        search = plan_search(
            corpus_files,
            dim=dim,
            top_k=cfg.output.top_k,
            search=r.search,
            rescore=r.rescore,
            rescore_k=r.rescore_k,
            measure_recall=r.measure_recall,
        )
        kept = committed_schema(root, {**committed, **stale})
        id_types = settle_ids(
            cfg.output.id_type, query_files, corpus_files, list_id_types(kept) if kept else {}, cfg.output.uri
        )
        report.corpus_vectors = corpus_vectors
        rows = {f.shard.key: f.rows for f in query_files}
        return RetrievePlan(
            root,
            queries,
            pending,
            committed,
            stale,
            units,
            pieces,
            partitions=partitions,
            dim=dim,
            queries=sum(rows.values()),
            corpus_vectors=corpus_vectors,
            search=search,
            unit_rows=[sum(rows[p.shard.key] for p in unit) for unit in units],
            id_types=id_types,
        )

    def describe(self, plan: RetrievePlan) -> str:
        return (
            f"embedrank retrieve: {len(plan.pending)} of {len(plan.shards)} query files to retrieve "
            f"({len(plan.committed)} already committed): {plan.queries} queries x {plan.corpus_vectors} corpus "
            f"vectors in {plural(len(plan.partitions), 'partition')}, top {self.cfg.output.top_k}"
        )

    def preview_lines(self, plan: RetrievePlan) -> list[str]:
        return [
            f"corpus     {plan.corpus_vectors} vectors ({plan.dim} dimensions) in "
            f"{plural(len(plan.partitions), 'partition')}: {len(plan.units) * len(plan.partitions)} scoring tasks, "
            f"{plan.queries * plan.corpus_vectors} query x corpus pairs"
        ]

    def task_memory(self, plan: RetrievePlan) -> int:
        """Bytes a scoring task requests: its queries and their running top k, one block of corpus vectors and
        its scores, and the ids of its partition."""
        r, k, dim = self.cfg.retrieve, self.cfg.output.top_k, plan.dim
        queries = max(plan.unit_rows, default=0)
        partition = max(sum(f.rows for f in files) for files in plan.partitions)
        block = min(r.doc_block, partition)
        need = (
            queries * dim * 4 * 2
            + queries * k * 12 * 4
            + block * dim * 4 * 3
            + min(r.query_block, max(queries, 1)) * block * 4 * 4
            + partition * BYTES_PER_ID
        )
        return int(min(max((512 << 20) + need, 768 << 20), 32 << 30))

    def build_graph(self, plan: RetrievePlan, staging_uri: str, report: RunReport):
        import ray.data

        from .stages import score_items

        cfg = self.cfg
        items = []
        for unit in plan.units:  # unit-major: a unit's query files complete (and commit) before the next unit's
            queries = [p.shard.to_dict() for p in unit]
            for number, files in enumerate(plan.partitions):
                items.append(
                    {
                        "item": json.dumps(
                            {
                                "queries": queries,
                                "corpus": [f.shard.to_dict() for f in files],
                                "partition": number,
                                "partitions": len(plan.partitions),
                            }
                        )
                    }
                )
        r = cfg.retrieve
        return ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            score_items,
            batch_size=1,
            batch_format="numpy",
            num_cpus=r.num_cpus,
            num_gpus=r.num_gpus,
            memory=self.task_memory(plan),
            fn_kwargs=dict(
                top_k=cfg.output.top_k,
                query_block=r.query_block,
                doc_block=r.doc_block,
                use_gpu=r.num_gpus > 0,
                torch_threads=r.torch_threads,
                staging_uri=staging_uri,
                storage_config=cfg.storage,
                search=plan.search,
                id_types=plan.id_types,
            ),
        )

    def finalizer(self, plan: RetrievePlan, staging_uri: str, report: RunReport):
        """Merge each complete query shard's partials (a Ray task) into its candidate lists before it commits."""
        import ray

        from .stages import merge_shard

        cfg = self.cfg
        metadata = {
            "embedrank.version": __version__,
            "embedrank.model": self.model_source,
            "embedrank.score": "inner product",
            "embedrank.top_k": str(cfg.output.top_k),
            "embedrank.fingerprint": self.fp_id,
        }
        shards = {s.key: s for s in plan.pending}

        def merge(task, key: str, files: list, out_path: str, record: dict) -> dict:
            queries, candidates = ray.get(
                task.remote(
                    files,
                    out_path,
                    shards[key].to_dict(),
                    cfg.input.text_column,
                    cfg.output.top_k,
                    staging_uri,
                    cfg.storage,
                    metadata,
                    plan.id_types,
                )
            )
            report.candidates += candidates
            return {"rows_written": queries, "candidates": candidates}

        return merging_finalizer(merge_shard, "candidates" + STAGED_SUFFIX, merge)

    def after_commits(self, plan: RetrievePlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        if self.cfg.qrels:
            files = [
                (plan.store.uri_of(plan.store.path(name)), "parquet", {})
                for key in sorted(records)
                for name in records[key]["files"].get("data", [])
            ]
            report.quality = evaluate(self.cfg, {"retrieved": files}, self.log)
        if plan.search and plan.search.get("exact_column"):
            from .stages import recall_of

            names = [name for key in sorted(records) for name in records[key]["files"].get("data", [])]
            report.recall = recall_of([plan.store.uri_of(plan.store.path(n)) for n in names], self.cfg.storage)
        return records


SIDES = ("query_id", "doc_id")  # the output's id columns: the query vectors' ids, the corpus's


def settle_ids(
    configured: str,
    query_files: list[VectorFile],
    corpus_files: list[VectorFile],
    existing: dict[str, str | None],
    output_uri: str,
) -> dict[str, str]:
    """The run's id types (ids.INT64 | ids.STRING): query_id from the ids of the query vectors it retrieves,
    doc_id from the corpus's. `existing`: the types of the candidate lists the output keeps (candidates.
    list_id_types), which they keep. Raises a one-line PlanError for files of one side that disagree (naming
    two of them) and for ids an existing int64 output cannot hold."""
    types = {}
    for column, files in zip(SIDES, (query_files, corpus_files)):
        found = {f.shard.uri: f.id_type for f in files if f.id_type}
        kept = existing.get(column)
        types[column] = settle_id_type(configured, found, kept, output_uri=output_uri, output_column=column)
    return types


def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")
