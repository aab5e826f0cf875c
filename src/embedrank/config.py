"""Job configuration: one pydantic class per section, each key declared once (type, allowed values, bounds,
default, meaning), loaded from YAML with `--set key=value` overrides.

Unknown keys, wrong types, values outside a key's set and impossible combinations are one-line ConfigErrors
naming the key and the fix (settings.py); nothing is silently ignored. The processors' configs
(data/configs.py) are made of the same sections. `load_config(path, overrides, cls)` is what the CLI, the
Python API and jobs/ use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import field_validator, model_validator

from .errors import ConfigError
from .settings import (
    URI,
    URIS,
    Location,
    Section,
    key,
    load,
    notice,
    read_yaml,
    section,
)
from .templates import parse_template

# models/forward.parse_dtype and models/attention.BACKENDS accept these (a unit test keeps them in step).
DTYPES = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
ATTENTION_BACKENDS = ("flash_attn", "torch_varlen", "sdpa_packed", "sdpa_padded")
COMPILE_MODES = ("auto", "on", "off")
Dtype = Literal["bf16", "bfloat16", "fp16", "float16", "fp32", "float32"]
Attention = Literal["flash_attn", "torch_varlen", "sdpa_packed", "sdpa_padded"]
Format = Literal["auto", "parquet", "jsonl"]
OnBadShard = Literal["stop", "skip"]
ON_BAD_SHARD_DOC = (
    "a truncated or corrupt input file: stop the run (committed shards are kept), or skip it (not committed, "
    "listed in the report) and finish the others; nightly always stops"
)
LOCK_DOC = "a run holds OUTPUT/_embedrank/lock.json; a holder silent this long (or dead on this host) is taken over"
PRUNE_DOC = "remove committed shards whose input file is gone (--prune); by default they are kept and listed"
QRELS_DOC = "BEIR/TREC qrels (query_id, doc_id, relevance): report nDCG@10, recall@k and MRR@10"
ID_TYPE_DOC = (
    "auto: integer ids written as int64, strings as strings (an output keeps the type it holds) | string: every "
    "id as text"
)
PROGRESS_DOC = "seconds between progress lines when the output is not a terminal"


def require_uri(value, name: str, flag: str) -> None:
    """Refuse an empty location key (`input.uri`, `output.uri`, ...), naming the flag that sets it."""
    if not value:
        raise ConfigError(f"{name} is empty: set it in the config or pass --{flag} URI")


class StorageConfig(Section):
    """How to reach object storage. Credentials come from the environment, a profile or an instance role."""

    endpoint_url: str | None = key(None, "an S3-compatible endpoint (MinIO, R2, ...); null: AWS")
    region: str | None = key(None, "the bucket's region; null: from the environment")
    anon: bool = key(False, "unsigned requests, for public buckets (s3://, gs://, abfs://)")
    gcs_endpoint_url: str | None = key(
        None, "gs://: another endpoint (an emulator); null: Google's or STORAGE_EMULATOR_HOST"
    )
    azure_account_name: str | None = key(
        None, "abfs:// and az://: the storage account; null: from the URI or AZURE_STORAGE_ACCOUNT_NAME"
    )


class InputConfig(Section):
    uri: URIS = key("", "a directory, a glob, a file, or a list of those; local, s3://, gs:// or abfs://")
    format: Format = key("auto", "auto (by extension) | parquet | jsonl")
    id_column: str = key("id", "the column of unique ids: strings or integers")
    text_column: str = key("text", "the column of texts to embed")
    template: str | None = key(None, 'e.g. "{title}\\n{body}": plain {column} fields; overrides text_column')
    kind: Literal["document", "query"] = key("document", "document | query (queries get the instruction)")
    instruction: str | None = key(None, "queries only; null: the published web-search instruction")
    passthrough: list[str] = key([], "input columns copied to the output")
    on_bad_shard: OnBadShard = key("stop", ON_BAD_SHARD_DOC)

    @field_validator("template")
    @classmethod
    def _template(cls, value):
        if value:
            parse_template(value, "input.template")
        return value


class ModelConfig(Section):
    source: Annotated[str | None, Location(only_if_exists=True)] = key(
        None,
        "hub id, local directory, bucket prefix (s3://, gs://, abfs://) or builtin:tiny-random; null: the default "
        "Qwen3 model of the job (or the built-in test model offline)",
        min_length=1,
    )
    revision: str | None = key(None, "a pinned hub revision (commit hash or tag)")
    dtype: Dtype | None = key(None, "bf16 | fp16 | fp32; null: bf16 on GPU, fp32 on CPU")
    attention: Attention | None = key(
        None, "flash_attn | torch_varlen | sdpa_packed | sdpa_padded; null: the best available"
    )
    compile: Literal["auto", "on", "off"] = key(
        "auto", "torch.compile of the decoder layers: auto (on where it measured faster: CUDA) | on | off"
    )
    max_length: int = key(8192, "tokens per text (longer ones are truncated or chunked), <|endoftext|> included", ge=2)
    max_tokens_per_batch: int | None = key(None, "tokens per forward pass; null: sized to the device's memory", ge=1)
    dim: int | None = key(None, "Matryoshka dimension; null: the model's hidden size", ge=1)


class LongDocsConfig(Section):
    mode: Literal["truncate", "chunk"] = key("truncate", "truncate | chunk")
    window: int = key(512, "tokens per chunk, <|endoftext|> included", ge=2)
    overlap: int = key(64, "tokens shared by consecutive chunks", ge=0)


class PrepareConfig(Section):
    """The CPU tasks that read, check and tokenise rows."""

    RENAMED: ClassVar[dict[str, str]] = {"rows_per_batch": "batch_size"}
    batch_size: int = key(1024, "rows tokenised at a time inside a task", ge=1)
    num_cpus: float = key(1.0, "CPUs per task", gt=0)
    rows_per_task: int = key(
        20000, "a task reads at most this many rows: bigger files are cut into pieces read in parallel", ge=1
    )
    mb_per_task: float = key(64.0, "... and groups small files up to this many MB (uncompressed, estimated)", gt=0)
    memory_mb: float | None = key(
        None, "memory each task reserves; null: sized from its work unit (processors: 768)", gt=0
    )


class ActorPoolConfig(Section):
    """The model actors: ray.data.llm's words (concurrency, batch_size) for the same things."""

    RENAMED: ClassVar[dict[str, str]] = {"rows_per_batch": "batch_size"}
    concurrency: int | tuple[int, int] = key(1, "model actors: n, or [min, max] for a pool that autoscales")
    batch_size: int = key(
        512, "rows per Ray batch handed to an actor (cut again into token-budget micro-batches)", ge=1
    )
    num_gpus: float | None = key(
        None, "GPUs per actor; null: 1 where the cluster has GPUs, else 0 (CPU actors, said once)", ge=0
    )
    accelerator_type: str | None = key(
        None, "the GPU type each actor needs (Ray's accelerator_type: H100, A100, L4, ...); null: any"
    )
    num_cpus: float = key(1.0, "CPUs per actor", gt=0)
    max_restarts: int = key(-1, "restarts per actor when its process dies (-1: always, as Ray Data does)", ge=-1)
    max_worker_crashes: int = key(
        2,
        "a batch that killed its actor this often runs row by row; a row that killed it this often is "
        "dead-lettered as worker_crash",
        ge=1,
    )
    torch_threads: int | None = key(None, "CPU actors: intra-op threads (Ray pins OMP threads to num_cpus)", ge=1)

    @classmethod
    def upgrade(cls, data: dict, prefix: str) -> dict:
        data = super().upgrade(data, prefix)
        if "min_actors" in data or "max_actors" in data:
            # Given with concurrency too (a --set of the old names over a YAML file with the new one): they win.
            now = data.pop("concurrency", 1)
            now = (now, now) if type(now) is int else tuple(now) if isinstance(now, (list, tuple)) else (1, 1)
            low = data.pop("min_actors", now[0])
            high = data.pop("max_actors", max(low, now[1]) if type(low) is int else now[1])
            data["concurrency"] = low if low == high else [low, high]
            notice(f"config keys {prefix}min_actors/max_actors are now {prefix}concurrency: {data['concurrency']}")
        return data

    @field_validator("concurrency", mode="before")
    @classmethod
    def _pair(cls, value):
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple) and not (
            len(value) == 2 and all(type(v) is int for v in value) and 1 <= value[0] <= value[1]
        ):
            raise ConfigError(f"must be n >= 1 or a pair [min, max] with 1 <= min <= max, got {list(value)}")
        if type(value) is int and value < 1:
            raise ConfigError(f"must be n >= 1 or a pair [min, max] with 1 <= min <= max, got {value}")
        return value

    @property
    def min_actors(self) -> int:
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[0]

    @property
    def max_actors(self) -> int:
        return self.concurrency if isinstance(self.concurrency, int) else self.concurrency[1]


