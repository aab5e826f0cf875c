"""The retrieve job's config, command line and plan (no Ray: a dry run plans without it), and the order in
which `embedrank run` starts its sections."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from embedrank.api import run_retrieve
from embedrank.cli import build_parser
from embedrank.combined import run_order
from embedrank.config import ConfigError, RerankJobConfig, RetrieveJobConfig, load_config
from embedrank.errors import PlanError
from embedrank.registry import CombinedJobConfig
from embedrank.retrieve.candidates import candidate_lists, list_id_types, merge_partials
from embedrank.retrieve.job import settle_ids
from embedrank.retrieve.vectors import read_footers, vector_files
from embedrank.runtime.store import OutputStore
from embedrank.settings import with_absolute_paths


def vectors_table(
    ids: list, vectors: np.ndarray, kind: str, texts: list[str] | None = None, model: str = "test-vectors"
) -> pa.Table:
    """Vectors as the embed job writes them: id (int64 for integers, else string), embedding (a fixed-size
    list), passthrough text, metadata."""
    columns = {
        "id": pa.array(ids, pa.int64() if ids and isinstance(ids[0], int) else pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
    }
    if texts is not None:
        columns["text"] = pa.array(texts)
    return pa.table(columns).replace_schema_metadata({"embedrank.model": model, "embedrank.kind": kind})


def commit_vectors(uri: str, tables: list[pa.Table], staging) -> None:
    """An embed output holding `tables` as committed shards, written through the output store's commit."""
    store = OutputStore(uri)
    for number, table in enumerate(tables):
        staged = staging / f"{os.path.basename(uri)}-{number}.parquet"
        pq.write_table(table, staged)
        key = f"shard-{number}"
        store.commit_shard(key, {"data": [str(staged)]}, {"shard": {"key": key, "uri": f"input-{number}"}})


