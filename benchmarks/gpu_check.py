"""One-command GPU check: parity tests, then packed vs padded throughput of a 0.6B-shaped model, bf16.

No Ray, no network. Needs torch with CUDA, transformers, and the `dashscope` wheel on the path (its
qwen.tiktoken builds the tokenizer; install it with --no-deps). Under 8 minutes on one H100.

    PYTHONPATH=src python benchmarks/gpu_check.py OUT_DIR [--skip-tests] [--tokens 2000000]

Prints a table and writes OUT_DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from embedrank.attention import available_backends
from embedrank.models.core import LastTokenForward, load_qwen3
from embedrank.tiny_model import build_tiny_checkpoint

SHAPES = {
    # DESIGN.md §3; the vocabulary is kept (151669) so the embedding table is realistic.
    "0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128),
    "4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128),
}
H100_BF16_PEAK = 989e12


def flops_per_token(shape: dict, seq_len: float) -> float:
    """2 x non-embedding parameters + causal attention (QK^T and AV over half the sequence on average)."""
    h, f, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    params = n * (h * q + 2 * h * kv + q * h + 3 * h * f)
    attention = n * 2 * 2 * q * seq_len / 2
    return 2 * params + attention


def lognormal_lengths(n_tokens: int, median: int, cap: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < n_tokens:
        lengths.append(int(np.clip(rng.lognormal(np.log(median), 0.9), 8, cap)))
    return np.asarray(lengths)


def throughput(model, backend: str, seqs: list[np.ndarray], *, order: str, budget: int, batch_rows: int = 32):
    """Real tokens/s for one layout; `order`='sorted' uses the token-budget batcher, 'input' fixed batches."""
    fwd = LastTokenForward(model, device=torch.device("cuda"), backend=backend, max_tokens=budget, pad_id=151643)
    real = sum(len(s) for s in seqs)

    def run():
        if order == "sorted":
            fwd(seqs)
        else:
            for i in range(0, len(seqs), batch_rows):
                fwd.run_micro_batch(seqs[i:i + batch_rows])
        torch.cuda.synchronize()

    run()  # warm-up: kernels, allocator
    start = time.perf_counter()
    run()
    return real / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="tokens per measurement")
    parser.add_argument("--median", type=int, default=256)
    parser.add_argument("--shapes", default="0.6B", help="comma-separated: 0.6B,4B")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device; nothing to measure", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "date": datetime.now(timezone.utc).isoformat(), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, "backends": available_backends("cuda"),
    }
    import transformers

    report["transformers"] = transformers.__version__
    if not args.skip_tests:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
                              capture_output=True, text=True)
        print(proc.stdout[-3000:], proc.stderr[-2000:])
        report["gpu_tests"] = {"returncode": proc.returncode, "seconds": time.perf_counter() - start,
                               "tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout else []}

    lengths = lognormal_lengths(args.tokens, args.median, 8192)
    rng = np.random.default_rng(1)
    seqs = [np.append(rng.integers(0, 151643, n - 1), 151643) for n in lengths]
    report["corpus"] = {"rows": len(seqs), "tokens": int(lengths.sum()), "median": float(np.median(lengths))}
    packed = next(b for b in report["backends"] if b in ("flash_attn", "torch_varlen", "sdpa_packed"))
    rows = []
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_checkpoint(tmp, shape=shape)
            model = load_qwen3(path, causal_lm=False, device=torch.device("cuda"), dtype=torch.bfloat16)
        fpt = flops_per_token(shape, float(np.mean(lengths)))
        for label, backend, order, budget in [
            (f"packed ({packed})", packed, "sorted", 65536),
            ("padded SDPA, length-sorted", "sdpa_padded", "sorted", 65536),
            ("padded SDPA, input order (bs 32)", "sdpa_padded", "input", 0),
        ]:
            tps = throughput(model, backend, seqs, order=order, budget=budget or 1)
            rows.append({"shape": name, "layout": label, "tokens_per_s": tps, "mfu": tps * fpt / H100_BF16_PEAK})
            print(f"{name:5s} {label:36s} {tps:12.0f} tokens/s  MFU {rows[-1]['mfu']:.1%}", flush=True)
        del model
        torch.cuda.empty_cache()
    report["throughput"] = rows
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_check.json'}")
    failed = report.get("gpu_tests", {}).get("returncode", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
