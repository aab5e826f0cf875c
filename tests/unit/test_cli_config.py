"""The command line before anything runs: --version, `embedrank config`, and every enumerated key checked."""

import subprocess
import sys
import time

import pytest

from embedrank import __version__
from embedrank.cli import main
from embedrank.config import ATTENTION_BACKENDS, DTYPES

ENUMERATED = {
    "embed": [
        "input.format",
        "input.kind",
        "long_docs.mode",
        "output.embedding_dtype",
        "output.on_duplicate_id",
        "model.dtype",
        "model.attention",
    ],
    "rerank": ["input.format", "corpus.format", "model.dtype", "model.attention"],
}
CONFIGS = {"embed": "configs/local.yaml", "rerank": "configs/rerank-local.yaml"}


@pytest.mark.parametrize("job,key", [(job, key) for job, keys in ENUMERATED.items() for key in keys])
def test_every_enumerated_key_refuses_a_bad_value_in_one_line(job, key, capsys):
    start = time.perf_counter()
    code = main([job, "--config", CONFIGS[job], "--set", f"{key}=bf32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"embedrank {job}: error: {key}: 'bf32' is not one of"), err
    assert time.perf_counter() - start < 2


def test_a_bad_value_stops_the_cli_before_ray_or_torch_load():
    code = (
        "import sys; from embedrank.cli import main; rc = main(['embed', '--config', 'configs/local.yaml', "
        "'--set', 'model.dtype=bf32']); assert 'ray' not in sys.modules and 'torch' not in sys.modules; "
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "embedrank embed: error: model.dtype: 'bf32' is not one of bf16, bfloat16, fp16, float16, fp32, float32 "
        "(did you mean fp32?)"
    ]


def test_config_lists_match_what_the_models_accept():
    from embedrank.models import attention

    assert ATTENTION_BACKENDS == attention.BACKENDS
    import torch

    from embedrank.models.forward import parse_dtype

    for name in DTYPES:
        assert isinstance(parse_dtype(name, torch.device("cpu")), torch.dtype)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"embedrank {__version__}"


def test_config_prints_every_key_with_its_meaning(capsys):
    assert main(["config", "--config", "configs/local.yaml", "--set", "model.dim=64"]) == 0
    out = capsys.readouterr().out
    assert "  dim: 64  # Matryoshka dimension" in out
    assert "  prune: false  # remove committed shards whose input file is gone (--prune)" in out
    keys = [line for line in out.splitlines() if not line.rstrip().endswith(":")]
    assert all("  # " in line for line in keys), [line for line in keys if "  # " not in line]


@pytest.mark.parametrize(
    "override,line",
    [
        ("model.dimm=8", "unknown config key 'model.dimm' (did you mean model.dim?)"),
        ("model.dimension=8", "unknown config key 'model.dimension'; known keys: source, revision"),
        ("model.max_length=long", "model.max_length: expected int, got 'long'"),
        ("embed.concurrency=[4, 2]", "embed.concurrency: must be n >= 1 or a pair [min, max] with 1 <= min <= max"),
        ("prepare.rows_per_task=0", "prepare.rows_per_task must be >= 1, got 0"),
        ("input.template={text!r:>9}", "input.template: expected str | None, got {'text!r:>9': None} (YAML read"),
        ("input.template='{text!r}'", "input.template: field {text!r} is not allowed; only plain column names"),
    ],
)
def test_a_bad_key_type_or_value_is_one_line(override, line, capsys):
    assert main(["embed", "--config", CONFIGS["embed"], "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"embedrank embed: error: {line}"), err


def test_renamed_keys_still_work_with_one_notice_each(tmp_path, capsys):
    from embedrank.api import job_config
    from embedrank.config import RerankJobConfig

    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    base = "input: {uri: in}\noutput: {uri: out}\n"
    old.write_text(base + "embed: {min_actors: 1, max_actors: 4, rows_per_batch: 64}\nprepare: {rows_per_batch: 32}\n")
    new.write_text(base + "embed: {concurrency: [1, 4], batch_size: 64}\nprepare: {batch_size: 32}\n")
    capsys.readouterr()
    assert job_config(old) == job_config(new)
    notices = capsys.readouterr().err.strip().splitlines()
    assert any("embed.min_actors/max_actors are now embed.concurrency: [1, 4]" in n for n in notices), notices
    assert any("prepare.rows_per_batch is now prepare.batch_size" in n for n in notices), notices
    assert all(n.startswith("embedrank: notice: ") for n in notices)
    assert job_config(new, ["output.embedding_dtype=fp16"]).output.embedding_dtype == "float16"
    rerank = job_config(CONFIGS["rerank"], ["rerank.min_actors=2", "rerank.max_actors=2"], RerankJobConfig)
    assert rerank.rerank.concurrency == 2 and rerank.rerank.min_actors == rerank.rerank.max_actors == 2
    # An old name in --set overrides the new one in the YAML file, as any --set does.
    assert job_config(new, ["embed.rows_per_batch=8"]).embed.batch_size == 8
    assert job_config(new, ["embed.max_actors=2"]).embed.concurrency == (1, 2)
