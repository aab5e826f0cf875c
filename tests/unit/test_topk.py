"""Retrieve's exact top-k (retrieve/topk.py, candidates.py, stages.score_partition) against a brute-force numpy
top-k: ties broken by doc id, a document with several vectors scored by its best one, across partitions."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from embedrank.errors import PlanError
from embedrank.retrieve.candidates import candidate_lists, merge_partials, partial_table
from embedrank.retrieve.stages import score_partition
from embedrank.retrieve.topk import PAD_KEY, DocBlock, RunningTopK, block_topk, merge_topk
from embedrank.retrieve.vectors import embedding_matrix, id_keys, partition_files


def brute_force(queries: np.ndarray, docs: np.ndarray, doc_ids: list[str], k: int) -> list[list[tuple[str, float]]]:
    """Every score in float64, a document's best vector, then (score descending, doc id ascending), best k."""
    distinct = sorted(set(doc_ids))
    column = np.searchsorted(np.array(distinct), np.array(doc_ids))
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    best = np.full((len(queries), len(distinct)), -np.inf)
    for j, c in enumerate(column):
        best[:, c] = np.maximum(best[:, c], scores[:, j])
    order = np.argsort(-best, axis=1, kind="stable")[:, :k]  # stable: equal scores stay in doc id order
    return [[(distinct[c], float(best[i, c])) for c in row] for i, row in enumerate(order)]


def small_integer_vectors(rng, rows: int, dim: int) -> np.ndarray:
    """Vectors whose inner products are exact in float32 in any summation order: lots of exact ties, and the
    same scores on any device and in numpy."""
    return rng.integers(-2, 3, (rows, dim)).astype(np.float32)


def by_query(rows, keys, scores, distinct: pa.Array, n: int) -> list[list[tuple[str, float]]]:
    out = [[] for _ in range(n)]
    for row, key, score in zip(rows, keys, scores):
        out[row].append((distinct[int(key)].as_py(), float(score)))
    return out


