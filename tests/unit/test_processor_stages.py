"""The processors' two stages run in-process, without Ray: configs, column checks, tokenize and model steps.

The model steps are checked against Qwen3Embedder / Qwen3Reranker loaded here, in fp32, on the same rows.
"""

import datetime

import numpy as np
import pyarrow as pa
import pytest

from embedrank.config import ActorPoolConfig, ModelConfig, PrepareConfig
from embedrank.data import BadRowError, EmbedConfig, RerankConfig, build_embedder, build_reranker
from embedrank.data.columns import TOKENS, check_columns
from embedrank.data.embedding import EmbedderActor, tokenize_texts
from embedrank.data.reranking import RerankerActor, tokenize_pairs
from embedrank.errors import CheckpointError, ConfigError, PlanError
from embedrank.models.embedder import Qwen3Embedder
from embedrank.models.reranker import Qwen3Reranker

MAX_LENGTH = 96
TEXTS = [
    "Paris is the capital of France.",
    None,
    "",
    "   \n",
    "Bananas are yellow. " * 60,
    "tab\x00nul",
    "def f(x):\n    return x * 2",
]
REASONS = [None, "null_text", "empty_text", "empty_text", None, "nul_bytes", None]
GOOD = [i for i, r in enumerate(REASONS) if r is None]


def user_table() -> pa.Table:
    """Rows with the text column and columns of other types, which must come out as they went in."""
    n = len(TEXTS)
    return pa.table(
        {
            "body": pa.array(TEXTS, pa.string()),
            "id": pa.array(range(n), pa.int64()),
            "meta": pa.array([{"k": i, "tags": ["a"] * i} for i in range(n)]),
            "raw": pa.array([bytes([i]) * 3 for i in range(n)], pa.binary()),
            "when": pa.array([datetime.datetime(2026, 1, 1 + i) for i in range(n)], pa.timestamp("us")),
            "scores": pa.array([[float(i)] * 2 for i in range(n)], pa.list_(pa.float64())),
        }
    )


@pytest.fixture(scope="module")
def embed_config(tiny_embedding_dir):
    return EmbedConfig(
        model=ModelConfig(source=str(tiny_embedding_dir), dim=64, max_length=MAX_LENGTH),
        text_column="body",
        kind="query",
    )


@pytest.fixture(scope="module")
def reference_embedder(tiny_embedding_dir):
    return Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cpu", max_length=MAX_LENGTH)


def test_config_values_are_checked_naming_the_field():
    with pytest.raises(ConfigError, match="^EmbedConfig.kind: 'doc' is not one of document, query"):
        EmbedConfig(kind="doc")
    with pytest.raises(ConfigError, match="^EmbedConfig.on_error: 'skip' is not one of continue, raise"):
        EmbedConfig(on_error="skip")
    with pytest.raises(ConfigError, match=r"^EmbedConfig.embed.concurrency: must be .* got \[4, 2\]$"):
        EmbedConfig(embed={"concurrency": (4, 2)})
    with pytest.raises(ConfigError, match="^EmbedConfig.model.dim must be >= 1, got 0$"):
        EmbedConfig(model={"dim": 0})
    with pytest.raises(ConfigError, match="^RerankConfig.model.max_length must leave room for the reranker template"):
        RerankConfig(model=ModelConfig(max_length=32))
    with pytest.raises(ConfigError, match="'n_tokens' is used twice"):
        RerankConfig(score_column="n_tokens")
    with pytest.raises(ConfigError, match="^RerankConfig.model.dtype: 'fp8' is not one of"):
        RerankConfig(model={"dtype": "fp8"})
    with pytest.raises(ConfigError, match="^EmbedConfig.model.source must not be empty"):
        EmbedConfig(model={"source": ""})
    with pytest.raises(ConfigError, match="^unknown config key 'EmbedConfig.embed.concurency' .did you mean"):
        EmbedConfig(embed={"concurency": 2})
    assert EmbedConfig(embed=ActorPoolConfig(concurrency=(1, 8), num_gpus=1)).added_columns() == {
        "embedding_column": "embedding",
        "n_tokens_column": "n_tokens",
        "truncated_column": "truncated",
        "error_column": "embedding_error",
    }
    assert "error_column" not in RerankConfig(on_error="raise").added_columns()
    assert EmbedConfig().model_source == "Qwen/Qwen3-Embedding-0.6B" and EmbedConfig().prepare.memory_mb == 768


