"""The published transformers recipes, written plainly, as the yardstick for parity checks.

Deliberately independent of the fast path: transformers' own attention (eager by default), the tokenizer's own
padding and truncation, the model card's `last_token_pool`, the whole LM head for the reranker. `embedrank
verify` and the tests compare the fast path with these; benchmarks time them as "the published recipe".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import prompts


def last_token_pool(last_hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """As in the Qwen3-Embedding model card."""
    left_padding = attention_mask[:, -1].sum() == attention_mask.shape[0]
    if left_padding:
        return last_hidden_states[:, -1]
    sequence_lengths = attention_mask.sum(dim=1) - 1
    batch_size = last_hidden_states.shape[0]
    return last_hidden_states[torch.arange(batch_size, device=last_hidden_states.device), sequence_lengths]


def _appends_endoftext(tokenizer) -> bool:
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return tokenizer("a")["input_ids"][-1] == eot


def _encode_like_model_card(tokenizer, texts: list[str], max_length: int) -> dict:
    if _appends_endoftext(tokenizer):
        # Current model card: the post-processor appends <|endoftext|> and truncation makes room for it.
        return tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    # Earlier model card: truncate to max_length - 1, append the id by hand, then pad.
    eod_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    batch = tokenizer(texts, padding=False, truncation=True, max_length=max_length - 1)
    batch["input_ids"] = [ids + [eod_id] for ids in batch["input_ids"]]
    batch["attention_mask"] = [mask + [1] for mask in batch["attention_mask"]]
    return tokenizer.pad(batch, padding=True, return_tensors="pt")


@torch.inference_mode()
def reference_embed(
    model,
    tokenizer,
    texts: Sequence[str],
    *,
    kind: str = "document",
    instruction: str | None = None,
    dim: int | None = None,
    max_length: int = 8192,
    batch_size: int = 8,
) -> np.ndarray:
    """Qwen3-Embedding as the model card runs it: fixed-size batches in input order, left padding."""
    tokenizer.padding_side = "left"
    formatted = [prompts.embedding_text(t, kind, instruction) for t in texts]
    out = []
    for start in range(0, len(formatted), batch_size):
        batch = _encode_like_model_card(tokenizer, formatted[start : start + batch_size], max_length)
        batch = {k: v.to(model.device) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state
        pooled = last_token_pool(hidden, batch["attention_mask"]).float()
        if dim is not None:
            pooled = pooled[:, :dim]
        out.append(F.normalize(pooled, p=2, dim=1).cpu())
    width = dim or model.config.hidden_size
    return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)


def load_reference_model(
    path, *, causal_lm: bool = False, device="cpu", dtype=torch.float32, attn_implementation: str = "eager"
):
    """transformers' own model class with a stock attention implementation."""
    from transformers import AutoModel, AutoModelForCausalLM

    from .forward import dtype_kwarg

    cls = AutoModelForCausalLM if causal_lm else AutoModel
    model = cls.from_pretrained(
        path,
        attn_implementation=attn_implementation,
        trust_remote_code=False,
        use_safetensors=True,
        **dtype_kwarg(dtype),
    )
    return model.to(device).eval()


@torch.inference_mode()
def reference_rerank(
    model,
    tokenizer,
    queries: Sequence[str],
    documents: Sequence[str],
    *,
    instruction: str | None = None,
    max_length: int = 8192,
    batch_size: int = 8,
) -> np.ndarray:
    """Qwen3-Reranker as the model card runs it: full LM head, last position, log-softmax over [no, yes]."""
    tokenizer.padding_side = "left"
    prefix_tokens = tokenizer.encode(prompts.RERANK_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(prompts.RERANK_SUFFIX, add_special_tokens=False)
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    pairs = [prompts.rerank_body(q, d, instruction) for q, d in zip(queries, documents)]
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        inputs = tokenizer(
            pairs[start : start + batch_size],
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        scores.extend(batch_scores[:, 1].exp().tolist())
    return np.asarray(scores, dtype=np.float32)
