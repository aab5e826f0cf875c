"""Shared fixtures: tiny random-weight Qwen3 checkpoints with the real Qwen tokenizer, built offline."""

from __future__ import annotations

import shutil

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """The reliability table (tests/integration/reliability.py), when reliability scenarios ran."""
    import sys

    module = sys.modules.get("tests.integration.reliability")
    if module is not None and module.RESULTS:
        terminalreporter.section("reliability: faults injected, rows accounted for")
        terminalreporter.write_line(module.table())


@pytest.fixture(scope="session")
def tiny_embedding_dir(tmp_path_factory):
    """Qwen3Model checkpoint whose tokenizer appends <|endoftext|> (current Qwen3-Embedding)."""
    from embedrank.models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("qwen3-embedding"), kind="embedding", append_endoftext=True)


def same_weights_other_tokenizer(source, out, append_endoftext: bool):
    """Copy a checkpoint's config and weights, and give the copy the other tokenizer variant."""
    from embedrank.models.tiny import build_qwen_tokenizer

    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (source / name).exists():
            shutil.copy(source / name, out / name)
    build_qwen_tokenizer(append_endoftext=append_endoftext).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_embedding_dir_no_eot(tmp_path_factory, tiny_embedding_dir):
    """The same weights with a tokenizer that appends nothing (older Qwen3-Embedding copies)."""
    return same_weights_other_tokenizer(tiny_embedding_dir, tmp_path_factory.mktemp("qwen3-embedding-no-eot"), False)


@pytest.fixture(scope="session")
def sample_rows():
    from embedrank.verify import load_sample_corpus

    return load_sample_corpus()


@pytest.fixture(scope="session")
def embedder(tiny_embedding_dir):
    from embedrank import Qwen3Embedder

    return Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cpu")


@pytest.fixture(scope="session")
def tiny_reranker_dir(tmp_path_factory):
    """Qwen3ForCausalLM checkpoint with the reranker's tokenizer (no <|endoftext|> post-processor)."""
    from embedrank.models.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("qwen3-reranker"), kind="reranker", append_endoftext=False)


@pytest.fixture(scope="session")
def tiny_reranker_dir_eot(tmp_path_factory, tiny_reranker_dir):
    """The same reranker weights with a tokenizer that appends <|endoftext|>."""
    return same_weights_other_tokenizer(tiny_reranker_dir, tmp_path_factory.mktemp("qwen3-reranker-eot"), True)
