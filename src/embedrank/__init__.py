"""embedrank: embed whole corpora with Qwen3-Embedding and rerank candidate lists with Qwen3-Reranker on Ray."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Qwen3Embedder", "Qwen3Reranker", "__version__"]


def __getattr__(name):
    # Lazy, so that `import embedrank` (the CLI, the Ray driver) does not pay for torch and transformers.
    if name == "Qwen3Embedder":
        from .models.embedder import Qwen3Embedder

        return Qwen3Embedder
    if name == "Qwen3Reranker":
        from .models.reranker import Qwen3Reranker

        return Qwen3Reranker
    raise AttributeError(f"module 'embedrank' has no attribute {name!r}")
