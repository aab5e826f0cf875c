"""The embed job: input shards -> committed vectors and dead letters, one commit per input shard.

plan (driver, no model): list shards, check their columns and the output, skip committed shards
shards -> prepare (CPU tasks) -> EmbedActor pool -> write (tasks, staging only)
after the commits: ids held by several shards are found and their later copies dead-lettered (dedupe.py)
"""

from __future__ import annotations

import json

import pyarrow as pa

from .. import __version__
from ..config import EmbedJobConfig
from ..errors import ConfigError, PlanError
from ..ids import committed_schema, file_id_type, schema_id_type, settle_id_type
from ..io import storage
from ..io.pieces import task_memory, write_batch_rows
from ..io.sources import Shard
from ..quantize import bytes_per_vector
from ..report import RunReport
from ..runtime import cluster
from ..runtime.commits import records_digest
from ..runtime.job import Job, JobPlan
from ..runtime.store import OutputStore
from ..schema import CHUNK_COLUMNS, CHUNK_ID, VECTOR_COLUMNS
from ..templates import template_fields, text_columns
from .calibrate import calibrate_on_sample, range_spec, settle_int8_range, wants_int8
from .dedupe import drop_cross_shard_duplicates
from .passthrough import settle_types
from .prepare import needed_columns

STRING_TYPES = ("string", "large_string", "string_view", "null", "str")
ID_TYPES = STRING_TYPES + ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "int")


def value_type(type_name: str) -> str:
    """A column's type name, with dictionary encoding looked through (Parquet writers use it for strings)."""
    if type_name.startswith("dictionary<values="):
        return type_name[len("dictionary<values=") :].split(",", 1)[0]
    return type_name


def check_shard_columns(shard: Shard, columns: dict[str, str], cfg: EmbedJobConfig) -> None:
    """Refuse a shard that lacks a configured column or holds the wrong type, naming the key to set."""
    if not columns:  # empty file or no parseable line among the first: every row is dead-lettered
        return
    fix = {cfg.input.id_column: "input.id_column", cfg.input.text_column: "input.text_column"}
    for name in needed_columns(cfg.input):
        if name not in columns:
            key = fix.get(name) or (
                "input.template" if name in template_fields(cfg.input.template or "") else "input.passthrough"
            )
            raise PlanError(
                f"input shard {shard.uri} has no column {name!r} (columns: {', '.join(sorted(columns))}); "
                f"set {key} to the right column"
            )
    for name in text_columns(cfg.input):
        if value_type(columns[name]) not in STRING_TYPES:
            raise PlanError(
                f"input shard {shard.uri}: column {name!r} holds {columns[name]}, not text; "
                "point input.text_column (or input.template) at a string column"
            )
    if value_type(columns[cfg.input.id_column]) not in ID_TYPES:
        raise PlanError(
            f"input shard {shard.uri}: id column {cfg.input.id_column!r} holds "
            f"{columns[cfg.input.id_column]}; ids must be strings or integers (set input.id_column)"
        )


def check_embed_config(cfg: EmbedJobConfig) -> None:
    """Combinations of settings that cannot work, refused before anything is listed."""
    clash = (set(VECTOR_COLUMNS) | set(CHUNK_COLUMNS) | {CHUNK_ID}) & set(cfg.input.passthrough)
    if clash:
        raise ConfigError(f"input.passthrough: {sorted(clash)} would overwrite output columns; rename them")
    dtypes = [cfg.output.embedding_dtype, *cfg.output.extra_embedding_dtypes]
    if "binary" in dtypes and cfg.model.dim is not None and cfg.model.dim % 8:
        raise ConfigError(
            "output.embedding_dtype binary packs 8 dimensions per byte: set model.dim to a multiple of 8 "
            f"(not {cfg.model.dim})"
        )
    if cfg.input.kind == "query" and cfg.long_docs.mode == "chunk":
        raise ConfigError("long_docs.mode: chunk cuts the instruction off queries; use truncate for input.kind query")


def rows_per_file(cfg: EmbedJobConfig) -> int:
    width = cfg.model.dim or 1024
    dtypes = {cfg.output.embedding_dtype, *cfg.output.extra_embedding_dtypes}
    row_bytes = sum(bytes_per_vector(d, width) for d in dtypes) + 96
    return max(256, int(cfg.output.target_file_mb * 1e6 / row_bytes))


