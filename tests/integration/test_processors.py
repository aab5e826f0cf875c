"""The processors inside a user's own Ray Data pipeline: one local Ray (2 CPUs) for the module, the tiny models.

Two pipelines run end to end, each through the embedder and then the reranker: `from_items` rows with bad
texts and columns of odd types, composed with filter and map_batches before and after; and Parquet files.
Every vector and score is compared with Qwen3Embedder / Qwen3Reranker run in this process, in fp32.
"""

import datetime
import logging
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.data import EmbedConfig, RerankConfig, build_embedder, build_reranker
from embedrank.data.columns import TOKENS
from embedrank.errors import PlanError, first_line, user_error_in
from embedrank.models.embedder import Qwen3Embedder
from embedrank.models.reranker import Qwen3Reranker

MAX_LENGTH = 96
DIM = 48
# Small shares of the 2 CPUs, so that both actor pools and the tokenize tasks fit at once.
SMALL = dict(
    max_length=MAX_LENGTH,
    num_cpus=0.5,
    tokenize_num_cpus=0.25,
    tokenize_memory_mb=256,
    batch_size=4,
    tokenize_batch_size=6,
)
VECTOR_TOLERANCE = 1e-6  # max abs difference per value (unit vectors, fp32)
SCORE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def ray_local():
    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def embedder(tiny_embedding_dir):
    return Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cpu", max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    return Qwen3Reranker.from_pretrained(tiny_reranker_dir, device="cpu", max_length=MAX_LENGTH)


def item(i: int, body, *, keep: bool = True, task=None, question: str = "what is the capital of France") -> dict:
    return {
        "id": i,
        "body": body,
        "keep": keep,
        "task": task,
        "topic": question,
        "meta": {"n": i, "tags": ["x"] * (i % 3)},
        "blob": bytes([i]) * 2,
        "when": datetime.datetime(2026, 1, 1, 0, i),
        "vec": np.arange(3) + i,
    }


ITEMS = [
    item(0, "Paris is the capital and largest city of France."),
    item(1, None),
    item(2, ""),
    item(3, "  \t"),
    item(4, 5),  # not text: the column holds Python objects
    item(5, "Bananas are yellow. " * 50, task="Judge whether the document is about fruit"),
    item(6, "dropped by the user's filter before the processors", keep=False),
    item(7, "def area(r):\n    return 3.14159 * r * r", task=7),  # an instruction that is not text
    item(8, "Berlin is the capital of Germany.", question=None),
    item(9, "The Seine flows through Paris.", task=""),
    item(10, "dropped by the user's filter after the processors"),
]
EXPECTED_EMBED_ERRORS = {1: "null_text", 2: "empty_text", 3: "empty_text", 4: "not_text"}
EXPECTED_SCORE_ERRORS = {**EXPECTED_EMBED_ERRORS, 7: "bad_instruction", 8: "empty_query"}


def add_question(batch: pa.Table) -> pa.Table:
    """A user's map_batches before the processors: the query column comes from another column."""
    topics = batch.column("topic").to_pylist()
    return batch.append_column("question", pa.array([None if t is None else f"{t}?" for t in topics], pa.string()))


def add_norm(batch: pa.Table) -> pa.Table:
    """A user's map_batches after the processors: reads the added embedding column."""
    norms = [None if v is None else float(np.linalg.norm(v)) for v in batch.column("embedding").to_pylist()]
    return batch.append_column("norm", pa.array(norms, pa.float64()))


@pytest.fixture(scope="module")
def composed(ray_local, tiny_embedding_dir, tiny_reranker_dir):
    """from_items -> filter -> map_batches -> embedder -> reranker -> map_batches -> filter, consumed once."""
    ds = ray_local.data.from_items(ITEMS, override_num_blocks=1)  # one block: `body` mixes str, None and int
    ds = ds.filter(lambda row: row["keep"]).map_batches(add_question, batch_format="pyarrow")
    ds = build_embedder(
        EmbedConfig(model_source=str(tiny_embedding_dir), text_column="body", kind="query", dim=DIM, **SMALL)
    )(ds)
    ds = build_reranker(
        RerankConfig(
            model_source=str(tiny_reranker_dir),
            query_column="question",
            document_column="body",
            instruction_column="task",
            n_tokens_column="rerank_n_tokens",
            truncated_column="rerank_truncated",
            **SMALL,
        )
    )(ds)
    ds = ds.map_batches(add_norm, batch_format="pyarrow").filter(lambda row: row["id"] != 10)
    return {row["id"]: row for row in ds.take_all()}


