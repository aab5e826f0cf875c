"""Loading straight to the device: the same tensors as transformers' own loader, and a host peak near one shard.

The peak is measured in a fresh subprocess (VmHWM from /proc, which only that process moves, so it holds on a
busy machine): on the CPU the model itself ends up in host memory, so what is bounded is the peak *above* the
loaded model, which a loader that first builds a whole state dict (or a second copy) would double.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from embedrank.errors import CheckpointError
from embedrank.models.forward import load_qwen3
from embedrank.models.loading import shard_files

SHARD_MB = 40
SLACK_MB = 48  # allocator and interpreter noise


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory):
    """A ~190 MB fp32 Qwen3Model in shards of at most 40 MB (small vocabulary: no tensor exceeds a shard)."""
    from transformers import Qwen3Config, Qwen3Model

    out = tmp_path_factory.mktemp("sharded")
    config = Qwen3Config(
        vocab_size=2048,
        hidden_size=512,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    Qwen3Model(config).save_pretrained(out, safe_serialization=True, max_shard_size=f"{SHARD_MB}MB")
    return out


def test_the_loader_gives_transformers_tensors(sharded_dir, tiny_reranker_dir):
    from transformers import AutoModel, AutoModelForCausalLM

    assert len(shard_files(sharded_dir)) >= 4
    ours = load_qwen3(sharded_dir, causal_lm=False, device=torch.device("cpu"), dtype=torch.float32)
    theirs = AutoModel.from_pretrained(sharded_dir, dtype=torch.float32).state_dict()
    assert ours.state_dict().keys() == theirs.keys()
    assert all(torch.equal(t, theirs[k]) for k, t in ours.state_dict().items())
    # A causal LM with tied embeddings, loaded whole and as its base model.
    lm = load_qwen3(tiny_reranker_dir, causal_lm=True, device=torch.device("cpu"), dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(tiny_reranker_dir, dtype=torch.float32)
    assert torch.equal(lm.get_output_embeddings().weight, ref.get_output_embeddings().weight)
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    base = load_qwen3(tiny_reranker_dir, causal_lm=False, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(base.layers[1].mlp.up_proj.weight, ref.model.layers[1].mlp.up_proj.weight)


def test_a_checkpoint_missing_tensors_is_refused_naming_one(sharded_dir, tmp_path):
    files = shard_files(sharded_dir)
    for name in ("config.json", "model.safetensors.index.json"):
        (tmp_path / name).write_bytes((sharded_dir / name).read_bytes())
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != files[-1].name}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    for file in files[:-1]:
        (tmp_path / file.name).symlink_to(file)
    with pytest.raises(CheckpointError, match="lacks .* tensors the model needs"):
        load_qwen3(tmp_path, causal_lm=False, device=torch.device("cpu"), dtype=torch.float32)


PROBE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from embedrank.models.forward import load_qwen3

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    before = status("VmRSS")
    model = load_qwen3(Path(sys.argv[1]), causal_lm=False, device=torch.device("cpu"), dtype=torch.float32)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"before": before, "after": status("VmRSS"), "peak": status("VmHWM"), "model": size}))
    """
)


def test_host_peak_while_loading_stays_near_one_shard_above_the_model(sharded_dir):
    proc = subprocess.run([sys.executable, "-c", PROBE, str(sharded_dir)], capture_output=True, text=True, check=True)
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1024 * 1024
    assert m["model"] > 4 * SHARD_MB * mb  # the checkpoint really is several shards
    assert m["after"] - m["before"] >= 0.9 * m["model"]  # the weights were read into memory
    over = (m["peak"] - m["after"]) / mb
    assert over <= SHARD_MB + SLACK_MB, f"the loader peaked {over:.0f} MB above the loaded model"
