"""The live progress display's arithmetic and wording (runtime/progress.py), without Ray."""

from __future__ import annotations

import io
from collections import deque

import pyarrow as pa

from embedrank import schema as S
from embedrank.runtime.progress import (
    LiveProgress,
    ProgressBoard,
    Sample,
    estimated_total_tokens,
    format_duration,
    prepared_counts,
    progress_fields,
    progress_line,
)


def snapshot(**changes) -> dict:
    board = ProgressBoard(units=4, est_bytes=4000)
    snap = board.snapshot()
    snap.update(changes)
    return snap


def test_total_tokens_are_scaled_from_the_bytes_read_until_every_unit_is_read():
    assert estimated_total_tokens(snapshot(units_read=1, bytes_read=1000, planned_tokens=500)) == 2000
    assert estimated_total_tokens(snapshot(units_read=4, bytes_read=3000, planned_tokens=1700)) == 1700
    assert estimated_total_tokens(snapshot(units_read=0, bytes_read=0, planned_tokens=0)) == 0


def test_rate_eta_busy_and_padding_come_from_the_recent_samples():
    snap = snapshot(
        units_read=4, bytes_read=4000, planned_tokens=10_000, rows=300, tokens=4000, computed_tokens=5000, actors=2
    )
    samples = deque([Sample(100.0, 2000, 10.0), Sample(110.0, 4000, 26.0)])
    f = progress_fields(snap, samples, shards_done=1, shards_total=3, pool_size=4)
    assert f["tokens_per_s"] == 200.0
    assert f["eta"] == 30.0  # 6000 tokens left at 200/s
    assert f["busy"] == 0.8  # 16 model seconds of 2 actors in 10 s
    assert f["padding"] == 0.8 and f["fraction"] == 0.4 and not f["estimated"]
    line = progress_line(f, "embedded")
    assert line == (
        " 40% shards 1/3 committed, rows 300 embedded, 200 tokens/s, padding 0.80, actors 2/4 busy 80%, ETA 30s"
    )


def test_before_the_model_has_run_the_line_says_what_is_starting():
    f = progress_fields(snapshot(prepared_rows=1200, actors=0), deque(), 0, 5, 2)
    assert progress_line(f, "embedded") == "starting: shards 0/5, 1.2k rows prepared, model actors ready 0/2"


def test_while_prepare_reads_the_fraction_is_marked_as_an_estimate():
    snap = snapshot(units_read=1, bytes_read=1000, planned_tokens=1000, rows=10, tokens=1000, computed_tokens=1000)
    line = progress_line(progress_fields(snap, deque(), 0, 4, 1), "embedded")
    assert line.startswith(" 25%~ shards 0/4") and "ETA -" in line


def test_durations():
    assert [format_duration(s) for s in (5, 75, 3725)] == ["5s", "1m15s", "1h02m"]


def test_prepared_counts_leave_out_rejected_carried_and_end_marker_rows():
    table = pa.table(
        {
            S.REJECT: [None, None, "bad_json", S.END_OF_SHARD],
            S.CHANGE: [None, "carried", None, None],
            "n_tokens": pa.array([7, 5, None, None], pa.int32()),
        }
    )
    assert prepared_counts(table) == (1, 7)
    pairs = pa.table({S.REJECT: [None, None], "n_tokens": pa.array([3, 4], pa.int32())})
    assert prepared_counts(pairs) == (2, 7)


class FakeBoard:
    """What LiveProgress calls on the board's handle, answered in-process."""

    def __init__(self, snap):
        self.snap = snap

    class _Call:
        def __init__(self, value):
            self.value = value

        def remote(self):
            return self.value

    @property
    def snapshot(self):
        return self._Call(self.snap)


def test_a_log_gets_a_line_only_when_something_changed(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)
    lines: list[str] = []

    class Report:
        shards_committed = 0

    live = LiveProgress(
        FakeBoard(snapshot(prepared_rows=5)),
        report=Report(),
        shards_total=2,
        pool_size=1,
        verb="embedded",
        interval_s=10,
        log=lines.append,
        stream=io.StringIO(),
    )
    live._draw()
    live._draw()
    assert lines == ["progress: starting: shards 0/2, 5 rows prepared, model actors ready 0/1"]


def test_a_terminal_gets_a_bar_redrawn_in_place(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda value, timeout=None: value)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    class Report:
        shards_committed = 1

    out = Terminal()
    snap = snapshot(units_read=4, bytes_read=4000, planned_tokens=100, rows=10, tokens=50, computed_tokens=50)
    live = LiveProgress(
        FakeBoard(snap), report=Report(), shards_total=2, pool_size=1, verb="embedded", interval_s=10, stream=out
    )
    live._draw()
    live._draw(final=True)
    text = out.getvalue()
    assert text.count("\r\x1b[2K[##########----------]  50% shards 1/2 committed") == 2 and text.endswith("\n")


def test_a_job_without_model_actors_counts_shards_only():
    f = progress_fields(snapshot(), deque(), 2, 5, 1)
    assert progress_line(f, "retrieved", model_stage=False) == "shards 2/5 committed"
