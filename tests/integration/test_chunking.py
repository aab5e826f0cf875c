"""long_docs: chunk - one vector per window, offsets that match the token lengths, no window exceeded."""

import json

import numpy as np
import pyarrow as pa
import pytest

from embedrank import Qwen3Embedder
from embedrank.embed.prepare import chunk_spans
from embedrank.verify import row_cosines

from .conftest import read_output, run_job

WINDOW, OVERLAP = 64, 16


def test_chunk_spans_cover_the_text():
    for n in (1, 62, 63, 64, 200, 1000):
        spans = chunk_spans(n, WINDOW, OVERLAP)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(end - start <= WINDOW - 1 for start, end in spans)
        assert all(b[0] == a[1] - OVERLAP for a, b in zip(spans, spans[1:]))


def test_chunk_mode_end_to_end(tmp_path, sample_rows, job_config, tiny_embedding_dir):
    # Integer ids: written as int64, and each chunk gets the key "{id}#{chunk_index}".
    rows = [{"id": 1000 + i, "text": r["text"][:3000]} for i, r in enumerate(sample_rows[:40])]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = job_config(
        str(tmp_path / "in"), str(tmp_path / "out"), long_docs={"mode": "chunk", "window": WINDOW, "overlap": OVERLAP}
    )
    proc = run_job(config)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = read_output(None, str(tmp_path / "out"))
    assert table.schema.field("id").type == pa.int64()
    out = table.to_pylist()
    keys = [row["chunk_id"] for row in out]
    assert keys == [f"{row['id']}#{row['chunk_index']}" for row in out] and len(set(keys)) == len(keys)

    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=512)
    tok = emb.text_tokenizer.tokenizer
    by_id = {}
    for row in out:
        by_id.setdefault(row["id"], []).append(row)
    assert set(by_id) == {r["id"] for r in rows}
    for source in rows:
        ids = tok(source["text"], add_special_tokens=False)["input_ids"]
        chunks = sorted(by_id[source["id"]], key=lambda r: r["chunk_index"])
        spans = chunk_spans(len(ids), WINDOW, OVERLAP)
        assert [(c["chunk_start"], c["chunk_end"]) for c in chunks] == spans
        assert [c["chunk_index"] for c in chunks] == list(range(len(spans)))
        assert all(c["n_tokens"] == c["chunk_end"] - c["chunk_start"] + 1 <= WINDOW for c in chunks)
        seqs = [np.append(ids[s:e], 151643) for s, e in spans]
        want = emb.embed_tokens(seqs)
        got = np.asarray([c["embedding"] for c in chunks], dtype=np.float32)
        assert row_cosines(got, want).min() >= 0.99999
    assert sum(len(v) for v in by_id.values()) > len(rows), "the sample must contain multi-chunk documents"


def test_chunking_queries_is_refused(tmp_path):
    from embedrank.api import run_embed
    from embedrank.config import ConfigError, load_config

    (tmp_path / "q.jsonl").write_text('{"id": "a", "text": "x"}\n')
    cfg = load_config(
        None,
        [
            f"input.uri={tmp_path / 'q.jsonl'}",
            f"output.uri={tmp_path / 'out'}",
            "input.kind=query",
            "long_docs.mode=chunk",
        ],
    )
    with pytest.raises(ConfigError, match="use truncate for input.kind query"):
        run_embed(cfg, log=lambda _: None)
