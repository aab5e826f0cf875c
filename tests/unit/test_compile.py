"""The compiled forward (model.compile) against the eager one on the CPU, fp32, and its recompiles.

Compiling the tiny model's decoder layer takes 15-25 s on this 2-core machine: CI keeps one compiled model
(the embedder, `sdpa_packed`, the CPU default) for the parity and the recompile count; the padded backend and
the reranker's two backends run in `make test-all` (slow).
"""

import numpy as np
import pytest
import torch

from embedrank import Qwen3Embedder, Qwen3Reranker
from embedrank.models import compiler
from embedrank.runtime.progress import ProgressBoard, progress_fields, progress_line
from embedrank.verify import row_cosines

MAX_LENGTH = 1024
PARITY = 0.99999
SCORE_TOLERANCE = 1e-5


def test_auto_compiles_on_cuda_only_and_a_bad_mode_is_one_line(monkeypatch):
    monkeypatch.setattr(compiler, "_triton_available", lambda: True)
    assert compiler.compile_enabled("auto", torch.device("cuda"))
    monkeypatch.setattr(compiler, "_triton_available", lambda: False)
    assert not compiler.compile_enabled("auto", torch.device("cuda"))  # no Triton: inductor cannot build kernels
    assert not compiler.compile_enabled("auto", torch.device("cpu"))
    assert not compiler.compile_enabled(None, torch.device("cpu"))
    assert compiler.compile_enabled("on", torch.device("cpu"))
    assert not compiler.compile_enabled("off", torch.device("cuda"))
    with pytest.raises(ValueError, match=r"model.compile must be one of auto, on, off, got 'yes'"):
        compiler.compile_enabled("yes", torch.device("cpu"))


def test_the_progress_line_says_when_actors_are_compiling():
    board = ProgressBoard(units=2, est_bytes=100)
    board.actor_compiling("a")
    f = progress_fields(board.snapshot(), [], 0, 2, 2)
    assert progress_line(f, "embedded").endswith("model actors ready 0/2, compiling the model on 1")
    board.actor_ready("a")
    assert "compiling" not in progress_line(progress_fields(board.snapshot(), [], 0, 2, 2), "embedded")


@pytest.fixture(scope="module")
def texts(sample_rows):
    return [r["text"] for r in sample_rows][:120]


def embedders(path, backend):
    kwargs = dict(device="cpu", attention=backend, max_length=MAX_LENGTH, max_tokens_per_batch=4096)
    eager = Qwen3Embedder.from_pretrained(path, compile="off", **kwargs)
    compiled = Qwen3Embedder.from_pretrained(path, compile="on", **kwargs)
    assert compiled.compiled and not eager.compiled
    return eager, compiled


@pytest.fixture(scope="module")
def packed_pair(tiny_embedding_dir):
    eager, compiled = embedders(tiny_embedding_dir, "sdpa_packed")
    before = compiler.graphs_compiled()
    assert compiled.warm_up() > 0
    assert compiler.graphs_compiled() > before  # the warm-up compiled: the comparisons below are not eager twice
    return eager, compiled


def test_compiled_packed_embedder_matches_eager(packed_pair, texts):
    eager, compiled = packed_pair
    assert row_cosines(compiled.embed(texts), eager.embed(texts)).min() >= PARITY
    assert compiled.last_stats.micro_batches > 1


def test_recompiles_stay_bounded_over_50_micro_batches_of_varied_lengths(packed_pair):
    eager, compiled = packed_pair
    rng = np.random.default_rng(7)
    before = compiler.graphs_compiled()
    sizes = set()
    for _ in range(50):
        rows = int(rng.integers(1, 7))
        seqs = [np.append(rng.integers(0, 151_000, int(rng.integers(1, 400))), 151643) for _ in range(rows)]
        sizes.add(sum(map(len, seqs)))
        got = compiled._forward.run_micro_batch(seqs)
        want = eager._forward.run_micro_batch(seqs)
        assert row_cosines(got.numpy(), want.numpy()).min() >= PARITY
    assert len(sizes) >= 45  # the token count really varied
    assert compiler.graphs_compiled() - before <= 1  # dynamic shapes: no graph per length


@pytest.mark.slow
def test_compiled_padded_embedder_matches_eager(tiny_embedding_dir, texts):
    eager, compiled = embedders(tiny_embedding_dir, "sdpa_padded")
    compiled.warm_up()
    before = compiler.graphs_compiled()
    assert row_cosines(compiled.embed(texts), eager.embed(texts)).min() >= PARITY
    assert compiler.graphs_compiled() - before <= 1


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sdpa_packed", "sdpa_padded"])
def test_compiled_reranker_matches_eager(tiny_reranker_dir, texts, backend):
    kwargs = dict(device="cpu", attention=backend, max_length=MAX_LENGTH, max_tokens_per_batch=4096)
    eager = Qwen3Reranker.from_pretrained(tiny_reranker_dir, compile="off", **kwargs)
    compiled = Qwen3Reranker.from_pretrained(tiny_reranker_dir, compile="on", **kwargs)
    compiled.warm_up()
    queries = [t[:120] for t in texts[:60]]
    docs = texts[1:61]
    got, want = compiled.score(queries, docs), eager.score(queries, docs)
    assert np.abs(got - want).max() <= SCORE_TOLERANCE
    assert np.ptp(want) > 0  # the scores differ from pair to pair: the comparison is not of constants
