"""A run's live progress: counters that the CPU tasks and model actors report, and the driver's display of them.

Ray Data only sees a row again when the write stage hands it back, which for a big shard is minutes after it
was read; the run's own progress comes from the stages themselves instead:

    prepare tasks  -> board.prepared(rows, model tokens)   as each prepared table leaves the task
                   -> board.unit_read(bytes)               when a unit of work has been read whole
    model actors   -> board.actor_compiling(name)           while a compiled model builds its kernels
                   -> board.actor_ready(name)               once the model is loaded (and compiled)
                   -> board.computed(name, rows, tokens, computed tokens, busy seconds)  after every batch

The board is one small named actor of the run (no CPU). `LiveProgress` polls it from a driver thread and
shows one line: redrawn in place on a terminal, printed every `progress_interval_s` otherwise. The model
tokens that prepare has counted give the ETA before the model has seen them: total tokens are estimated from
the bytes read so far while prepare is still going, and are exact once every unit is read.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

BUSY_WINDOW_S = 30.0  # actors count as busy by their model time in this last stretch
RATE_WINDOW_S = 20.0  # tokens/s over this last stretch (the whole run's average lags behind changes)


class ProgressBoard:
    """The run's counters (a Ray actor; every method is cheap, callers never wait on it)."""

    def __init__(self, units: int, est_bytes: int):
        self.units, self.est_bytes = units, est_bytes
        self.units_read = self.bytes_read = 0
        self.prepared_rows = self.planned_tokens = 0
        self.rows = self.tokens = self.computed_tokens = 0
        self.ready: set[str] = set()
        self.compiling: set[str] = set()
        self.busy: dict[str, float] = {}  # actor -> model seconds so far

    def prepared(self, rows: int, tokens: int) -> None:
        self.prepared_rows += rows
        self.planned_tokens += tokens

    def unit_read(self, est_bytes: int) -> None:
        self.units_read += 1
        self.bytes_read += est_bytes

    def actor_compiling(self, name: str) -> None:
        self.compiling.add(name)

    def actor_ready(self, name: str) -> None:
        self.compiling.discard(name)
        self.ready.add(name)

    def computed(self, name: str, rows: int, tokens: int, computed_tokens: int, busy_s: float) -> None:
        self.compiling.discard(name)
        self.ready.add(name)
        self.rows += rows
        self.tokens += tokens
        self.computed_tokens += computed_tokens
        self.busy[name] = self.busy.get(name, 0.0) + busy_s

    def snapshot(self) -> dict:
        return {
            "units": self.units,
            "est_bytes": self.est_bytes,
            "units_read": self.units_read,
            "bytes_read": self.bytes_read,
            "prepared_rows": self.prepared_rows,
            "planned_tokens": self.planned_tokens,
            "rows": self.rows,
            "tokens": self.tokens,
            "computed_tokens": self.computed_tokens,
            "actors": len(self.ready),
            "compiling": len(self.compiling),
            "busy_s": sum(self.busy.values()),
        }


_boards: dict = {}  # name -> handle, per worker process: one lookup per run, not per batch


def board_handle(name: str | None):
    """The run's board by name (None: no board, e.g. the Dataset processors), cached in this process."""
    if not name:
        return None
    if name not in _boards:
        import ray

        _boards[name] = ray.get_actor(name)
    return _boards[name]


def prepared_counts(table) -> tuple[int, int]:
    """(rows, model tokens) of a prepared table: good rows that the model will see (not carried, not
    rejected, not end markers)."""
    import pyarrow.compute as pc

    from .. import schema as S

    if not table.num_rows:
        return 0, 0
    model = pc.is_null(table.column(S.REJECT))
    if S.CHANGE in table.column_names:
        model = pc.and_(model, pc.not_equal(pc.fill_null(table.column(S.CHANGE), ""), "carried"))
    rows = int(pc.sum(model).as_py() or 0)
    tokens = int(pc.sum(pc.filter(table.column("n_tokens"), model)).as_py() or 0) if rows else 0
    return rows, tokens


@dataclass
class Sample:
    at: float
    tokens: int
    busy_s: float


def estimated_total_tokens(snap: dict) -> int:
    """Model tokens of the whole run: exact once every unit is read, else scaled from the bytes read so far."""
    if snap["units_read"] >= snap["units"] or not snap["bytes_read"]:
        return snap["planned_tokens"]
    return int(snap["planned_tokens"] * max(snap["est_bytes"], snap["bytes_read"]) / snap["bytes_read"])


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def format_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"


