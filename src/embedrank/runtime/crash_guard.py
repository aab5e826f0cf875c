"""Bounded retries for rows that kill the model worker (a crash in a kernel, an abort, the OOM killer).

Ray Data restarts a dead actor and hands it the same batch again, without limit, so one row that always kills
the model would stall a run forever. A small ledger actor per run remembers which batch each model actor is
running: a batch that begins again while still recorded as running died with its worker. Once a batch has
died `limit` times it runs one row at a time, each row recorded the same way, and a row that has died `limit`
times is dead-lettered as `worker_crash`; the rest of the run goes on. The ledger costs one round trip per
batch, and the row-by-row pass happens only after crashes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


class CrashLedger:
    """Which keys (batches, rows) are running and how often each died. Runs as a Ray actor of the driver."""

    def __init__(self):
        self.running: set[str] = set()
        self.deaths: Counter = Counter()

    def begin(self, key: str) -> int:
        """Mark `key` running; returns how many earlier attempts at it died."""
        if key in self.running:  # begun before and never ended: that attempt's process died
            self.deaths[key] += 1
        self.running.add(key)
        return self.deaths[key]

    def end(self, key: str) -> None:
        self.running.discard(key)


def batch_key(row_keys: Sequence[str]) -> str:
    """A stable name for a batch: the same rows handed over again give the same key."""
    digest = hashlib.blake2b(digest_size=12)
    for key in row_keys:
        digest.update(key.encode())
        digest.update(b"\0")
    return f"batch:{digest.hexdigest()}"


def run_guarded(
    rows: np.ndarray,
    row_keys: Sequence[str],
    compute: Callable[[np.ndarray], tuple],
    begin: Callable[[str], int],
    end: Callable[[str], None],
    limit: int,
):
    """compute(rows) -> (values, costs), each with one entry per row, under the crash ledger.

    Returns (rows computed, their values, their costs, rows dead-lettered as worker_crash). `row_keys[i]`
    names row i across attempts (shard and sequence number); `begin`/`end` are the ledger's methods.
    """
    rows = np.asarray(rows, dtype=np.int64)
    none = np.zeros(0, dtype=np.int64)
    if rows.size == 0:
        return (rows, *compute(rows), none)
    key = batch_key([row_keys[i] for i in rows])
    if begin(key) < limit:
        values, costs = compute(rows)
        end(key)
        return rows, values, costs, none
    done, values, costs, crashed = [], [], [], []
    for row in rows:
        if begin(row_keys[row]) >= limit:
            end(row_keys[row])
            crashed.append(row)
            continue
        value, cost = compute(np.array([row]))
        end(row_keys[row])
        done.append(row)
        values.append(value)
        costs.append(cost)
    end(key)
    crashed = np.asarray(crashed, dtype=np.int64)
    if not done:
        return (none, *compute(none), crashed)
    return np.asarray(done, dtype=np.int64), np.concatenate(values), np.concatenate(costs), crashed
