"""The crash guard's retry rule, with worker deaths simulated by an exception and a fresh attempt."""

import numpy as np
import pytest

from embedrank.runtime.crash_guard import CrashLedger, batch_key, run_guarded


class WorkerDied(Exception):
    pass


def run_until_done(rows, poison, limit=2, transient=0):
    """Attempt the batch as Ray Data would (again after every death). -> (attempts, result)."""
    ledger = CrashLedger()
    keys = [f"shard/{i}" for i in range(10)]
    deaths = {"transient": transient}

    def compute(subset):
        if deaths["transient"]:
            deaths["transient"] -= 1
            raise WorkerDied
        if poison & set(subset.tolist()):
            raise WorkerDied
        return subset.astype(np.float32)[:, None] * 2, np.full(len(subset), 3)

    for attempt in range(1, 50):
        try:
            return attempt, ledger, run_guarded(np.asarray(rows), keys, compute, ledger.begin, ledger.end, limit)
        except WorkerDied:
            continue
    raise AssertionError("never finished")


def test_a_clean_batch_runs_once_and_leaves_nothing_running():
    attempts, ledger, (done, values, costs, crashed) = run_until_done(range(8), poison=set())
    assert attempts == 1 and ledger.running == set() and not ledger.deaths
    assert done.tolist() == list(range(8)) and crashed.size == 0
    assert values[:, 0].tolist() == [2 * i for i in range(8)] and costs.tolist() == [3] * 8


def test_a_poison_row_is_isolated_and_dead_lettered_after_the_limit():
    attempts, ledger, (done, values, costs, crashed) = run_until_done([0, 2, 3, 5, 7], poison={3})
    # two deaths of the batch, then row by row: two deaths of row 3, then the row is given up
    assert attempts == 5 and ledger.deaths["shard/3"] == 2
    assert crashed.tolist() == [3]
    assert done.tolist() == [0, 2, 5, 7] and values[:, 0].tolist() == [0, 4, 10, 14]
    assert ledger.running == set()


@pytest.mark.parametrize("limit", [1, 3])
def test_the_limit_bounds_the_deaths(limit):
    attempts, ledger, (_, _, _, crashed) = run_until_done([1, 4, 6], poison={4, 6}, limit=limit)
    assert crashed.tolist() == [4, 6]
    # deaths: `limit` of the whole batch, then `limit` of each poison row on its own
    assert attempts == limit + 2 * limit + 1
    assert ledger.deaths["shard/4"] == ledger.deaths["shard/6"] == limit


def test_a_transient_death_retries_the_whole_batch():
    attempts, _, (done, _, _, crashed) = run_until_done(range(5), poison=set(), transient=1)
    assert attempts == 2 and done.tolist() == list(range(5)) and crashed.size == 0


def test_every_row_crashing_gives_an_empty_result():
    _, _, (done, values, costs, crashed) = run_until_done([1, 2], poison={1, 2})
    assert done.size == 0 and values.shape == (0, 1) and crashed.tolist() == [1, 2]


def test_batch_keys_name_the_rows_in_order():
    assert batch_key(["a/1", "a/2"]) == batch_key(["a/1", "a/2"])
    assert batch_key(["a/1", "a/2"]) != batch_key(["a/2", "a/1"])
    assert batch_key(["a/12"]) != batch_key(["a/1", "2"])