def write(tmp_path, data: dict, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


RETRIEVE = {"input": {"uri": "q"}, "corpus": {"uri": "c"}, "output": {"uri": "out"}}


def test_retrieve_config_names_the_missing_key_and_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus.uri is empty: set it in the config or pass --corpus URI"):
        load_config(write(tmp_path, {**RETRIEVE, "corpus": {}}), cls=RetrieveJobConfig)
    with pytest.raises(ConfigError, match="output.top_k must be >= 1"):
        load_config(write(tmp_path, {**RETRIEVE, "output": {"uri": "out", "top_k": 0}}), cls=RetrieveJobConfig)
    with pytest.raises(ConfigError, match="retrieve.doc_block must be >= 1"):
        load_config(write(tmp_path, {**RETRIEVE, "retrieve": {"doc_block": 0}}), cls=RetrieveJobConfig)
    with pytest.raises(ConfigError, match="unknown config key 'model'"):  # retrieve loads no model
        load_config(write(tmp_path, {**RETRIEVE, "model": {"source": "x"}}), cls=RetrieveJobConfig)


def test_retrieve_flags_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(
        [
            "retrieve",
            "--config",
            str(write(tmp_path, RETRIEVE)),
            "--corpus",
            "vecs",
            "--qrels",
            "q.tsv",
            "--set",
            "output.top_k=50",
        ]
    )
    from embedrank.cli import job_config_of

    cfg = job_config_of(args)
    assert isinstance(cfg, RetrieveJobConfig)
    assert (cfg.corpus.uri, cfg.qrels, cfg.output.top_k) == (str(tmp_path / "vecs"), str(tmp_path / "q.tsv"), 50)
    assert cfg.input.uri == str(tmp_path / "q") and not hasattr(cfg, "prepare")
    with pytest.raises(SystemExit):  # no model to choose
        build_parser().parse_args(["retrieve", "--config", "x.yaml", "--model", "m"])
    rerank = with_absolute_paths(load_config(None, ["input.uri=a", "output.uri=b", "qrels=q.tsv"], cls=RerankJobConfig))
    assert rerank.qrels == str(tmp_path / "q.tsv")


def embed_section(input_uri: str, output: str) -> dict:
    return {"input": {"uri": input_uri}, "output": {"uri": output}}


def test_run_starts_a_section_after_the_sections_whose_output_it_reads(tmp_path):
    four = {
        "embed_job": embed_section("docs.jsonl", "out/corpus"),
        "query_embed_job": {"input": {"uri": "queries.jsonl", "kind": "query"}, "output": {"uri": "out/queries"}},
        "retrieve_job": {
            "input": {"uri": "out/queries"},
            "corpus": {"uri": "out/corpus/"},
            "output": {"uri": "out/retrieved"},
        },
        "rerank_job": {
            "input": {"uri": "out/retrieved/candidates"},
            "corpus": {"uri": "docs.jsonl"},
            "output": {"uri": "out/reranked"},
        },
    }
    cfg = with_absolute_paths(load_config(write(tmp_path, four), cls=CombinedJobConfig))
    sections = {name: getattr(cfg, name) for name in four}
    assert run_order(sections, None) == {
        "embed_job": [],
        "query_embed_job": [],
        "retrieve_job": ["embed_job", "query_embed_job"],
        "rerank_job": ["retrieve_job"],
    }
    # An embed and a rerank of the embed's input (not its output) run at once, as before.
    both = {"embed_job": four["embed_job"], "rerank_job": {**four["rerank_job"], "input": {"uri": "lists.jsonl"}}}
    cfg = with_absolute_paths(load_config(write(tmp_path, both, "both.yaml"), cls=CombinedJobConfig))
    assert run_order({"embed_job": cfg.embed_job, "rerank_job": cfg.rerank_job}, None) == {
        "embed_job": [],
        "rerank_job": [],
    }


def test_run_refuses_sections_that_read_each_other(tmp_path):
    loop = {
        "retrieve_job": {"input": {"uri": "out/b"}, "corpus": {"uri": "c"}, "output": {"uri": "out/a"}},
        "rerank_job": {"input": {"uri": "out/a"}, "corpus": {"uri": "docs.jsonl"}, "output": {"uri": "out/b"}},
    }
    cfg = load_config(write(tmp_path, loop), cls=CombinedJobConfig)
    with pytest.raises(ConfigError, match="rerank_job, retrieve_job read each other's outputs"):
        run_order({"retrieve_job": cfg.retrieve_job, "rerank_job": cfg.rerank_job}, None)
    with pytest.raises(ConfigError, match="no job section"):
        load_config(write(tmp_path, {"ray": {"num_cpus": 2}}, "none.yaml"), cls=CombinedJobConfig)


def outputs(
    tmp_path,
    query_dim: int = 4,
    query_model: str = "test-vectors",
    texts: bool = True,
    doc_ids=lambda file, i: f"d{i}",
    query_ids=("q1", "q2"),
    overrides=(),
):
    rng = np.random.default_rng(0)
    commit_vectors(
        str(tmp_path / "corpus"),
        [
            vectors_table([doc_ids(f, i) for i in range(n)], rng.random((n, 4), np.float32), "document")
            for f, n in enumerate((30, 50, 40))
        ],
        tmp_path,
    )
    commit_vectors(
        str(tmp_path / "queries"),
        [
            vectors_table(
                list(query_ids),
                rng.random((2, query_dim), np.float32),
                "query",
                ["a", "b"] if texts else None,
                query_model,
            )
        ],
        tmp_path,
    )
    return load_config(
        None,
        [
            f"input.uri={tmp_path / 'queries'}",
            f"corpus.uri={tmp_path / 'corpus'}",
            f"output.uri={tmp_path / 'out'}",
            "retrieve.corpus_rows_per_task=60",
            *overrides,
        ],
        cls=RetrieveJobConfig,
    )


def test_dry_run_plans_partitions_without_ray(tmp_path):
    preview = run_retrieve(outputs(tmp_path), log=lambda line: None, dry_run=True)
    text = preview.summary()
    assert "1 to retrieve" in text and "120 vectors (4 dimensions) in 3 partitions: 3 scoring tasks" in text
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "problem, message",
    [
        (dict(query_dim=8), "query vectors have 8 dimensions, corpus vectors 4"),
        (dict(query_model="other-model"), "the queries were embedded with other-model, the corpus with test-vectors"),
        (dict(texts=False), r"no column 'text' with the query text .* input.passthrough: \[text\]"),
    ],
)
def test_plan_refuses_vectors_that_do_not_compare(tmp_path, problem, message):
    with pytest.raises(PlanError, match=message):
        run_retrieve(outputs(tmp_path, **problem), log=lambda line: None, dry_run=True)