class EmbedJob(Job):
    NAME = "embed"
    VERB = "embed"
    REFUSES = ("nightly", "Run `embedrank nightly` on it, or choose another output.uri")

    def fingerprint(self) -> dict:
        cfg = self.cfg
        extra = sorted(set(cfg.output.extra_embedding_dtypes) - {cfg.output.embedding_dtype})
        # Keys for the compact forms only where they are used: outputs made before them keep their fingerprint.
        compact = {"extra_embedding_dtypes": extra} if extra else {}
        if wants_int8(cfg.output):
            compact["int8_range"] = range_spec(cfg.output)
        return {
            **compact,
            "model": self.model_source,
            "revision": cfg.model.revision,
            "dim": cfg.model.dim,
            "dtype": cfg.model.dtype or "auto",
            "max_length": cfg.model.max_length,
            "kind": cfg.input.kind,
            "instruction": cfg.input.instruction if cfg.input.kind == "query" else None,
            "text": cfg.input.template or f"{{{cfg.input.text_column}}}",
            "long_docs": cfg.long_docs.model_dump() if cfg.long_docs.mode == "chunk" else "truncate",
            "embedding_dtype": cfg.output.embedding_dtype,
        }

    def check_columns(self, shard: Shard, columns: dict[str, str]) -> None:
        check_shard_columns(shard, columns, self.cfg)

    def plan(self, root: OutputStore, report: RunReport) -> JobPlan:
        check_embed_config(self.cfg)
        plan = self.plan_shards(root, self.plan_start(root))
        self.settle_ids(plan, committed_schema(plan.store, {**plan.committed, **plan.stale}))
        return plan

    def settle_ids(self, plan: JobPlan, kept: pa.Schema | None) -> None:
        """The run's id type (ids.py) and passthrough types (embed/passthrough.py) from the pending files and
        `kept`, the schema of the committed files the output keeps (refuses input that disagrees); their files
        without chunk_id keep it out."""
        cfg = self.cfg
        column = cfg.input.id_column
        found = {s.uri: kind for s in plan.pending if (kind := file_id_type(plan.infos[s.key], column))}
        existing = schema_id_type(kept) if kept is not None else None
        plan.id_types["id"] = settle_id_type(cfg.output.id_type, found, existing, output_uri=cfg.output.uri)
        plan.chunk_id = kept is None or CHUNK_ID in kept.names
        uris = {s.key: s.uri for s in plan.pending}
        infos = {key: info for key, info in plan.infos.items() if key in uris}
        plan.passthrough_types = settle_types(list(cfg.input.passthrough), infos, uris, kept)

    def file_metadata(self) -> dict:
        """Key-value metadata of every vectors file: what a reader needs to use the vectors."""
        cfg = self.cfg
        return {
            "embedrank.version": __version__,
            "embedrank.model": self.model_source,
            "embedrank.revision": cfg.model.revision or "",
            "embedrank.normalized": "l2",
            "embedrank.kind": cfg.input.kind,
            "embedrank.instruction": cfg.input.instruction or "",
            "embedrank.fingerprint": self.fp_id,
        }

    def int8_stores(self, plan: JobPlan) -> list:
        """Where the run's int8 range is kept and looked for (nightly: also the current version)."""
        return [plan.store]

    def settle_int8_range(self, plan: JobPlan, prepare_kwargs: dict, opts: str) -> str | None:
        """The run's one int8 range (embed/calibrate.py), settled before the graph: calibrated by one Ray task
        on the first valid rows, or fixed, or read back from an earlier run of this output."""
        import ray

        cfg = self.cfg

        def sample(limit: int):
            # One task with the model actors' resources (a GPU on GPU nodes).
            task = ray.remote(num_cpus=cfg.embed.num_cpus, num_gpus=cfg.embed.num_gpus or 0)(calibrate_on_sample)
            ref = task.remote(
                plan.units,
                limit,
                prepare_kwargs={**prepare_kwargs, "carry": None},
                model_cfg=cfg.model,
                model_source=self.model_source,
                storage_opts=opts,
            )
            return ray.get(ref)

        return settle_int8_range(cfg.output, self.int8_stores(plan), self.fp_id, sample, cfg.model.dim, self.log)

    def carry(self, plan: JobPlan):
        """Where prepare finds documents to carry instead of embedding them (nightly: embed.carry.CarryPlan)."""
        return None

    def build_graph(self, plan: JobPlan, staging_uri: str, report: RunReport):
        from .stages import EmbedActor, prepare_shards, write_embeddings

        cfg = self.cfg
        opts = json.dumps(storage.storage_options(cfg.storage))
        prepare_kwargs = dict(
            input_cfg=cfg.input,
            long_docs=cfg.long_docs,
            model_source=self.model_source,
            revision=cfg.model.revision,
            max_length=cfg.model.max_length,
            rows_per_batch=cfg.prepare.batch_size,
            on_duplicate_id=cfg.output.on_duplicate_id,
            id_type=plan.id_types["id"],
            passthrough_types=plan.passthrough_types,
            storage_config=cfg.storage,
            storage_opts=opts,
        )
        int8_range = self.settle_int8_range(plan, prepare_kwargs, opts)
        if int8_range:
            report.int8_range = json.loads(int8_range)
        ds = cluster.cpu_stage(
            cluster.units_dataset(plan.units),
            prepare_shards,
            num_cpus=cfg.prepare.num_cpus,
            memory=task_memory(plan.units, cfg.prepare.memory_mb),
            batch_size=1,
            batch_format="numpy",
            fn_kwargs=dict(prepare_kwargs, carry=self.carry(plan)),
            board=self.progress_board,
        )
        ds = cluster.actor_stage(
            ds,
            EmbedActor,
            pool=cfg.embed,
            board=self.progress_board,
            constructor_kwargs=dict(
                model_cfg=cfg.model,
                model_source=self.model_source,
                embedding_dtype=cfg.output.embedding_dtype,
                extra_embedding_dtypes=tuple(cfg.output.extra_embedding_dtypes),
                int8_range=int8_range,
                storage_opts=opts,
            ),
        )
        batch_rows = write_batch_rows(plan.units, rows_per_file(cfg), cfg.embed.batch_size)
        return cluster.write_stage(
            ds,
            write_embeddings,
            rows_per_file=batch_rows,
            fn_kwargs=dict(
                staging_uri=staging_uri,
                sources={s.key: s.uri for s in plan.pending},
                chunked=cfg.long_docs.mode == "chunk",
                chunk_id=plan.chunk_id,
                passthrough=list(cfg.input.passthrough),
                metadata=self.file_metadata(),
                int8_range=int8_range,
                id_type=plan.id_types["id"],
                storage_config=cfg.storage,
            ),
        )

    def after_commits(self, plan: JobPlan, records: dict[str, dict], report: RunReport) -> dict[str, dict]:
        return drop_cross_shard_duplicates(self.cfg, plan.store, records, report, self.log)

    def manifest_extra(self, records: dict[str, dict]) -> dict:
        return {"duplicates_checked": records_digest(records)}
