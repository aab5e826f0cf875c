"""End-to-end job vs bare model stage, and driver memory vs corpus size, side by side in one run.

1. The same texts (lognormal lengths) embedded by the bare `Qwen3Embedder.embed` in this process, and by
   `embedrank embed` (Parquet shards in, committed Parquet out, local Ray) in a subprocess: tokens/s of each,
   the job's both over its whole wall time and over its streaming part (Ray start-up excluded).
2. The job's driver peak RSS (VmHWM, polled) at N and 10N rows.

    python benchmarks/job_bench.py --rows 2000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embedrank import Qwen3Embedder
from embedrank.models.tokenization import load_tokenizer
from embedrank.tiny_model import cached_tiny_checkpoint

from corpus import lognormal_corpus  # benchmarks/corpus.py

REPO = Path(__file__).resolve().parents[1]


def write_shards(texts: list[str], folder: Path, shards: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // shards)
    for s in range(shards):
        part = texts[s * per:(s + 1) * per]
        ids = [f"r{s}-{i}" for i in range(len(part))]
        pq.write_table(pa.table({"id": ids, "text": part}), folder / f"shard-{s:03d}.parquet")


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_job(input_dir: Path, output_dir: Path, max_length: int) -> dict:
    cmd = [sys.executable, "-m", "embedrank.cli", "embed", "--config", "configs/local.yaml",
           "--input", str(input_dir), "--output", str(output_dir), "--model", "builtin:tiny-random",
           "--set", "ray.progress_bars=false", "--set", f"model.max_length={max_length}",
           "--set", "progress_interval_s=1000", "--set", "input.passthrough=[]"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(0.1)
    output = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"job failed:\n{output[-3000:]}")
    report = json.loads((output_dir / "_report.json").read_text())
    report["process_wall_s"] = time.perf_counter() - start
    report["driver_peak_rss_mb"] = peak
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--median", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--memory-factor", type=int, default=10, help="corpus multiple for the memory check")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    path = cached_tiny_checkpoint()
    texts = lognormal_corpus(load_tokenizer(path), args.rows, args.median, args.max_length)
    emb = Qwen3Embedder.from_pretrained(path, device="cpu", max_length=args.max_length)
    emb.embed(texts[:16])
    start = time.perf_counter()
    emb.embed(texts)
    bare_s = time.perf_counter() - start
    tokens = emb.last_stats.real_tokens
    bare_tps = tokens / bare_s

    results: dict = {"date": datetime.now(timezone.utc).isoformat(), "rows": len(texts), "tokens": tokens,
                     "machine": f"{os.uname().machine}, {os.cpu_count()} cpus", "torch_threads": torch.get_num_threads(),
                     "bare_tokens_per_s": bare_tps}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(texts, tmp / "in", args.shards)
        small = run_job(tmp / "in", tmp / "out", args.max_length)
        job_tps_total = small["tokens"] / small["process_wall_s"]
        job_tps_stream = small["stream_tokens_per_s"]
        results.update(job=small, job_tokens_per_s_total=job_tps_total, job_tokens_per_s_run=job_tps_stream,
                       ratio_total=job_tps_total / bare_tps, ratio_run=job_tps_stream / bare_tps)

        big_texts = texts * args.memory_factor
        write_shards(big_texts, tmp / "in-big", args.shards * args.memory_factor)
        big = run_job(tmp / "in-big", tmp / "out-big", args.max_length)
        results.update(job_big=big, memory_ratio=big["driver_peak_rss_mb"] / small["driver_peak_rss_mb"])

    print(f"\nend to end: {len(texts)} rows, {tokens} tokens, {results['machine']}")
    print(f"  bare Qwen3Embedder.embed           {bare_tps:10.0f} tokens/s")
    print(f"  embedrank embed (whole process)    {job_tps_total:10.0f} tokens/s  ratio {results['ratio_total']:.2f}")
    print(f"  embedrank embed (streaming part)   {job_tps_stream:10.0f} tokens/s  ratio {results['ratio_run']:.2f}"
          "  (target >= 0.8)")
    print(f"driver peak RSS: {small['driver_peak_rss_mb']:.0f} MB at {len(texts)} rows, "
          f"{big['driver_peak_rss_mb']:.0f} MB at {len(texts) * args.memory_factor} rows: "
          f"ratio {results['memory_ratio']:.2f} (target <= 1.2)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job_bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'job_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
