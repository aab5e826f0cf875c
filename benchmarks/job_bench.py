"""End-to-end job vs bare model stage, and driver memory vs corpus size, side by side in one run.

1. The same texts (lognormal lengths) embedded by the bare `Qwen3Embedder.embed` in this process, and by
   `embedrank embed` (Parquet shards in, committed Parquet out, local Ray) in a subprocess: tokens/s of each,
   the job's both over its whole wall time and over its streaming part (Ray start-up excluded).
2. Peak RSS (VmHWM, polled) of the driver and of the Ray workers (model actor, CPU task workers) of the same
   job at 10k and 100k short rows.
3. The same short rows laid out three ways: 20 files, one Parquet file (several row groups, cut into pieces),
   and 5,000 tiny files (grouped into tasks): wall time, seconds to the first progress line, peak RSS, and
   each one's ratio to the 20-file case (`--layout-rows 0` skips it).

    python benchmarks/job_bench.py --rows 2000 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from corpus import lognormal_corpus  # benchmarks/corpus.py
from embedrank import Qwen3Embedder
from embedrank.models.tiny import cached_tiny_checkpoint
from embedrank.models.tokenization import load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def write_shards(texts: list[str], folder: Path, shards: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(texts) // shards)
    for s in range(shards):
        part = texts[s * per : (s + 1) * per]
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


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the local Ray the job started: raylet, GCS, workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def role(pid: int) -> str | None:
    """A Ray worker's role from its process title (Ray sets `ray::<task or actor>`); None for other processes."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return None
    if not title.startswith("ray::"):
        return None
    return "model actor" if "Actor" in title else "CPU task workers"


def run_job(input_dir: Path, output_dir: Path, max_length: int, *extra: str) -> dict:
    """Run `embedrank embed` in a subprocess; its report plus the driver's and each worker role's peak RSS."""
    cmd = [
        sys.executable,
        "-m",
        "embedrank.cli",
        "embed",
        "--config",
        "configs/local.yaml",
        "--input",
        str(input_dir),
        "--output",
        str(output_dir),
        "--model",
        "builtin:tiny-random",
        "--set",
        f"model.max_length={max_length}",
        "--set",
        "progress_interval_s=1000",
        "--set",
        "input.passthrough=[]",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: lines.extend((time.perf_counter() - start, line) for line in proc.stdout), daemon=True
    )
    reader.start()
    peak = 0.0
    workers: dict[int, tuple[str, float]] = {}  # pid -> (role, peak RSS): kept after the process exits
    last_scan = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid))
        if time.perf_counter() - last_scan > 0.5:
            last_scan = time.perf_counter()
            for pid in descendants(proc.pid):
                kind = role(pid) or (workers.get(pid) or (None,))[0]
                if kind:
                    workers[pid] = (kind, max(peak_rss_mb(pid), workers.get(pid, (kind, 0.0))[1]))
        time.sleep(0.1)
    reader.join(timeout=30)
    output = "".join(line for _, line in lines)
    if proc.returncode != 0:
        raise SystemExit(f"job failed:\n{output[-3000:]}")
    report = json.loads((output_dir / "_embedrank" / "report.json").read_text())
    report["process_wall_s"] = time.perf_counter() - start
    # The first progress line that counts rows through the model (before it: "starting: ... rows prepared").
    report["first_progress_s"] = next(
        (t for t, line in lines if line.startswith("progress:") and " embedded, " in line), None
    )
    report["driver_peak_rss_mb"] = peak
    report["worker_peak_rss_mb"] = {
        kind: max(mb for k, mb in workers.values() if k == kind) for kind in sorted({k for k, _ in workers.values()})
    }
    return report


