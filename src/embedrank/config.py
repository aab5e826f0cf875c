"""Job configuration: frozen dataclasses per concern, loaded from YAML with `--set key=value` overrides.

Unknown keys, wrong types and impossible values are errors that name the key and the fix; nothing is
silently ignored. `load_config(path, overrides)` is the only entry point the CLI and jobs/ use.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import ConfigError
from .templates import parse_template


@dataclass(frozen=True)
class StorageConfig:
    """How to reach s3:// URIs. Credentials come from the usual AWS environment, profile or instance role."""

    endpoint_url: str | None = None  # an S3-compatible endpoint (MinIO, R2, ...); None: AWS
    region: str | None = None  # the bucket's region; None: from the environment
    anon: bool = False  # unsigned requests, for public buckets


@dataclass(frozen=True)
class InputConfig:
    uri: str | list[str] = ""  # a directory, a glob, a file, or a list of those
    format: str = "auto"  # auto (by extension) | parquet | jsonl
    id_column: str = "id"  # the column of unique ids: strings or integers
    text_column: str = "text"  # the column of texts to embed
    template: str | None = None  # e.g. "{title}\n{body}": overrides text_column
    kind: str = "document"  # document | query
    instruction: str | None = None  # queries only; default: the published web-search instruction
    passthrough: list[str] = field(default_factory=list)  # input columns copied to the output
    # A truncated or corrupt input file: stop the run (committed shards are kept), or skip it (not committed,
    # listed in the report) and finish the others. Nightly always stops: a version must hold every file.
    on_bad_shard: str = "stop"  # stop | skip


@dataclass(frozen=True)
class ModelConfig:
    source: str | None = None  # None: Qwen/Qwen3-Embedding-0.6B, or the built-in test model offline
    revision: str | None = None  # a pinned hub revision (commit hash or tag)
    dtype: str | None = None  # bf16 | fp16 | fp32; default bf16 on GPU, fp32 on CPU
    attention: str | None = None  # flash_attn | torch_varlen | sdpa_packed | sdpa_padded
    max_length: int = 8192  # tokens per text (longer ones are truncated or chunked), <|endoftext|> included
    max_tokens_per_batch: int | None = None  # tokens per forward pass; None: sized to the device's memory
    dim: int | None = None  # Matryoshka dimension; None = the model's hidden size
    # torch.compile of the decoder layers: auto (on where it measured faster: CUDA) | on | off
    compile: str = "auto"


@dataclass(frozen=True)
class LongDocsConfig:
    mode: str = "truncate"  # truncate | chunk
    window: int = 512  # tokens per chunk, <|endoftext|> included
    overlap: int = 64  # tokens shared by consecutive chunks


@dataclass(frozen=True)
class PrepareConfig:
    rows_per_batch: int = 1024  # rows tokenised at a time inside a task
    num_cpus: float = 1.0  # per CPU task
    # A CPU task reads at most this many rows: bigger Parquet files are cut into pieces read in parallel,
    # small files are grouped (io/pieces.py).
    rows_per_task: int = 20000
    mb_per_task: float = 64.0  # ... and groups small files up to this many MB (uncompressed, estimated)


@dataclass(frozen=True)
class ActorPoolConfig:
    num_gpus: float = 0.0  # per actor; 1 on GPU clusters
    num_cpus: float = 1.0  # per actor
    min_actors: int = 1  # actors started at once
    max_actors: int = 1  # > min_actors lets the pool autoscale
    rows_per_batch: int = 512  # rows (pairs) per Ray batch handed to an actor (micro-batched again inside)
    max_restarts: int = -1  # per actor, when its process dies (-1: always, as Ray Data does)
    # A batch that killed its actor this often runs row by row; a row that killed it this often is dead-lettered
    # as worker_crash (Ray Data alone would retry it forever).
    max_worker_crashes: int = 2
    torch_threads: int | None = None  # CPU actors: intra-op threads (Ray pins OMP threads to num_cpus)


@dataclass(frozen=True)
class OutputConfig:
    uri: str = ""  # the output location, local or s3://
    embedding_dtype: str = "float32"  # float32 | float16
    target_file_mb: float = 128.0  # size of the committed Parquet files
    on_duplicate_id: str = "reject"  # reject (dead-letter later copies) | fail
    # A run holds OUTPUT/_embedrank/lock.json; a holder silent this long (or dead on this host) is taken over.
    # 0: at once.
    lock_timeout_s: float = 300.0
    # Committed shards whose input file is gone are kept (and listed) unless this is set (--prune). Nightly
    # versions always mirror their input.
    prune: bool = False


