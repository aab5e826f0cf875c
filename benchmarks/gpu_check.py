"""One-command GPU check: every figure that sizes a GPU cluster, each row saved the moment it is measured.

Random-weight Qwen3 models of the 0.6B and 4B shapes are built directly on the GPU in bf16 (no checkpoint
written or read); one set of weights per shape serves the embedder rows and the reranker rows. On the same
token sequences (lognormal lengths, median 256, tail to 8k), each row time-boxed:

  embedder: ours packed (the best varlen kernel), eager and compiled (compile time its own row); ours padded
            SDPA, length-sorted; the published recipe's own path (transformers sdpa, left padding, batches of 32
            in input order, as sentence-transformers runs the model card); bf16 cosine to fp32 and to the recipe
  reranker: ours (two-row head at the last position, packed) vs the recipe (full LM head at every position,
            batches of 8 in input order)
  MFU: FLOPs per token with attention counted per E[L^2]/E[L], against the datasheet's bf16 peak and against
       a bf16 matrix product measured here; the tokenizer's tokens/s per CPU core and the cores per GPU.

Every row is appended to OUT_DIR/gpu_check.json and printed as soon as it is measured; an exception or an
out-of-memory in a row is recorded in that row and the script goes on. No Ray, no network: torch with CUDA and
transformers; the tokenizer row needs the `dashscope` wheel on the path (its qwen.tiktoken), and records an
error without it. The default run (0.6B then 4B) takes about 5 minutes on one H100. `--smoke` runs every step
on the CPU with the tiny shape, to check the script itself (`make test` does).

    PYTHONPATH=src python benchmarks/gpu_check.py OUT_DIR [--smoke] [--shapes 0.6B,4B] [--seconds S] [--tests]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from embedrank.models import attention, compiler
from embedrank.models.forward import LastTokenForward, token_budget
from embedrank.models.pooling import matryoshka_normalize

SHAPES = {
    # DESIGN.md §3; the vocabulary is kept so that the embedding table and the recipe's LM head are realistic.
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
    "tiny": dict(  # --smoke: the test suite's shape
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    ),
}
VOCAB = 151669
ENDOFTEXT = 151643
DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16, SXM
TARGETS = {"0.6B": 450_000, "4B": 80_000}  # real tokens/s per GPU (issue targets)


class Recorder:
    """Rows of the run: each printed and written to the JSON as soon as it is known."""

    def __init__(self, path: Path, env: dict):
        self.path, self.report = path, {"env": env, "rows": []}
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        tmp.replace(self.path)

    def row(self, name: str, fn, **context) -> dict | None:
        """Run fn() -> dict of figures; record it (or its error) as one row, and go on either way."""
        start = time.perf_counter()
        try:
            figures = fn()
            row = {"row": name, **context, **figures, "seconds": round(time.perf_counter() - start, 2)}
            print(f"{name:44s} " + "  ".join(f"{k}={fmt(v)}" for k, v in figures.items()), flush=True)
        except Exception as exc:  # an OOM or a failing kernel costs this row only
            row = {"row": name, **context, "error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"{name:44s} ERROR {row['error'][:300]}", flush=True)
            traceback.print_exc(limit=3)
            figures = None
        self.report["rows"].append(row)
        self.flush()
        free_memory()
        return figures

    def value(self, name: str, key: str, **context):
        for row in self.report["rows"]:
            if row["row"] == name and key in row and all(row.get(k) == v for k, v in context.items()):
                return row[key]
        return None


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_token(shape: dict, attn_len: float) -> float:
    """2 x non-embedding parameters + causal attention: QK^T and AV, each 2 x q_dim FLOPs per key, over
    attn_len / 2 keys on average, attn_len = E[L^2] / E[L] (a token of a long row attends to more keys, and
    long rows hold more of the tokens: the mean length undercounts)."""
    h, f, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    params = n * (h * q + 2 * h * kv + q * h + 3 * h * f)
    return 2 * params + n * 2 * 2 * q * attn_len / 2


def lognormal_lengths(n_tokens: int, median: int, cap: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths, total = [], 0
    while total < n_tokens:
        lengths.append(int(np.clip(rng.lognormal(np.log(median), 0.9), 8, cap)))
        total += lengths[-1]
    return np.asarray(lengths)


def random_causal_lm(shape: dict, device: torch.device, dtype: torch.dtype):
    """A Qwen3ForCausalLM with tied embeddings, its weights drawn on `device` in `dtype` (nothing on the host)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from embedrank.models.forward import dtype_kwarg
    from embedrank.models.loading import _no_init_weights

    config = Qwen3Config(vocab_size=VOCAB, tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6, **shape)
    with torch.device(device), _no_init_weights():
        model = Qwen3ForCausalLM._from_config(config, attn_implementation=attention.register(), **dtype_kwarg(dtype))
    model.requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02, generator=gen)
            else:
                param.fill_(1.0)  # RMSNorm weights
    return model.eval()