def test_block_topk_breaks_ties_by_the_lower_column():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 4.0, 3.0, 2.0, 1.0]])
    values, columns = block_topk(scores, 2)
    assert columns.tolist() == [[1, 2], [0, 1], [0, 1]]
    assert values.tolist() == [[3.0, 3.0], [0.0, 0.0], [5.0, 4.0]]
    values, columns = block_topk(scores, 9)  # k beyond the columns: every column, in order
    assert columns.tolist() == [[1, 2, 4, 3, 0], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


def test_merge_topk_keeps_a_document_once_with_its_best_score():
    values, keys = merge_topk(
        torch.tensor([[0.9, 0.5]]),
        torch.tensor([[7, 3]]),
        torch.tensor([[0.7, 0.5, 0.1]]),
        torch.tensor([[3, 2, 7]]),
        4,
    )
    assert keys.tolist() == [[7, 3, 2, PAD_KEY]]
    assert values[0, :3].tolist() == pytest.approx([0.9, 0.7, 0.5])
    assert values[0, 3] == float("-inf")


@pytest.mark.parametrize("chunks", [True, False], ids=["chunks", "one-vector-per-document"])
def test_running_topk_over_blocks_equals_brute_force(chunks):
    rng = np.random.default_rng(0)
    queries, docs = small_integer_vectors(rng, 300, 6), small_integer_vectors(rng, 3000, 6)
    # With chunks: 3,000 vectors of ~1,900 documents, many with several vectors, in different blocks.
    numbers = rng.integers(0, 1900, 3000) if chunks else rng.permutation(3000)
    doc_ids = [f"d{i:05d}" for i in numbers]
    distinct, keys = id_keys(pa.array(doc_ids))
    assert (len(distinct) < len(doc_ids)) == chunks
    running = RunningTopK(torch.from_numpy(queries), 12, query_block=64, distinct=not chunks)
    for start in range(0, 3000, 700):  # blocks that do not divide the corpus
        running.add(DocBlock.build(docs[start : start + 700], keys[start : start + 700], "cpu"))
    assert by_query(*running.result(), distinct, 300) == brute_force(queries, docs, doc_ids, 12)
    assert running.pairs_scored == 300 * 3000


def test_top_k_across_partitions_equals_brute_force():
    """The corpus cut into partitions, each scored on its own, then merged: the same as one brute-force top-k."""
    rng = np.random.default_rng(1)
    queries, docs = small_integer_vectors(rng, 250, 8), small_integer_vectors(rng, 4000, 8)
    doc_ids = [f"doc-{i}" for i in rng.integers(0, 3200, 4000)]  # string order is not numeric order here
    query_ids = pa.array([f"q{i:03d}" for i in range(250)])
    partials = []
    for start, end in ((0, 1100), (1100, 1150), (1150, 2900), (2900, 4000)):
        blocks = (docs[s : min(s + 512, end)] for s in range(start, end, 512))
        distinct, rows, keys, scores, pairs = score_partition(
            queries, pa.chunked_array([pa.array(doc_ids[start:end])]), blocks, top_k=10, query_block=100, device="cpu"
        )
        assert pairs == 250 * (end - start)
        partials.append(partial_table(query_ids, rows, distinct, keys, scores))
    lists = candidate_lists(merge_partials(partials, 10), query_ids).to_pylist()
    expected = brute_force(queries, docs, doc_ids, 10)
    assert [row["query_id"] for row in lists] == query_ids.to_pylist()
    for row, want in zip(lists, expected):
        assert [(c["doc_id"], c["score"]) for c in row["candidates"]] == want
        assert [c["rank"] for c in row["candidates"]] == list(range(1, 11))


def test_float_vectors_match_numpy_up_to_near_ties():
    """Unit vectors as the embed job writes them: float32 products differ from numpy's in the last bits, so
    only places whose scores are apart by more than that must hold the same document."""
    rng = np.random.default_rng(2)
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    docs = rng.standard_normal((2000, 32)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    doc_ids = [f"d{i:05d}" for i in range(2000)]
    distinct, keys = id_keys(pa.array(doc_ids))
    running = RunningTopK(torch.from_numpy(queries), 20, query_block=16)
    running.add(DocBlock.build(docs, keys, "cpu"))
    got = by_query(*running.result(), distinct, 64)
    for mine, want in zip(got, brute_force(queries, docs, doc_ids, 20)):
        assert [s for _, s in mine] == pytest.approx([s for _, s in want], abs=1e-5)
        for place, ((doc, _), (other, score)) in enumerate(zip(mine, want)):
            gaps = [abs(score - s) for _, s in want[max(place - 1, 0) : place + 2] if _ != other]
            if min(gaps, default=1.0) > 1e-5:
                assert doc == other


def test_candidate_lists_follow_the_query_file_and_keep_queries_without_candidates():
    merged = merge_partials(
        [
            pa.table(
                {
                    "query_id": ["b", "a", "b", "a"],
                    "doc_id": ["x", "y", "y", "x"],
                    "score": pa.array([1.0, 2.0, 1.0, 2.0], pa.float32()),
                }
            )
        ],
        5,
    )
    lists = candidate_lists(merged, pa.array(["b", "zz", "a"]), pa.array(["text b", "text zz", "text a"]))
    assert lists.column_names == ["query_id", "query", "candidates"]
    rows = lists.to_pylist()
    assert [r["query_id"] for r in rows] == ["b", "zz", "a"]
    assert [[c["doc_id"] for c in r["candidates"]] for r in rows] == [["x", "y"], [], ["x", "y"]]  # ties: doc id
    assert rows[0]["query"] == "text b"


def test_embedding_matrix_refuses_what_would_corrupt_a_ranking():
    fixed = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 0.0, float("nan"), 1.0], pa.float32()), 2)
    with pytest.raises(PlanError, match="row 1 holds a NaN"):
        embedding_matrix(fixed, "f.parquet")
    with pytest.raises(PlanError, match="different lengths"):
        embedding_matrix(pa.array([[1.0, 2.0], [1.0]]), "f.parquet")
    with pytest.raises(PlanError, match="1 rows have no vector"):
        embedding_matrix(pa.array([[1.0, 2.0], None]), "f.parquet")
    assert embedding_matrix(pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float16())), "f").dtype == np.float32


def test_corpus_partitions_are_whole_files_up_to_the_row_limit():
    class File:
        def __init__(self, rows):
            self.rows = rows

    files = [File(n) for n in (400, 500, 200, 1500, 100)]
    assert [[f.rows for f in p] for p in partition_files(files, 1000)] == [[400, 500], [200], [1500], [100]]


