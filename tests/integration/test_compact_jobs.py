"""Compact vectors through the jobs: the sample embedded as binary codes with float32 and int8 columns beside
them, then retrieved by Hamming distance with float32 rescoring; and a rerun of the output keeps its int8 range."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from embedrank.runtime.store import REPORT, OutputStore, committed_files

from .conftest import REPO, run_job

pytestmark = pytest.mark.slow
DATA = REPO / "src" / "embedrank" / "data"


def write(tmp_path, name: str, cfg: dict) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"ray": {"num_cpus": 2}, "progress_interval_s": 5, **cfg}))
    return path


def test_binary_with_float_and_int8_columns_retrieved_with_rescoring(tmp_path, tiny_embedding_dir):
    model = {"source": str(tiny_embedding_dir), "max_length": 128}
    output = {"embedding_dtype": "binary", "extra_embedding_dtypes": ["float32", "int8"], "int8_calibration_rows": 64}
    corpus = write(
        tmp_path,
        "corpus",
        {
            "input": {"uri": str(DATA / "sample_corpus.jsonl")},
            "output": {"uri": str(tmp_path / "c"), **output},
            "model": model,
        },
    )
    queries = write(
        tmp_path,
        "queries",
        {
            "input": {
                "uri": str(DATA / "sample_candidates.jsonl"),
                "id_column": "query_id",
                "text_column": "query",
                "kind": "query",
                "passthrough": ["query"],
            },
            "output": {"uri": str(tmp_path / "q"), "embedding_dtype": "float32"},
            "model": model,
        },
    )
    for path in (corpus, queries):
        proc = run_job(path, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = committed_files(str(tmp_path / "c"))
    table = pq.read_table(files[0])
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert table.schema.field("embedding").type.list_size == 32  # 256 sign bits
    assert {"embedding_float32", "embedding_int8"} <= set(table.column_names)
    assert meta["embedrank.embedding_dtype"] == "binary" and json.loads(meta["embedrank.int8_range"])
    floats = np.stack(table.column("embedding_float32").to_numpy(zero_copy_only=False))
    bits = np.unpackbits(np.stack(table.column("embedding").to_numpy(zero_copy_only=False)), axis=1)
    assert np.array_equal(bits.astype(bool), floats > 0)  # sign bits of the float vectors, in order
    store = OutputStore(str(tmp_path / "c"))
    report = json.loads(store.read_text(store.path(REPORT)))
    assert report["int8_range"]

    # A rerun with nothing to do keeps the range: the committed int8 codes stay comparable.
    rerun = run_job(corpus, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(pq.read_table(files[0]).schema.metadata[b"embedrank.int8_range"]) == json.loads(
        meta["embedrank.int8_range"]
    )

    retrieve = write(
        tmp_path,
        "retrieve",
        {
            "input": {"uri": str(tmp_path / "q"), "text_column": "query"},
            "corpus": {"uri": str(tmp_path / "c")},
            "output": {"uri": str(tmp_path / "r"), "top_k": 10},
            "retrieve": {"rescore_k": 200},  # of 301: the tiny random model's vectors are nearly isotropic
        },
    )
    proc = run_job(retrieve, command="retrieve", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = OutputStore(str(tmp_path / "r"))
    recall = json.loads(store.read_text(store.path(REPORT)))["retrieve"]["recall_vs_exact_float32"]
    assert recall["k"] == 10 and recall["possible"] == 300 and recall["recall"] >= 0.95, recall