def progress_fields(snap: dict, samples: deque, shards_done: int, shards_total: int, pool_size: int) -> dict:
    """What the display shows, from a board snapshot and the recent samples (pure: tested without Ray)."""
    total = estimated_total_tokens(snap)
    fraction = min(snap["tokens"] / total, 1.0) if total else 0.0
    rate = busy = 0.0
    if len(samples) >= 2:
        first, last = samples[0], samples[-1]
        span = max(last.at - first.at, 1e-9)
        rate = (last.tokens - first.tokens) / span
        busy = (last.busy_s - first.busy_s) / (span * max(snap["actors"], 1))
    eta = (total - snap["tokens"]) / rate if rate > 0 and total >= snap["tokens"] else None
    return {
        "fraction": fraction,
        "shards": f"{shards_done}/{shards_total}",
        "rows": snap["rows"],
        "prepared_rows": snap["prepared_rows"],
        "tokens_per_s": rate,
        "padding": snap["tokens"] / snap["computed_tokens"] if snap["computed_tokens"] else None,
        "actors": f"{snap['actors']}/{pool_size}",
        "compiling": snap.get("compiling", 0),
        "busy": min(busy, 1.0),
        "eta": eta,
        "estimated": snap["units_read"] < snap["units"],
    }


def progress_line(f: dict, verb: str, model_stage: bool = True) -> str:
    """One line of progress: the same words on a terminal and in a log. Without a model stage (retrieve) only
    the shards committed count."""
    if not model_stage:
        return f"shards {f['shards']} committed"
    compiling = f", compiling the model on {f['compiling']}" if f.get("compiling") else ""
    if not f["rows"]:
        return (
            f"starting: shards {f['shards']}, {format_count(f['prepared_rows'])} rows prepared, "
            f"model actors ready {f['actors']}{compiling}"
        )
    padding = f"{f['padding']:.2f}" if f["padding"] is not None else "-"
    eta = format_duration(f["eta"]) if f["eta"] is not None else "-"
    return (
        f"{f['fraction']:4.0%}{'~' if f['estimated'] else ''} shards {f['shards']} committed, "
        f"rows {format_count(f['rows'])} {verb}, {format_count(f['tokens_per_s'])} tokens/s, "
        f"padding {padding}, actors {f['actors']} busy {f['busy']:.0%}{compiling}, ETA {eta}"
    )


def bar(fraction: float, width: int = 20) -> str:
    filled = int(round(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


class LiveProgress:
    """The driver's display of a board: a thread that polls it and prints, until `stop()`."""

    def __init__(
        self,
        board,
        *,
        report,
        shards_total: int,
        pool_size: int,
        verb: str,
        interval_s: float,
        log=print,
        stream=None,
        model_stage: bool = True,
    ):
        self.board, self.report, self.model_stage = board, report, model_stage
        self.shards_total, self.pool_size, self.verb = shards_total, pool_size, verb
        self.stream = stream if stream is not None else sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval_s = 0.5 if self.live else max(interval_s, 0.5)
        self.log = log
        self.samples: deque = deque()
        self.last_text = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedrank-progress", daemon=True)

    def start(self) -> LiveProgress:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling; on a terminal, draw the last state and end the line, so that the summary follows."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.live:
            self._draw(final=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._draw()

    def _draw(self, final: bool = False) -> None:
        import ray

        try:
            snap = ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # a busy or restarting board: skip this tick, the run goes on
            return
        now = time.time()
        self.samples.append(Sample(now, snap["tokens"], snap["busy_s"]))
        while len(self.samples) > 2 and now - self.samples[0].at > max(RATE_WINDOW_S, BUSY_WINDOW_S):
            self.samples.popleft()
        fields = progress_fields(snap, self.samples, self.report.shards_committed, self.shards_total, self.pool_size)
        if not self.model_stage:
            fields["fraction"] = self.report.shards_committed / max(self.shards_total, 1)
        text = progress_line(fields, self.verb, self.model_stage)
        if self.live:
            self.stream.write(f"\r\x1b[2K{bar(fields['fraction'])} {text}" + ("\n" if final else ""))
            self.stream.flush()
        elif text != self.last_text:
            self.log(f"progress: {text}")
        self.last_text = text
