"""Ctrl-C and SIGTERM stop a run at any moment: one line, the lock given back, exit code 128 + signal.

`interruptible()` (the CLI wraps every job command in it) turns the first SIGINT or SIGTERM into `Interrupted`,
raised in the main thread wherever it is: planning, Ray start-up, waiting for actors, streaming, committing.
Interrupted is a BaseException, so no `except Exception` on the way swallows it, and every `finally` on the
way runs: the lock is released and the staging of this attempt stays for the rerun to clear. A second signal,
or a run still not stopped after GRACE_S (the main thread stuck in a call that never returns to Python), ends
the process at once; a lock left that way names a dead process of this host, which the rerun takes over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

GRACE_S = 30.0  # after the first signal: time to clean up before the process ends regardless
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal. `committed`: shards committed by this run before it stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.committed: int | None = None
        self.job = ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self) -> str:
        done = f"{self.committed} shards committed by this run; " if self.committed is not None else ""
        return f"interrupted ({signal.Signals(self.signum).name}): {done}rerun the same command to resume"


_state = {"count": 0, "installed": False}


def _handler(signum, frame):
    _state["count"] += 1
    if _state["count"] > 1:
        _exit_now(signum, "interrupted again: stopping at once")
    timer = threading.Timer(GRACE_S, _exit_now, (signum, f"still stopping after {GRACE_S:.0f} s: stopping at once"))
    timer.daemon = True  # never keeps a process alive that stopped in time
    timer.start()
    raise Interrupted(signum)


def _exit_now(signum: int, why: str) -> None:
    print(f"embedrank: {why}; rerun the same command to resume", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def reinstall() -> None:
    """Put the handlers back where something (Ray's start-up) replaced them, while `interruptible` is active."""
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            if signal.getsignal(sig) is not _handler:
                signal.signal(sig, _handler)


@contextlib.contextmanager
def interruptible():
    """Inside the block, SIGINT and SIGTERM raise Interrupted in the main thread (see the module docstring)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    _state.update(count=0, installed=True)
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        _state["installed"] = False
        if not _state["count"]:  # after a signal the handler stays: one more ends the process at once
            for sig, handler in previous.items():
                signal.signal(sig, handler)
