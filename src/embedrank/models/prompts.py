"""The published Qwen3 prompt templates, as pure string functions.

Sources: the Qwen3-Embedding repository and the Qwen3-Embedding / Qwen3-Reranker model cards.
"""

from __future__ import annotations

DEFAULT_EMBED_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
DEFAULT_RERANK_INSTRUCTION = DEFAULT_EMBED_INSTRUCTION

RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

KINDS = ("document", "query")


def embedding_query(query: str, instruction: str | None = None) -> str:
    """A query as Qwen3-Embedding expects it: no space after `Query:`."""
    task = DEFAULT_EMBED_INSTRUCTION if instruction is None else instruction
    return f"Instruct: {task}\nQuery:{query}"


def embedding_text(text: str, kind: str = "document", instruction: str | None = None) -> str:
    """Documents are embedded as they are; queries get the instruction."""
    if kind == "document":
        return text
    if kind == "query":
        return embedding_query(text, instruction)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def rerank_body(query: str, document: str, instruction: str | None = None) -> str:
    """The part of a reranker prompt that may be truncated; prefix and suffix never are."""
    task = DEFAULT_RERANK_INSTRUCTION if instruction is None else instruction
    return f"<Instruct>: {task}\n<Query>: {query}\n<Document>: {document}"
