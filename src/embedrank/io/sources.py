"""Input shards: list them, check them in planning, and read them row by row without losing a row.

A shard is one input file (Parquet, or JSON Lines plain/gzip/zstd), local or s3://. Reading is deliberately
our own rather than `ray.data.read_json`: one bad line must become one dead-letter row (`bad_json`,
`invalid_utf8`), not a failed file. Blank lines in JSON Lines are not rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadShardError, PlanError
from ..schema import BAD_JSON, INVALID_UTF8
from . import storage

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
SAMPLE_LINES = 100  # JSON lines inspected per shard in planning to find the column names
# The type name of every JSON Lines column: Arrow's type of "no values yet", which the plan-time type checks
# accept; each value is then judged on its own row.
UNTYPED = "null"


@dataclass(frozen=True)
class Shard:
    uri: str
    format: str  # parquet | jsonl
    compression: str | None
    size: int
    version: str  # etag or mtime: a changed file is a new shard version
    key: str  # deterministic, filesystem-safe name used for output files

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Shard:
        return cls(**data)


def shard_format(name: str, configured: str = "auto") -> tuple[str, str | None] | None:
    """(format, compression) for a file name, or None if it is not an input file."""
    lower = name.lower()
    compression = None
    for suffix, codec in COMPRESSION_SUFFIXES.items():
        if lower.endswith(suffix):
            compression, lower = codec, lower[: -len(suffix)]
    if configured != "auto":
        return configured, compression
    if lower.endswith(PARQUET_SUFFIXES) and compression is None:
        return "parquet", None
    if lower.endswith(JSONL_SUFFIXES):
        return "jsonl", compression
    return None


def shard_key(uri: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", uri.rstrip("/").rsplit("/", 1)[-1]).strip("._") or "shard"
    return f"{stem[:60]}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"


def hidden_below(root: str, path: str) -> bool:
    """Whether any folder or file name of `path` below `root` starts with `_` or `.` (`_temporary/`,
    `.git/`, `_SUCCESS`, an embedrank output's bookkeeping): such files are never input."""
    rel = path[len(root) :].strip("/") if path.startswith(root) else path.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in rel.split("/") if part)


def static_prefix(path: str) -> str:
    """The folder of a glob above its first wildcard: the root the glob's matches are hidden below."""
    cut = min((path.index(ch) for ch in "*?[" if ch in path), default=len(path))
    return path[:cut].rsplit("/", 1)[0] if cut < len(path) else path


def list_shards(uris: str | list[str], *, fmt: str = "auto", storage_config=None) -> list[Shard]:
    """Expand directories (recursively), globs and files into shards, sorted by URI.

    Below a directory or a glob's folder, paths with a `_` or `.` name anywhere are skipped.
    """
    shards: dict[str, Shard] = {}
    for uri in [uris] if isinstance(uris, str) else list(uris):
        fs, path = storage.filesystem(uri, storage_config)
        try:
            if any(ch in path for ch in "*?["):
                infos, root = {p: fs.info(p) for p in fs.glob(path)}, static_prefix(path)
            elif fs.isdir(path):
                infos, root = fs.find(path, detail=True), path
            elif fs.exists(path):
                infos, root = {path: fs.info(path)}, None  # a file named as input is read whatever its name
            else:
                raise PlanError(f"input {uri}: no such file or directory; check input.uri")
        except PlanError:
            raise
        except Exception as exc:
            raise storage.explain(exc, uri) from None
        for p, info in sorted(infos.items()):
            if info.get("type") == "directory" or (root is not None and hidden_below(root, p)):
                continue
            kind = shard_format(p, fmt)
            if kind is None:
                continue
            full = storage.to_uri(fs, p)
            version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or "")
            shards[full] = Shard(
                full, kind[0], kind[1], int(info.get("size") or 0), version.strip('"'), shard_key(full)
            )
    if not shards:
        raise PlanError(
            f"input {uris}: no Parquet or JSON Lines files found "
            f"(looked for {', '.join(PARQUET_SUFFIXES + JSONL_SUFFIXES)}, "
            "optionally .gz/.zst); check input.uri and input.format"
        )
    return [shards[k] for k in sorted(shards)]


