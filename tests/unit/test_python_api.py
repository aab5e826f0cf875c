"""embedrank.run_embed / run_rerank / run_nightly: a config object or a YAML path plus overrides, the CLI's checks.

Runs are planned only (`dry_run=True`: no Ray, no model, no write); whole runs are in
tests/integration/test_processors.py.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import embedrank
from embedrank.api import job_config, raising_user_errors
from embedrank.config import EmbedJobConfig, InputConfig, ModelConfig, OutputConfig, RerankJobConfig, load_config
from embedrank.errors import ConfigError, PlanError, first_line


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    """A one-file corpus and an embed YAML with relative paths, read from tmp_path as the working directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.jsonl").write_text(
        "".join(json.dumps({"id": f"r{i}", "body": f"text {i}"}) + "\n" for i in range(5))
    )
    config = tmp_path / "embed.yaml"
    config.write_text(
        yaml.safe_dump(
            {"input": {"uri": "in", "text_column": "body"}, "output": {"uri": "out"}, "model": {"max_length": 64}}
        )
    )
    return config


def test_a_yaml_path_with_overrides_gives_the_clis_config_with_absolute_paths(corpus, tmp_path):
    cfg = job_config(corpus, ["model.dim=32", "input.passthrough=[body]"])
    assert cfg.model.dim == 32 and cfg.input.passthrough == ["body"] and cfg.model.max_length == 64
    assert cfg.input.uri == str(tmp_path / "in") and cfg.output.uri == str(tmp_path / "out")
    assert cfg == job_config(str(corpus), ["model.dim=32", "input.passthrough=[body]"])


def test_a_config_object_passes_the_same_checks_as_yaml(corpus, tmp_path):
    built = EmbedJobConfig(
        input=InputConfig(uri="in", text_column="body", template="{body}\n{{x}}"),
        output=OutputConfig(uri="out"),
        model=ModelConfig(max_length=64, dim=16),
    )
    cfg = job_config(built, ["model.dim=24"])
    assert cfg.model.dim == 24 and cfg.input.template == "{body}\n{{x}}" and cfg.input.uri == str(tmp_path / "in")
    assert job_config(built) == job_config(
        None,
        [
            "input.uri=in",
            "input.text_column=body",
            "input.template={body}\n{{x}}",
            "output.uri=out",
            "model.max_length=64",
            "model.dim=16",
        ],
    )
    # A config object is checked when it is made, with the same one-line messages (the class names the section).
    with pytest.raises(ConfigError, match="^ModelConfig.max_length: expected int, got 'long'$"):
        ModelConfig(max_length="long")
    with pytest.raises(ConfigError, match="^InputConfig.kind: 'doc' is not one of document, query"):
        InputConfig(uri="in", kind="doc")
    with pytest.raises(ConfigError, match="^EmbedJobConfig.model.dim must be >= 1, got 0$"):
        EmbedJobConfig(input=InputConfig(uri="in"), output=OutputConfig(uri="out"), model={"dim": 0})
    with pytest.raises(ConfigError, match="^output.uri is empty: set it in the config or pass --output URI$"):
        EmbedJobConfig(input=InputConfig(uri="in"))


def test_mistakes_in_the_call_are_one_line_config_errors(corpus):
    with pytest.raises(ConfigError, match="unknown config key 'model.dimension'; known keys: source"):
        embedrank.run_embed(corpus, ["model.dimension=8"], dry_run=True)
    with pytest.raises(ConfigError, match="overrides must be a list of 'key=value' strings"):
        embedrank.run_embed(corpus, "model.dim=8", dry_run=True)
    with pytest.raises(ConfigError, match="overrides must be a list"):
        embedrank.run_embed(corpus, print)  # the log function passed where the overrides go
    with pytest.raises(ConfigError, match="expected an embedrank.config.RerankJobConfig or the path of a YAML"):
        embedrank.run_rerank(load_config(corpus), dry_run=True)
    with pytest.raises(ConfigError, match="config file .*missing.yaml does not exist"):
        embedrank.run_nightly("missing.yaml", dry_run=True)
    with pytest.raises(PlanError, match="has no column 'text'.*set input.text_column"):
        embedrank.run_embed(corpus, ["input.text_column=text"], dry_run=True, log=lambda _: None)


def test_embed_and_nightly_plan_from_a_yaml_path(corpus, tiny_embedding_dir, tmp_path):
    lines = []
    preview = embedrank.run_embed(corpus, [f"model.source={tiny_embedding_dir}"], dry_run=True, log=lines.append)
    assert len(preview.plan.pending) == 1 and not preview.plan.committed
    assert "1 to embed, 0 already committed" in preview.summary()
    night = embedrank.run_nightly(
        corpus, [f"model.source={tiny_embedding_dir}", "output.uri=nightly"], dry_run=True, log=lines.append
    )
    assert night.job.NAME == "nightly" and night.plan.store.uri.startswith(str(tmp_path / "nightly" / "v="))
    assert not (tmp_path / "out").exists() and not (tmp_path / "nightly").exists(), "a dry run wrote something"


