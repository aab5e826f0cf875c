"""CUDA-only parts of the speed work: fp32's kernel and its memory, the varlen GQA probe, the compiled layers,
and loading straight to the GPU (host memory near one tensor, not the model)."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from embedrank import Qwen3Embedder, Qwen3Reranker
from embedrank.models import attention
from embedrank.verify import row_cosines

pytestmark = pytest.mark.gpu


def test_fp32_long_row_never_allocates_the_score_matrix(tiny_embedding_dir):
    # The math kernel would hold Hq x S^2 fp32 scores: 4 x 8192^2 x 4 B = 1 GiB for one row of 8192 tokens.
    emb = Qwen3Embedder.from_pretrained(tiny_embedding_dir, device="cuda", dtype="fp32", max_length=8192)
    assert emb.backend == "sdpa_packed"
    seq = np.append(np.random.default_rng(0).integers(0, 151_000, 8191), 151643)
    emb.embed_tokens([seq[:64]])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = emb.embed_tokens([seq])
    assert np.isfinite(out).all()
    assert torch.cuda.max_memory_allocated() - base < 256 * 2**20


def test_varlen_probe_decision_matches_the_kernel():
    if attention._torch_varlen() is None:
        pytest.skip("this torch has no varlen_attn")
    fn, causal, has_gqa, _ = attention._torch_varlen()
    native = attention._varlen_native_gqa(torch.device("cuda"))
    mode = attention.varlen_gqa_mode(has_gqa, None if has_gqa else native)
    assert mode in ("enable_gqa", "native", "repeat")
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(40, 8, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(40, 2, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    cu = torch.tensor([0, 17, 40], dtype=torch.int32, device="cuda")
    got = attention.packed_attention(q, k, v, cu, cu.cpu(), 64**-0.5, "torch_varlen")
    want = fn(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), cu, cu, 23, 23, **causal)
    assert torch.allclose(got.float(), want.float(), atol=2e-2)


def backends():
    varlen = attention.available_backends("cuda")[:1] if torch.cuda.is_available() else ["torch_varlen"]
    return sorted({"sdpa_packed", "sdpa_padded", *varlen})


@pytest.mark.parametrize("backend", backends())
def test_compiled_matches_eager_on_cuda(tiny_embedding_dir, tiny_reranker_dir, sample_rows, backend):
    texts = [r["text"] for r in sample_rows][:100]
    kw = dict(device="cuda", attention=backend, max_length=2048)
    eager = Qwen3Embedder.from_pretrained(tiny_embedding_dir, compile="off", **kw)
    compiled = Qwen3Embedder.from_pretrained(tiny_embedding_dir, compile="auto", **kw)
    assert compiled.compiled
    compiled.warm_up()
    assert row_cosines(compiled.embed(texts), eager.embed(texts)).min() >= 0.999
    r_eager = Qwen3Reranker.from_pretrained(tiny_reranker_dir, compile="off", **kw)
    r_comp = Qwen3Reranker.from_pretrained(tiny_reranker_dir, compile="on", **kw)
    docs = texts[1:41]
    assert np.abs(r_comp.score(texts[:40], docs) - r_eager.score(texts[:40], docs)).max() <= 2e-2


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
    torch.zeros(1, device="cuda")  # the CUDA context's host memory belongs to the baseline
    before = status("VmRSS")
    model = load_qwen3(Path(sys.argv[1]), causal_lm=False, device=torch.device("cuda"), dtype=torch.float32)
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"before": before, "peak": status("VmHWM"), "model": size}))
    """
)


def test_loading_to_the_gpu_keeps_host_memory_near_one_shard(tmp_path):
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=2048,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=16,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=128,
    )
    Qwen3Model(config).save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100MB")
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True, check=True)
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["model"] > 700 * 2**20
    assert m["peak"] - m["before"] < 100 * 2**20 + 128 * 2**20  # one shard + slack, not the ~800 MB model
