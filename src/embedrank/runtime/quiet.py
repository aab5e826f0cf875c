"""Lines that Ray's C++ core prints on the driver's stderr on every run and that ask nothing of the user.

Python loggers are quieted where they are configured (runtime/cluster.py). Ray's C++ core worker writes to
file descriptor 2 directly, so the one line that every run prints is held back here, by a filter on the
descriptor, for the CLI only (never for a program that imports embedrank), and never with --verbose:

- `core_worker.cc ... has constructor arguments in the object store and max_restarts > 0`: Ray Data passes
  its DataContext and map function as object references, and an actor handle, to every model actor it
  creates, and those actors must be restartable (runtime/crash_guard.py). Ray Data holds those references
  for the whole run, so the restart they warn about cannot fail for this reason. Nothing in embedrank's
  arguments causes the line: its actors get names and plain values only (runtime/cluster.actor_stage).

Every other byte goes through unchanged, in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading

HARMLESS = (
    re.compile(rb"core_worker\.cc:\d+: Actor .* has constructor arguments in the object store and max_restarts > 0"),
)


def _pump(read_fd: int, write_fd: int) -> None:
    pending = b""
    with os.fdopen(read_fd, "rb", buffering=0) as source:
        while True:
            chunk = source.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not any(p.search(line) for p in HARMLESS):
                    os.write(write_fd, line + b"\n")
    if pending:
        os.write(write_fd, pending)


@contextlib.contextmanager
def harmless_stderr_lines_hidden(enabled: bool = True):
    """Within the block, the HARMLESS lines written to file descriptor 2 are dropped."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, original), name="embedrank-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end held by this process: the pump drains and ends
        pump.join(timeout=5)  # a child that inherited the pipe may keep it open; never wait on it for long
        os.close(original)