def write_short_rows(folder: Path, rows: int, per_shard: int = 2000) -> None:
    """`rows` short texts in shards of `per_shard`: the memory check is about bookkeeping, not the model."""
    folder.mkdir(parents=True, exist_ok=True)
    for shard in range(-(-rows // per_shard)):
        ids = [f"s{shard}-{i}" for i in range(min(per_shard, rows - shard * per_shard))]
        pq.write_table(pa.table({"id": ids, "text": [f"row {i}" for i in ids]}), folder / f"part-{shard:04d}.parquet")


def memory_table(tmp: Path, small_rows: int, factor: int) -> dict:
    """Driver and worker peak memory of the same job at N and factor x N rows."""
    tuning = ["--set", "embed.rows_per_batch=4096", "--set", "prepare.rows_per_batch=2000"]
    out = {}
    for rows in (small_rows, small_rows * factor):
        write_short_rows(tmp / f"mem-{rows}", rows)
        report = run_job(tmp / f"mem-{rows}", tmp / f"mem-out-{rows}", 16, *tuning)
        out[rows] = {"driver": report["driver_peak_rss_mb"], **report["worker_peak_rss_mb"]}
    return out


def write_layout(folder: Path, rows: int, layout: str) -> None:
    """`rows` short texts as 20 files, one file of row groups of 25k rows, or 5,000 tiny files."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"l{i}" for i in range(rows)]
    table = pa.table({"id": ids, "text": [f"layout row {i} " + "word " * (i % 9) for i in range(rows)]})
    files = {"20 files": 20, "1 file": 1, "5000 files": 5000}[layout]
    per = -(-rows // files)
    for f in range(files):
        part = table.slice(f * per, per)
        if part.num_rows:
            pq.write_table(part, folder / f"part-{f:05d}.parquet", row_group_size=25_000)


def layout_table(tmp: Path, rows: int) -> dict:
    """The same rows in three layouts: wall time, first progress, peak RSS (driver and workers)."""
    tuning = [
        "--set",
        "embed.rows_per_batch=4096",
        "--set",
        "prepare.rows_per_batch=2000",
        "--set",
        "progress_interval_s=5",
    ]
    out = {}
    for layout in ("20 files", "1 file", "5000 files"):
        folder = tmp / f"layout-{layout.replace(' ', '-')}"
        write_layout(folder, rows, layout)
        report = run_job(folder, tmp / f"{folder.name}-out", 16, *tuning)
        assert report["rows"]["embedded"] == rows, report["rows"]
        out[layout] = {
            "wall_s": report["process_wall_s"],
            "first_progress_s": report["first_progress_s"],
            "driver": report["driver_peak_rss_mb"],
            **report["worker_peak_rss_mb"],
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--median", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--memory-rows", type=int, default=10_000, help="rows of the small memory run (0: skip)")
    parser.add_argument("--memory-factor", type=int, default=10, help="corpus multiple for the memory check")
    parser.add_argument("--layout-rows", type=int, default=300_000, help="rows of the layout check (0: skip)")
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

    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(),
        "rows": len(texts),
        "tokens": tokens,
        "machine": f"{os.uname().machine}, {os.cpu_count()} cpus",
        "torch_threads": torch.get_num_threads(),
        "bare_tokens_per_s": bare_tps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_shards(texts, tmp / "in", args.shards)
        # The actor batch of the figures in BENCHMARKS.md (1,024 rows), not the sample config's 64 rows, which
        # is sized for the sample's progress bar and costs the model stage its packing.
        small = run_job(tmp / "in", tmp / "out", args.max_length, "--set", "embed.rows_per_batch=1024")
        job_tps_total = small["tokens"] / small["process_wall_s"]
        job_tps_stream = small["stream_tokens_per_s"]
        results.update(
            job=small,
            job_tokens_per_s_total=job_tps_total,
            job_tokens_per_s_run=job_tps_stream,
            ratio_total=job_tps_total / bare_tps,
            ratio_run=job_tps_stream / bare_tps,
        )

        memory = memory_table(tmp, args.memory_rows, args.memory_factor) if args.memory_rows else {}
        if memory:
            small_mem, big_mem = memory.values()
            results.update(memory_peak_rss_mb=memory, memory_ratio=big_mem["driver"] / small_mem["driver"])
        layouts = layout_table(tmp, args.layout_rows) if args.layout_rows else {}
        results.update(layouts=layouts)

    print(f"\nend to end: {len(texts)} rows, {tokens} tokens, {results['machine']}")
    print(f"  bare Qwen3Embedder.embed           {bare_tps:10.0f} tokens/s")
    print(f"  embedrank embed (whole process)    {job_tps_total:10.0f} tokens/s  ratio {results['ratio_total']:.2f}")
    print(
        f"  embedrank embed (streaming part)   {job_tps_stream:10.0f} tokens/s  ratio {results['ratio_run']:.2f}"
        "  (target >= 0.8)"
    )
    if memory:
        small_rows, big_rows = memory
        print(f"\npeak RSS (MB) at {small_rows} vs {big_rows} rows (short texts, same job):")
        for process in small_mem:
            print(
                f"  {process:18s} {small_mem[process]:8.0f} {big_mem.get(process, 0.0):8.0f}  "
                f"ratio {big_mem.get(process, 0.0) / small_mem[process]:.2f}"
            )
        print(f"driver ratio {results['memory_ratio']:.2f} (target <= 1.2)")
    if layouts:
        base = layouts["20 files"]
        print(f"\n{args.layout_rows} short rows in three layouts (ratios to 20 files; target <= 1.5):")
        for layout, row in layouts.items():
            cells = "  ".join(
                f"{k} {v:.0f} ({v / base[k]:.2f}x)" for k, v in row.items() if k != "first_progress_s" and base.get(k)
            )
            print(f"  {layout:10s} first progress {row['first_progress_s'] or float('nan'):.0f} s  {cells}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "job_bench.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out / 'job_bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