@contextlib.contextmanager
def attn_implementation(model, name: str):
    """Switch the shared weights to another attention implementation (the recipe's sdpa) for a while."""
    old = model.config._attn_implementation
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        setter(name)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = name
    try:
        yield
    finally:
        if setter is not None:
            setter(old)
        else:  # pragma: no cover
            model.config._attn_implementation = old


def uncompile(base) -> None:
    """Undo compiler.compile_layers: the following rows run the eager layers again."""
    for layer in base.layers:
        layer._compiled_call_impl = None


def timed_rows(run_batch, batches: list, box_s: float, device: torch.device, rows: list | None = None):
    """Run batches (one warm-up first) until the time box is spent: (real tokens done, seconds); `rows`, when
    given, receives the number of rows done."""
    run_batch(batches[0])
    sync(device)
    done, n_rows, start = 0, 0, time.perf_counter()
    for batch in batches:
        run_batch(batch)
        done += sum(len(s) for s in batch)
        n_rows += len(batch)
        if time.perf_counter() - start > box_s:
            break
    sync(device)
    if rows is not None:
        rows.append(n_rows)
    return done, time.perf_counter() - start


def ours_batches(seqs: list, budget: int, backend: str) -> list:
    """Our own micro-batches: length-sorted, cut at the token budget (packed or padded counting), in shuffled
    order."""
    from embedrank.models import batching

    layout = "packed" if attention.is_packed(backend) else "padded"
    batches = [
        [seqs[i] for i in rows] for rows in batching.micro_batches([len(s) for s in seqs], budget, layout=layout)
    ]
    # A time-boxed row runs a prefix of the batches: in shuffled order that prefix holds short and long rows
    # alike, as the recipe's input-order prefix does (sorted, it would hold only the shortest).
    order = np.random.default_rng(0).permutation(len(batches))
    return [batches[i] for i in order]


@torch.inference_mode()
def recipe_embed_batch(base, batch: list, device: torch.device) -> torch.Tensor:
    """The model card's path on token ids: left-padded batch, transformers attention, last position."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), ENDOFTEXT, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, width - len(seq) :] = torch.from_numpy(seq)
        mask[row, width - len(seq) :] = 1
    out = base(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).last_hidden_state
    return out[:, -1]


@torch.inference_mode()
def recipe_rerank_batch(lm, batch: list, device: torch.device, yes: int = 9693, no: int = 2152) -> torch.Tensor:
    """The reranker card's path: full LM head at every position, then [no, yes] at the last one."""
    width = max(len(s) for s in batch)
    ids = torch.full((len(batch), width), ENDOFTEXT, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, width - len(seq) :] = torch.from_numpy(seq)
        mask[row, width - len(seq) :] = 1
    logits = lm(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits[:, -1, :]
    return torch.log_softmax(torch.stack([logits[:, no], logits[:, yes]], 1).float(), 1)[:, 1].exp()


def gemm_peak(device: torch.device, smoke: bool) -> dict:
    n = 256 if smoke else 8192
    dtype = torch.float32 if smoke else torch.bfloat16
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    reps, start = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return {"tflops": 2 * n**3 * reps / (time.perf_counter() - start) / 1e12, "n": n, "dtype": str(dtype)}


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in DATASHEET_BF16.items() if key in name), None)


