"""Qwen3Reranker: the published Qwen3-Reranker recipe with a two-row head at the last position.

The recipe scores P(yes) = softmax([logit_no, logit_yes])[1] at the last position, which equals
sigmoid(logit_yes - logit_no) = sigmoid((W[yes] - W[no]) . h_last). Only that difference row of the LM head is
kept, in fp32, and only the last position's hidden state is used: no full-vocabulary logits anywhere.
The prompt is prefix + body + suffix; only the body is truncated, so the prefix and suffix always survive.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from ..schema import text_problem
from .checkpoints import resolve_checkpoint
from .compiler import compile_enabled
from .forward import ForwardStats, LastTokenForward, load_qwen3, parse_dtype, placement, token_budget
from .tokenization import NO, YES, RerankTokenizer, load_tokenizer


def check_pairs(queries: Sequence, documents: Sequence) -> None:
    for index, (q, d) in enumerate(zip(queries, documents)):
        for what, value in (("query", q), ("document", d)):
            reason = text_problem(value)
            if reason is not None:
                raise ValueError(f"pair {index}: {what} is {reason} ({value!r:.40}); drop or fix the pair")


class Qwen3Reranker:
    """Score (query, document) pairs with a Qwen3-Reranker checkpoint: P(yes) in [0, 1], float32, input order."""

    def __init__(
        self,
        base_model,
        score_row: torch.Tensor,
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
        self.model = base_model
        self.device = device
        self.backend = backend
        self.source = source
        self.revision = revision
        self.prompt_tokenizer = RerankTokenizer(tokenizer, max_length=max_length)
        self.max_length = self.prompt_tokenizer.max_length
        self.score_row = score_row  # fp32 [hidden]: W[yes] - W[no]
        self._forward = LastTokenForward(
            base_model,
            device=device,
            backend=backend,
            max_tokens=max_tokens_per_batch,
            compiled=compiled,
            pad_id=tokenizer.pad_token_id or 151643,
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
    ) -> Qwen3Reranker:
        device, backend = placement(device, attention, dtype)
        compiled = compile_enabled(compile, device)
        path = resolve_checkpoint(source, revision=revision, storage_options=storage_options, kind="reranker")
        causal_lm = load_qwen3(path, causal_lm=True, device=device, dtype=parse_dtype(dtype, device))
        tokenizer = load_tokenizer(path)
        yes, no = tokenizer.convert_tokens_to_ids(YES), tokenizer.convert_tokens_to_ids(NO)
        weight = causal_lm.get_output_embeddings().weight
        score_row = (weight[yes].float() - weight[no].float()).detach().clone()
        base = causal_lm.model
        # Drop the untied LM head (tied heads share the input embeddings, which the base model keeps).
        del causal_lm
        budget = token_budget(base, device, max_tokens_per_batch, max_length, backend)
        return cls(
            base,
            score_row,
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

    def score_tokens(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Prompts already built with `RerankTokenizer` -> float32 [n] P(yes)."""
        seqs = [np.asarray(s, dtype=np.int64) for s in token_ids]
        if not seqs:
            self.last_stats = ForwardStats()
            return np.zeros(0, np.float32)
        hidden, self.last_stats = self._forward(seqs)
        logits = hidden.float() @ self.score_row  # logit_yes - logit_no, in fp32
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32)

    def score(
        self, queries: Sequence[str], documents: Sequence[str], *, instruction: str | Sequence[str | None] | None = None
    ) -> np.ndarray:
        """P(yes) for each (query, document) pair, float32 in [0, 1], input order."""
        queries, documents = list(queries), list(documents)
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries but {len(documents)} documents: pass one query per document")
        check_pairs(queries, documents)
        return self.score_tokens(self.prompt_tokenizer.tokenize(queries, documents, instruction).ids)
