"""`embedrank retrieve` end to end: exact top-k against a brute-force numpy top-k across corpus partitions, the
quality report against qrels, resume after a kill, the Dataset processor, and the four-step pipeline
(embed corpus -> embed queries -> retrieve -> rerank) on the sample with qrels made for it.

Vector outputs are committed through the output store's own API (what the embed job does at the end), so the
fast case needs no model: small-integer vectors give exact scores and many exact ties. The corpus's ids are
integers (int64, ties broken numerically) and the queries' strings: each side keeps its type.
"""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from embedrank.metrics import parse_qrels, rankings_from_rows, score_rankings
from embedrank.runtime.store import REPORT, OutputStore, committed_files

from ..unit.test_retrieve_plan import commit_vectors, vectors_table
from ..unit.test_topk import brute_force, small_integer_vectors
from .conftest import REPO, job_env, run_job

DIM, TOP_K = 8, 10
CORPUS_FILES = (800, 700, 900)  # with retrieve.corpus_rows_per_task 1000: one partition per file
QUERY_FILES = (150, 120)  # with retrieve.queries_per_task 200: one scoring unit per file


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """(root, queries, corpus, doc ids, query ids): a corpus whose documents often have several vectors (chunks),
    some of them in different files, so different partitions."""
    root = tmp_path_factory.mktemp("retrieve")
    rng = np.random.default_rng(7)
    corpus = small_integer_vectors(rng, sum(CORPUS_FILES), DIM)
    doc_ids = [int(i) for i in rng.integers(0, 1500, len(corpus))]  # int64: 9 ties before 10, as numbers
    queries = small_integer_vectors(rng, sum(QUERY_FILES), DIM)
    query_ids = [f"q{i:04d}" for i in range(len(queries))]
    bounds = np.cumsum((0,) + CORPUS_FILES)
    commit_vectors(
        str(root / "corpus"),
        [vectors_table(doc_ids[a:b], corpus[a:b], "document") for a, b in zip(bounds, bounds[1:])],
        root,
    )
    bounds = np.cumsum((0,) + QUERY_FILES)
    commit_vectors(
        str(root / "queries"),
        [
            vectors_table(query_ids[a:b], queries[a:b], "query", [f"query text {q}" for q in query_ids[a:b]])
            for a, b in zip(bounds, bounds[1:])
        ],
        root,
    )
    return root, queries, corpus, doc_ids, query_ids