class ZstdReader(io.RawIOBase):
    """Decompressed bytes of a .zst file (one or more frames). A file that ends inside a frame raises EOFError:
    a truncated upload must fail its shard, never read as a shorter file (zstandard's own stream reader stops
    quietly there)."""

    def __init__(self, raw):
        import zstandard

        self.raw = raw
        self.dctx = zstandard.ZstdDecompressor()
        self.frame = self.dctx.decompressobj()
        self.in_frame = False  # the current frame has started and not ended
        self.pending = bytearray()
        self.at_end = False

    def readable(self) -> bool:
        return True

    def _feed(self, data: bytes) -> None:
        import zstandard

        while data:
            self.in_frame = True
            try:
                self.pending += self.frame.decompress(data)
            except zstandard.ZstdError as exc:
                raise OSError(f"corrupt zstd data: {exc}") from None
            if not self.frame.eof:
                return
            data = self.frame.unused_data  # the next frame starts here
            self.frame = self.dctx.decompressobj()
            self.in_frame = False

    def readinto(self, buffer) -> int:
        while not self.pending and not self.at_end:
            data = self.raw.read(1 << 20)
            if not data:
                if self.in_frame:
                    raise EOFError("the zstd stream ends inside a frame (truncated file)")
                self.at_end = True
            else:
                self._feed(data)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        del self.pending[:n]
        return n

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def _open(shard: Shard, storage_config):
    fs, path = storage.filesystem(shard.uri, storage_config)
    if shard.compression == "zstd":
        return io.BufferedReader(ZstdReader(fs.open(path, "rb")))
    return fs.open(path, "rb", compression=shard.compression)


def _lines(f, byte_range: tuple[int, int] | None = None) -> Iterator[bytes]:
    """The lines of a JSON Lines file, without the UTF-8 byte order mark some editors put at its start.

    `byte_range` (uncompressed files: they can seek) keeps the lines that start in bytes [start, end): a line
    belongs to the range its first byte lies in, so that consecutive ranges share no line and miss none.
    """
    start, end = byte_range or (0, None)
    position = start
    if start > 0:
        f.seek(start - 1)
        position = start - 1 + len(f.readline())  # the end of the line that holds byte start - 1
    while end is None or position < end:
        line = f.readline()
        if not line:
            return
        yield line.removeprefix(b"\xef\xbb\xbf") if position == 0 else line
        position += len(line)


@dataclass(frozen=True)
class ShardInfo:
    """What planning learns from a shard's first bytes: its columns, and for Parquet its size in rows.

    Parquet columns carry the footer's type, which every row of the file shares. A JSON Lines file has no column
    types: each value's type is its row's own, judged on that row (`bad_id`, `not_text`), so its columns all read
    UNTYPED. A type taken from the first lines would let one hostile line decide a whole file (or a whole run);
    only a new output's column types are read from them (`sampled`: ids.py, embed/passthrough.py).
    """

    columns: dict[str, str]  # column -> type name (JSON Lines: UNTYPED)
    num_rows: int | None = None  # Parquet: from the footer; None: unknown without reading the whole file
    data_bytes: int | None = None  # Parquet: uncompressed bytes of its row groups
    row_bytes: float | None = None  # JSON Lines: mean uncompressed bytes per line of the first lines read
    # JSON Lines: column -> the Python type names of its values in the first lines (ids.sampled_id_type)
    sampled: dict[str, frozenset[str]] | None = None
    schema: pa.Schema | None = None  # Parquet: the footer's schema


def peek_columns(shard: Shard, storage_config=None) -> dict[str, str]:
    """Column -> type name, from the Parquet footer or (names only) the first JSON lines; raises PlanError naming
    the shard."""
    return peek(shard, storage_config).columns


def peek(shard: Shard, storage_config=None) -> ShardInfo:
    """A shard's ShardInfo; raises PlanError naming the shard when it cannot be read."""
    try:
        with _open(shard, storage_config) as f:
            if shard.format == "parquet":
                pf = pq.ParquetFile(f)
                schema, meta = pf.schema_arrow, pf.metadata
                return ShardInfo(
                    {name: str(schema.field(name).type) for name in schema.names},
                    meta.num_rows,
                    sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)),
                    schema=schema,
                )
            kinds: dict[str, set[str]] = {}  # column -> the type names of its values, columns in first-seen order
            seen = sampled_bytes = 0
            for line in _lines(f):
                if not line.strip():
                    continue
                seen += 1
                if seen > SAMPLE_LINES:
                    break
                sampled_bytes += len(line)
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    for name, value in obj.items():
                        kinds.setdefault(name, set()).add(type(value).__name__)
            lines = min(seen, SAMPLE_LINES)
            sampled = {name: frozenset(found) for name, found in kinds.items()}
            row_bytes = sampled_bytes / lines if lines else None
            return ShardInfo(dict.fromkeys(kinds, UNTYPED), row_bytes=row_bytes, sampled=sampled)
    except (PermissionError, FileNotFoundError) as exc:
        raise storage.explain(exc, shard.uri) from None
    except (EOFError, OSError, ValueError) as exc:  # truncated gzip, bad zstd frame, not a Parquet file
        raise BadShardError(
            f"input shard {shard.uri} cannot be read ({type(exc).__name__}: {str(exc)[:120]}): it looks truncated "
            "or corrupt; re-upload it or remove it from the input (input.on_bad_shard: skip runs the other shards "
            "and lists it)"
        ) from None