class OutputLocation(Section):
    """Where a job commits, and the lock and prune rules every output shares."""

    uri: URI = key("", "the output location: local, s3://, gs:// or abfs://")
    lock_timeout_s: float = key(300.0, LOCK_DOC, ge=0)
    prune: bool = key(False, PRUNE_DOC)
    id_type: Literal["auto", "string"] = key("auto", ID_TYPE_DOC)


class OutputConfig(OutputLocation):
    """The embed and nightly output: the shared keys, then how vectors and ids are written."""

    embedding_dtype: Literal["float32", "float16", "int8", "binary"] = key(
        "float32",
        "float32 | float16 (fp32 | fp16) | int8 (per-dimension ranges: int8_range) | binary (sign bits packed "
        "8 per byte; model.dim a multiple of 8)",
    )
    extra_embedding_dtypes: list[Literal["float32", "float16", "int8", "binary"]] = key(
        [], "more columns of the same vectors, embedding_<dtype> (e.g. [float32] beside binary, to rescore)"
    )
    int8_range: Literal["calibrate"] | float = key(
        "calibrate",
        "int8: calibrate (each dimension's min and max on a sample, settled once per output and kept by reruns "
        "and nightly versions) or a number r (a fixed [-r, r] in every dimension)",
    )
    int8_calibration_rows: int = key(4096, "int8_range calibrate: the first valid input rows it embeds", ge=1)
    target_file_mb: float = key(128.0, "size of the committed Parquet files", gt=0)
    on_duplicate_id: Literal["reject", "fail"] = key("reject", "reject (dead-letter later copies) | fail")

    @field_validator("embedding_dtype", mode="before")
    @classmethod
    def _short_names(cls, value):
        return {"fp32": "float32", "fp16": "float16"}.get(value, value)

    @field_validator("int8_range")
    @classmethod
    def _positive_range(cls, value):
        if not isinstance(value, str) and not value > 0:
            raise ValueError(f"a fixed range [-r, r] needs r > 0, got {value}; or write calibrate")
        return value