def retrieve_config(root, output: str, **sections) -> str:
    cfg = {
        "input": {"uri": str(root / "queries")},
        "corpus": {"uri": str(root / "corpus")},
        "output": {"uri": str(root / output), "top_k": TOP_K},
        "retrieve": {
            "corpus_rows_per_task": 1000,
            "queries_per_task": 200,
            "query_block": 64,
            "doc_block": 300,
            "num_cpus": 0.5,
        },
        "ray": {"num_cpus": 2},
        "progress_interval_s": 2,
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path = root / f"{output}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def committed_lists(uri: str) -> dict[str, dict]:
    """query_id -> its committed row (query, candidates), read from the files the commit records name."""
    rows = {}
    for file in committed_files(uri):
        for row in pq.read_table(file).to_pylist():
            assert row["query_id"] not in rows
            rows[row["query_id"]] = row
    return rows


def run_report(uri: str) -> dict:
    store = OutputStore(uri)
    return store.read_json(store.path(REPORT))


def check_equals_brute_force(rows: dict, queries, corpus, doc_ids, query_ids) -> None:
    expected = brute_force(queries, corpus, doc_ids, TOP_K)
    assert sorted(rows) == sorted(query_ids)
    for qid, want in zip(query_ids, expected):
        got = rows[qid]["candidates"]
        assert [(c["doc_id"], c["score"]) for c in got] == want, qid
        assert [c["rank"] for c in got] == list(range(1, TOP_K + 1))


def write_qrels(root, rows_expected, query_ids) -> str:
    """Judgements for 40 queries: a relevant document at several places of the true ranking, and one that no
    ranking holds, in BEIR's TSV form."""
    lines = ["query-id\tcorpus-id\tscore"]
    for i, (qid, ranking) in enumerate(zip(query_ids[:40], rows_expected)):
        lines.append(f"{qid}\t{ranking[i % TOP_K][0]}\t{1 + i % 2}")
        lines.append(f"{qid}\tnot-in-corpus\t1")
        if i % 3 == 0:
            lines.append(f"{qid}\t{ranking[(i + 4) % TOP_K][0]}\t0")  # judged, not relevant
    path = root / "qrels.tsv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_retrieve_equals_brute_force_across_partitions(vectors):
    root, queries, corpus, doc_ids, query_ids = vectors
    qrels = write_qrels(root, brute_force(queries[:40], corpus, doc_ids, TOP_K), query_ids)
    config = retrieve_config(root, "retrieved")
    proc = run_job(config, "--qrels", qrels, command="retrieve", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = committed_lists(str(root / "retrieved"))
    check_equals_brute_force(rows, queries, corpus, doc_ids, query_ids)
    assert rows["q0007"]["query"] == "query text q0007"  # rerank needs the query text
    schema = pq.read_schema(committed_files(str(root / "retrieved"))[0])
    assert schema.field("query_id").type == pa.string()
    assert schema.field("candidates").type.value_type.field("doc_id").type == pa.int64()
    report = run_report(str(root / "retrieved"))
    assert report["retrieve"]["pairs_scored"] == len(queries) * len(corpus)
    assert report["rows"]["read"] == len(queries) and report["shards"]["committed"] == len(QUERY_FILES)
    # The report's quality equals the metrics of the brute-force rankings.
    expected = score_rankings(
        (
            (qid, [str(d) for d, _ in ranking])  # qrels name documents by text
            for qid, ranking in zip(query_ids, brute_force(queries, corpus, doc_ids, TOP_K))
        ),
        parse_qrels(open(qrels), qrels),
    ).averages()
    assert report["quality"]["retrieved"] == expected and expected["queries"] == 40 and expected["mrr@10"] > 0
    assert "retrieved" in proc.stdout and "ndcg@10" in proc.stdout
    again = run_job(config, command="retrieve", timeout=300)  # a finished run: nothing to do, no Ray
    assert again.returncode == 0 and "nothing to retrieve" in again.stdout, again.stdout + again.stderr


@pytest.mark.slow
def test_retrieve_resumes_after_a_kill(vectors):
    root, queries, corpus, doc_ids, query_ids = vectors
    config = retrieve_config(root, "resumed")
    killed = run_job(
        config, command="retrieve", timeout=600, env={"EMBEDRANK_FAULTS": json.dumps({"driver_kill_at": "committed"})}
    )
    assert killed.returncode != 0
    assert len(committed_files(str(root / "resumed"))) == 1  # the first query file committed, the second not
    proc = run_job(config, command="retrieve", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 committed now, 1 already committed" in proc.stdout
    check_equals_brute_force(committed_lists(str(root / "resumed")), queries, corpus, doc_ids, query_ids)


PROCESSOR_SCRIPT = """
import json, sys
import numpy as np, ray, ray.data
from embedrank.retrieve.processor import retrieve_top_k
data = np.load(sys.argv[1], allow_pickle=True)
ray.init(num_cpus=2, include_dashboard=False)
queries = ray.data.from_items([{"id": q, "embedding": v, "text": "t " + q}
                               for q, v in zip(data["query_ids"], data["queries"])], override_num_blocks=3)
corpus = ray.data.from_items([{"id": d, "embedding": v} for d, v in zip(data["doc_ids"], data["corpus"])],
                             override_num_blocks=5)
result = retrieve_top_k(queries, corpus, top_k=int(sys.argv[2]), text_column="text", corpus_partitions=3,
                        doc_block=256)
print(json.dumps(result.take_all(), default=float))
"""


@pytest.mark.slow
def test_processor_on_datasets_equals_brute_force(vectors, tmp_path):
    _, queries, corpus, doc_ids, query_ids = vectors
    data = tmp_path / "vectors.npz"
    np.savez(data, queries=queries, corpus=corpus, doc_ids=np.array(doc_ids), query_ids=np.array(query_ids))
    proc = subprocess.run(
        [sys.executable, "-c", PROCESSOR_SCRIPT, str(data), str(TOP_K)],
        cwd=REPO,
        env=job_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row["query_id"]: row for row in json.loads(proc.stdout.strip().splitlines()[-1])}
    check_equals_brute_force(rows, queries, corpus, doc_ids, query_ids)
    assert rows["q0003"]["query"] == "t q0003"


@pytest.mark.slow
def test_four_steps_on_the_sample_with_qrels(tmp_path, tiny_embedding_dir, tiny_reranker_dir):
    """embed corpus -> embed queries -> retrieve --qrels -> rerank --qrels, with the shipped sample qrels (each
    sample query is the text of one corpus document: that document is its relevant one)."""
    data = REPO / "src" / "embedrank" / "data"
    small = {"ray": {"num_cpus": 2}, "progress_interval_s": 5}

    def config(name: str, cfg: dict) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**small, **cfg}))
        return path

    model = {"source": str(tiny_embedding_dir), "max_length": 128}
    steps = [
        (
            "embed",
            config(
                "corpus",
                {
                    "input": {"uri": str(data / "sample_corpus.jsonl")},
                    "output": {"uri": str(tmp_path / "corpus")},
                    "model": model,
                },
            ),
            [],
        ),
        (
            "embed",
            config(
                "queries",
                {
                    "input": {
                        "uri": str(data / "sample_candidates.jsonl"),
                        "id_column": "query_id",
                        "text_column": "query",
                        "kind": "query",
                        "passthrough": ["query"],
                    },
                    "output": {"uri": str(tmp_path / "queries")},
                    "model": model,
                },
            ),
            [],
        ),
        (
            "retrieve",
            config(
                "retrieve",
                {
                    "input": {"uri": str(tmp_path / "queries"), "text_column": "query"},
                    "corpus": {"uri": str(tmp_path / "corpus")},
                    "output": {"uri": str(tmp_path / "retrieved"), "top_k": 20},
                    "retrieve": {"corpus_rows_per_task": 120},
                },
            ),
            ["--qrels", str(data / "sample_qrels.tsv")],
        ),
        (
            "rerank",
            config(
                "rerank",
                {
                    "input": {"uri": str(tmp_path / "retrieved")},
                    "corpus": {"uri": str(data / "sample_corpus.jsonl")},
                    "output": {"uri": str(tmp_path / "reranked"), "top_k": 10},
                    "model": {"source": str(tiny_reranker_dir), "max_length": 256},
                },
            ),
            ["--qrels", str(data / "sample_qrels.tsv")],
        ),
    ]
    for command, path, args in steps:
        proc = run_job(path, *args, command=command, timeout=900)
        assert proc.returncode == 0, f"{command}: " + proc.stdout[-3000:] + proc.stderr[-3000:]
    qrels = parse_qrels(open(data / "sample_qrels.tsv"), "sample")
    assert len(qrels) == 30
    retrieved, reranked = run_report(str(tmp_path / "retrieved")), run_report(str(tmp_path / "reranked"))

    def quality(uri: str, **columns) -> dict:
        rows = [row for file in committed_files(uri) for row in pq.read_table(file).to_pylist()]
        return score_rankings(rankings_from_rows(rows, **columns), qrels).averages()

    assert retrieved["quality"]["retrieved"] == quality(str(tmp_path / "retrieved"))
    assert reranked["quality"]["before_rerank"] == retrieved["quality"]["retrieved"]  # rerank read those lists
    assert reranked["quality"]["after_rerank"] == quality(str(tmp_path / "reranked"), rank_column="rank")
    assert reranked["quality"]["after_rerank"]["queries"] == 30
    assert reranked["rows"]["read"] == 30 and reranked["rows"]["rejected"] == 0


