"""Qwen3 tokenisation: embedding texts -> token ids ending in exactly one `<|endoftext|>`; reranker prompts.

Current Qwen3-Embedding tokenizers append `<|endoftext|>` through a post-processor, older copies do not. Both
are handled the same way: tokenise without special tokens, cut to max_length - 1, append the id. The result
is what the published recipe feeds the model with either tokenizer, also after truncation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..schema import check_texts
from . import prompts

ENDOFTEXT = "<|endoftext|>"


@dataclass
class TokenizedBatch:
    ids: list[np.ndarray]  # int64 token ids per row, each ending in <|endoftext|>
    lengths: np.ndarray  # int64 [n]
    truncated: np.ndarray  # bool [n]: the text had more than max_length tokens


def load_tokenizer(path: str | Path, revision: str | None = None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=False, use_fast=True)


class EmbeddingTokenizer:
    """Turns texts (documents or queries) into Qwen3-Embedding token ids."""

    def __init__(self, tokenizer, max_length: int = 8192):
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (one token plus <|endoftext|>), got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.endoftext_id = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
        if self.endoftext_id is None or self.endoftext_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {ENDOFTEXT} token; is this a Qwen3 checkpoint?")

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int = 8192) -> EmbeddingTokenizer:
        return cls(load_tokenizer(path), max_length=max_length)

    def format(self, texts: Sequence[str], kind: str = "document", instruction: str | None = None) -> list[str]:
        return [prompts.embedding_text(t, kind, instruction) for t in texts]

    def tokenize(self, texts: Sequence[str], kind: str = "document", instruction: str | None = None) -> TokenizedBatch:
        """Validate, format and tokenise; raises ValueError naming the first bad row."""
        texts = self.format(check_texts(texts), kind, instruction)
        return self.tokenize_formatted(texts)

    def tokenize_formatted(self, texts: Sequence[str]) -> TokenizedBatch:
        """Tokenise texts that already carry their instruction (no validation)."""
        if not texts:
            return TokenizedBatch([], np.zeros(0, np.int64), np.zeros(0, bool))
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        keep = self.max_length - 1
        ids, truncated = [], np.zeros(len(encoded), dtype=bool)
        for row, seq in enumerate(encoded):
            truncated[row] = len(seq) > keep
            arr = np.empty(min(len(seq), keep) + 1, dtype=np.int64)
            arr[:-1] = seq[:keep]
            arr[-1] = self.endoftext_id
            ids.append(arr)
        lengths = np.fromiter((len(a) for a in ids), dtype=np.int64, count=len(ids))
        return TokenizedBatch(ids, lengths, truncated)


YES, NO = "yes", "no"


@dataclass
class RerankTokens:
    ids: list[np.ndarray]  # prefix + body + suffix per pair
    truncated: np.ndarray  # bool: the body was cut


class RerankTokenizer:
    """Builds reranker prompts as token ids: body tokenised alone, cut to fit, prefix and suffix kept whole."""

    def __init__(self, tokenizer, max_length: int = 8192):
        self.tokenizer = tokenizer
        self.prefix = np.asarray(tokenizer.encode(prompts.RERANK_PREFIX, add_special_tokens=False), np.int64)
        self.suffix = np.asarray(tokenizer.encode(prompts.RERANK_SUFFIX, add_special_tokens=False), np.int64)
        self.max_length = int(max_length)
        self.body_budget = self.max_length - len(self.prefix) - len(self.suffix)
        if self.body_budget < 1:
            raise ValueError(
                f"max_length={max_length} leaves no room for the reranker template "
                f"({len(self.prefix) + len(self.suffix)} tokens)"
            )
        self.yes_id = tokenizer.convert_tokens_to_ids(YES)
        self.no_id = tokenizer.convert_tokens_to_ids(NO)

    @classmethod
    def from_pretrained(cls, path, max_length: int = 8192) -> RerankTokenizer:
        return cls(load_tokenizer(path), max_length=max_length)

    def tokenize(
        self, queries: Sequence[str], documents: Sequence[str], instructions: Sequence[str | None] | str | None = None
    ) -> RerankTokens:
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents: pass one query per document")
        if instructions is None or isinstance(instructions, str):
            instructions = [instructions] * len(queries)
        bodies = [prompts.rerank_body(q, d, i) for q, d, i in zip(queries, documents, instructions)]
        if not bodies:
            return RerankTokens([], np.zeros(0, bool))
        encoded = self.tokenizer(bodies, add_special_tokens=False)["input_ids"]
        ids, truncated = [], np.zeros(len(bodies), dtype=bool)
        for row, body in enumerate(encoded):
            truncated[row] = len(body) > self.body_budget
            ids.append(np.concatenate([self.prefix, np.asarray(body[: self.body_budget], np.int64), self.suffix]))
        return RerankTokens(ids, truncated)


@functools.lru_cache(maxsize=4)
def cached_tokenizer(kind: str, source: str, revision: str | None, max_length: int, storage_options_json: str):
    """The tokenizer of a prepare task, loaded once per process: `kind` is embedding or reranker.

    Only the tokenizer files are fetched (no weights): CPU nodes that tokenise never download a checkpoint.
    """
    import json

    from .checkpoints import resolve_checkpoint

    path = resolve_checkpoint(
        source, revision=revision, storage_options=json.loads(storage_options_json), kind=kind, tokenizer_only=True
    )
    cls = EmbeddingTokenizer if kind == "embedding" else RerankTokenizer
    return cls.from_pretrained(path, max_length=max_length)
