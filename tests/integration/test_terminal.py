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
    config = job_config_module(str(folder / "in"), str(out), embed={"batch_size": 8})
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
    """vectors/ and _rejected/ as folders (pyarrow, pandas, polars) or globs (DuckDB, polars): dead letters are
    Parquet files named `*.pq`, so that no `**/*.parquet` glob over the whole output reads them."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    out, code, _ = terminal_run
    assert code == 0
    vectors, rejected = f"{out}/vectors/", f"{out}/_rejected/"
    assert ds.dataset(vectors, format="parquet").count_rows() == ROWS
    assert len(pd.read_parquet(vectors)) == ROWS
    assert pl.read_parquet(vectors).height == ROWS
    assert pl.scan_parquet(vectors).select(pl.len()).collect().item() == ROWS
    assert pl.read_parquet(out / "vectors" / "**" / "*.parquet").height == ROWS
    assert duckdb.sql(f"select count(distinct id) from read_parquet('{vectors}**/*.parquet')").fetchall()[0][0] == ROWS
    assert duckdb.sql(f"select count(*) from read_parquet('{rejected}**/*.pq')").fetchall()[0][0] == 2
    assert sorted(pl.read_parquet(rejected)["reason"].to_list()) == ["bad_json", "null_text"]
    assert pd.read_parquet(rejected).shape[0] == 2
    assert ds.dataset(rejected, format="parquet").to_table().column_names == ["id", "source", "row", "reason"]
    dims = duckdb.sql(f"select distinct len(embedding) from read_parquet('{vectors}**/*.parquet')").fetchall()
    assert dims == [(256,)]


def read_exactly_or_fail(read) -> str:
    """'read' when `read()` returns the committed vectors exactly (every id once, with its embedding), 'error'
    when it raises; anything else (dead letters, a mix, rows missing or twice) fails the test."""
    try:
        ids, columns = read()
    except Exception:
        return "error"
    assert "embedding" in columns and "reason" not in columns, columns
    assert sorted(ids) == sorted(f"d{i}" for i in range(ROWS)), (len(ids), sorted(set(ids))[:3])
    return "read"


def test_readers_pointed_at_the_output_root_read_the_vectors_or_fail_never_the_dead_letters(terminal_run):
    """The root is the first thing people try. With dead letters present, each reader reads exactly the vectors,
    or fails with an error: never the dead letters, never a mix."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    out, code, _ = terminal_run
    assert code == 0 and list((out / "_rejected").rglob("*.pq"))  # the dead letters are there
    glob = f"{out}/**/*.parquet"

    def frame(df):
        return df["id"].to_list(), list(df.columns)

    def duck(sql):
        rel = duckdb.sql(sql)
        return [row[0] for row in rel.fetchall()], rel.columns

    outcomes = {
        "pyarrow.dataset": read_exactly_or_fail(
            lambda: (lambda t: (t.column("id").to_pylist(), t.column_names))(
                ds.dataset(out, format="parquet").to_table()
            )
        ),
        "pandas": read_exactly_or_fail(lambda: frame(pd.read_parquet(out))),
        "polars read_parquet **": read_exactly_or_fail(lambda: frame(pl.read_parquet(glob))),
        "polars scan_parquet **": read_exactly_or_fail(lambda: frame(pl.scan_parquet(glob).collect())),
        "duckdb **": read_exactly_or_fail(lambda: duck(f"select id, * exclude (id) from read_parquet('{glob}')")),
        "polars read_parquet root": read_exactly_or_fail(lambda: frame(pl.read_parquet(out))),
    }
    # A count alone would not notice a schema mismatch (DuckDB counts every file's rows): count too.
    assert duckdb.sql(f"select count(*) from read_parquet('{glob}')").fetchall()[0][0] == ROWS
    assert pl.scan_parquet(glob).select(pl.len()).collect().item() == ROWS
    assert outcomes == {
        "pyarrow.dataset": "read",
        "pandas": "read",
        "polars read_parquet **": "read",
        "polars scan_parquet **": "read",
        "duckdb **": "read",
        "polars read_parquet root": "error",  # the folder holds JSON bookkeeping too: polars refuses the mix
    }


def test_ray_data_reads_the_vectors_folder_and_the_root(terminal_run):
    import ray

    out, code, _ = terminal_run
    assert code == 0
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        import ray.data

        assert ray.data.read_parquet(f"{out}/vectors/").count() == ROWS
        root = ray.data.read_parquet(str(out))
        assert root.schema().names[:2] == ["id", "embedding"] and "reason" not in root.schema().names
        assert sorted(root.to_pandas()["id"]) == sorted(f"d{i}" for i in range(ROWS))
        dead = ray.data.read_parquet(f"{out}/_rejected/", file_extensions=["pq"])
        assert sorted(dead.to_pandas()["reason"]) == ["bad_json", "null_text"]
    finally:
        ray.shutdown()