@pytest.mark.slow
def test_four_steps_in_one_run_config(tmp_path, tiny_embedding_dir, tiny_reranker_dir):
    """The same pipeline as one `embedrank run` config: the embeds first, then retrieve, then rerank. The
    documents' ids are integers: int64 from the embed's vectors through retrieve's candidates to rerank's scores."""
    docs = [{"id": i, "text": f"document number {i} about topic {i % 7}"} for i in range(60)]
    queries = [{"id": f"q{i}", "text": docs[i * 9]["text"]} for i in range(6)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels.tsv").write_text("".join(f"{q['id']}\t{i * 9}\t1\n" for i, q in enumerate(queries)))
    half = {"num_cpus": 0.5}
    model = {"source": str(tiny_embedding_dir), "max_length": 64}
    config = tmp_path / "four.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "ray": {"num_cpus": 2},
                "embed_job": {
                    "input": {"uri": str(tmp_path / "docs.jsonl")},
                    "output": {"uri": str(tmp_path / "corpus")},
                    "model": model,
                    "embed": half,
                    "prepare": half,
                },
                "query_embed_job": {
                    "input": {"uri": str(tmp_path / "queries.jsonl"), "kind": "query", "passthrough": ["text"]},
                    "output": {"uri": str(tmp_path / "queries")},
                    "model": model,
                    "embed": half,
                    "prepare": half,
                },
                "retrieve_job": {
                    "input": {"uri": str(tmp_path / "queries")},
                    "corpus": {"uri": str(tmp_path / "corpus")},
                    "output": {"uri": str(tmp_path / "retrieved"), "top_k": 8},
                    "qrels": str(tmp_path / "qrels.tsv"),
                },
                "rerank_job": {
                    "input": {"uri": str(tmp_path / "retrieved")},
                    "corpus": {"uri": str(tmp_path / "docs.jsonl")},
                    "output": {"uri": str(tmp_path / "reranked"), "top_k": 3},
                    "qrels": str(tmp_path / "qrels.tsv"),
                    "model": {"source": str(tiny_reranker_dir), "max_length": 128},
                    "rerank": half,
                    "prepare": half,
                },
            }
        )
    )
    proc = run_job(config, command="run", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for label in ("[embed]", "[embed-queries]", "[retrieve]", "[rerank]"):
        assert label in proc.stdout
    reranked = run_report(str(tmp_path / "reranked"))
    assert reranked["rows"]["read"] == 6 and reranked["quality"]["after_rerank"]["queries"] == 6
    assert reranked["quality"]["before_rerank"] == run_report(str(tmp_path / "retrieved"))["quality"]["retrieved"]
    ranked = [row for file in committed_files(str(tmp_path / "reranked")) for row in pq.read_table(file).to_pylist()]
    assert len(ranked) == 18 and {r["query_id"] for r in ranked} == {q["id"] for q in queries}
    types = {
        name: pq.read_schema(committed_files(str(tmp_path / name))[0])
        for name in ("corpus", "queries", "retrieved", "reranked")
    }
    assert types["corpus"].field("id").type == pa.int64() and types["queries"].field("id").type == pa.string()
    assert types["retrieved"].field("candidates").type.value_type.field("doc_id").type == pa.int64()
    assert (types["reranked"].field("doc_id").type, types["reranked"].field("query_id").type) == (
        pa.int64(),
        pa.string(),
    )