class NightlyConfig(Section):
    keep_versions: int = key(7, "published versions kept under the output (the current one always is)", ge=1)


class RayConfig(Section):
    address: str | None = key(None, 'null: start a local Ray; "auto" or HOST:6379: join a running cluster')
    num_cpus: int | None = key(None, "local Ray only", ge=1)
    verbose: bool = key(False, "Ray's INFO logs and Ray Data's own progress display (the CLI's --verbose)")


class EmbedJobConfig(Section):
    input: InputConfig = section(InputConfig, "the corpus")
    output: OutputConfig = section(OutputConfig, "where vectors and dead letters are committed")
    model: ModelConfig = section(ModelConfig, "the embedding model")
    long_docs: LongDocsConfig = section(LongDocsConfig, "texts longer than model.max_length")
    prepare: PrepareConfig = section(PrepareConfig, "CPU tasks: read, check, tokenise")
    embed: ActorPoolConfig = section(ActorPoolConfig, "the model actors")
    storage: StorageConfig = section(StorageConfig, "object storage")
    ray: RayConfig = section(RayConfig, "the Ray cluster")
    nightly: NightlyConfig = section(NightlyConfig, "`embedrank nightly` only")
    progress_interval_s: float = key(10.0, PROGRESS_DOC, gt=0)

    @model_validator(mode="after")
    def _combinations(self):
        require_uri(self.input.uri, "input.uri", "input")
        require_uri(self.output.uri, "output.uri", "output")
        if self.long_docs.mode == "chunk":
            if self.long_docs.window > self.model.max_length:
                raise ConfigError(
                    f"long_docs.window must be between 2 and model.max_length ({self.model.max_length}), "
                    f"got {self.long_docs.window}"
                )
            if self.long_docs.overlap >= self.long_docs.window - 1:
                raise ConfigError(f"long_docs.overlap must be >= 0 and < window - 1, got {self.long_docs.overlap}")
        return self


class RerankInputConfig(Section):
    uri: URIS = key("", "candidate lists or flat (query, document) pairs: a directory, a glob, a file or a list")
    format: Format = key("auto", "auto (by extension) | parquet | jsonl")
    query_id_column: str = key("query_id", "the query's id")
    query_column: str = key("query", "the query's text")
    doc_id_column: str = key("doc_id", "flat pairs: the document's id")
    document_column: str = key("document", "flat pairs: the document's text; absent or null: from the corpus")
    candidates_column: str = key("candidates", "candidate lists: list<struct<doc_id, text>>")
    instruction_column: str | None = key("instruction", "a per-row instruction, used where present")
    instruction: str | None = key(None, "for rows without one; null: the published instruction")
    on_bad_shard: OnBadShard = key("stop", ON_BAD_SHARD_DOC + " (a bad corpus file always stops)")


class CorpusConfig(Section):
    """Where candidates that carry only a doc_id find their text (a corpus as the embed job reads it)."""

    uri: URIS = key("", "the corpus: a directory, a glob, a file or a list; empty: the candidates carry text")
    format: Format = key("auto", "auto (by extension) | parquet | jsonl")
    id_column: str = key("id", "the documents' ids")
    text_column: str = key("text", "the documents' text")
    template: str | None = key(None, 'e.g. "{title}\\n{body}": overrides text_column')

    @field_validator("template")
    @classmethod
    def _template(cls, value):
        if value:
            parse_template(value, "corpus.template")
        return value