def run_shape(rec: Recorder, name: str, seqs: list, device, dtype, args, attn_len: float, peaks: dict) -> None:
    shape = SHAPES[name]
    box = args.seconds * (2.0 if name == "4B" else 1.0)
    holder: dict = {}

    def build():
        start = time.perf_counter()
        holder["lm"] = random_causal_lm(shape, device, dtype)
        sync(device)
        gib = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        return {"build_s": time.perf_counter() - start, "gpu_gib": gib}

    if rec.row("weights: random, on the device", build, shape=name) is None:
        return
    lm = holder["lm"]
    base = lm.model
    fpt = flops_per_token(shape, attn_len)
    usable = attention.available_backends(device, dtype)
    packed = next(b for b in usable if attention.is_packed(b))
    budget = token_budget(base, device, None, 8192, packed) if device.type == "cuda" else 2048

    def figures(tokens: int, seconds: float) -> dict:
        tps = tokens / seconds
        out = {"tokens_per_s": tps, "tokens": tokens}
        for label, peak in peaks.items():
            if peak:
                out[f"mfu_{label}"] = tps * fpt / peak
        return out

    def ours(backend: str, compiled: bool = False):
        fwd = LastTokenForward(
            base, device=device, backend=backend, max_tokens=budget, pad_id=ENDOFTEXT, compiled=compiled
        )
        holder["fwd"] = fwd
        tokens, seconds = timed_rows(fwd.run_micro_batch, ours_batches(seqs, budget, backend), box, device)
        return {**figures(tokens, seconds), "budget": budget}

    ctx = dict(shape=name)
    rec.row(f"embed ours packed ({packed}), eager", lambda: ours(packed), **ctx)
    rec.row("embed ours padded SDPA, length-sorted", lambda: ours("sdpa_padded"), **ctx)

    def recipe():
        batches = [seqs[i : i + 32] for i in range(0, len(seqs), 32)]
        with attn_implementation(base, "sdpa"):
            tokens, seconds = timed_rows(lambda b: recipe_embed_batch(base, b, device), batches, box, device)
        return figures(tokens, seconds)

    rec.row("embed published recipe (sdpa, bs 32, input order)", recipe, **ctx)
    ours_tps = rec.value(f"embed ours packed ({packed}), eager", "tokens_per_s", **ctx)
    recipe_tps = rec.value("embed published recipe (sdpa, bs 32, input order)", "tokens_per_s", **ctx)
    if ours_tps and recipe_tps:
        rec.row("embed ours / recipe", lambda: {"ratio": ours_tps / recipe_tps, "target": 2.0}, **ctx)

    @torch.inference_mode()
    def parity():
        sample = sorted(seqs[:64], key=len)[:48]
        fwd = LastTokenForward(base, device=device, backend=packed, max_tokens=budget, pad_id=ENDOFTEXT)
        got = matryoshka_normalize(fwd(sample)[0])
        with attn_implementation(base, "sdpa"):
            rec_vecs = torch.cat(
                [
                    matryoshka_normalize(recipe_embed_batch(base, sample[i : i + 8], device))
                    for i in range(0, len(sample), 8)
                ]
            )
        out = {"cos_min_to_recipe": float((got * rec_vecs).sum(1).min())}
        if dtype != torch.float32:
            base.float()  # the same weights in fp32 (0.6B: 2.4 GB; 4B: 16 GB) for the reference
            try:
                ref = LastTokenForward(base, device=device, backend="sdpa_packed", max_tokens=budget, pad_id=ENDOFTEXT)
                want = matryoshka_normalize(ref(sample)[0])
            finally:
                base.to(dtype)
            out["cos_min_to_fp32"] = float((got * want).sum(1).min())
            out["target"] = 0.999
        return out

    rec.row("embed parity (bf16 packed vs fp32, vs recipe)", parity, **ctx)

    # Reranker: the same weights; prompts capped at 2048 tokens.
    pairs = [s[:2048] for s in seqs]
    score_row = (lm.lm_head.weight[9693].float() - lm.lm_head.weight[2152].float()).detach()

    def rerank_ours():
        fwd = LastTokenForward(base, device=device, backend=packed, max_tokens=budget, pad_id=ENDOFTEXT)

        def run(batch):
            return torch.sigmoid(fwd.run_micro_batch(batch).float() @ score_row)

        n: list = []
        tokens, seconds = timed_rows(run, ours_batches(pairs, budget, packed), box, device, n)
        return {**figures(tokens, seconds), "pairs_per_s": n[0] / seconds}

    def rerank_recipe():
        batches = [pairs[i : i + 8] for i in range(0, len(pairs), 8)]
        with attn_implementation(base, "sdpa"):
            n: list = []
            tokens, seconds = timed_rows(lambda b: recipe_rerank_batch(lm, b, device), batches, box, device, n)
        return {**figures(tokens, seconds), "pairs_per_s": n[0] / seconds}

    rec.row("rerank ours (two-row head, packed)", rerank_ours, **ctx)
    rec.row("rerank published recipe (full LM head, bs 8)", rerank_recipe, **ctx)
    a = rec.value("rerank ours (two-row head, packed)", "pairs_per_s", **ctx)
    b = rec.value("rerank published recipe (full LM head, bs 8)", "pairs_per_s", **ctx)
    if a and b:
        rec.row("rerank ours / recipe", lambda: {"ratio": a / b, "target": 20.0}, **ctx)

    # Compiled last: compiling changes the layers in place (undone below).
    def compile_time():
        fwd = LastTokenForward(base, device=device, backend=packed, max_tokens=budget, pad_id=ENDOFTEXT, compiled=True)
        seconds = fwd.warm_up()
        holder["compiled"] = fwd
        return {"compile_s": seconds, "graphs": compiler.graphs_compiled()}

    try:
        if rec.row(f"embed ours packed ({packed}), compile time", compile_time, **ctx) is not None:
            rec.row(f"embed ours packed ({packed}), compiled", lambda: ours(packed, compiled=True), **ctx)
            c = rec.value(f"embed ours packed ({packed}), compiled", "tokens_per_s", **ctx)
            if c and ours_tps:
                rec.row("embed compiled / eager", lambda: {"ratio": c / ours_tps}, **ctx)
            if c and name in TARGETS:
                rec.row("embed best vs target", lambda: {"best": max(c, ours_tps or 0), "target": TARGETS[name]}, **ctx)
    finally:
        uncompile(base)
    holder.clear()  # the weights go when this function returns (the closures above hold them until then)