def test_plan_names_a_location_without_vectors(tmp_path):
    outputs(tmp_path)
    cfg = load_config(
        None,
        [f"input.uri={tmp_path / 'queries'}", f"corpus.uri={tmp_path / 'nothing'}", f"output.uri={tmp_path / 'out'}"],
        cls=RetrieveJobConfig,
    )
    with pytest.raises(PlanError, match="holds no embedrank output"):
        run_retrieve(cfg, dry_run=True)


def test_ids_keep_the_types_of_the_vectors_footers(tmp_path):
    """query_id from the query vectors' ids, doc_id from the corpus's, each in its own type."""
    preview = run_retrieve(outputs(tmp_path, doc_ids=lambda f, i: 100 * f + i), log=lambda line: None, dry_run=True)
    assert "ids        query_id as string, doc_id as int64" in preview.summary()
    forced = outputs(
        mkdir(tmp_path / "text"), doc_ids=lambda f, i: i, query_ids=(5, 6), overrides=["output.id_type=string"]
    )
    assert "query_id as string, doc_id as string" in run_retrieve(forced, log=lambda line: None, dry_run=True).summary()


def test_a_corpus_whose_files_disagree_on_the_id_type_is_refused(tmp_path):
    mixed = outputs(tmp_path, doc_ids=lambda f, i: i if f == 1 else f"d{i}")
    with pytest.raises(PlanError) as refused:
        run_retrieve(mixed, log=lambda line: None, dry_run=True)
    message = str(refused.value)
    assert "\n" not in message and "set output.id_type: string to write every id as text" in message
    assert (
        f"integer column in {tmp_path / 'corpus'}" in message and f"string column in {tmp_path / 'corpus'}" in message
    )
    text = outputs(
        mkdir(tmp_path / "text"), doc_ids=lambda f, i: i if f == 1 else f"d{i}", overrides=["output.id_type=string"]
    )
    assert "query_id as string, doc_id as string" in run_retrieve(text, log=lambda line: None, dry_run=True).summary()


def test_an_output_keeps_its_id_types(tmp_path):
    """Candidate lists committed with int64 ids keep them: string ids (or output.id_type: string) are refused,
    and an output of string ids stays string."""
    outputs(tmp_path, doc_ids=lambda f, i: f"d{i}", query_ids=(1, 2))
    queries = read_footers(vector_files(str(tmp_path / "queries")))
    corpus = read_footers(vector_files(str(tmp_path / "corpus")))
    ints = {"query_id": "int64", "doc_id": "int64"}
    with pytest.raises(
        PlanError,
        match=r"holds int64 'doc_id' values and input .* has "
        "string ids: one output holds one id type; write to a new output.uri",
    ):
        settle_ids("auto", queries, corpus, ints, "out")
    with pytest.raises(PlanError, match="int64 'query_id' values and output.id_type is string"):
        settle_ids("string", queries, corpus, ints, "out")
    assert settle_ids("auto", queries, corpus, {"query_id": "string", "doc_id": None}, "out") == {
        "query_id": "string",  # kept: the output's lists hold string query ids
        "doc_id": "string",
    }
    assert settle_ids("auto", queries, corpus, {}, "out") == {"query_id": "int64", "doc_id": "string"}
    merged = merge_partials(
        [pa.table({"query_id": [1], "doc_id": pa.array([7], pa.int64()), "score": pa.array([1.0], pa.float32())})], 5
    )
    assert list_id_types(candidate_lists(merged, pa.array([1])).schema) == ints


def mkdir(path):
    path.mkdir()
    return path
