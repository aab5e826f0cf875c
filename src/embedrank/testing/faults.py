"""Fault injection for the reliability tests: real process deaths at named points of a run.

Inert unless EMBEDRANK_FAULTS holds a JSON object when the process starts: every hook returns at once on a
module constant, so a production run pays one attribute lookup per point. Never set it in production.
The runtime calls these hooks at named points only (runtime/job.py, runtime/store.py, runtime/staging.py,
runtime/actor.py). Keys:
  state_dir            a directory shared by the processes, counting the faults fired so far
  embed_exit_after     an embed actor exits (os._exit) when it starts its N-th batch ...
  embed_exit_times     ... until this many exits have happened in total
  embed_sleep_s        an embed actor sleeps this long before each batch (a slow model, to stop a run midway)
  rerank_exit_after, rerank_exit_times, rerank_sleep_s: the same for rerank actors
  poison_ids           ids (embed) or doc_ids (rerank) whose presence in a model batch kills the worker, every
                       time: a row that crashes the model
  write_exit_times     a write task exits right after uploading its first file, until this many have
  driver_kill_at       the driver SIGKILLs itself and the local Ray it started when it reaches this point ...
  driver_kill_count    ... for the N-th time (default 1). Points: planning, planned, ray_started, staged,
                       moving, committed, published, <job>_published (after publishing,
                       before the after_publish hook: nightly_published is the moment before _CURRENT moves)
  driver_sleep_at      the driver writes `at-<point>` into state_dir and sleeps driver_sleep_s at this point
                       (the first time): a phase in which a test sends a signal
  actor_load_sleep_s   a model actor sleeps this long before it loads its model
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
PLAN: dict = json.loads(os.environ[ENV]) if os.environ.get(ENV) else {}
ACTIVE = bool(PLAN)
POISON_COLUMNS = ("id", "doc_id")  # the id column a poison id is looked up in (embed rows, rerank pairs)
_reached: Counter = Counter()  # driver points reached in this process


def _fired(state_dir: str, name: str) -> int:
    return sum(1 for f in os.listdir(state_dir) if f.startswith(name + "-")) if os.path.isdir(state_dir) else 0


def _fire_once_more(name: str, times: int) -> bool:
    """Record one more firing of `name` in the shared state dir, unless it has fired `times` times already."""
    state = PLAN["state_dir"]
    if _fired(state, name) >= times:
        return False
    os.makedirs(state, exist_ok=True)
    open(os.path.join(state, f"{name}-{uuid.uuid4().hex}"), "w").close()
    return True


def actor_batch(stage: str, calls_so_far: int) -> None:
    """An actor starts a batch: sleep (a slow model) or exit hard, as planned for `stage`."""
    if not ACTIVE:
        return
    delay = PLAN.get(f"{stage}_sleep_s")
    if delay:
        time.sleep(float(delay))
    after, times = PLAN.get(f"{stage}_exit_after"), PLAN.get(f"{stage}_exit_times", 1)
    if after is not None and calls_so_far + 1 == after and _fire_once_more(stage, times):
        os._exit(17)


def before_model(batch, rows) -> None:
    """The model is about to run on `rows` of `batch`: die if one of them carries a poison id."""
    if not ACTIVE or not PLAN.get("poison_ids") or len(rows) == 0:
        return
    column = next(c for c in POISON_COLUMNS if c in batch.column_names)
    if not set(PLAN["poison_ids"]).isdisjoint(batch.column(column).take(rows).to_pylist()):
        os._exit(18)


def after_upload() -> None:
    """A write task dies right after one of its files reached storage (before it reports anything)."""
    if ACTIVE and PLAN.get("write_exit_times") and _fire_once_more("write", PLAN["write_exit_times"]):
        os._exit(19)


def actor_loading() -> None:
    """A model actor is about to load its model: sleep, as a slow load from a big checkpoint does."""
    if ACTIVE and PLAN.get("actor_load_sleep_s"):
        time.sleep(float(PLAN["actor_load_sleep_s"]))


def driver_point(point: str) -> None:
    """SIGKILL the driver (and the local Ray it started, its process group) at a planned point of the run, or
    sleep there (driver_sleep_at)."""
    if not ACTIVE:
        return
    if PLAN.get("driver_sleep_at") == point and not _reached[f"slept-{point}"]:
        _reached[f"slept-{point}"] += 1
        os.makedirs(PLAN["state_dir"], exist_ok=True)
        open(os.path.join(PLAN["state_dir"], f"at-{point}"), "w").close()
        time.sleep(float(PLAN.get("driver_sleep_s", 60)))
    if PLAN.get("driver_kill_at") != point:
        return
    _reached[point] += 1
    if _reached[point] != PLAN.get("driver_kill_count", 1):
        return
    if os.getpgrp() == os.getpid():  # started as its own session: take the whole local cluster down with it
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
