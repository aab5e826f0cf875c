"""What an operator sees and reads: a run in a real pseudo-terminal (the live bar, the summary, none of Ray's
own lines), and its output read through the documented paths by every common reader."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time

import pytest

from .conftest import REPO, job_command, job_env

ROWS = 60


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory, job_config_module):
    """One embed run in a pseudo-terminal over a file with good rows and two bad ones: (output, what it showed)."""
    folder = tmp_path_factory.mktemp("terminal")
    lines = [json.dumps({"id": f"d{i}", "text": f"document number {i} " * (i % 7 + 1)}) for i in range(ROWS)]
    lines += ['{"id": "no-text"}', "not json"]
    (folder / "in").mkdir()
    (folder / "in" / "docs.jsonl").write_text("\n".join(lines) + "\n")
    out = folder / "out"
    config = job_config_module(str(folder / "in"), str(out), embed={"rows_per_batch": 8})
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        job_command("embed", config),
        cwd=REPO,
        env={**job_env(), "TERM": "xterm"},
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)
    shown = b""
    deadline = time.time() + 300
    while time.time() < deadline:
        ready, _, _ = select.select([primary], [], [], 1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other end closed: the job exited
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(primary)
    return out, proc.returncode, shown.decode(errors="replace")


def test_a_terminal_shows_the_live_bar_then_the_summary_and_no_ray_lines(terminal_run):
    _, code, shown = terminal_run
    assert code == 0, shown[-3000:]
    assert re.search(r"\r\x1b\[2K\[[#-]{20}\] +\d+%", shown), shown[-2000:]  # the bar, redrawn in place
    assert "embedrank embed: " in shown and f"rows       read {ROWS + 2}; rows embedded {ROWS}" in shown
    for noise in (" INFO ", "core_worker.cc", "Token authentication", "Progress bars disabled", "Traceback"):
        assert noise not in shown, noise
    printed = [line for line in re.split(r"[\r\n]+", shown) if line.strip() and not line.startswith("\x1b[2K")]
    assert len(printed) < 20, printed


def test_every_reader_reads_the_vectors_and_the_dead_letters_at_the_documented_paths(terminal_run):
    """vectors/ and rejected/ as folders (pyarrow, pandas, polars, Ray Data) or `**/*.parquet` globs (DuckDB)."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    out, code, _ = terminal_run
    assert code == 0
    vectors, rejected = f"{out}/vectors/", f"{out}/rejected/"
    assert ds.dataset(vectors, format="parquet").count_rows() == ROWS
    assert len(pd.read_parquet(vectors)) == ROWS
    assert pl.read_parquet(vectors).height == ROWS
    assert pl.scan_parquet(vectors).select(pl.len()).collect().item() == ROWS
    assert pl.read_parquet(out / "vectors" / "**" / "*.parquet").height == ROWS
    assert duckdb.sql(f"select count(distinct id) from read_parquet('{vectors}**/*.parquet')").fetchall()[0][0] == ROWS
    assert duckdb.sql(f"select count(*) from read_parquet('{rejected}**/*.parquet')").fetchall()[0][0] == 2
    assert sorted(pl.read_parquet(rejected)["reason"].to_list()) == ["bad_json", "null_text"]
    assert pd.read_parquet(rejected).shape[0] == 2
    dims = duckdb.sql(f"select distinct len(embedding) from read_parquet('{vectors}**/*.parquet')").fetchall()
    assert dims == [(256,)]


def test_ray_data_reads_the_vectors_folder(terminal_run):
    import ray

    out, code, _ = terminal_run
    assert code == 0
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        import ray.data

        assert ray.data.read_parquet(f"{out}/vectors/").count() == ROWS
    finally:
        ray.shutdown()