@dataclass(frozen=True)
class NightlyConfig:
    keep_versions: int = 7  # published versions kept under the output (the current one always is)


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto": join the running cluster
    num_cpus: int | None = None  # local Ray only
    verbose: bool = False  # Ray's INFO logs and Ray Data's own progress display (the CLI's --verbose)


@dataclass(frozen=True)
class EmbedJobConfig:
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    long_docs: LongDocsConfig = field(default_factory=LongDocsConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    embed: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    nightly: NightlyConfig = field(default_factory=NightlyConfig)
    progress_interval_s: float = 10.0  # seconds between progress lines


@dataclass(frozen=True)
class RerankInputConfig:
    uri: str | list[str] = ""
    format: str = "auto"
    query_id_column: str = "query_id"
    query_column: str = "query"
    doc_id_column: str = "doc_id"  # flat pairs
    document_column: str = "document"  # flat pairs; absent or null: the text comes from the corpus
    candidates_column: str = "candidates"  # candidate lists: list<struct<doc_id, text>>
    instruction_column: str | None = "instruction"  # per-row instruction, used where present
    instruction: str | None = None  # default for rows without one: the published instruction
    on_bad_shard: str = "stop"  # stop | skip: as InputConfig.on_bad_shard (a bad corpus file always stops)


@dataclass(frozen=True)
class CorpusConfig:
    """Where candidates that carry only a doc_id find their text (the same kind of corpus the embed job reads)."""

    uri: str | list[str] = ""
    format: str = "auto"
    id_column: str = "id"
    text_column: str = "text"
    template: str | None = None


@dataclass(frozen=True)
class RerankOutputConfig:
    uri: str = ""  # the output location, local or s3://
    top_k: int | None = None  # keep the best k per query; None keeps all
    target_file_mb: float = 128.0  # size of the staged Parquet files (each shard is one ranked file)
    lock_timeout_s: float = 300.0  # as OutputConfig.lock_timeout_s
    prune: bool = False  # as OutputConfig.prune


@dataclass(frozen=True)
class RerankJobConfig:
    input: RerankInputConfig = field(default_factory=RerankInputConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    output: RerankOutputConfig = field(default_factory=RerankOutputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    rerank: ActorPoolConfig = field(default_factory=ActorPoolConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    progress_interval_s: float = 10.0  # seconds between progress lines
    # BEIR/TREC qrels (query_id, doc_id, relevance): report nDCG@10, recall@k and MRR@10 before and after reranking
    qrels: str | None = None


@dataclass(frozen=True)
class QueryVectorsConfig:
    uri: str = ""  # the embed job's output of the queries (input.kind: query), or a nightly root
    # the column of those vectors holding the query text, which rerank needs (embed the queries with
    # input.passthrough: [text]); null: candidate lists without the query text
    text_column: str | None = "text"


@dataclass(frozen=True)
class CorpusVectorsConfig:
    uri: str = ""  # the embed job's output of the corpus, or a nightly root (its current version)


@dataclass(frozen=True)
class RetrieveConfig:
    num_cpus: float = 1.0  # per scoring task
    num_gpus: float = 0.0  # per scoring task; 1 on GPU nodes (the matrix products then run on the GPU)
    # corpus vectors one scoring task streams past its queries: the corpus is cut into partitions of whole files
    # up to this size, each scored by its own tasks
    corpus_rows_per_task: int = 1000000
    # query vectors a scoring task holds (whole query files grouped up to this many); the corpus is read once per
    # such group, so larger groups read it less often
    queries_per_task: int = 50000
    query_block: int = 4096  # queries per matrix product
    doc_block: int = 16384  # corpus vectors per matrix product
    torch_threads: int | None = None  # CPU tasks: intra-op threads (default: torch's, Ray pins it to num_cpus)


@dataclass(frozen=True)
class RetrieveOutputConfig:
    uri: str = ""  # the output location, local or s3://
    top_k: int = 100  # candidates kept per query
    lock_timeout_s: float = 300.0  # as OutputConfig.lock_timeout_s
    prune: bool = False  # as OutputConfig.prune


@dataclass(frozen=True)
class RetrieveJobConfig:
    """Exact top-k by inner product of embedded queries against an embedded corpus (`embedrank retrieve`)."""

    input: QueryVectorsConfig = field(default_factory=QueryVectorsConfig)
    corpus: CorpusVectorsConfig = field(default_factory=CorpusVectorsConfig)
    output: RetrieveOutputConfig = field(default_factory=RetrieveOutputConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    progress_interval_s: float = 10.0  # seconds between progress lines
    # BEIR/TREC qrels (query_id, doc_id, relevance): report nDCG@10, recall@k and MRR@10 of the candidates
    qrels: str | None = None

    @property
    def prepare(self) -> PrepareConfig:
        """What the shared start-up check (runtime/cluster.check_resources) counts beside one scoring task: the
        0.25-CPU task that merges a finished query shard. Retrieve has no prepare stage of its own."""
        return PrepareConfig(num_cpus=0.25)


@dataclass(frozen=True)
class CombinedJobConfig:
    """Several jobs in one Ray job: each section is a whole job config, with its own workers.

    The top-level `ray` and `storage` sections apply to every section (and replace theirs). The jobs run at once,
    except that a job reading another one's output (retrieve: the two embed outputs; rerank: the candidates)
    starts once that one has finished (combined.py).
    """

    embed_job: EmbedJobConfig | None = None  # the corpus
    query_embed_job: EmbedJobConfig | None = None  # the queries (input.kind: query), for retrieve_job
    retrieve_job: RetrieveJobConfig | None = None  # candidates from the two embed outputs
    rerank_job: RerankJobConfig | None = None
    storage: StorageConfig = field(default_factory=StorageConfig)
    ray: RayConfig = field(default_factory=RayConfig)


# Values checked before anything runs (models/forward.parse_dtype and models/attention.BACKENDS accept these;
# a unit test keeps the lists in step).
DTYPES = ("bf16", "bfloat16", "fp16", "float16", "fp32", "float32")
ATTENTION_BACKENDS = ("flash_attn", "torch_varlen", "sdpa_packed", "sdpa_padded")


COMPILE_MODES = ("auto", "on", "off")


def _check_model(model: ModelConfig) -> None:
    _choices("model.compile", model.compile, COMPILE_MODES)
    if model.dtype is not None:
        _choices("model.dtype", model.dtype, DTYPES)
    if model.attention is not None:
        _choices("model.attention", model.attention, ATTENTION_BACKENDS)
    if model.max_tokens_per_batch is not None and model.max_tokens_per_batch < 1:
        raise ConfigError(
            f"model.max_tokens_per_batch must be >= 1 (or null for the default), got {model.max_tokens_per_batch}"
        )


ON_BAD_SHARD = ("stop", "skip")


def _choices(key: str, value, allowed) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}{hint}")


def _check_prepare(prepare: PrepareConfig) -> None:
    for key, value in (
        ("prepare.rows_per_batch", prepare.rows_per_batch),
        ("prepare.rows_per_task", prepare.rows_per_task),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if prepare.mb_per_task <= 0 or prepare.num_cpus <= 0:
        raise ConfigError("prepare.mb_per_task and prepare.num_cpus must be > 0")


def validate_rerank(cfg: RerankJobConfig) -> RerankJobConfig:
    if not cfg.input.uri:
        raise ConfigError("input.uri is empty: set it in the config or pass --input URI")
    if not cfg.output.uri:
        raise ConfigError("output.uri is empty: set it in the config or pass --output URI")
    _choices("input.format", cfg.input.format, ("auto", "parquet", "jsonl"))
    _choices("input.on_bad_shard", cfg.input.on_bad_shard, ON_BAD_SHARD)
    _choices("corpus.format", cfg.corpus.format, ("auto", "parquet", "jsonl"))
    if cfg.corpus.template:
        parse_template(cfg.corpus.template, "corpus.template")
    if cfg.output.top_k is not None and cfg.output.top_k < 1:
        raise ConfigError(f"output.top_k must be >= 1 (or null to keep every candidate), got {cfg.output.top_k}")
    _check_model(cfg.model)
    if cfg.model.max_length < 64:
        raise ConfigError(
            f"model.max_length must leave room for the reranker template (>= 64), got {cfg.model.max_length}"
        )
    if cfg.rerank.min_actors < 1 or cfg.rerank.max_actors < cfg.rerank.min_actors:
        raise ConfigError("rerank.min_actors must be >= 1 and rerank.max_actors >= rerank.min_actors")
    _check_prepare(cfg.prepare)
    if cfg.rerank.max_worker_crashes < 1:
        raise ConfigError(f"rerank.max_worker_crashes must be >= 1, got {cfg.rerank.max_worker_crashes}")
    return cfg


def validate_retrieve(cfg: RetrieveJobConfig) -> RetrieveJobConfig:
    for key, value in (("input.uri", cfg.input.uri), ("corpus.uri", cfg.corpus.uri), ("output.uri", cfg.output.uri)):
        if not value:
            raise ConfigError(f"{key} is empty: set it in the config or pass --{key.split('.')[0]} URI")
    if cfg.output.top_k < 1:
        raise ConfigError(f"output.top_k must be >= 1, got {cfg.output.top_k}")
    r = cfg.retrieve
    for key, value in (
        ("retrieve.corpus_rows_per_task", r.corpus_rows_per_task),
        ("retrieve.queries_per_task", r.queries_per_task),
        ("retrieve.query_block", r.query_block),
        ("retrieve.doc_block", r.doc_block),
    ):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if r.num_cpus <= 0 or r.num_gpus < 0:
        raise ConfigError(
            f"retrieve.num_cpus must be > 0 and retrieve.num_gpus >= 0, got {r.num_cpus} and {r.num_gpus}"
        )
    if r.torch_threads is not None and r.torch_threads < 1:
        raise ConfigError(f"retrieve.torch_threads must be >= 1 (or null), got {r.torch_threads}")
    return cfg


def validate(cfg: EmbedJobConfig) -> EmbedJobConfig:
    if not cfg.input.uri:
        raise ConfigError("input.uri is empty: set it in the config or pass --input URI")
    if not cfg.output.uri:
        raise ConfigError("output.uri is empty: set it in the config or pass --output URI")
    _choices("input.format", cfg.input.format, ("auto", "parquet", "jsonl"))
    _choices("input.kind", cfg.input.kind, ("document", "query"))
    _choices("input.on_bad_shard", cfg.input.on_bad_shard, ON_BAD_SHARD)
    if cfg.input.template:
        parse_template(cfg.input.template, "input.template")
    _choices("long_docs.mode", cfg.long_docs.mode, ("truncate", "chunk"))
    _choices("output.embedding_dtype", cfg.output.embedding_dtype, ("float32", "float16"))
    _choices("output.on_duplicate_id", cfg.output.on_duplicate_id, ("reject", "fail"))
    _check_model(cfg.model)
    if cfg.model.max_length < 2:
        raise ConfigError(f"model.max_length must be >= 2, got {cfg.model.max_length}")
    if cfg.model.dim is not None and cfg.model.dim < 1:
        raise ConfigError(f"model.dim must be a positive number of dimensions, got {cfg.model.dim}")
    if cfg.long_docs.mode == "chunk":
        if not 2 <= cfg.long_docs.window <= cfg.model.max_length:
            raise ConfigError(
                f"long_docs.window must be between 2 and model.max_length ({cfg.model.max_length}), "
                f"got {cfg.long_docs.window}"
            )
        if not 0 <= cfg.long_docs.overlap < cfg.long_docs.window - 1:
            raise ConfigError(f"long_docs.overlap must be >= 0 and < window - 1, got {cfg.long_docs.overlap}")
    if cfg.embed.min_actors < 1 or cfg.embed.max_actors < cfg.embed.min_actors:
        raise ConfigError("embed.min_actors must be >= 1 and embed.max_actors >= embed.min_actors")
    if cfg.embed.max_worker_crashes < 1:
        raise ConfigError(f"embed.max_worker_crashes must be >= 1, got {cfg.embed.max_worker_crashes}")
    _check_prepare(cfg.prepare)
    for key, value in (("embed.rows_per_batch", cfg.embed.rows_per_batch),):
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.nightly.keep_versions < 1:
        raise ConfigError(f"nightly.keep_versions must be >= 1, got {cfg.nightly.keep_versions}")
    if cfg.output.target_file_mb <= 0:
        raise ConfigError(f"output.target_file_mb must be > 0, got {cfg.output.target_file_mb}")
    return cfg


def _is_instance(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (object,)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"unknown config key {full!r}{hint}")
        hint = _optional_dataclass(hints[key]) or hints[key]
        if value is None and hint is not hints[key]:
            kwargs[key] = None
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, f"{full}.")
        elif not _is_instance(value, hint):
            raise ConfigError(f"{full}: expected {_type_name(hint)}, got {value!r}")
        else:
            kwargs[key] = float(value) if hint is float else value
    return cls(**kwargs)


def _optional_dataclass(hint):
    """`X | None` where X is a dataclass -> X (a present section is built; an absent one stays None)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def parse_override(text: str) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set model.dim=256")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: the key is empty")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, cls=EmbedJobConfig):
    """Read YAML at `path` (optional), apply `key=value` overrides, build and validate the config."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    for text in overrides or []:
        apply_override(data, *parse_override(text))
    cfg = _build(cls, data, "")
    if cls is CombinedJobConfig:
        return validate_combined(cfg)
    validators = {EmbedJobConfig: validate, RerankJobConfig: validate_rerank, RetrieveJobConfig: validate_retrieve}
    return validators[cls](cfg) if cls in validators else cfg


def validate_combined(cfg: CombinedJobConfig) -> CombinedJobConfig:
    checks = {
        "embed_job": validate,
        "query_embed_job": validate,
        "retrieve_job": validate_retrieve,
        "rerank_job": validate_rerank,
    }
    if all(getattr(cfg, name) is None for name in checks):
        raise ConfigError(
            "the config has no job section; add embed_job, query_embed_job, retrieve_job and/or rerank_job"
        )
    shared = {"storage": cfg.storage, "ray": cfg.ray}
    return dataclasses.replace(
        cfg,
        **{
            name: check(dataclasses.replace(getattr(cfg, name), **shared))
            for name, check in checks.items()
            if getattr(cfg, name) is not None
        },
    )


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def field_docs(cls) -> dict[str, str]:
    """A config dataclass's field -> its meaning: the comment beside the field in this file."""
    import inspect
    import re

    docs, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        comment = re.match(r"\s+#\s*(.+)$", line)
        if comment:  # a comment on the lines above a field belongs to it
            above.append(comment.group(1).strip())
            continue
        match = re.match(r"\s+(\w+):[^#]*(?:#\s*(.+))?$", line)
        if match and not line.strip().startswith(('"""', "def ")):
            text = " ".join(above + ([match.group(2).strip()] if match.group(2) else []))
            if text:
                docs[match.group(1)] = text
        above = []
    return docs


def describe_config(cfg, indent: str = "") -> str:
    """The config as YAML, every key with its meaning as a comment (`embedrank config`)."""
    lines = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        comment = f"  # {docs[f.name]}" if f.name in docs else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:{comment}")
            lines.append(describe_config(value, indent + "  "))
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
            lines.append(f"{indent}{f.name}: {text}{comment}")
    return "\n".join(lines)


def with_absolute_paths(cfg):
    """The config with local paths (input, output, corpus, a local model directory) made absolute, so that a
    job never depends on its working directory again after start-up."""
    import os

    def fix(uri):
        if isinstance(uri, list):
            return [fix(u) for u in uri]
        if not uri or "://" in uri and not uri.startswith("file://"):
            return uri
        return os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))

    def fix_model(model):
        source = model.source
        if (
            source
            and "://" not in source
            and not source.startswith("builtin:")
            and os.path.exists(os.path.expanduser(source))
        ):
            return dataclasses.replace(model, source=fix(source))
        return model

    if isinstance(cfg, RetrieveJobConfig):
        return dataclasses.replace(
            cfg,
            input=dataclasses.replace(cfg.input, uri=fix(cfg.input.uri)),
            corpus=dataclasses.replace(cfg.corpus, uri=fix(cfg.corpus.uri)),
            output=dataclasses.replace(cfg.output, uri=fix(cfg.output.uri)),
            qrels=fix(cfg.qrels),
        )
    if isinstance(cfg, CombinedJobConfig):
        return dataclasses.replace(
            cfg,
            **{
                name: getattr(cfg, name) and with_absolute_paths(getattr(cfg, name))
                for name in ("embed_job", "query_embed_job", "retrieve_job", "rerank_job")
            },
        )
    changes = {
        "input": dataclasses.replace(cfg.input, uri=fix(cfg.input.uri)),
        "output": dataclasses.replace(cfg.output, uri=fix(cfg.output.uri)),
        "model": fix_model(cfg.model),
    }
    if isinstance(cfg, RerankJobConfig):
        changes["corpus"] = dataclasses.replace(cfg.corpus, uri=fix(cfg.corpus.uri))
        changes["qrels"] = fix(cfg.qrels)
    return dataclasses.replace(cfg, **changes)
