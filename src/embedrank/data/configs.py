"""What a processor for a user's own Ray Data pipeline is built from: EmbedConfig and RerankConfig.

Made of the jobs' own sections, with the jobs' names: `model` (ModelConfig), the actor pool (`embed` or
`rerank`, an ActorPoolConfig: ray.data.llm's `concurrency` and `batch_size`), `prepare` (the tokenize tasks)
and `storage`; then the columns to read and to add, and how bad rows are handled. Every value is checked when
the config is made; a mistake is one ConfigError line naming the field and the fix. The flat names of earlier
releases (`model_source=`, `concurrency=`, `tokenize_batch_size=`, ...) are still accepted, with a notice.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from ..config import ActorPoolConfig, ModelConfig, PrepareConfig, StorageConfig
from ..errors import ConfigError
from ..models.checkpoints import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL
from ..settings import Section, key, notice, section

RERANK_MIN_LENGTH = 64  # the reranker template alone takes ~50 tokens (the job's model.max_length bound too)
MODEL_KEYS = ("revision", "max_length", "dtype", "attention", "max_tokens_per_batch", "compile", "dim")
POOL_KEYS = ("concurrency", "num_gpus", "num_cpus", "batch_size", "torch_threads")
PREPARE_KEYS = {"tokenize_batch_size": "batch_size", "tokenize_num_cpus": "num_cpus", "tokenize_memory_mb": "memory_mb"}


class _ProcessorConfig(Section):
    """The sections both processors share, and the columns they add besides their own."""

    POOL: ClassVar[str]  # the name of the actor pool section: embed | rerank
    DEFAULT_MODEL: ClassVar[str]

    model: ModelConfig = section(ModelConfig, "the model; source null: the default Qwen3 model of this kind")
    prepare: PrepareConfig = key(
        PrepareConfig(memory_mb=768.0), "the CPU tokenize tasks (batch_size rows at a time, num_cpus, memory_mb)"
    )
    storage: StorageConfig | None = key(None, "how to reach an s3:// model source (endpoint, region, anon)")
    on_error: Literal["continue", "raise"] = key(
        "continue", "continue: bad rows get their reason in the error column | raise: stop at one"
    )
    n_tokens_column: str = key("n_tokens", "tokens the model read for the row (after truncation)", min_length=1)
    truncated_column: str = key("truncated", "the row was longer than model.max_length and was cut", min_length=1)

    @classmethod
    def upgrade(cls, data: dict, prefix: str) -> dict:
        """Flat names of earlier releases moved into their sections (model_source= -> model.source)."""
        data = dict(super().upgrade(data, prefix))
        moves = {"model_source": ("model", "source")}
        moves |= {name: ("model", name) for name in MODEL_KEYS}
        moves |= {name: (cls.POOL, name) for name in POOL_KEYS}
        moves |= {old: ("prepare", new) for old, new in PREPARE_KEYS.items()}
        for old in [name for name in data if name in moves]:
            where, name = moves[old]
            value = data.pop(old)
            target = data.get(where) if where in data else None
            if isinstance(target, Section):
                target = target.model_dump(exclude_unset=True)
            merged = {**(target or {}), name: value}
            if where == "prepare" and "memory_mb" not in merged and "prepare" not in data:
                merged.setdefault("memory_mb", 768.0)
            data[where] = merged
            notice(f"{prefix}{old}= is now {prefix}{where}={{'{name}': ...}} (a {where} section); it still works")
        return data

    @property
    def model_source(self) -> str:
        """The model to load: model.source, or the default model of this processor's kind."""
        return self.model.source or self.DEFAULT_MODEL

    @property
    def pool(self) -> ActorPoolConfig:
        return getattr(self, self.POOL)

    @model_validator(mode="after")
    def _added_columns_distinct(self):
        added = self.added_columns()
        clash = [c for c in set(added.values()) if list(added.values()).count(c) > 1]
        if clash:
            raise ConfigError(
                f"{type(self).__name__}: the added columns must have distinct names, {clash[0]!r} is used twice; "
                f"set one of {', '.join(added)} to another name"
            )
        return self

    def added_columns(self) -> dict[str, str]:
        """config field -> the column the processor adds under that name."""
        raise NotImplementedError


class EmbedConfig(_ProcessorConfig):
    """build_embedder(EmbedConfig(...))(ds): ds + embedding, n_tokens, truncated (+ embedding_error)."""

    POOL: ClassVar[str] = "embed"
    DEFAULT_MODEL: ClassVar[str] = DEFAULT_EMBEDDING_MODEL
    embed: ActorPoolConfig = section(ActorPoolConfig, "the model actors (concurrency, batch_size, num_gpus, ...)")
    text_column: str = key("text", "the column of texts to embed", min_length=1)
    kind: Literal["document", "query"] = key("document", "document | query (queries get the instruction)")
    instruction: str | None = key(None, "queries only; null: the published web-search instruction")
    embedding_column: str = key(
        "embedding", "fixed_size_list<float32>[dim], L2-normalised; null for bad rows", min_length=1
    )
    error_column: str = key("embedding_error", 'on_error="continue": null, or the bad row\'s reason code', min_length=1)

    def added_columns(self) -> dict[str, str]:
        columns = {
            "embedding_column": self.embedding_column,
            "n_tokens_column": self.n_tokens_column,
            "truncated_column": self.truncated_column,
        }
        if self.on_error == "continue":
            columns["error_column"] = self.error_column
        return columns


class RerankConfig(_ProcessorConfig):
    """build_reranker(RerankConfig(...))(ds): ds + score, n_tokens, truncated (+ score_error)."""

    POOL: ClassVar[str] = "rerank"
    DEFAULT_MODEL: ClassVar[str] = DEFAULT_RERANKER_MODEL
    rerank: ActorPoolConfig = section(ActorPoolConfig, "the model actors (concurrency, batch_size, num_gpus, ...)")
    query_column: str = key("query", "the query's text", min_length=1)
    document_column: str = key("document", "the document's text", min_length=1)
    instruction_column: str | None = key(
        None, "a per-row instruction; null or empty in a row: `instruction`", min_length=1
    )
    instruction: str | None = key(None, "default for every row; null: the published instruction")
    score_column: str = key("score", "float32 P(yes) in [0, 1]; null for bad rows", min_length=1)
    error_column: str = key("score_error", 'on_error="continue": null, or the bad row\'s reason code', min_length=1)

    @model_validator(mode="after")
    def _room_for_the_template(self):
        if self.model.max_length < RERANK_MIN_LENGTH:
            raise ConfigError(
                f"RerankConfig.model.max_length must leave room for the reranker template "
                f"(>= {RERANK_MIN_LENGTH}), got {self.model.max_length}"
            )
        if self.model.dim is not None:
            raise ConfigError("RerankConfig.model.dim does not apply to a reranker (it makes no vectors); remove it")
        return self

    def added_columns(self) -> dict[str, str]:
        columns = {
            "score_column": self.score_column,
            "n_tokens_column": self.n_tokens_column,
            "truncated_column": self.truncated_column,
        }
        if self.on_error == "continue":
            columns["error_column"] = self.error_column
        return columns