def test_composed_rows_keep_their_columns_and_nothing_internal_leaks(composed):
    assert sorted(composed) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    added = {
        "question",
        "n_tokens",
        "truncated",
        "embedding_error",
        "embedding",
        "rerank_n_tokens",
        "rerank_truncated",
        "score_error",
        "score",
        "norm",
    }
    for row in composed.values():
        assert set(row) == set(ITEMS[0]) | added and TOKENS not in row
        source = ITEMS[row["id"]]
        for name in ("body", "task", "topic", "meta", "blob", "when"):
            assert row[name] == source[name], (row["id"], name)
        assert np.array_equal(row["vec"], source["vec"])


def test_composed_vectors_equal_the_embedder(composed, embedder):
    good = [i for i in sorted(composed) if i not in EXPECTED_EMBED_ERRORS]
    texts = [ITEMS[i]["body"] for i in good]
    want = embedder.embed(texts, kind="query", dim=DIM)
    got = np.asarray([composed[i]["embedding"] for i in good], dtype=np.float32)
    assert got.shape == (len(good), DIM)
    assert np.abs(got - want).max() <= VECTOR_TOLERANCE
    tokens = embedder.tokenize(texts, kind="query")
    assert [composed[i]["n_tokens"] for i in good] == tokens.lengths.tolist()
    assert [composed[i]["truncated"] for i in good] == tokens.truncated.tolist()
    assert composed[5]["truncated"] and composed[5]["n_tokens"] == MAX_LENGTH
    assert all(abs(composed[i]["norm"] - 1.0) < 1e-5 for i in good)


def test_composed_scores_equal_the_reranker(composed, reranker):
    good = [i for i in sorted(composed) if i not in EXPECTED_SCORE_ERRORS]
    want = reranker.score(
        [f"{ITEMS[i]['topic']}?" for i in good],
        [ITEMS[i]["body"] for i in good],
        instruction=[ITEMS[i]["task"] or None for i in good],
    )
    got = np.asarray([composed[i]["score"] for i in good])
    assert np.abs(got - want).max() <= SCORE_TOLERANCE
    assert composed[5]["rerank_truncated"] and composed[5]["rerank_n_tokens"] == MAX_LENGTH


def test_bad_rows_carry_their_reason_and_no_vector_or_score(composed):
    for i, row in composed.items():
        assert row["embedding_error"] == EXPECTED_EMBED_ERRORS.get(i), i
        assert row["score_error"] == EXPECTED_SCORE_ERRORS.get(i), i
        if i in EXPECTED_EMBED_ERRORS:
            assert row["embedding"] is None and row["n_tokens"] is None and row["truncated"] is None
        if i in EXPECTED_SCORE_ERRORS:
            assert row["score"] is None and row["rerank_n_tokens"] is None


@pytest.fixture(scope="module")
def parquet_run(ray_local, tmp_path_factory, sample_rows, tiny_embedding_dir, tiny_reranker_dir):
    """Two Parquet files read with read_parquet, embedded as documents (full dimension), then reranked."""
    folder = tmp_path_factory.mktemp("parquet")
    rows = [
        {"doc": f"d{i}", "text": r["text"][: 40 + 60 * (i % 5)], "question": sample_rows[i + 1]["text"][:50]}
        for i, r in enumerate(sample_rows[:16])
    ]
    pq.write_table(pa.Table.from_pylist(rows[:9]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[9:]), folder / "b.parquet")
    ds = ray_local.data.read_parquet(str(folder))
    ds = build_embedder(EmbedConfig(model_source=str(tiny_embedding_dir), **SMALL))(ds)
    ds = build_reranker(
        RerankConfig(
            model_source=str(tiny_reranker_dir),
            query_column="question",
            document_column="text",
            n_tokens_column="rerank_n_tokens",
            truncated_column="rerank_truncated",
            **SMALL,
        )
    )(ds)
    done = ds.materialize()
    return rows, {row["doc"]: row for row in done.take_all()}, done.stats()


