"""Qwen3Embedder: the published Qwen3-Embedding recipe, fast.

Texts -> token ids ending in `<|endoftext|>` -> length-sorted token-budget micro-batches -> packed varlen (or
bucketed padded) attention -> last-token pooling -> Matryoshka cut -> L2 normalisation in fp32 -> input order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .checkpoints import resolve_checkpoint
from .compiler import compile_enabled
from .forward import ForwardStats, LastTokenForward, load_qwen3, parse_dtype, placement, token_budget
from .pooling import matryoshka_normalize
from .tokenization import EmbeddingTokenizer, TokenizedBatch, load_tokenizer


class Qwen3Embedder:
    """Embed texts or pre-tokenised sequences with a Qwen3-Embedding checkpoint.

    Use `Qwen3Embedder.from_pretrained(source)`. `last_stats` holds the token accounting of the latest call.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        device,
        backend: str,
        max_length: int,
        max_tokens_per_batch: int,
        source: str = "",
        revision: str | None = None,
        compiled: bool = False,
    ):
        self.model = model
        self.device = device
        self.backend = backend
        self.source = source
        self.revision = revision
        self.text_tokenizer = EmbeddingTokenizer(tokenizer, max_length=max_length)
        self.max_length = self.text_tokenizer.max_length
        self.hidden_size = model.config.hidden_size
        self._forward = LastTokenForward(
            model,
            device=device,
            backend=backend,
            max_tokens=max_tokens_per_batch,
            compiled=compiled,
            pad_id=self.text_tokenizer.endoftext_id,
        )
        self.last_stats = ForwardStats()

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        attention: str | None = None,
        max_length: int = 8192,
        max_tokens_per_batch: int | None = None,
        revision: str | None = None,
        storage_options: dict | None = None,
        compile: str | None = "auto",
    ) -> Qwen3Embedder:
        """Load from a local directory, a Hugging Face id or an s3:// prefix (safetensors only).

        dtype defaults to bf16 on CUDA and fp32 on CPU; attention to the best backend on the device.
        """
        device, backend = placement(device, attention, dtype)
        compiled = compile_enabled(compile, device)
        path = resolve_checkpoint(source, revision=revision, storage_options=storage_options)
        model = load_qwen3(path, causal_lm=False, device=device, dtype=parse_dtype(dtype, device))
        tokenizer = load_tokenizer(path)
        budget = token_budget(model, device, max_tokens_per_batch, max_length, backend)
        return cls(
            model,
            tokenizer,
            device=device,
            backend=backend,
            max_length=max_length,
            max_tokens_per_batch=budget,
            source=os.fspath(source),
            revision=revision,
            compiled=compiled,
        )

    def warm_up(self) -> float:
        """Compile now (when compiled) instead of on the first batch; returns the seconds it took."""
        return self._forward.warm_up()

    @property
    def compiled(self) -> bool:
        return self._forward.compiled

    @property
    def max_tokens_per_batch(self) -> int:
        return self._forward.max_tokens

    def tokenize(self, texts: Sequence[str], kind: str = "document", instruction: str | None = None) -> TokenizedBatch:
        """Token ids (each ending in one `<|endoftext|>`), lengths and truncated flags; validates the texts."""
        return self.text_tokenizer.tokenize(texts, kind, instruction)

    def embed_tokens(self, token_ids: Sequence[Sequence[int]], dim: int | None = None) -> np.ndarray:
        """[n] token-id sequences -> float32 [n, dim or hidden], L2-normalised, input order.

        The sequences are used as given: produce them with `tokenize` (or the same rule) so that each ends in
        `<|endoftext|>` and holds at most max_length tokens.
        """
        if dim is not None and not 1 <= dim <= self.hidden_size:
            raise ValueError(f"dim must be between 1 and {self.hidden_size} for this model, got {dim}")
        seqs = [np.asarray(s, dtype=np.int64) for s in token_ids]
        for row, seq in enumerate(seqs):
            if seq.ndim != 1 or seq.size == 0:
                raise ValueError(f"row {row}: a token sequence must be a non-empty 1-D array of ids")
            if seq.size > self.max_length:
                raise ValueError(f"row {row}: {seq.size} tokens exceed max_length={self.max_length}; truncate first")
        if not seqs:
            self.last_stats = ForwardStats()
            return np.zeros((0, dim or self.hidden_size), dtype=np.float32)
        hidden, self.last_stats = self._forward(seqs)
        return matryoshka_normalize(hidden, dim).cpu().numpy()

    def embed(
        self, texts: Sequence[str], *, kind: str = "document", instruction: str | None = None, dim: int | None = None
    ) -> np.ndarray:
        """Embed texts: float32 [n, dim], rows L2-normalised, input order. Queries get the instruction."""
        return self.embed_tokens(self.tokenize(texts, kind, instruction).ids, dim=dim)
