"""The README's FAISS snippets ("Load the vectors into an index"), run as written on float and binary vector
files made by the embed writer: each finds a vector's own row first, and the same top 10 as exact search."""

import re
from pathlib import Path

import numpy as np
import pytest

from embedrank.quantize import binarize, hamming
from tests.unit.test_compact_outputs import written_file

faiss = pytest.importorskip("faiss")

README = Path(__file__).resolve().parents[2] / "README.md"


def faiss_snippets() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Load the vectors into an index") :]
    section = section[: section.index("\n## ", 1)]
    return [code for code in re.findall(r"```python\n(.*?)```", section, re.S) if "faiss" in code]


def output_folder(tmp_path: Path, name: str, dtypes: list[str], vectors: np.ndarray) -> Path:
    shard = tmp_path / name / "vectors" / "shard-0.jsonl"
    shard.mkdir(parents=True)
    written_file(shard, dtypes, vectors, None)
    return tmp_path / name


def test_the_faiss_snippets_of_the_readme_run_on_embed_outputs(tmp_path, monkeypatch):
    float_code, binary_code = faiss_snippets()
    x = np.random.default_rng(0).standard_normal((500, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    output_folder(tmp_path, "out/sample-embeddings", ["float32"], x)
    output_folder(tmp_path, "out/sample-binary", ["binary"], x)
    monkeypatch.chdir(tmp_path)

    scope: dict = {}
    exec(float_code, scope)
    exact = np.argsort(-(x[:5] @ x.T), axis=1, kind="stable")[:, :10]
    assert scope["rows"].tolist() == exact.tolist()
    assert scope["best_ids"][0] == "d0"

    scope = {}
    exec(binary_code, scope)
    want = hamming(binarize(x[:5]), binarize(x))
    assert np.array_equal(scope["distances"], np.sort(want, axis=1)[:, :10])
    assert scope["best_ids"][0] == "d0"
