"""Qwen3-Embedding tokenisation: text -> token ids ending in exactly one `<|endoftext|>`.

Current Qwen3-Embedding tokenizers append `<|endoftext|>` through a post-processor, older copies do not. Both
are handled the same way: tokenise without special tokens, cut to max_length - 1, append the id. The result
is what the published recipe feeds the model with either tokenizer, also after truncation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import prompts
from ..validation import check_texts

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
    def from_pretrained(cls, path: str | Path, max_length: int = 8192) -> "EmbeddingTokenizer":
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