def test_parquet_vectors_and_scores_equal_the_models(parquet_run, embedder, reranker):
    rows, out, _ = parquet_run
    assert sorted(out) == sorted(r["doc"] for r in rows)
    want = embedder.embed([r["text"] for r in rows])
    got = np.asarray([out[r["doc"]]["embedding"] for r in rows], dtype=np.float32)
    assert got.shape == (len(rows), embedder.hidden_size)
    assert np.abs(got - want).max() <= VECTOR_TOLERANCE
    scores = reranker.score([r["question"] for r in rows], [r["text"] for r in rows])
    assert np.abs(np.asarray([out[r["doc"]]["score"] for r in rows]) - scores).max() <= SCORE_TOLERANCE
    assert any(out[r["doc"]]["rerank_truncated"] for r in rows), "no pair was long enough to be truncated"
    assert all(out[r["doc"]]["embedding_error"] is None and out[r["doc"]]["score_error"] is None for r in rows)


def test_tokenising_stays_out_of_the_model_actors(parquet_run):
    *_, stats = parquet_run
    operators = re.findall(r"^Operator \d+ (\S+?):", stats, flags=re.MULTILINE)
    # Ray Data fuses compatible stages; the actor operators must run the models alone.
    assert "MapBatches(EmbedderActor)" in operators and "MapBatches(RerankerActor)" in operators, operators
    assert any(name.endswith("MapBatches(tokenize_texts)") for name in operators), operators


def test_actors_take_a_gpu_where_the_cluster_has_one_else_cpu_said_once(ray_local, tiny_embedding_dir):
    ds = ray_local.data.from_items([{"text": "a"}])
    config = EmbedConfig(model={"source": str(tiny_embedding_dir)})
    with pytest.warns(UserWarning, match=r"no GPUs: the model actors run on CPU \(set EmbedConfig.embed.num_gpus"):
        build_embedder(config)(ds)
    assert config.embed.num_gpus is None
    # An accelerator type asks for GPU actors whatever the cluster has now (an autoscaler may add the nodes).
    from embedrank.runtime.cluster import with_gpus

    wanted = EmbedConfig(embed={"accelerator_type": "H100"}).embed
    assert with_gpus(wanted, "embed", print).num_gpus == 1.0


def test_a_missing_column_is_refused_when_the_schema_is_known(ray_local, tiny_embedding_dir):
    ds = ray_local.data.from_items([{"id": 1, "body": "x"}])
    processor = build_embedder(EmbedConfig(model_source=str(tiny_embedding_dir), **SMALL))
    with pytest.raises(PlanError) as info:
        processor(ds)
    assert str(info.value) == (
        "EmbedConfig.text_column: the dataset has no column 'text' (columns: id, body); "
        "set text_column to the column that holds it"
    )
    with pytest.raises(PlanError, match="EmbedConfig.n_tokens_column: the dataset already has a column"):
        processor(ds.rename_columns({"body": "text", "id": "n_tokens"}))


@pytest.fixture
def original_errors(ray_local, monkeypatch):
    """Ray Data raising a task's own exception (as the jobs set it), so that it is found by type."""
    monkeypatch.setattr(ray_local.data.DataContext.get_current(), "raise_original_map_exception", True)


def test_a_missing_column_is_refused_at_first_use_when_the_schema_is_not_known(
    ray_local, tiny_embedding_dir, original_errors
):
    ds = ray_local.data.from_items([{"id": 1, "body": "x"}]).map_batches(lambda b: b, batch_format="pyarrow")
    ds = build_embedder(EmbedConfig(model_source=str(tiny_embedding_dir), **SMALL))(ds)  # builds: nothing ran
    with pytest.raises(Exception) as info:
        ds.take_all()
    error = user_error_in(info.value)
    assert isinstance(error, PlanError), info.value
    assert first_line(error) == (
        "EmbedConfig.text_column: the dataset has no column 'text' (columns: id, body); "
        "set text_column to the column that holds it"
    )