def test_int64_ids_keep_their_type_and_break_ties_numerically():
    """Integer doc ids (int64 end to end): partials, merge and lists keep int64, and ties go to the numerically
    smaller id, which here often differs from the text order (9 < 10 < 100, but "10" < "100" < "9")."""
    rng = np.random.default_rng(3)
    queries, docs = small_integer_vectors(rng, 120, 4), small_integer_vectors(rng, 1500, 4)
    doc_ids = [int(i) for i in rng.integers(0, 1200, 1500)]
    query_ids = pa.array(np.arange(1000, 1120), pa.int64())
    partials = []
    for start, end in ((0, 700), (700, 1500)):
        blocks = (docs[s : min(s + 256, end)] for s in range(start, end, 256))
        ids = pa.chunked_array([pa.array(doc_ids[start:end], pa.int64())])
        distinct, rows, keys, scores, _ = score_partition(queries, ids, blocks, top_k=8, query_block=50, device="cpu")
        partial = partial_table(query_ids, rows, distinct, keys, scores)
        assert partial.schema.field("doc_id").type == pa.int64() == partial.schema.field("query_id").type
        partials.append(partial)
    lists = candidate_lists(merge_partials(partials, 8), query_ids)
    assert lists.schema.field("query_id").type == pa.int64()
    assert lists.schema.field("candidates").type.value_type.field("doc_id").type == pa.int64()
    expected = brute_force(queries, docs, doc_ids, 8)  # sorted(set(ints)): numeric tie order
    as_text = brute_force(queries, docs, [str(d) for d in doc_ids], 8)
    assert any([d for d, _ in want] != [int(d) for d, _ in text] for want, text in zip(expected, as_text))
    for row, want in zip(lists.to_pylist(), expected):
        assert [(c["doc_id"], c["score"]) for c in row["candidates"]] == want


def test_partials_whose_ids_disagree_are_not_merged():
    ints = pa.table({"query_id": ["q"], "doc_id": pa.array([7], pa.int64()), "score": pa.array([1.0], pa.float32())})
    text = pa.table({"query_id": ["q"], "doc_id": ["7"], "score": pa.array([0.5], pa.float32())})
    with pytest.raises(ValueError, match="int64 and string doc_id values cannot be merged"):
        merge_partials([ints, text], 5)


def test_the_dataset_processor_keeps_id_types_block_by_block():
    """retrieve_top_k's tasks (run here as functions): integer id columns give int64 ids, id_type="string" text,
    and corpus blocks that disagree are refused rather than compared."""
    from embedrank.retrieve.processor import merge_block, score_block

    rng = np.random.default_rng(4)
    docs, queries = small_integer_vectors(rng, 300, 4), small_integer_vectors(rng, 20, 4)

    def table(ids, vectors):
        return pa.table({"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 4)})

    corpus = [table(pa.array(range(0, 150), pa.int32()), docs[:150]), table(pa.array(range(150, 300)), docs[150:])]
    query_table = table(pa.array([f"q{i}" for i in range(20)]), queries)
    options = dict(top_k=5, id_column="id", embedding_column="embedding", query_block=8, doc_block=64, use_gpu=False)
    for id_type, kind in (("auto", pa.int64()), ("string", pa.string())):
        partial = score_block(query_table, *corpus, id_type=id_type, **options)
        lists = merge_block(query_table, partial, top_k=5, id_column="id", text_column=None, id_type=id_type)
        assert lists.schema.field("candidates").type.value_type.field("doc_id").type == kind
        assert lists.schema.field("query_id").type == pa.string()
        ids = list(range(300)) if kind == pa.int64() else [str(i) for i in range(300)]  # ties: 9 < 10 vs "10" < "9"
        got = [[(c["doc_id"], c["score"]) for c in row["candidates"]] for row in lists.to_pylist()]
        assert got == brute_force(queries, docs, ids, 5)
    mixed = [corpus[0], table(pa.array([f"d{i}" for i in range(150)]), docs[150:])]
    with pytest.raises(ValueError, match="integers in some blocks and strings in others.*id_type='string'"):
        score_block(query_table, *mixed, **options)
