"""The exactly-once checker of the reliability tests, and the table `make reliability` prints.

`check_exactly_once` compares a committed output (what its `_embedrank/manifest.json` lists) with the input: the
ids equal the valid input ids, none twice, every vector equal to the embedder's for its text, every other row in
`_rejected/` with its reason, and nothing but the vectors where a reader of the output root looks (`*.parquet`
files outside `_` folders). Each scenario records one line (`record`); the session prints them as a table.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedrank.verify import row_cosines

RESULTS: list[dict] = []
_VECTORS: dict[tuple[int, str], np.ndarray] = {}  # (embedder, text) -> its vector, shared by the scenarios


def expected_vectors(embedder, texts: list[str]) -> np.ndarray:
    missing = sorted({t for t in texts if (id(embedder), t) not in _VECTORS})
    if missing:
        for text, vector in zip(missing, embedder.embed(missing)):
            _VECTORS[id(embedder), text] = vector
    return np.stack([_VECTORS[id(embedder), t] for t in texts])


def _read(fs, root: str, files: list[str]) -> pa.Table | None:
    tables = []
    for name in files:
        with fs.open(f"{root}/{name}", "rb") as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default") if tables else None


def check_exactly_once(fs, output_root: str, *, valid: dict[str, str], rejected, embedder) -> dict:
    """Assert the committed output at `output_root` (a path in `fs`) holds each valid row once, right.

    valid: id -> text of every row that must be embedded; rejected: id -> reason (or a list of (id, reason)
    pairs, where ids repeat or are unknown) of every row that must be dead-lettered, once each. Returns the
    counts for the table.
    """
    fs.invalidate_cache()
    manifest = json.loads(fs.cat_file(f"{output_root}/_embedrank/manifest.json"))
    out = _read(fs, output_root, manifest["files"])
    ids = out.column("id").to_pylist() if out is not None else []
    dead = _read(fs, output_root, manifest["rejected_files"])
    dead_rows = dead.to_pylist() if dead is not None else []
    # After a completed run the directory holds exactly what the manifest lists (no strays a reader could see), and
    # a reader of the root meets only the vectors: the only `*.parquet` files (a DuckDB or polars `**` glob) and the
    # only files outside `_` folders (pyarrow, pandas, Ray Data) are the committed vector files.
    found = [p[len(output_root) + 1 :] for p in fs.find(output_root)]
    listed = {p for p in found if p.endswith((".parquet", ".pq")) and not p.startswith("_embedrank/staging/")}
    committed = set(manifest["files"]) | set(manifest["rejected_files"])
    assert listed == committed, sorted(listed ^ committed)[:5]
    globbed = {p for p in found if p.endswith(".parquet")}
    visible = {p for p in found if not any(part.startswith(("_", ".")) for part in p.split("/"))}
    assert globbed == visible == set(manifest["files"]), sorted(globbed ^ visible ^ set(manifest["files"]))[:5]
    assert all(p.startswith("_rejected/") for p in manifest["rejected_files"]), manifest["rejected_files"][:3]

    stats = {
        "rows_in": len(valid) + len(dead_rows),
        "rows_out": len(ids),
        "lost": len(set(valid) - set(ids)),
        "duplicated": len(ids) - len(set(ids)),
        "rejected": dict(sorted(Counter(r["reason"] for r in dead_rows).items())),
    }
    assert stats["lost"] == 0, sorted(set(valid) - set(ids))[:5]
    assert stats["duplicated"] == 0, [i for i, n in Counter(ids).items() if n > 1][:5]
    assert set(ids) == set(valid), sorted(set(ids) - set(valid))[:5]
    got = np.asarray(out.column("embedding").to_pylist(), dtype=np.float32)
    want = expected_vectors(embedder, [valid[i] for i in ids])
    assert row_cosines(got, want).min() >= 0.99999
    assert np.abs(got - want).max() < 1e-4
    got_dead = Counter((r["id"], r["reason"]) for r in dead_rows)
    want_dead = Counter(rejected.items() if isinstance(rejected, dict) else rejected)
    assert got_dead == want_dead, (got_dead - want_dead, want_dead - got_dead)
    return stats


def record(fault: str, runs: int, stats: dict) -> None:
    RESULTS.append({"fault": fault, "runs": runs, **stats})


def table() -> str:
    head = ("fault", "runs", "rows in", "rows out", "lost", "duplicated", "rejected by reason")
    rows = [
        (
            r["fault"],
            str(r["runs"]),
            str(r["rows_in"]),
            str(r["rows_out"]),
            str(r["lost"]),
            str(r["duplicated"]),
            ", ".join(f"{k} {v}" for k, v in r["rejected"].items()) or "-",
        )
        for r in RESULTS
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])
