"""Fault injection for the reliability tests: real process deaths at chosen points, driven by environment.

Inactive unless EMBEDRANK_FAULTS holds a JSON object; never set it in production. Keys:
  state_dir            a directory shared by the processes, counting the faults fired so far
  embed_exit_after     an embed actor exits (os._exit) when it starts its N-th batch ...
  embed_exit_times     ... until this many exits have happened in total
  embed_sleep_s        an embed actor sleeps this long before each batch (a slow model, to stop a run midway)
  rerank_exit_after, rerank_exit_times, rerank_sleep_s: the same for rerank actors
  poison_ids           ids (embed) or doc_ids (rerank) whose presence in a model batch kills the worker, every
                       time: a row that crashes the model
  write_exit_times     a write task exits right after uploading its first file, until this many have
  driver_kill_at       the driver SIGKILLs itself and the local Ray it started when it reaches this point ...
  driver_kill_count    ... for the N-th time (default 1). Points: planned, staged, moving, committed,
                       published, nightly_published
Each process reads the variable itself, so it reaches Ray workers through the inherited environment.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter

ENV = "EMBEDRANK_FAULTS"
_reached: Counter = Counter()  # driver points reached in this process


def _plan() -> dict:
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else {}


def _fired(state_dir: str, name: str) -> int:
    return sum(1 for f in os.listdir(state_dir) if f.startswith(name + "-")) if os.path.isdir(state_dir) else 0


def _fire_once_more(plan: dict, name: str, times: int) -> bool:
    """Record one more firing of `name` in the shared state dir, unless it has fired `times` times already."""
    state = plan["state_dir"]
    if _fired(state, name) >= times:
        return False
    os.makedirs(state, exist_ok=True)
    open(os.path.join(state, f"{name}-{uuid.uuid4().hex}"), "w").close()
    return True


def maybe_exit(name: str, calls_so_far: int) -> None:
    """Exit this process hard if the fault `name` is planned for this call and has fired too few times."""
    plan = _plan()
    after, times = plan.get(f"{name}_exit_after"), plan.get(f"{name}_exit_times", 1)
    if after is None or calls_so_far + 1 != after:
        return
    if _fire_once_more(plan, name, times):
        os._exit(17)


def maybe_sleep(name: str) -> None:
    delay = _plan().get(f"{name}_sleep_s")
    if delay:
        time.sleep(float(delay))


def poison_ids() -> set | None:
    """The ids whose rows kill the model worker, when that fault is planned."""
    poison = _plan().get("poison_ids")
    return set(poison) if poison else None


def crash_on_poison(poison: set, ids) -> None:
    """Kill this worker if it is about to run the model on a poison id (a row that crashes the model)."""
    if not poison.isdisjoint(ids):
        os._exit(18)


def after_upload() -> None:
    """A write task dies right after one of its files reached storage (before it reports anything)."""
    plan = _plan()
    times = plan.get("write_exit_times")
    if times and _fire_once_more(plan, "write", times):
        os._exit(19)


def driver_point(point: str) -> None:
    """SIGKILL the driver (and the local Ray it started, its process group) at a planned point of the run."""
    plan = _plan()
    if plan.get("driver_kill_at") != point:
        return
    _reached[point] += 1
    if _reached[point] != plan.get("driver_kill_count", 1):
        return
    if os.getpgrp() == os.getpid():  # started as its own session: take the whole local cluster down with it
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
