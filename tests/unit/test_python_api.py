"""embedrank.run_embed / run_rerank / run_nightly: a config object or a YAML path plus overrides, the CLI's checks.

Runs are planned only (`dry_run=True`: no Ray, no model, no write); whole runs are in
tests/integration/test_processors.py.
"""

import json

import pytest
import yaml

import embedrank
from embedrank.api import _raising_user_errors, job_config
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
    with pytest.raises(ConfigError, match="model.max_length: expected int, got 'long'"):
        job_config(
            EmbedJobConfig(
                input=InputConfig(uri="in"), output=OutputConfig(uri="out"), model=ModelConfig(max_length="long")
            )
        )
    with pytest.raises(ConfigError, match="input.kind: 'doc' is not one of document, query"):
        job_config(EmbedJobConfig(input=InputConfig(uri="in", kind="doc"), output=OutputConfig(uri="out")))


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
    assert night.job.NAME == "nightly" and night.job.cfg.output.uri.startswith(str(tmp_path / "nightly" / "v="))
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
        _raising_user_errors(run)
    line = "input shard x.jsonl has no column 'text'; set input.text_column"
    assert str(info.value) == first_line(info.value) == line
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(KeyError):
        _raising_user_errors(lambda: {}["not a user error"])