def tokenizer_rate(texts_rows: int, median: int) -> dict:
    """Tokens/s of the embedding tokenizer on one CPU core, one text at a time (no batch parallelism)."""
    import tempfile

    from corpus import lognormal_corpus  # benchmarks/corpus.py
    from embedrank.models.tiny import build_qwen_tokenizer
    from embedrank.models.tokenization import EmbeddingTokenizer, load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_qwen_tokenizer(append_endoftext=True).save_pretrained(tmp)
        hf = load_tokenizer(Path(tmp))
    texts = lognormal_corpus(hf, texts_rows, median, 8192)
    tokenizer = EmbeddingTokenizer(hf, max_length=8192)
    tokenizer.tokenize(texts[:8])
    start = time.perf_counter()
    tokens = sum(int(tokenizer.tokenize([t]).lengths.sum()) for t in texts)
    return {"tokens_per_s_per_core": tokens / (time.perf_counter() - start), "texts": len(texts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--shapes", default="0.6B,4B", help="comma-separated, in order: 0.6B,4B")
    parser.add_argument("--tokens", type=int, default=3_000_000, help="tokens in the corpus (rows are time-boxed)")
    parser.add_argument("--median", type=int, default=256)
    parser.add_argument("--cap", type=int, default=8192, help="longest row, tokens")
    parser.add_argument("--seconds", type=float, default=8.0, help="time box per row (4B rows get twice)")
    parser.add_argument("--tests", action="store_true", help="also run tests/gpu, after the figures (1-2 minutes)")
    parser.add_argument("--smoke", action="store_true", help="every step on the CPU, tiny shape: checks the script")
    args = parser.parse_args()
    if args.smoke:
        device, dtype = torch.device("cpu"), torch.float32
        args.shapes, args.tokens, args.seconds, args.median, args.cap = "tiny", 6_000, 0.2, 64, 512
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.bfloat16
    else:
        print("gpu_check: no CUDA device; nothing to measure (--smoke checks the script on the CPU)", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    lengths = lognormal_lengths(args.tokens, args.median, args.cap)
    rng = np.random.default_rng(1)
    seqs = [np.append(rng.integers(0, ENDOFTEXT, n - 1), ENDOFTEXT).astype(np.int64) for n in lengths]
    attn_len = float((lengths.astype(np.float64) ** 2).mean() / lengths.mean())
    env = {
        "date": datetime.now(timezone.utc).isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "backends": attention.available_backends(device, dtype),
        "dtype": str(dtype),
        "corpus": {
            "rows": len(seqs),
            "tokens": int(lengths.sum()),
            "median": float(np.median(lengths)),
            "mean": float(lengths.mean()),
            "attention_length_E[L^2]/E[L]": attn_len,
        },
        "seconds_per_row": args.seconds,
    }
    rec = Recorder(out / "gpu_check.json", env)
    print(json.dumps(env, indent=1), flush=True)
    started = time.perf_counter()
    gemm = rec.row("bf16 GEMM peak, measured", lambda: gemm_peak(device, args.smoke))
    peaks = {"measured": gemm["tflops"] * 1e12 if gemm else None, "datasheet": datasheet_peak(device)}
    rec.row("bf16 peak, datasheet", lambda: {"tflops": (peaks["datasheet"] or 0) / 1e12})
    for name in args.shapes.split(","):
        run_shape(rec, name, seqs, device, dtype, args, attn_len, peaks)
    tok = rec.row("tokenizer, one CPU core", lambda: tokenizer_rate(300 if args.smoke else 2000, args.median))
    if tok:
        for name in args.shapes.split(","):
            best = max(
                (
                    r.get("tokens_per_s", 0)
                    for r in rec.report["rows"]
                    if r.get("shape") == name and r["row"].startswith("embed ours packed")
                ),
                default=0,
            )
            short = tok["tokens_per_s_per_core"]
            rec.row(
                "CPU cores per GPU (tokenizer alone)",
                lambda best=best, short=short: {"gpu_tokens_per_s": best, "cores": best / short if short else None},
                shape=name,
            )
    if args.tests:

        def tests():
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "-p", "no:cacheprovider"],
                capture_output=True,
                text=True,
                timeout=240,
            )
            print(proc.stdout[-3000:], proc.stderr[-2000:])
            tail = proc.stdout.strip().splitlines()[-1:]
            if proc.returncode:
                raise RuntimeError(f"tests/gpu exited {proc.returncode}: {tail}")
            return {"returncode": proc.returncode, "tail": tail}

        rec.row("tests/gpu", tests)
    rec.row("total", lambda: {"wall_s": time.perf_counter() - started})
    print(f"wrote {out / 'gpu_check.json'}")
    failed = [r["row"] for r in rec.report["rows"] if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
