"""The output lock on the local S3 endpoint and on local paths (no Ray): one holder, stale locks taken over."""

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from embedrank.config import StorageConfig
from embedrank.runtime.lock import LOCK, LockError, RunLock, hold_lock
from embedrank.runtime.store import OutputStore


@pytest.fixture(params=["s3", "local"])
def store_factory(request, s3, s3_endpoint, tmp_path):
    if request.param == "s3":
        prefix = f"s3://corpus/locks-{time.time_ns()}"
        return lambda: OutputStore(prefix, StorageConfig(endpoint_url=s3_endpoint))
    return lambda: OutputStore(str(tmp_path / "out"))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant(store, **holder) -> None:
    store.write_json(
        store.path(LOCK),
        {
            "run_id": "old-run",
            "host": "elsewhere",
            "pid": 1,
            "command": "x",
            "started_at": 0,
            "heartbeat_at": time.time(),
            **holder,
        },
    )


def test_one_holder_at_a_time(store_factory):
    with hold_lock(store_factory(), "run-1", timeout_s=300, log=lambda _: None) as first:
        with pytest.raises(LockError, match=r"being written by another run \(run-1: .* --set output.lock_timeout_s=0"):
            RunLock(store_factory(), "run-2", 300).acquire(lambda _: None)
        first.ensure()
    second = RunLock(store_factory(), "run-2", 300).acquire(lambda _: None)  # released: free again
    second.ensure()
    second.release()
    assert not store_factory().fs.exists(store_factory().path(LOCK))


def test_racing_runs_get_exactly_one_lock(store_factory):
    wins, losses = [], []
    barrier = threading.Barrier(6)

    def contend(i):
        barrier.wait()
        try:
            wins.append(RunLock(store_factory(), f"run-{i}", 300).acquire(lambda _: None))
        except LockError:
            losses.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 5
    wins[0].release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(store_factory):
    store = store_factory()
    plant(store, host=socket.gethostname(), pid=dead_pid())
    lines = []
    lock = RunLock(store_factory(), "run-new", 300).acquire(lines.append)
    assert "took over the lock" in lines[0] and "is gone" in lines[0]
    lock.ensure()
    lock.release()


def test_a_live_holder_elsewhere_fails_a_second_run_after_its_next_heartbeat(store_factory):
    """A holder on another host that keeps beating is a live run: refused as soon as it beats again."""
    stop = threading.Event()

    def beat():
        store = store_factory()
        while not stop.wait(0.3):
            plant(store, heartbeat_s=0.3)

    plant(store_factory(), heartbeat_s=0.3)
    beater = threading.Thread(target=beat)
    beater.start()
    lines = []
    start = time.time()
    try:
        with pytest.raises(LockError, match=r"being written by another run \(old-run: x on elsewhere"):
            RunLock(store_factory(), "run-new", 300).acquire(lines.append)
    finally:
        stop.set()
        beater.join()
    assert time.time() - start < 5
    assert "watching up to" in lines[0] and "to tell a live run from a stopped one" in lines[0]


def test_a_holder_elsewhere_killed_a_moment_ago_is_waited_for_then_taken_over(store_factory):
    """A retried job on a new head pod, seconds after the old driver died: it waits instead of failing."""
    plant(store_factory(), heartbeat_at=time.time(), heartbeat_s=0.5)  # fresh, and never beats again
    lines = []
    start = time.time()
    RunLock(store_factory(), "run-new", 3).acquire(lines.append).release()
    assert 2.5 <= time.time() - start < 12
    assert "watching up to" in lines[0]
    assert "took over the lock" in lines[-1] and "output.lock_timeout_s = 3" in lines[-1]


def test_a_silent_holder_elsewhere_is_waited_for_then_taken_over(store_factory):
    plant(store_factory(), heartbeat_at=time.time() - 4, heartbeat_s=1)  # four beats missed
    lines = []
    start = time.time()
    RunLock(store_factory(), "run-new", 6).acquire(lines.append).release()
    assert 1.5 <= time.time() - start < 10
    assert "silent for 4 s; waiting 2 s more" in lines[0]
    assert "took over the lock" in lines[1] and "output.lock_timeout_s = 6" in lines[1]


def test_a_run_that_lost_its_lock_stops_before_committing(store_factory):
    old = RunLock(store_factory(), "run-old", 300).acquire(lambda _: None)
    RunLock(store_factory(), "run-new", 0).acquire(lambda _: None)  # timeout 0: taken over at once
    with pytest.raises(LockError, match=r"run-old\) lost its output lock \(the lock now names run run-new\)"):
        old.ensure()
    old.release()  # leaves the new holder's lock alone
    holder = json.loads(store_factory().fs.cat_file(store_factory().path(LOCK)))
    assert holder["run_id"] == "run-new"


def test_the_heartbeat_keeps_the_lock_fresh(store_factory):
    lock = RunLock(store_factory(), "run-1", timeout_s=300, heartbeat_s=0.2).acquire(lambda _: None)
    first = json.loads(store_factory().fs.cat_file(store_factory().path(LOCK)))["heartbeat_at"]
    time.sleep(1.0)
    store = store_factory()
    store.fs.invalidate_cache()
    assert json.loads(store.fs.cat_file(store.path(LOCK)))["heartbeat_at"] > first
    lock.ensure()
    lock.release()