class RerankOutputConfig(OutputLocation):
    top_k: int | None = key(None, "keep the best k per query; null keeps all", ge=1)
    target_file_mb: float = key(128.0, "size of the staged Parquet files (each shard is one ranked file)", gt=0)


class RerankJobConfig(Section):
    input: RerankInputConfig = section(RerankInputConfig, "the candidates")
    corpus: CorpusConfig = section(CorpusConfig, "the text of doc-id-only candidates")
    output: RerankOutputConfig = section(RerankOutputConfig, "where scores are committed")
    model: ModelConfig = section(ModelConfig, "the reranker model")
    prepare: PrepareConfig = section(PrepareConfig, "CPU tasks: read, join, tokenise")
    rerank: ActorPoolConfig = section(ActorPoolConfig, "the model actors")
    storage: StorageConfig = section(StorageConfig, "object storage")
    ray: RayConfig = section(RayConfig, "the Ray cluster")
    progress_interval_s: float = key(10.0, PROGRESS_DOC, gt=0)
    qrels: Annotated[str | None, Location()] = key(None, QRELS_DOC + " before and after reranking")

    @model_validator(mode="after")
    def _combinations(self):
        require_uri(self.input.uri, "input.uri", "input")
        require_uri(self.output.uri, "output.uri", "output")
        if self.model.max_length < 64:
            raise ConfigError(
                f"model.max_length must leave room for the reranker template (>= 64), got {self.model.max_length}"
            )
        if self.model.dim is not None:
            raise ConfigError("model.dim does not apply to a reranker (it scores, it makes no vectors); remove it")
        return self


class QueryVectorsConfig(Section):
    uri: URI = key("", "the embed job's output of the queries (input.kind: query), or a nightly root")
    text_column: str | None = key(
        "text",
        "the query vectors' column with the query text that rerank needs (embed the queries with "
        "input.passthrough: [text]); null: candidate lists without the text",
    )


class CorpusVectorsConfig(Section):
    uri: URI = key("", "the embed job's output of the corpus, or a nightly root (its current version)")


class RetrieveConfig(Section):
    num_cpus: float = key(1.0, "CPUs per scoring task", gt=0)
    num_gpus: float = key(0.0, "GPUs per scoring task; 1 on GPU nodes (the matrix products then run there)", ge=0)
    corpus_rows_per_task: int = key(
        1000000, "the corpus is cut into partitions of whole files up to this many vectors, each its own tasks", ge=1
    )
    queries_per_task: int = key(
        50000, "query vectors a scoring task holds; the corpus is read once per such group", ge=1
    )
    query_block: int = key(4096, "queries per matrix product", ge=1)
    doc_block: int = key(16384, "corpus vectors per matrix product", ge=1)
    torch_threads: int | None = key(None, "CPU tasks: intra-op threads (default: torch's)", ge=1)
    search: Literal["auto", "float32", "float16", "int8", "binary"] = key(
        "auto", "the corpus column searched: auto (its `embedding` column) or the dtype of another it holds"
    )
    rescore: Literal["auto", "none", "float32", "float16", "int8"] = key(
        "auto", "a compact search's candidates scored again: auto (the finest other column the corpus holds) | none"
    )
    rescore_k: int = key(100, "candidates per query a compact search keeps for rescoring (>= output.top_k)", ge=1)
    measure_recall: bool = key(
        True, "a compact search beside a float column: also find the exact top k and report recall@k against it"
    )


class RetrieveOutputConfig(OutputLocation):
    top_k: int = key(100, "candidates kept per query", ge=1)


class RetrieveJobConfig(Section):
    """Exact top-k by inner product of embedded queries against an embedded corpus (`embedrank retrieve`)."""

    input: QueryVectorsConfig = section(QueryVectorsConfig, "the query vectors")
    corpus: CorpusVectorsConfig = section(CorpusVectorsConfig, "the corpus vectors")
    output: RetrieveOutputConfig = section(RetrieveOutputConfig, "where candidate lists are committed")
    retrieve: RetrieveConfig = section(RetrieveConfig, "the scoring tasks")
    storage: StorageConfig = section(StorageConfig, "object storage")
    ray: RayConfig = section(RayConfig, "the Ray cluster")
    progress_interval_s: float = key(10.0, PROGRESS_DOC, gt=0)
    qrels: Annotated[str | None, Location()] = key(None, QRELS_DOC + " of the candidates")

    @model_validator(mode="after")
    def _combinations(self):
        for name, value in (("input.uri", self.input.uri), ("corpus.uri", self.corpus.uri)):
            require_uri(value, name, name.split(".")[0])
        require_uri(self.output.uri, "output.uri", "output")
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=EmbedJobConfig):
    """Read YAML at `path` (optional), apply `key=value` overrides, build and check the config."""
    return load(cls, read_yaml(path, overrides))
