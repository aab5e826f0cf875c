"""Retrieve over compact vectors, without Ray: the sample corpus embedded by the tiny model and searched as int8
and as binary + rescore finds the exact float32 top 10; a scoring task and the merge of its shard (the job's
own functions, on real files) write binary+rescore candidates and their recall against exact float32."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.io.sources import list_shards
from embedrank.quantize import binarize, calibrate, quantize_int8
from embedrank.retrieve.search import Encoding
from embedrank.retrieve.stages import merge_shard, recall_of, score_item, score_partition
from embedrank.retrieve.vectors import plan_search, read_footer
from tests.unit.test_compact_outputs import written_file


def top_rows(queries, blocks, n, k=10, **options) -> list[set]:
    ids = pa.chunked_array([pa.array([f"d{i:06d}" for i in range(n)])])
    distinct, rows, keys, _, _ = score_partition(queries, ids, blocks, top_k=k, query_block=64, device="cpu", **options)
    out = [set() for _ in range(len(queries))]
    for row, key in zip(rows, keys):
        out[row].add(int(distinct[int(key)].as_py()[1:]))
    return out


def exact(queries, docs, k=10) -> list[set]:
    return [set(r) for r in np.argsort(-(queries.astype(np.float64) @ docs.T), axis=1, kind="stable")[:, :k].tolist()]


def recall(found, want) -> float:
    return float(np.mean([len(f & w) / len(w) for f, w in zip(found, want)]))


@pytest.fixture(scope="module")
def sample_vectors(embedder, sample_rows):
    docs = embedder.embed([r["text"] for r in sample_rows])
    queries = embedder.embed([r["title"] or r["text"][:40] for r in sample_rows[:60]], kind="query")
    return docs, queries


def test_the_sample_searched_as_int8_and_as_binary_then_rescored_finds_the_exact_top10(sample_vectors):
    docs, queries = sample_vectors
    n, dim = docs.shape
    want = exact(queries, docs)
    rng = calibrate(docs)
    found = top_rows(queries, iter([quantize_int8(docs, rng)]), n, search=Encoding("int8", dim, rng))
    assert recall(found, want) >= 0.95
    options = dict(search=Encoding("binary", dim), rescore=(Encoding("float32", dim), lambda: iter([docs])))
    found = top_rows(queries, iter([binarize(docs)]), n, rescore_k=100, **options)
    assert recall(found, want) >= 0.95


def test_a_scoring_task_and_its_merge_write_binary_candidates_and_their_recall(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 64))
    docs = centres[rng.integers(0, 40, 3000)] + 0.7 * rng.standard_normal((3000, 64))
    docs = (docs / np.linalg.norm(docs, axis=1, keepdims=True)).astype(np.float32)
    queries = centres[rng.integers(0, 40, 80)] + 0.7 * rng.standard_normal((80, 64))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "queries").mkdir()
    written_file(tmp_path / "corpus", ["binary", "float32"], docs, None)
    written_file(tmp_path / "queries", ["float32"], queries, None)
    corpus = list_shards([str(tmp_path / "corpus" / "part-00000.parquet")], fmt="parquet")
    query = list_shards([str(tmp_path / "queries" / "part-00000.parquet")], fmt="parquet")
    search = plan_search([read_footer(corpus[0])], dim=64, top_k=10, rescore_k=100)
    item = {"queries": [query[0].to_dict()], "corpus": [corpus[0].to_dict()], "partition": 0, "partitions": 1}
    staging = str(tmp_path / "staging")
    metas = score_item(
        item,
        top_k=10,
        query_block=64,
        doc_block=1000,
        device="cpu",
        staging_uri=staging,
        storage_config=None,
        search=search,
    )
    partials = [m["path"] for m in metas if m["kind"] == "data"]
    out = str(tmp_path / "staging" / "candidates.parquet")
    merge_shard(partials, out, query[0].to_dict(), None, 10, staging, None, {"embedrank.top_k": "10"})
    lists = pq.read_table(out)
    found = [{int(c["doc_id"][1:]) for c in row} for row in lists.column("candidates").to_pylist()]
    want = exact(queries, docs)
    counts = json.loads(lists.schema.metadata[b"embedrank.recall"])
    assert counts["possible"] == 800 and counts["hits"] == sum(len(f & w) for f, w in zip(found, want))
    measured = recall_of([out])
    assert measured["recall"] >= 0.95 and measured["recall"] == round(recall(found, want), 4)
