"""embed_job and rerank_job sections of one config run in one Ray job, each with its own actor pool."""

import json

import yaml

from .conftest import read_output, run_job


def test_embed_and_rerank_in_one_job(tmp_path, tiny_embedding_dir, tiny_reranker_dir):
    docs = [{"id": f"d{i}", "text": f"document number {i} about topic {i % 5}"} for i in range(60)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    lists = [
        {"query_id": f"q{i}", "query": f"topic {i}", "candidates": [{"doc_id": f"d{i * 4 + j}"} for j in range(4)]}
        for i in range(5)
    ]
    (tmp_path / "lists.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lists))
    config = tmp_path / "both.yaml"
    half = {"num_cpus": 0.5}
    config.write_text(
        yaml.safe_dump(
            {
                "ray": {"num_cpus": 2},
                "embed_job": {
                    "input": {"uri": str(tmp_path / "docs.jsonl")},
                    "output": {"uri": str(tmp_path / "emb")},
                    "model": {"source": str(tiny_embedding_dir), "max_length": 128},
                    "embed": half,
                    "prepare": half,
                },
                "rerank_job": {
                    "input": {"uri": str(tmp_path / "lists.jsonl")},
                    "output": {"uri": str(tmp_path / "rr")},
                    "corpus": {"uri": str(tmp_path / "docs.jsonl")},
                    "model": {"source": str(tiny_reranker_dir), "max_length": 128},
                    "rerank": half,
                    "prepare": half,
                },
            }
        )
    )
    proc = run_job(config, command="run")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[embed]" in proc.stdout and "[rerank]" in proc.stdout
    assert sorted(read_output(None, str(tmp_path / "emb")).column("id").to_pylist()) == sorted(d["id"] for d in docs)
    ranked = read_output(None, str(tmp_path / "rr"))
    assert ranked.num_rows == 20 and sorted(set(ranked.column("rank").to_pylist())) == [1, 2, 3, 4]
