"""The rerank job end to end: both input forms, doc-id-only candidates joined from a corpus, ranks, top_k, resume.

Ids keep their type: the candidate lists carry integer doc ids (int64 in, int64 out, joined with a corpus whose
ids are JSON integers) and string query ids; the flat pairs carry the same doc ids as strings (string out).
"""

import io
import json
import random
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.models.reranker import Qwen3Reranker

from .conftest import kill_job, read_output, run_job, start_job

N_QUERIES, N_CANDIDATES = 60, 20
NOT_IN_CORPUS = 1  # corpus ids are multiples of 7


@pytest.fixture(scope="module")
def rerank_data(s3, sample_rows):
    rng = random.Random(3)
    docs = {7 * i: r["text"][:400] for i, r in enumerate(sample_rows)}  # int ids: 14 < 105 as numbers only
    s3.pipe_file(
        "corpus/rr-corpus/docs.jsonl",
        "".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()).encode(),
    )
    short = [r["text"][:100] for r in sample_rows if len(r["text"]) < 250]
    queries = {f"q{i:03d}": short[i % len(short)] for i in range(N_QUERIES)}
    queries["q007"] = "   "  # every candidate of this query is dead-lettered as empty_query
    lists = []
    for qid, query in queries.items():
        ids = rng.sample(sorted(docs), N_CANDIDATES)
        # Half the candidates carry their text, the others only a doc_id (resolved from the corpus).
        candidates = [{"doc_id": d, "text": docs[d] if j % 2 else None} for j, d in enumerate(ids)]
        lists.append({"query_id": qid, "query": query, "candidates": candidates})
    lists[3]["candidates"][0] = {"doc_id": NOT_IN_CORPUS, "text": None}
    for s in range(3):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(lists[s * 20 : (s + 1) * 20]), buf)
        s3.pipe_file(f"corpus/rr-lists/part-{s}.parquet", buf.getvalue())
    pairs = [
        {
            "query_id": row["query_id"],
            "query": row["query"],
            "doc_id": str(c["doc_id"]),  # the flat pairs name documents by text
            "document": c["text"] if c["text"] is not None else docs.get(c["doc_id"], "fallback text"),
        }
        for row in lists
        for c in row["candidates"]
    ]
    for files, prefix in ((2, "rr-pairs"), (6, "rr-pairs6")):  # a query's pairs always stay in one file
        for s in range(files):
            part = pairs[s * len(pairs) // files : (s + 1) * len(pairs) // files]
            s3.pipe_file(f"corpus/{prefix}/part-{s}.jsonl", "".join(json.dumps(p) + "\n" for p in part).encode())
    return docs, queries, lists, pairs


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    return Qwen3Reranker.from_pretrained(tiny_reranker_dir, max_length=512)


def rerank_config(job_config, tiny_reranker_dir, input_uri, output_uri, **sections):
    path = job_config(input_uri, output_uri, **sections)
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg["model"]["source"] = str(tiny_reranker_dir)
    cfg["rerank"] = cfg.pop("embed")
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_rerank(config, *args, **kwargs):
    return run_job(config, *args, command="rerank", **kwargs)


def check_ranks(table: pa.Table, top_k=None) -> dict:
    by_query: dict = {}
    for row in table.to_pylist():
        by_query.setdefault(row["query_id"], []).append(row)
    for rows in by_query.values():
        rows.sort(key=lambda r: r["rank"])
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        assert all((a["score"], b["doc_id"]) >= (b["score"], a["doc_id"]) for a, b in zip(rows, rows[1:]))
        if top_k:
            assert len(rows) <= top_k
    return by_query


@pytest.fixture(scope="module")
def lists_run(rerank_data, s3, job_config_module, tiny_reranker_dir):
    config = rerank_config(
        job_config_module,
        tiny_reranker_dir,
        "s3://corpus/rr-lists/",
        "s3://corpus/rr-out-lists/",
        corpus={"uri": "s3://corpus/rr-corpus/"},
    )
    proc = run_rerank(config, "--verbose")  # --verbose: Ray Data prints its execution plan
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Tokenising runs in CPU tasks, never fused into the reranker's actors.
    assert "ActorPoolMapOperator[MapBatches(RerankActor)]" in proc.stdout + proc.stderr
    return read_output(s3, "s3://corpus/rr-out-lists/"), read_output(s3, "s3://corpus/rr-out-lists", "rejected"), config


def test_candidate_lists_with_corpus_join(lists_run, rerank_data, reranker):
    docs, queries, lists, _ = rerank_data
    out, rejected, _ = lists_run
    # int64 doc ids in (the lists' Parquet column) and out; dead letters show every id as text.
    assert (out.schema.field("query_id").type, out.schema.field("doc_id").type) == (pa.string(), pa.int64())
    assert rejected.schema.field("doc_id").type == pa.string()
    wanted = {(row["query_id"], c["doc_id"]) for row in lists for c in row["candidates"]}
    got = list(zip(out.column("query_id").to_pylist(), out.column("doc_id").to_pylist()))
    dead = [(q, int(d)) for q, d in zip(rejected.column("query_id").to_pylist(), rejected.column("doc_id").to_pylist())]
    assert len(got) + len(dead) == len(wanted) == N_QUERIES * N_CANDIDATES
    assert set(got) | set(dead) == wanted and not set(got) & set(dead) and len(set(got)) == len(got)
    reasons = dict(zip(dead, rejected.column("reason").to_pylist()))
    assert reasons[("q003", NOT_IN_CORPUS)] == "missing_document"
    assert sum(1 for (q, _), r in reasons.items() if q == "q007" and r == "empty_query") == N_CANDIDATES
    check_ranks(out)
    # Scores are the reranker's for the right text (from the list or from the corpus).
    sample = out.to_pylist()[::37]
    want = reranker.score([queries[r["query_id"]] for r in sample], [docs[r["doc_id"]] for r in sample])
    assert np.abs(np.asarray([r["score"] for r in sample]) - want).max() <= 1e-5


def test_flat_pairs_with_top_k(rerank_data, s3, job_config_module, tiny_reranker_dir, lists_run):
    config = rerank_config(
        job_config_module, tiny_reranker_dir, "s3://corpus/rr-pairs/", "s3://corpus/rr-out-pairs/", output={"top_k": 5}
    )
    proc = run_rerank(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = read_output(s3, "s3://corpus/rr-out-pairs/")
    assert out.schema.field("doc_id").type == pa.string()  # the pairs' doc ids are strings
    by_query = check_ranks(out, top_k=5)
    assert len(by_query) == N_QUERIES - 1  # q007 has an empty query
    s3.invalidate_cache()
    report = json.loads(s3.cat_file("corpus/rr-out-pairs/_embedrank/report.json"))
    assert report["rows"]["below_top_k"] == report["rows"]["scored"] - out.num_rows > 0
    # The same pairs score the same whichever input form carried them.
    full = {(r["query_id"], str(r["doc_id"])): r["score"] for r in lists_run[0].to_pylist()}
    for row in out.to_pylist():
        if (row["query_id"], row["doc_id"]) in full:
            assert abs(row["score"] - full[(row["query_id"], row["doc_id"])]) <= 1e-6


# Slow: test_reliability's run killed midway is the CI case of a killed, resumed run.
@pytest.mark.slow
def test_rerank_resume_after_kill(lists_run, s3, job_config_module, tiny_reranker_dir, tmp_path):
    full, _, _ = lists_run
    config = rerank_config(
        job_config_module,
        tiny_reranker_dir,
        "s3://corpus/rr-pairs6/",
        "s3://corpus/rr-out-resume/",
        rerank={"batch_size": 64},
    )
    slow = {"EMBEDRANK_FAULTS": json.dumps({"rerank_sleep_s": 0.3})}
    proc = start_job(config, command="rerank", env=slow, log=tmp_path / "killed.log")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        s3.invalidate_cache()
        if s3.exists("corpus/rr-out-resume/_embedrank/commits") and s3.ls("corpus/rr-out-resume/_embedrank/commits"):
            break
        time.sleep(0.2)
    kill_job(proc)
    s3.invalidate_cache()
    committed = (
        s3.ls("corpus/rr-out-resume/_embedrank/commits") if s3.exists("corpus/rr-out-resume/_embedrank/commits") else []
    )
    assert 1 <= len(committed) < 6, (len(committed), (tmp_path / "killed.log").read_text()[-2000:])
    rerun = run_rerank(config)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    resumed = read_output(s3, "s3://corpus/rr-out-resume/")

    # The same pairs and ranks as the candidate-list run (q003 differs: there one candidate had no text).
    def ranks(t):
        columns = (t.column("query_id").to_pylist(), t.column("doc_id").to_pylist(), t.column("rank").to_pylist())
        return {(q, str(d)): r for q, d, r in zip(*columns) if q != "q003"}  # the lists' int ids, the pairs' text

    assert ranks(resumed) == ranks(full)
    pairs = list(zip(resumed.column("query_id").to_pylist(), resumed.column("doc_id").to_pylist()))
    assert len(pairs) == len(set(pairs))
    again = run_rerank(config)
    assert again.returncode == 0 and "nothing to score" in again.stdout


@pytest.mark.slow
def test_a_cut_pairs_file_is_skipped_when_configured(rerank_data, s3, job_config_module, tiny_reranker_dir):
    """input.on_bad_shard: skip in rerank: the cut file is not committed and is listed; the others are scored."""
    import gzip

    pairs = rerank_data[3]
    for s in range(6):
        body = s3.cat_file(f"corpus/rr-pairs6/part-{s}.jsonl")
        if s == 4:
            packed = gzip.compress(body)
            s3.pipe_file("corpus/rr-skip/part-4.jsonl.gz", packed[: len(packed) * 9 // 10])
        else:
            s3.pipe_file(f"corpus/rr-skip/part-{s}.jsonl", body)
    config = rerank_config(
        job_config_module,
        tiny_reranker_dir,
        "s3://corpus/rr-skip/",
        "s3://corpus/rr-out-skip/",
        input={"on_bad_shard": "skip"},
    )
    proc = run_rerank(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s3.invalidate_cache()
    report = json.loads(s3.cat_file("corpus/rr-out-skip/_embedrank/report.json"))
    assert report["shards"]["bad_skipped"] == 1 and report["shards"]["committed"] == 5
    assert report["bad_shards"][0]["shard"] == "s3://corpus/rr-skip/part-4.jsonl.gz"
    out = read_output(s3, "s3://corpus/rr-out-skip/")
    rejected = read_output(s3, "s3://corpus/rr-out-skip", "rejected")
    got = list(zip(out.column("query_id").to_pylist(), out.column("doc_id").to_pylist()))
    got += list(zip(rejected.column("query_id").to_pylist(), rejected.column("doc_id").to_pylist()))
    cut = len(pairs) * 4 // 6, len(pairs) * 5 // 6
    wanted = [(p["query_id"], p["doc_id"]) for i, p in enumerate(pairs) if not cut[0] <= i < cut[1]]
    assert sorted(got) == sorted(wanted)


@pytest.mark.reliability
@pytest.mark.slow
def test_a_pair_that_kills_the_reranker_is_dead_lettered(
    rerank_data, s3, job_config_module, tiny_reranker_dir, reranker
):
    from collections import Counter

    from .reliability import record

    _, queries, _, pairs = rerank_data
    counts = Counter(p["doc_id"] for p in pairs if p["query_id"] != "q007")
    poison = min(d for d, n in counts.items() if n == 1)  # one pair reaches the model with this document
    config = rerank_config(
        job_config_module,
        tiny_reranker_dir,
        "s3://corpus/rr-pairs/",
        "s3://corpus/rr-out-poison/",
        rerank={"batch_size": 64},
    )
    proc = run_rerank(config, env={"EMBEDRANK_FAULTS": json.dumps({"poison_ids": [poison]})})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = read_output(s3, "s3://corpus/rr-out-poison/")
    dead = read_output(s3, "s3://corpus/rr-out-poison", "rejected").to_pylist()
    got = list(zip(out.column("query_id").to_pylist(), out.column("doc_id").to_pylist()))
    dead_pairs = {(r["query_id"], r["doc_id"]) for r in dead}
    crashed = [(r["query_id"], r["doc_id"]) for r in dead if r["reason"] == "worker_crash"]
    assert [d for _, d in crashed] == [poison] and crashed[0] not in got
    documents = {(p["query_id"], p["doc_id"]): p["document"] for p in pairs}
    lost = set(documents) - set(got) - dead_pairs
    assert len(got) == len(set(got)) and not lost and not set(got) & dead_pairs
    sample = out.to_pylist()[::53]
    want = reranker.score(
        [queries[r["query_id"]] for r in sample], [documents[r["query_id"], r["doc_id"]] for r in sample]
    )
    assert np.abs(np.asarray([r["score"] for r in sample]) - want).max() <= 1e-5
    record(
        "a (query, document) pair that kills the reranker every time",
        1,
        {
            "rows_in": len(pairs),
            "rows_out": len(got),
            "lost": len(lost),
            "duplicated": len(got) - len(set(got)),
            "rejected": dict(sorted(Counter(r["reason"] for r in dead).items())),
        },
    )
