"""Qwen3 embedding and reranking on torch + transformers alone: no Ray, no object-store datasets."""
