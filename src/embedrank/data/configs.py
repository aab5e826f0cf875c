"""What a processor for a user's own Ray Data pipeline is built from: EmbedConfig and RerankConfig.

Shaped like `ray.data.llm`'s processor configs: the model, the columns to read and to add, how bad rows are
handled, and the actor pool. Every value is checked when the config is made; a mistake is a ConfigError
naming the field and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ATTENTION_BACKENDS, COMPILE_MODES, DTYPES, ModelConfig, StorageConfig
from ..errors import ConfigError
from ..models.checkpoints import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from ..models.prompts import KINDS

ON_ERROR = ("continue", "raise")  # continue: bad rows get a reason code in the error column; raise: stop
RERANK_MIN_LENGTH = 64  # the reranker template alone takes ~50 tokens (the job's model.max_length bound too)


@dataclass(frozen=True)
class _ProcessorConfig:
    """The fields both processors share: the model, the actor pool and the tokenize tasks."""

    model_source: str = ""  # hub id, local directory, s3:// prefix or builtin:tiny-random
    revision: str | None = None  # a pinned hub revision (commit hash or tag)
    max_length: int = 8192  # tokens per row, longer texts are truncated (the `truncated` column says so)
    dtype: str | None = None  # bf16 | fp16 | fp32; default bf16 on GPU, fp32 on CPU
    attention: str | None = None  # flash_attn | torch_varlen | sdpa_packed | sdpa_padded; default: the best
    max_tokens_per_batch: int | None = None  # tokens per forward pass; None: sized to the device's memory
    compile: str = "auto"  # torch.compile of the decoder layers: auto (on where it measured faster) | on | off
    on_error: str = "continue"  # continue: bad rows get their reason in error_column | raise: stop at one
    concurrency: int | tuple[int, int] = 1  # model actors: n (fixed) or (min, max) (autoscaling)
    num_gpus: float = 0.0  # per model actor; 1 on GPU clusters
    num_cpus: float = 1.0  # per model actor
    batch_size: int = 512  # rows per Ray batch handed to an actor (cut again into token-budget micro-batches)
    torch_threads: int | None = None  # CPU actors: intra-op threads
    tokenize_batch_size: int = 1024  # rows per batch of the CPU tokenize tasks
    tokenize_num_cpus: float = 1.0  # per tokenize task
    # Memory each tokenize task reserves: the tokenizer and a batch (the jobs' measured floor, io/pieces.py).
    tokenize_memory_mb: float = 768.0
    storage: StorageConfig | None = None  # how to reach an s3:// model_source (endpoint, region, anon)
    n_tokens_column: str = "n_tokens"  # tokens the model read for the row (after truncation)
    truncated_column: str = "truncated"  # the row was longer than max_length and was cut

    def __post_init__(self):
        name = type(self).__name__
        if not isinstance(self.model_source, str) or not self.model_source:
            raise ConfigError(f"{name}.model_source is empty: pass a hub id, a local directory or an s3:// prefix")
        _choice(name, "on_error", self.on_error, ON_ERROR)
        if self.dtype is not None:
            _choice(name, "dtype", self.dtype, DTYPES)
        if self.attention is not None:
            _choice(name, "attention", self.attention, ATTENTION_BACKENDS)
        _choice(name, "compile", self.compile, COMPILE_MODES)
        _pool_size(name, self.concurrency)
        for field, value in (
            ("max_length", self.max_length),
            ("batch_size", self.batch_size),
            ("tokenize_batch_size", self.tokenize_batch_size),
            ("max_tokens_per_batch", self.max_tokens_per_batch or 1),
            ("torch_threads", self.torch_threads or 1),
        ):
            _positive_int(name, field, value)
        for field, value in (
            ("num_cpus", self.num_cpus),
            ("tokenize_num_cpus", self.tokenize_num_cpus),
            ("tokenize_memory_mb", self.tokenize_memory_mb),
        ):
            if not _is_number(value) or value <= 0:
                raise ConfigError(f"{name}.{field} must be a number > 0, got {value!r}")
        if not _is_number(self.num_gpus) or self.num_gpus < 0:
            raise ConfigError(f"{name}.num_gpus must be a number >= 0, got {self.num_gpus!r}")
        if self.storage is not None and not isinstance(self.storage, StorageConfig):
            raise ConfigError(
                f"{name}.storage must be an embedrank.config.StorageConfig, got {type(self.storage).__name__}"
            )
        added = self.added_columns()
        for field, column in added.items():
            if not isinstance(column, str) or not column:
                raise ConfigError(f"{name}.{field} must be a column name, got {column!r}")
        clash = [c for c in set(added.values()) if list(added.values()).count(c) > 1]
        if clash:
            raise ConfigError(
                f"{name}: the added columns must have distinct names, {clash[0]!r} is used twice; "
                f"set one of {', '.join(added)} to another name"
            )

    def added_columns(self) -> dict[str, str]:
        """config field -> the column the processor adds under that name."""
        raise NotImplementedError

    def model_config(self, dim: int | None = None) -> ModelConfig:
        """The job's ModelConfig of the same model: the actors load it exactly as the jobs' actors do."""
        return ModelConfig(
            source=self.model_source,
            revision=self.revision,
            dtype=self.dtype,
            attention=self.attention,
            max_length=self.max_length,
            max_tokens_per_batch=self.max_tokens_per_batch,
            dim=dim,
            compile=self.compile,
        )


@dataclass(frozen=True)
class EmbedConfig(_ProcessorConfig):
    """build_embedder(EmbedConfig(...))(ds): ds + embedding, n_tokens, truncated (+ embedding_error)."""

    model_source: str = DEFAULT_EMBEDDING_MODEL
    text_column: str = "text"  # the column of texts to embed
    kind: str = "document"  # document | query (queries get the instruction, as the embed job does)
    instruction: str | None = None  # queries only; default: the published web-search instruction
    dim: int | None = None  # Matryoshka dimension (first dim values, then L2-normalised); None: the hidden size
    embedding_column: str = "embedding"  # fixed_size_list<float32>[dim], L2-normalised; null for bad rows
    error_column: str = "embedding_error"  # on_error="continue": null, or the bad row's reason code

    def __post_init__(self):
        super().__post_init__()
        _choice("EmbedConfig", "kind", self.kind, KINDS)
        if self.max_length < 2:
            raise ConfigError(
                f"EmbedConfig.max_length must be >= 2 (one token and <|endoftext|>), got {self.max_length}"
            )
        if self.dim is not None:
            _positive_int("EmbedConfig", "dim", self.dim)
        if not isinstance(self.text_column, str) or not self.text_column:
            raise ConfigError(f"EmbedConfig.text_column must be a column name, got {self.text_column!r}")
        _text_or_none("EmbedConfig", "instruction", self.instruction)

    def added_columns(self) -> dict[str, str]:
        columns = {
            "embedding_column": self.embedding_column,
            "n_tokens_column": self.n_tokens_column,
            "truncated_column": self.truncated_column,
        }
        if self.on_error == "continue":
            columns["error_column"] = self.error_column
        return columns


@dataclass(frozen=True)
class RerankConfig(_ProcessorConfig):
    """build_reranker(RerankConfig(...))(ds): ds + score, n_tokens, truncated (+ score_error)."""

    model_source: str = DEFAULT_RERANKER_MODEL
    query_column: str = "query"
    document_column: str = "document"
    instruction_column: str | None = None  # a per-row instruction; null or "" in a row: `instruction`
    instruction: str | None = None  # default for every row; None: the published instruction
    score_column: str = "score"  # float32 P(yes) in [0, 1]; null for bad rows
    error_column: str = "score_error"  # on_error="continue": null, or the bad row's reason code

    def __post_init__(self):
        super().__post_init__()
        if self.max_length < RERANK_MIN_LENGTH:
            raise ConfigError(
                f"RerankConfig.max_length must leave room for the reranker template "
                f"(>= {RERANK_MIN_LENGTH}), got {self.max_length}"
            )
        for field in ("query_column", "document_column"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"RerankConfig.{field} must be a column name, got {value!r}")
        if self.instruction_column is not None and (
            not isinstance(self.instruction_column, str) or not self.instruction_column
        ):
            raise ConfigError(
                f"RerankConfig.instruction_column must be a column name or None, got {self.instruction_column!r}"
            )
        _text_or_none("RerankConfig", "instruction", self.instruction)

    def added_columns(self) -> dict[str, str]:
        columns = {
            "score_column": self.score_column,
            "n_tokens_column": self.n_tokens_column,
            "truncated_column": self.truncated_column,
        }
        if self.on_error == "continue":
            columns["error_column"] = self.error_column
        return columns


def _choice(name: str, field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}.{field}: {value!r} is not one of {', '.join(map(str, allowed))}")


def _text_or_none(name: str, field: str, value) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{name}.{field} must be text or None, got {value!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(name: str, field: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}.{field} must be an integer >= 1, got {value!r}")


def _pool_size(name: str, concurrency) -> None:
    """n actors, or (min, max) with 1 <= min <= max: ray.data.llm's `concurrency`."""
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return
    if (
        isinstance(concurrency, (tuple, list))
        and len(concurrency) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in concurrency)
        and 1 <= concurrency[0] <= concurrency[1]
    ):
        return
    raise ConfigError(
        f"{name}.concurrency must be a number of actors n >= 1 or a pair (min, max) with "
        f"1 <= min <= max, got {concurrency!r}"
    )