def peek_all(
    shards: list[Shard], storage_config=None, skip_bad: bool = False
) -> tuple[dict[str, ShardInfo], dict[str, tuple[str, str]]]:
    """(shard key -> ShardInfo, shard key -> (uri, why it cannot be read)) of `shards`, read 8 at a time. A
    truncated or corrupt shard raises its BadShardError, unless `skip_bad` (input.on_bad_shard: skip) sets it
    apart."""
    from concurrent.futures import ThreadPoolExecutor

    def one(shard: Shard) -> ShardInfo | BadShardError:
        try:
            return peek(shard, storage_config)
        except BadShardError as exc:
            if not skip_bad:
                raise
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(zip((s.key for s in shards), pool.map(one, shards)))
    infos = {k: v for k, v in found.items() if isinstance(v, ShardInfo)}
    return infos, {s.key: (s.uri, str(found[s.key])) for s in shards if not isinstance(found[s.key], ShardInfo)}


@dataclass
class RawRows:
    """A slice of a shard: rows as dicts (None where unparseable), their row numbers and parse problems."""

    rows: list[dict | None]
    row_numbers: list[int]
    problems: list[str | None]


def iter_rows(
    shard: Shard,
    rows_per_batch: int,
    columns: list[str] | None = None,
    storage_config=None,
    rows: range | None = None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[RawRows]:
    """Yield the shard's rows in order, `rows_per_batch` at a time; every row (or line) appears once.

    `rows` (Parquet only) reads just that range of the file's rows, with their row numbers in the file.
    `byte_range` (uncompressed JSON Lines only) reads the lines that start in those bytes, numbered from 0:
    consecutive ranges read every line of the file exactly once.

    A shard that cannot be read to its end raises a StorageError (storage trouble) or a BadShardError (the file
    is truncated or corrupt) naming the shard: never a partial shard that looks whole.
    """
    reader = _iter_raw_rows(shard, rows_per_batch, columns, storage_config, rows, byte_range)
    done = 0
    while True:
        try:
            raw = next(reader, None)
        except (PermissionError, ConnectionError, TimeoutError) as exc:  # storage, not the file's content
            raise storage.explain(exc, shard.uri) from None
        except (EOFError, OSError, ValueError) as exc:  # truncated gzip, corrupt Parquet page, ...
            raise BadShardError(
                f"input shard {shard.uri} broke off after {done} rows ({type(exc).__name__}): it is truncated "
                "or corrupt; re-upload it or remove it from the input, then rerun (committed shards are kept; "
                "input.on_bad_shard: skip runs the other shards and lists it)"
            ) from None
        if raw is None:
            return
        done += len(raw.rows)
        yield raw


def _parquet_batches(pf, rows_per_batch: int, columns, rows: range | None):
    """(first row number, record batch) of the file, or of the row range `rows` (whole row groups are read
    and the rows outside the range dropped: a range never needs more than its row groups)."""
    if rows is None:
        start = 0
        for batch in pf.iter_batches(batch_size=rows_per_batch, columns=columns):
            yield start, batch
            start += batch.num_rows
        return
    meta = pf.metadata
    group_start = 0
    for group in range(meta.num_row_groups):
        group_rows = meta.row_group(group).num_rows
        group_end = group_start + group_rows
        if group_end > rows.start and group_start < rows.stop:
            start = group_start
            for batch in pf.iter_batches(batch_size=rows_per_batch, columns=columns, row_groups=[group]):
                lo, hi = max(rows.start - start, 0), min(rows.stop - start, batch.num_rows)
                if hi > lo:
                    yield start + lo, batch.slice(lo, hi - lo)
                start += batch.num_rows
                if start >= rows.stop:
                    return
        group_start = group_end


def _iter_raw_rows(
    shard: Shard,
    rows_per_batch: int,
    columns,
    storage_config,
    rows: range | None,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[RawRows]:
    if shard.format == "parquet":
        with _open(shard, storage_config) as f:
            pf = pq.ParquetFile(f)
            present = [c for c in (columns or pf.schema_arrow.names) if c in pf.schema_arrow.names]
            for start, batch in _parquet_batches(pf, rows_per_batch, present, rows):
                values = batch.to_pylist()
                yield RawRows(values, list(range(start, start + len(values))), [None] * len(values))
        return
    out = RawRows([], [], [])
    row = 0
    with _open(shard, storage_config) as f:
        for line in _lines(f, byte_range):
            if not line.strip():
                continue
            obj, problem = None, None
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                problem = INVALID_UTF8
            else:
                try:
                    obj = json.loads(text)
                except ValueError:
                    problem = BAD_JSON
                if problem is None and not isinstance(obj, dict):
                    obj, problem = None, BAD_JSON
            out.rows.append(obj)
            out.row_numbers.append(row)
            out.problems.append(problem)
            row += 1
            if len(out.rows) >= rows_per_batch:
                yield out
                out = RawRows([], [], [])
    if out.rows:
        yield out