@pytest.mark.slow
def test_run_embed_from_a_yaml_path_with_overrides_returns_the_report(ray_local, tmp_path, tiny_embedding_dir):
    import json

    import yaml

    import embedrank
    from embedrank.errors import DuplicateIdError

    (tmp_path / "in").mkdir()
    ids = ["r0", "r1", "r2", "r1", "r3"]
    (tmp_path / "in" / "rows.jsonl").write_text(
        "".join(json.dumps({"id": i, "body": f"text of {i}"}) + "\n" for i in ids)
    )
    config = tmp_path / "embed.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"uri": str(tmp_path / "in")},
                "output": {"uri": str(tmp_path / "a")},
                "model": {"source": str(tiny_embedding_dir), "max_length": 64},
                "prepare": {"num_cpus": 0.5},
                "embed": {"num_cpus": 0.5},
            }
        )
    )
    # The run's Ray Data settings are its own: the caller's context is as it was before, afterwards.
    ctx = ray_local.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.raise_original_map_exception = True, False
    lines = []
    report = embedrank.run_embed(config, ["input.text_column=body", "model.dim=32"], log=lines.append)
    assert (ctx.enable_progress_bars, ctx.raise_original_map_exception) == (True, False)
    assert (report.rows_read, report.rows_embedded, report.rows_rejected) == (5, 4, 1)
    assert any("the cluster has no GPUs: the model actors run on CPU" in line for line in lines), lines
    assert dict(report.rejected_by_reason) == {"duplicate_id": 1}
    # A UserError raised inside a Ray task reaches the caller as itself, with its one line.
    with pytest.raises(DuplicateIdError) as info:
        embedrank.run_embed(
            config,
            ["input.text_column=body", f"output.uri={tmp_path / 'b'}", "output.on_duplicate_id=fail"],
            log=lambda _: None,
        )
    assert str(info.value).startswith("id 'r1' appears twice in shard") and "\n" not in str(info.value)
    assert (ctx.enable_progress_bars, ctx.raise_original_map_exception) == (True, False)
    ctx.enable_progress_bars = False


def test_a_text_column_of_mixed_types_across_blocks_works_with_the_documented_fix(ray_local, tiny_embedding_dir):
    """from_items makes a block per row: `body` is string in some blocks and int64 in others, which Ray Data
    cannot concatenate into one batch. The README's fix gives the column one type first."""
    rows = [{"id": 0, "body": "Paris is in France."}, {"id": 1, "body": 42}, {"id": 2, "body": "Rome is in Italy."}]
    ds = ray_local.data.from_items(rows)
    with pytest.raises(Exception, match="incompatible types"):
        ds.schema()
    ds = ds.map(lambda row: {**row, "body": row["body"] if isinstance(row["body"], str) else None})
    config = EmbedConfig(
        model={"source": str(tiny_embedding_dir), "max_length": MAX_LENGTH},
        embed={"num_cpus": 0.5, "batch_size": 4},
        prepare={"num_cpus": 0.25, "memory_mb": 256, "batch_size": 6},
        text_column="body",
    )
    out = {row["id"]: row for row in build_embedder(config)(ds).take_all()}
    assert out[1]["embedding_error"] == "null_text" and out[1]["embedding"] is None
    assert out[0]["embedding_error"] is None and len(out[0]["embedding"]) == 256


CRASHING_PIPELINE = """
import json, logging, sys
import ray
ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
from embedrank.data import EmbedConfig, build_embedder
rows = [{"id": f"r{i}", "text": f"text number {i}"} for i in range(6)]
config = EmbedConfig(
    model={"source": sys.argv[1], "max_length": 64},
    embed={"num_cpus": 0.5, "batch_size": 6, "max_worker_crashes": 2},
    prepare={"num_cpus": 0.25, "memory_mb": 256},
)
out = build_embedder(config)(ray.data.from_items(rows, override_num_blocks=1)).take_all()
print(json.dumps({row["id"]: row["embedding_error"] for row in out}))
"""


@pytest.mark.slow
def test_a_row_that_kills_the_actor_every_time_ends_as_worker_crash(tiny_embedding_dir):
    """The jobs' crash ledger in a processor: Ray Data alone would restart the actor and retry forever."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "EMBEDRANK_FAULTS": json.dumps({"poison_ids": ["r3"]})}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_PIPELINE, str(tiny_embedding_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert errors == {f"r{i}": ("worker_crash" if i == 3 else None) for i in range(6)}