def test_the_flat_names_of_earlier_releases_still_work_with_a_notice(capsys):
    old = EmbedConfig(model_source="m", dim=64, concurrency=(1, 4), num_gpus=1, batch_size=8, tokenize_batch_size=16)
    new = EmbedConfig(
        model=ModelConfig(source="m", dim=64),
        embed=ActorPoolConfig(concurrency=(1, 4), num_gpus=1, batch_size=8),
        prepare=PrepareConfig(batch_size=16, memory_mb=768),
    )
    assert old == new
    notices = capsys.readouterr().err.strip().splitlines()
    assert notices and all(line.startswith("embedrank: notice: EmbedConfig.") for line in notices), notices
    rerank = RerankConfig(concurrency=2, max_length=128)
    assert (rerank.rerank.concurrency, rerank.model.max_length) == (2, 128)


def test_columns_missing_or_taken_are_named_with_the_field_to_set():
    adds = EmbedConfig().added_columns()
    with pytest.raises(
        PlanError,
        match=r"^EmbedConfig.text_column: the dataset has no column 'text' \(columns: "
        r"id, body\); set text_column",
    ):
        check_columns(["id", "body"], needs={"text_column": "text"}, adds=adds, config="EmbedConfig")
    with pytest.raises(
        PlanError,
        match="EmbedConfig.embedding_column: the dataset already has a column "
        "'embedding'; set embedding_column to another name",
    ):
        check_columns(["text", "embedding"], needs={"text_column": "text"}, adds=adds, config="EmbedConfig")
    with pytest.raises(PlanError, match=TOKENS):
        check_columns(["text", TOKENS], needs={"text_column": "text"}, adds=adds, config="EmbedConfig")


def test_builders_check_the_model_and_dim_before_any_data(tmp_path, tiny_embedding_dir, tiny_reranker_dir):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        build_embedder(EmbedConfig(model={"source": str(tmp_path / "missing")}))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="bert checkpoint"):
        build_reranker(RerankConfig(model={"source": str(tmp_path / "bert")}))
    with pytest.raises(ConfigError, match="EmbedConfig.model.dim: 300 is more than the 256 dimensions"):
        build_embedder(EmbedConfig(model={"source": str(tiny_embedding_dir), "dim": 300}))
    with pytest.raises(ConfigError, match="build_reranker takes an embedrank.data.RerankConfig, got EmbedConfig"):
        build_reranker(EmbedConfig(model={"source": str(tiny_reranker_dir)}))


def test_tokenize_marks_bad_rows_and_matches_the_embedder_tokens(embed_config, reference_embedder):
    table = user_table()
    out = tokenize_texts(table, config=embed_config, storage_opts="{}")
    assert out.column("embedding_error").to_pylist() == REASONS
    want = reference_embedder.tokenize([TEXTS[i] for i in GOOD], kind="query")
    ids = out.column(TOKENS).to_pylist()
    for position, row in enumerate(GOOD):
        assert ids[row] == want.ids[position].tolist()
    n_tokens, truncated = out.column("n_tokens").to_pylist(), out.column("truncated").to_pylist()
    assert [n_tokens[i] for i in GOOD] == want.lengths.tolist()
    assert [truncated[i] for i in GOOD] == want.truncated.tolist() == [False, True, False]
    assert all(n_tokens[i] is None and truncated[i] is None for i in range(len(TEXTS)) if i not in GOOD)
    assert out.select(table.column_names).equals(table)


