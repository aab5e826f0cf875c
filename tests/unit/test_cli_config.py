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
    assert "  prune: false  # Committed shards whose input file is gone are kept" in out
    keys = [line for line in out.splitlines() if not line.rstrip().endswith(":")]
    assert all("  # " in line for line in keys), [line for line in keys if "  # " not in line]
