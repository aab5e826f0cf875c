"""The driver streams: its peak memory does not grow with the corpus (100k rows vs 10k rows, <= 1.2x).

Marked slow (make test-all); `make bench-cpu` prints the same comparison for the driver and the workers.
"""

import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import REPO, job_command, job_env

ROWS_PER_SHARD = 2000


def write_tiny_corpus(folder: Path, rows: int) -> None:
    folder.mkdir(parents=True)
    for shard in range(rows // ROWS_PER_SHARD):
        ids = [f"s{shard}-{i}" for i in range(ROWS_PER_SHARD)]
        pq.write_table(pa.table({"id": ids, "text": [f"row {i}" for i in ids]}), folder / f"part-{shard:04d}.parquet")


def driver_peak_mb(config: Path, *args: str) -> float:
    """Run a job and return the driver process's peak RSS (VmHWM), polled until it exits."""
    proc = subprocess.Popen(
        job_command("embed", config, *args),
        cwd=REPO,
        env=job_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    peak = 0.0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            pass
        time.sleep(0.05)
    output = proc.stdout.read()
    assert proc.returncode == 0, output[-3000:]
    return peak


@pytest.mark.slow
def test_driver_memory_flat_from_10k_to_100k_rows(tmp_path, job_config):
    write_tiny_corpus(tmp_path / "small", 10_000)
    write_tiny_corpus(tmp_path / "large", 100_000)
    tuning = [
        "--set",
        "model.max_length=16",
        "--set",
        "embed.rows_per_batch=4096",
        "--set",
        "prepare.rows_per_batch=2000",
        "--set",
        "embed.torch_threads=2",
    ]
    small = driver_peak_mb(job_config(str(tmp_path / "small"), str(tmp_path / "out-small")), *tuning)
    large = driver_peak_mb(job_config(str(tmp_path / "large"), str(tmp_path / "out-large")), *tuning)
    assert large <= 1.2 * small, f"driver peak {small:.0f} MB at 10k rows, {large:.0f} MB at 100k rows"
