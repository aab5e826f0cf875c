"""Fault injection for the reliability tests: real process deaths at chosen points, driven by environment.

Inactive unless EMBEDRANK_FAULTS holds a JSON object; never set it in production. Keys:
  state_dir            a directory shared by the processes, counting the faults fired so far
  embed_exit_after     an embed actor exits (os._exit) when it starts its N-th batch ...
  embed_exit_times     ... until this many exits have happened in total
  embed_sleep_s        an embed actor sleeps this long before each batch (a slow model, to stop a run midway)
  rerank_exit_after, rerank_exit_times, rerank_sleep_s: the same for rerank actors
Each process reads the variable itself, so it reaches Ray workers through the inherited environment.
"""

from __future__ import annotations

import json
import os
import time
import uuid

ENV = "EMBEDRANK_FAULTS"


def _plan() -> dict:
    raw = os.environ.get(ENV)
    return json.loads(raw) if raw else {}


def _fired(state_dir: str, name: str) -> int:
    return sum(1 for f in os.listdir(state_dir) if f.startswith(name + "-")) if os.path.isdir(state_dir) else 0


def maybe_exit(name: str, calls_so_far: int) -> None:
    """Exit this process hard if the fault `name` is planned for this call and has fired too few times."""
    plan = _plan()
    after, times = plan.get(f"{name}_exit_after"), plan.get(f"{name}_exit_times", 1)
    if after is None or calls_so_far + 1 != after:
        return
    state = plan["state_dir"]
    if _fired(state, name) >= times:
        return
    os.makedirs(state, exist_ok=True)
    open(os.path.join(state, f"{name}-{uuid.uuid4().hex}"), "w").close()
    os._exit(17)


def maybe_sleep(name: str) -> None:
    delay = _plan().get(f"{name}_sleep_s")
    if delay:
        time.sleep(float(delay))
