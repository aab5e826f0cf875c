"""One run at a time per output: a lock object beside the commit records, kept fresh by a heartbeat.

    OUTPUT/_embedrank/lock.json    {run_id, host, pid, command, started_at, heartbeat_at}

The lock is created with a conditional write (S3 and Azure `If-None-Match: *`, GCS `ifGenerationMatch=0`, locally
a hard link), so of two runs started at once exactly one gets it; the other stops before planning, naming the
holder. A lock whose holder is gone (the same host and a dead pid, or no heartbeat for `timeout_s`) is taken over
with a conditional replace (S3 and Azure `If-Match: <etag>`, GCS `ifGenerationMatch: <generation>`; see
io/storage.py), which again only one run can win. A lock held from another host cannot be checked by pid:
a run that finds one watches for its holder's next heartbeat; a live holder is refused at once after it, a
silent one (its driver killed, even a moment ago) is waited for until `timeout_s`, so that a retried job on a
new head pod resumes on its own. Every commit and publish first checks that the lock still names this run
(`ensure`), so a run that lost its lock stops instead of mixing its shards into another run's output. A lock
left by a killed run is released by the rerun on the same host at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import socket
import sys
import threading
import time
import uuid

from ..errors import LockError
from ..io import storage

LOCK = "_embedrank/lock.json"
MISSED_BEATS = 3  # a holder silent for this many of its heartbeats is presumed dead: wait for its timeout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


class RunLock:
    """The lock of one output location, held by one run (see `hold_lock`)."""

    def __init__(self, store, run_id: str, timeout_s: float, heartbeat_s: float | None = None):
        self.store = store
        self.path = store.path(LOCK)
        self.remote = storage.is_remote(store.uri)
        self.run_id = run_id
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s or max(1.0, min(30.0, timeout_s / 4 if timeout_s else 30.0))
        self.started_at = time.time()
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the lock object ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps(
            {
                "run_id": self.run_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "command": " ".join(os.path.basename(a) for a in sys.argv[:2]),
                "started_at": self.started_at,
                "heartbeat_at": time.time(),
                "heartbeat_s": self.heartbeat_s,
            },
            sort_keys=True,
        ).encode()

    def _read(self) -> tuple[dict | None, str | None]:
        """(lock content, its version: ETag or generation) or (None, None) when there is no lock."""
        fs = self.store.fs
        try:
            etag = storage.version_of(fs, self.path) if self.remote else None
            return json.loads(fs.cat_file(self.path)), etag
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:  # not written by embedrank (writes are whole): nobody holds it
            return {"run_id": "unreadable", "heartbeat_at": 0}, None

    def _create(self) -> bool:
        """Create the lock if there is none. True when this run got it."""
        fs = self.store.fs
        if self.remote:
            return storage.create_new(fs, self.path, self._body())
        fs.makedirs(posixpath.dirname(self.path), exist_ok=True)
        tmp = f"{self.path}.new-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(self._body())
        try:  # a hard link appears whole or not at all, and fails if the lock exists
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
        return True

    def _replace(self, etag: str | None) -> bool:
        """Overwrite the lock only if it is still the version we read (`etag`). True on success."""
        fs = self.store.fs
        if self.remote:
            return storage.replace_if(fs, self.path, self._body(), etag)
        # Locally: move the stale lock aside (only one mover can succeed), then create ours exclusively.
        aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
            os.remove(aside)
        except FileNotFoundError:
            pass
        return self._create()

    def _stale_reason(self, holder: dict) -> str | None:
        if (
            holder.get("host") == socket.gethostname()
            and isinstance(holder.get("pid"), int)
            and not _pid_alive(holder["pid"])
        ):
            return f"its process {holder['pid']} on this host is gone"
        age = time.time() - float(holder.get("heartbeat_at") or 0)
        if age >= self.timeout_s:
            return f"its last heartbeat is {age:.0f} s old (output.lock_timeout_s = {self.timeout_s:g})"
        return None

    # -- taking, keeping and giving back ------------------------------------------------------------------
    def acquire(self, log=print) -> RunLock:
        try:
            for _ in range(5):
                if self._create():
                    break
                holder, etag = self._read()
                if holder is None:
                    continue  # released in between: try to create it again
                reason = self._stale_reason(holder)
                age = time.time() - float(holder.get("heartbeat_at") or 0)
                if reason is None and age > MISSED_BEATS * float(holder.get("heartbeat_s") or 30.0):
                    # Silent for several beats: its driver is most likely gone (a lost head pod). Wait for the
                    # timeout rather than fail, so that a retried job resumes on its own.
                    log(
                        f"embedrank: the lock of {self.store.uri} (run {holder.get('run_id')} on "
                        f"{holder.get('host')}) has been silent for {age:.0f} s; waiting "
                        f"{self.timeout_s - age:.0f} s more for it to expire (output.lock_timeout_s)"
                    )
                    time.sleep(max(0.0, self.timeout_s - age) + 0.5)
                    continue
                if reason is None and holder.get("host") != socket.gethostname() and self._silent(holder, log):
                    continue  # no heartbeat when one was due: waited for above, at the next try
                if reason is None:
                    raise LockError(
                        f"{self.store.uri} is being written by another run ({holder.get('run_id')}: "
                        f"{holder.get('command', '?')} on {holder.get('host')}, pid {holder.get('pid')}, "
                        f"heartbeat {age:.0f} s ago); wait for it to finish. If that run is dead, rerun once its "
                        f"heartbeat is output.lock_timeout_s ({self.timeout_s:g} s) old, or now with "
                        "--set output.lock_timeout_s=0"
                    )
                if self._replace(etag):
                    log(f"embedrank: took over the lock of {self.store.uri} from run {holder.get('run_id')}: {reason}")
                    break
            else:
                raise LockError(
                    f"{self.store.uri}: could not take the output lock ({LOCK}) after 5 tries; "
                    "another run keeps changing it. Rerun when it is done"
                )
        except LockError:
            raise
        except Exception as exc:
            raise storage.explain(exc, self.store.uri) from None
        self._thread = threading.Thread(target=self._heartbeat, name="embedrank-lock", daemon=True)
        self._thread.start()
        return self

    def _silent(self, holder: dict, log) -> bool:
        """Watch a lock held from another host until its holder's next heartbeat is due (at most MISSED_BEATS
        beats after its last): True when none came (its driver is gone), False when it beat (a live run)."""
        beat_s = float(holder.get("heartbeat_s") or 30.0)
        last = float(holder.get("heartbeat_at") or 0)
        due = last + MISSED_BEATS * beat_s
        log(
            f"embedrank: the lock of {self.store.uri} is held by run {holder.get('run_id')} on "
            f"{holder.get('host')} (heartbeat {time.time() - last:.0f} s ago); watching up to "
            f"{max(0.0, due - time.time()):.0f} s for its next heartbeat, to tell a live run from a stopped one"
        )
        while time.time() < due:
            time.sleep(min(beat_s / 4, 5.0, max(0.05, due - time.time())))
            now, _ = self._read()
            if now is None or now.get("run_id") != holder.get("run_id"):
                return True  # released or replaced: try again at once
            if float(now.get("heartbeat_at") or 0) > last:
                return False
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder, etag = self._read()
                if not holder or holder.get("run_id") != self.run_id:
                    self.lost = f"the lock now names run {holder.get('run_id') if holder else None}"
                    return
                if self.remote:
                    if not self._replace(etag):
                        self.lost = "another run replaced the lock"
                        return
                else:
                    self.store.write_bytes(self.path, self._body())
            except Exception:  # storage trouble: retried at the next beat; ensure() reads the lock itself
                continue

    def ensure(self) -> None:
        """Raise unless the lock still names this run (called before every commit and publish)."""
        if self.lost is None:
            holder, _ = self._read()
            if not holder or holder.get("run_id") != self.run_id:
                self.lost = f"the lock now names run {holder.get('run_id') if holder else None}"
        if self.lost is not None:
            raise LockError(
                f"{self.store.uri}: this run ({self.run_id}) lost its output lock ({self.lost}); "
                "it stops without committing more. Rerun to finish what remains"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            holder, _ = self._read()
            if holder and holder.get("run_id") == self.run_id:
                self.store.fs.rm_file(self.path)
        except Exception:  # a lock left behind is taken over by the next run (dead pid or timeout)
            pass


@contextlib.contextmanager
def hold_lock(store, run_id: str, timeout_s: float, log=print):
    """Hold the output lock of `store` for the block; the store checks it before each commit."""
    lock = RunLock(store, run_id, timeout_s).acquire(log)
    store.guard = lock
    try:
        yield lock
    finally:
        store.guard = None
        lock.release()
