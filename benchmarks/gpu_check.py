"""One-command GPU check: parity tests, then the throughput figures that size a GPU cluster, bf16.

For 0.6B- and 4B-shaped random-weight models: tokens/s and MFU of packed varlen vs padded SDPA (length-sorted)
vs padded in input order (lognormal lengths, median 256); tokenisation tokens/s on one CPU core (how many CPU
workers keep a GPU fed); reranker pairs/s. No Ray, no network. Needs torch with CUDA, transformers, and the
`dashscope` wheel on the path (its qwen.tiktoken builds the tokenizer; install it with --no-deps). Under 8
minutes on one H100. `--smoke` runs every step on the CPU with a tiny shape, to check the script itself.

    PYTHONPATH=src python benchmarks/gpu_check.py OUT_DIR [--skip-tests] [--profile] [--smoke]

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

from embedrank.models.attention import available_backends
from embedrank.models.forward import LastTokenForward, load_qwen3, token_budget
from embedrank.models.tiny import build_tiny_checkpoint

SHAPES = {
    # DESIGN.md §3; the vocabulary is kept (151669) so the embedding table is realistic.
    "0.6B": dict(
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
    ),
    "4B": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
    ),
    # --smoke: the test suite's tiny shape, on the CPU
    "tiny": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    ),
}
TOKEN_SHARE = {"0.6B": 1.0, "4B": 0.5, "tiny": 1.0}  # of --tokens per measurement: keeps the 4B runs short
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


def throughput(
    model, backend: str, seqs: list[np.ndarray], *, order: str, budget: int, device: torch.device, batch_rows: int = 32
) -> float:
    """Real tokens/s for one layout; `order`='sorted' uses the token-budget batcher, 'input' fixed batches."""
    fwd = LastTokenForward(model, device=device, backend=backend, max_tokens=budget, pad_id=151643)

    def run(part):
        if order == "sorted":
            fwd(part)
        else:
            for i in range(0, len(part), batch_rows):
                fwd.run_micro_batch(part[i : i + batch_rows])
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(seqs[: max(1, len(seqs) // 10)])  # warm-up: kernels, allocator
    start = time.perf_counter()
    run(seqs)
    return sum(len(s) for s in seqs) / (time.perf_counter() - start)


def tokenise_rate(path: Path, texts: list[str]) -> float:
    """Tokens/s of the embedding tokenizer on one CPU core (one text at a time: no batch parallelism)."""
    from embedrank.models.tokenization import EmbeddingTokenizer, load_tokenizer

    tokenizer = EmbeddingTokenizer(load_tokenizer(path), max_length=8192)
    tokenizer.tokenize(texts[:8])
    start = time.perf_counter()
    tokens = sum(int(tokenizer.tokenize([t]).lengths.sum()) for t in texts)
    return tokens / (time.perf_counter() - start)


def rerank_rate(shape: dict, device: torch.device, texts: list[str], pairs: int) -> float:
    """Pairs/s of Qwen3Reranker.score (two-row head, last position, packed) on a random-weight model."""
    from embedrank import Qwen3Reranker

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_checkpoint(tmp, kind="reranker", append_endoftext=False, shape=shape)
        reranker = Qwen3Reranker.from_pretrained(path, device=device, max_length=2048)
    queries = [t[:200] for t in texts[:pairs]]
    docs = [texts[(i + 1) % len(texts)] for i in range(len(queries))]
    reranker.score(queries[:16], docs[:16])
    start = time.perf_counter()
    reranker.score(queries, docs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(queries) / (time.perf_counter() - start)


def print_profile(model, backend: str, seqs: list[np.ndarray], device: torch.device, budget: int) -> None:
    """Where one micro-batch's time goes: the torch profiler's operators, by their own device time."""
    from torch.profiler import ProfilerActivity, profile

    fwd = LastTokenForward(model, device=device, backend=backend, max_tokens=budget, pad_id=151643)
    batch = list(seqs[:64])
    fwd(batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fwd(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="tokens per measurement (0.6B shape)")
    parser.add_argument("--median", type=int, default=256)
    parser.add_argument("--shapes", default="0.6B,4B", help="comma-separated: 0.6B,4B")
    parser.add_argument("--rerank-pairs", type=int, default=2048)
    parser.add_argument("--profile", action="store_true", help="print the torch profiler's table of one batch")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape, few tokens: checks the script")
    args = parser.parse_args()
    if args.smoke:
        device, args.shapes, args.tokens, args.rerank_pairs, args.skip_tests = (
            torch.device("cpu"),
            "tiny",
            20_000,
            32,
            True,
        )
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        print("gpu_check: no CUDA device; nothing to measure (--smoke checks the script on the CPU)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    report: dict = {
        "date": datetime.now(timezone.utc).isoformat(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "backends": available_backends(device.type),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run)",
    }
    if not args.skip_tests:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
            capture_output=True,
            text=True,
        )
        print(proc.stdout[-3000:], proc.stderr[-2000:])
        report["gpu_tests"] = {
            "returncode": proc.returncode,
            "seconds": time.perf_counter() - start,
            "tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout else [],
        }

    lengths = lognormal_lengths(args.tokens, args.median, 8192)
    rng = np.random.default_rng(1)
    all_seqs = [np.append(rng.integers(0, 151643, n - 1), 151643) for n in lengths]
    report["corpus"] = {"rows": len(all_seqs), "tokens": int(lengths.sum()), "median": float(np.median(lengths))}
    packed = next(b for b in report["backends"] if b in ("flash_attn", "torch_varlen", "sdpa_packed"))
    rows = []
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        seqs = all_seqs[: max(1, int(len(all_seqs) * TOKEN_SHARE[name]))]
        with tempfile.TemporaryDirectory() as tmp:
            path = build_tiny_checkpoint(tmp, shape=shape)
            model = load_qwen3(path, causal_lm=False, device=device, dtype=torch.bfloat16)
        budget = token_budget(model, device, None, 8192)
        fpt = flops_per_token(shape, float(np.mean([len(s) for s in seqs])))
        for label, backend, order in [
            (f"packed ({packed})", packed, "sorted"),
            ("padded SDPA, length-sorted", "sdpa_padded", "sorted"),
            ("padded SDPA, input order (bs 32)", "sdpa_padded", "input"),
        ]:
            tps = throughput(model, backend, seqs, order=order, budget=budget, device=device)
            rows.append(
                {
                    "shape": name,
                    "layout": label,
                    "tokens_per_s": tps,
                    "budget": budget,
                    "mfu": tps * fpt / H100_BF16_PEAK,
                }
            )
            print(
                f"{name:5s} {label:36s} {tps:12.0f} tokens/s  MFU {rows[-1]['mfu']:.1%}  (budget {budget})", flush=True
            )
        by_layout = {r["layout"]: r["tokens_per_s"] for r in rows if r["shape"] == name}
        print(
            f"{name:5s} packed / padded in input order: "
            f"{by_layout[f'packed ({packed})'] / by_layout['padded SDPA, input order (bs 32)']:.2f}x (target >= 2x)"
        )
        if args.profile:
            print_profile(model, packed, seqs, device, budget)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["throughput"] = rows

    from corpus import lognormal_corpus  # benchmarks/corpus.py: real text at lognormal lengths
    from embedrank.models.tokenization import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_checkpoint(tmp, shape=SHAPES["tiny"])
        texts = lognormal_corpus(load_tokenizer(path), 400 if args.smoke else 2000, args.median, 8192)
        tok_rate = tokenise_rate(path, texts)
    best = max(r["tokens_per_s"] for r in rows if r["shape"] == args.shapes.split(",")[0])
    report["tokenise_tokens_per_s_per_core"] = tok_rate
    report["cpu_cores_per_gpu"] = best / tok_rate
    print(
        f"tokenising: {tok_rate:.0f} tokens/s on one CPU core: {best / tok_rate:.1f} cores keep one "
        f"{args.shapes.split(',')[0]} model fed"
    )
    report["reranker_pairs_per_s"] = {
        name: rerank_rate(SHAPES[name], device, texts, args.rerank_pairs) for name in args.shapes.split(",")
    }
    for name, rate in report["reranker_pairs_per_s"].items():
        print(f"{name:5s} reranker: {rate:.0f} pairs/s (Qwen3Reranker.score)")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_check.json'}")
    failed = report.get("gpu_tests", {}).get("returncode", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