def test_on_error_raise_names_the_column_and_the_reason(embed_config):
    config = embed_config.model_copy(update={"on_error": "raise"})
    with pytest.raises(BadRowError, match=r"^EmbedConfig: column 'body' has a row with null_text \(None\)"):
        tokenize_texts(user_table(), config=config, storage_opts="{}")
    good = user_table().filter(pa.array([r is None for r in REASONS]))
    out = tokenize_texts(good, config=config, storage_opts="{}")
    assert "embedding_error" not in out.column_names and out.column("n_tokens").null_count == 0


def test_embedder_actor_gives_the_embedder_vectors_and_nulls_for_bad_rows(embed_config, reference_embedder):
    table = user_table()
    actor = EmbedderActor(config=embed_config, storage_opts="{}")
    out = actor(tokenize_texts(table, config=embed_config, storage_opts="{}"))
    assert out.column_names == [*table.column_names, "n_tokens", "truncated", "embedding_error", "embedding"]
    assert str(out.schema.field("embedding").type) == "fixed_size_list<item: float>[64]"
    vectors = out.column("embedding").to_pylist()
    want = reference_embedder.embed([TEXTS[i] for i in GOOD], kind="query", dim=64)
    got = np.asarray([vectors[i] for i in GOOD], dtype=np.float32)
    assert np.abs(got - want).max() <= 1e-6
    assert [i for i, v in enumerate(vectors) if v is None] == [i for i in range(len(TEXTS)) if i not in GOOD]
    assert out.select(table.column_names).equals(table)


def test_reranker_stages_give_the_reranker_scores(tiny_reranker_dir):
    queries = ["capital of France", "capital of France", None, "what is yellow", "what is yellow"]
    documents = ["Paris is the capital of France.", "Bananas are yellow. " * 40, "doc", None, "Bananas are yellow."]
    instructions = [None, "Judge whether the code answers the question", None, None, ""]
    table = pa.table(
        {
            "q": pa.array(queries, pa.string()),
            "d": pa.array(documents, pa.string()),
            "task": pa.array(instructions, pa.string()),
        }
    )
    config = RerankConfig(
        model={"source": str(tiny_reranker_dir), "max_length": MAX_LENGTH},
        query_column="q",
        document_column="d",
        instruction_column="task",
    )
    out = RerankerActor(config=config, storage_opts="{}")(tokenize_pairs(table, config=config, storage_opts="{}"))
    assert out.column("score_error").to_pylist() == [None, None, "empty_query", "null_text", None]
    reference = Qwen3Reranker.from_pretrained(tiny_reranker_dir, device="cpu", max_length=MAX_LENGTH)
    good = [0, 1, 4]
    want = reference.score(
        [queries[i] for i in good], [documents[i] for i in good], instruction=[instructions[i] or None for i in good]
    )
    scores = out.column("score").to_pylist()
    assert np.abs(np.asarray([scores[i] for i in good]) - want).max() <= 1e-6
    assert out.column("truncated").to_pylist() == [False, True, None, None, False]
    assert out.schema.field("score").type == pa.float32() and TOKENS not in out.column_names
    numbers = pa.table({"q": ["a"], "d": ["b"], "task": [5]})
    assert tokenize_pairs(numbers, config=config, storage_opts="{}").column("score_error").to_pylist() == [
        "bad_instruction"
    ]


def test_processor_rows_are_named_by_their_tokens_for_the_crash_ledger():
    from embedrank.data.columns import GuardedRows
    from embedrank.schema import list_array

    def batch(rows):
        return pa.table({TOKENS: list_array([np.asarray(r, np.int32) for r in rows])})

    keys = GuardedRows().row_keys(batch([[1, 2], [3], [1, 2], []]))
    assert len(set(keys)) == 4 and keys[0].split(":")[1] == keys[2].split(":")[1]  # equal rows, told apart
    assert GuardedRows().row_keys(batch([[3], [1, 2]])) == [keys[1], keys[0]]  # the same rows, the same names
