"""What counts as input, where an output may go, and which ids and column types are accepted."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.config import InputConfig, LongDocsConfig, load_config
from embedrank.embed.job import check_shard_columns
from embedrank.embed.prepare import ShardState, prepare_rows
from embedrank.errors import PlanError
from embedrank.io.sources import RawRows, list_shards
from embedrank.runtime.store import OutputStore, check_separate


def test_hidden_folders_below_the_root_are_skipped(tmp_path):
    root = tmp_path / "_corpus"  # the root itself may have any name
    for rel in (
        "a.jsonl",
        "sub/b.jsonl",
        "_temporary/0/c.jsonl",
        ".git/d.jsonl",
        "sub/.hidden.jsonl",
        "sub/_SUCCESS.jsonl",
        "out/_commits/e.jsonl",
    ):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"id": "x", "text": "y"}\n')
    found = sorted(s.uri.removeprefix(str(root) + "/") for s in list_shards(str(root)))
    assert found == ["a.jsonl", "sub/b.jsonl"]
    assert [s.uri for s in list_shards(str(root / "_temporary/0/c.jsonl"))]  # a file named as input is read
    globbed = sorted(s.uri.removeprefix(str(root) + "/") for s in list_shards(str(root) + "/*/*.jsonl"))
    assert globbed == ["sub/b.jsonl"]


@pytest.mark.parametrize(
    "inp,out,fragment",
    [
        ("corpus/", "corpus/out", "lies inside input.uri"),
        ("corpus", "corpus", "lies inside input.uri"),
        ("corpus/*.jsonl", "corpus/vectors", "lies inside input.uri"),
        ("out/corpus", "out", "input.uri"),
    ],
)
def test_output_and_input_never_nest(tmp_path, inp, out, fragment):
    with pytest.raises(PlanError, match=fragment):
        check_separate(str(tmp_path / inp), str(tmp_path / out))


def test_siblings_with_a_shared_prefix_are_fine(tmp_path):
    check_separate(str(tmp_path / "sample"), str(tmp_path / "sample-embeddings"))
    check_separate(["s3://b/corpus/"], "s3://b/corpus-out/")


def test_layout_tells_a_nightly_root_from_a_job_output(tmp_path):
    store = OutputStore(str(tmp_path / "o"))
    assert store.layout() == "empty"
    store.write_text(store.path("_CURRENT"), "v=1")
    assert store.layout() == "nightly"
    with pytest.raises(PlanError, match="nightly root"):
        store.refuse_layout("nightly", "embed", "fix")
    job = OutputStore(str(tmp_path / "j"))
    job.write_json(job.path("_embedrank/manifest.json"), {})
    assert job.layout() == "job"


class Tok:
    """Enough of EmbeddingTokenizer for prepare_rows."""

    endoftext_id = 151643

    def tokenize_formatted(self, texts):
        import numpy as np

        from embedrank.models.tokenization import TokenizedBatch

        ids = [np.array([1, 2, self.endoftext_id]) for _ in texts]
        return TokenizedBatch(ids, np.array([3] * len(texts)), np.zeros(len(texts), bool))


def test_jsonl_ids_are_strings_or_integers_only():
    values = ["s", 7, 1.5, True, ["l"], {"k": 1}, float("nan"), None]
    raw = RawRows([{"id": v, "text": "t"} for v in values], list(range(len(values))), [None] * len(values))
    table = prepare_rows(
        raw,
        shard_key="k",
        input_cfg=InputConfig(),
        long_docs=LongDocsConfig(),
        max_length=16,
        tokenizer=Tok(),
        state=ShardState(),
    )
    got = dict(
        zip(table.column("_row").to_pylist(), zip(table.column("id").to_pylist(), table.column("_reject").to_pylist()))
    )
    assert got[0] == ("s", None) and got[1] == ("7", None)
    assert [got[i][1] for i in range(2, 7)] == ["bad_id"] * 5
    assert got[2][0] == "1.5" and got[3][0] == "true" and got[4][0] == '["l"]'
    assert got[7] == (None, "null_id")


def test_dictionary_and_large_strings_are_text(tmp_path):
    cfg = load_config(None, ["input.uri=x", "output.uri=y"])
    path = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"id": pa.array(["a", "b"]).dictionary_encode(), "text": pa.array(["x", "y"]).dictionary_encode()}),
        path,
    )
    (shard,) = list_shards(str(path))
    from embedrank.io.sources import peek_columns

    check_shard_columns(shard, peek_columns(shard), cfg)
    check_shard_columns(shard, {"id": "large_string", "text": "large_string"}, cfg)
    with pytest.raises(PlanError, match="not text"):
        check_shard_columns(shard, {"id": "string", "text": "int64"}, cfg)
    with pytest.raises(PlanError, match="ids must be strings or integers"):
        check_shard_columns(shard, {"id": "double", "text": "string"}, cfg)


def test_a_checkpoint_that_is_not_qwen3_is_refused(tmp_path):
    from embedrank.errors import CheckpointError
    from embedrank.models.checkpoints import check_qwen3

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(CheckpointError, match="bert checkpoint .BertModel., not Qwen3"):
        check_qwen3(str(tmp_path))


def test_a_checkpoint_without_safetensors_or_tokenizer_is_refused_from_a_listing(tmp_path, tiny_embedding_dir):
    """Refused in planning (check_qwen3, before Ray), naming the fix: no weights are read or fetched."""
    import shutil
    import subprocess
    import sys

    from embedrank.errors import CheckpointError
    from embedrank.models.checkpoints import check_qwen3

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_embedding_dir, pickled)
    for weights in pickled.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(CheckpointError, match="holds only pickle weights .*safetensors only"):
        check_qwen3(str(pickled))
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_embedding_dir, no_tokenizer)
    (no_tokenizer / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer .tokenizer.json, or vocab.json and merges.txt"):
        check_qwen3(str(no_tokenizer))
    check_qwen3(str(tiny_embedding_dir))
    # Through the CLI: exit 2 and one line, before Ray or the model load.
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "x", "lang": "en"}) + "\n")
    code = (
        "import sys; from embedrank.cli import main; rc = main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules or not sys.modules['ray'].is_initialized(); sys.exit(rc)"
    )
    args = ["embed", "--config", "configs/local.yaml", "--input", str(tmp_path / "in.jsonl")]
    args += ["--output", str(tmp_path / "out"), "--model", str(pickled), "--set", "input.passthrough=[]"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.strip().splitlines() if "notice" not in line]
    assert proc.returncode == 2 and len(lines) == 1 and "only pickle weights" in lines[0], proc.stderr


def test_an_output_of_the_old_layout_gets_one_line_saying_what_to_do(tmp_path):
    old = OutputStore(str(tmp_path / "old"))
    old.write_json(old.path("_manifest.json"), {})
    with pytest.raises(PlanError, match="embedrank 0.1.*write to a new output.uri"):
        old.layout()