def test_rerank_plans_from_a_yaml_path_and_from_an_object(tmp_path, tiny_reranker_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"query_id": "q", "query": "a", "doc_id": "d", "document": "b"}) + "\n")
    config = tmp_path / "rerank.yaml"
    config.write_text(yaml.safe_dump({"input": {"uri": str(pairs)}, "output": {"uri": str(tmp_path / "out")}}))
    preview = embedrank.run_rerank(
        config, [f"model.source={tiny_reranker_dir}", "output.top_k=3"], dry_run=True, log=lambda _: None
    )
    assert len(preview.plan.pending) == 1 and preview.job.cfg.output.top_k == 3
    again = embedrank.run_rerank(preview.job.cfg, dry_run=True, log=lambda _: None)
    assert again.job.cfg == preview.job.cfg and isinstance(again.job.cfg, RerankJobConfig)


def test_a_user_error_wrapped_by_ray_is_raised_as_itself_with_its_one_line():
    def run():
        try:
            raise PlanError("input shard x.jsonl has no column 'text'; set input.text_column\nremote traceback")
        except PlanError as inner:
            raise RuntimeError("a wrapper, as Ray's task errors are") from inner

    with pytest.raises(PlanError) as info:
        raising_user_errors(run)
    line = "input shard x.jsonl has no column 'text'; set input.text_column"
    assert str(info.value) == first_line(info.value) == line
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(KeyError):
        raising_user_errors(lambda: {}["not a user error"])


def test_a_nightly_dry_run_on_a_nightly_root_writes_nothing(corpus, tiny_embedding_dir, tmp_path):
    """Planning is pure: the copies forward, _NIGHT.json and the removal of an abandoned night wait for `start`."""
    from embedrank.embed.nightly import CURRENT, NIGHT, NightlyJob
    from embedrank.io.sources import list_shards
    from embedrank.runtime.store import COMMITS

    (tmp_path / "in" / "new.jsonl").write_text(json.dumps({"id": "n1", "body": "new text"}) + "\n")
    cfg = job_config(corpus, [f"model.source={tiny_embedding_dir}", "output.uri=nightly"])
    job = NightlyJob(cfg, log=lambda _: None)
    root = tmp_path / "nightly"
    current, abandoned = "v=20260101T000000", "v=20260102T000000"
    (root / current / COMMITS).mkdir(parents=True)
    (root / abandoned / "vectors").mkdir(parents=True)
    (root / CURRENT).write_text(current)
    (root / NIGHT).write_text(json.dumps({"version": abandoned, "base": "v=20251231T000000", "fingerprint_id": "x"}))
    (shard,) = [s for s in list_shards(str(tmp_path / "in")) if s.key.startswith("rows")]
    (root / current / "vectors" / shard.key).mkdir(parents=True)
    # Planning reads one committed file's footer (the id type the version holds).
    pq.write_table(pa.table({"id": ["r0"]}), root / current / "vectors" / shard.key / "part-00000.parquet")
    record = {
        "shard": shard.to_dict(),
        "fingerprint": job.fp,
        "fingerprint_id": job.fp_id,
        "files": {"data": [f"vectors/{shard.key}/part-00000.parquet"]},
        "rows": {"embedded": 5},
    }
    (root / current / COMMITS / f"{shard.key}.json").write_text(json.dumps(record))

    def tree():
        return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}

    before = tree()
    preview = embedrank.run_nightly(cfg, dry_run=True, log=lambda _: None)
    assert tree() == before, "a dry run on a nightly root wrote something"
    plan = preview.plan
    assert plan.unchanged == {shard.key} and [s.uri.rsplit("/", 1)[-1] for s in plan.pending] == ["new.jsonl"]
    assert plan.version not in (current, abandoned) and plan.night is None
    assert "1 unchanged files copied whole" in preview.summary()


def test_a_refused_run_leaves_nothing_behind(corpus, tiny_embedding_dir, tmp_path):
    """The lock is taken before planning refuses the output: the folders it made go with it."""
    with pytest.raises(PlanError, match="lies inside input.uri"):
        embedrank.run_embed(corpus, [f"model.source={tiny_embedding_dir}", "output.uri=in/out"], log=lambda _: None)
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["rows.jsonl"]
    (tmp_path / "kept").mkdir()
    with pytest.raises(PlanError, match="lies inside output.uri"):
        embedrank.run_embed(corpus, ["output.uri=.", "input.uri=in"], log=lambda _: None)
    assert (tmp_path / "kept").is_dir() and (tmp_path / "in" / "rows.jsonl").is_file()
