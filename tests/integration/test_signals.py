"""Ctrl-C and SIGTERM at each phase of a real run: one line, exit 128 + signal, the lock given back, and a rerun
that finishes the output exactly once.

The signal goes to the job's whole process group, as a terminal's Ctrl-C does. A phase is reached through the
fault hooks: the driver sleeps at a named point (planning, after Ray started, while a shard's files move into
place, after publishing), the actors sleep while loading or on every batch (running).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import reliability
from .conftest import corpus_rows, start_job, write_shard

pytestmark = pytest.mark.reliability

SHARDS, PER_SHARD = 4, 24
LINE = "rerun the same command to resume"


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the job ended (rc {proc.returncode}) before {what}: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout} s: {log.read_text()[-3000:]}")


def interrupt_run(s3, job_config, tmp_path, sample_rows, *, name: str, sig: int, faults: dict, reached):
    """Start an embed run, send `sig` to its process group once `reached(state_dir, output)` holds; return
    (exit code, its output lines, the output location, the valid rows)."""
    rows = corpus_rows(sample_rows, SHARDS * PER_SHARD, prefix=name)
    for i in range(SHARDS):
        write_shard(s3, f"corpus/sig-{name}-in/part-{i}.jsonl", rows[i * PER_SHARD : (i + 1) * PER_SHARD])
    output = f"s3://corpus/sig-{name}-out"
    config = job_config(f"s3://corpus/sig-{name}-in/", output, embed={"batch_size": 8})
    state = tmp_path / "state"
    log = tmp_path / f"{name}.log"
    proc = start_job(config, env={"EMBEDRANK_FAULTS": json.dumps({"state_dir": str(state), **faults})}, log=log)
    try:
        wait_for(lambda: reached(state, output), 240, "the phase", proc, log)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode, log.read_text().splitlines(), output, {r["id"]: r["text"] for r in rows}, config


def committed(s3, output: str) -> int:
    s3.invalidate_cache()
    folder = output[len("s3://") :] + "/_embedrank/commits"
    return len(s3.ls(folder)) if s3.exists(folder) else 0


def check_stopped_and_resumed(s3, job_embedder, phase, sig, rc, lines, output, valid, config, run_job) -> None:
    assert rc == 128 + sig, "\n".join(lines[-40:])
    name = signal.Signals(sig).name
    last = [line for line in lines if "interrupted" in line]
    assert len(last) == 1 and last[0].startswith(f"embedrank embed: interrupted ({name}): "), lines[-20:]
    assert last[0].endswith(LINE)
    assert not any("Traceback" in line for line in lines), "\n".join(lines[-60:])
    s3.invalidate_cache()
    assert not s3.exists(output[len("s3://") :] + "/_embedrank/lock.json"), "the lock was not given back"
    rerun = run_job(config)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    stats = reliability.check_exactly_once(s3, output[len("s3://") :], valid=valid, rejected={}, embedder=job_embedder)
    reliability.record(f"{name} while {phase}, then rerun", 2, stats)


def at(point: str):
    return lambda state, output: (state / f"at-{point}").exists()


PHASES = {
    # phase: (faults, when the signal is sent)
    "planning": ({"driver_sleep_at": "planning", "driver_sleep_s": 120}, at("planning")),
    "ray_started": ({"driver_sleep_at": "ray_started", "driver_sleep_s": 120}, at("ray_started")),
    "actor_loading": ({"actor_load_sleep_s": 120, "driver_sleep_at": "ray_started", "driver_sleep_s": 0}, None),
    "committing": ({"driver_sleep_at": "moving", "driver_sleep_s": 120}, at("moving")),
    "publishing": ({"driver_sleep_at": "published", "driver_sleep_s": 120}, at("published")),
}


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_while_the_model_runs_stops_the_run_and_the_rerun_finishes_it(
    sig, s3, job_config, tmp_path, sample_rows, job_embedder
):
    from .conftest import run_job

    name = f"run-{signal.Signals(sig).name.lower()}"
    # Every batch takes a second: the signal comes once a shard is committed and others are still running.
    rc, lines, output, valid, config = interrupt_run(
        s3,
        job_config,
        tmp_path,
        sample_rows,
        name=name,
        sig=sig,
        faults={"embed_sleep_s": 1},
        reached=lambda state, out: committed(s3, out) >= 1,
    )
    line = next(line for line in lines if "interrupted" in line)
    assert int(line.split("): ")[1].split(" shards")[0]) >= 1, line
    check_stopped_and_resumed(s3, job_embedder, "running", sig, rc, lines, output, valid, config, run_job)


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_any_phase_stops_the_run_and_the_rerun_finishes_it(
    phase, sig, s3, job_config, tmp_path, sample_rows, job_embedder
):
    from .conftest import run_job

    faults, reached = PHASES[phase]
    if reached is None:  # actors loading: Ray is up, the actors have not taken a batch yet
        reached = lambda state, out: (state / "at-ray_started").exists() and time.sleep(5) is None  # noqa: E731
    name = f"{phase}-{signal.Signals(sig).name.lower()}".replace("_", "-")
    rc, lines, output, valid, config = interrupt_run(
        s3, job_config, tmp_path, sample_rows, name=name, sig=sig, faults=faults, reached=reached
    )
    check_stopped_and_resumed(s3, job_embedder, phase, sig, rc, lines, output, valid, config, run_job)


def test_a_second_ctrl_c_ends_the_process_at_once(s3, job_config, tmp_path, sample_rows):
    """A second Ctrl-C while the first one is being handled ends the process at once, without a traceback."""
    rows = corpus_rows(sample_rows, 8, prefix="twice")
    write_shard(s3, "corpus/sig-twice-in/part-0.jsonl", rows)
    config = job_config("s3://corpus/sig-twice-in/", "s3://corpus/sig-twice-out")
    state = tmp_path / "state"
    log = tmp_path / "twice.log"
    faults = {"state_dir": str(state), "driver_sleep_at": "planning", "driver_sleep_s": 120}
    proc = start_job(config, env={"EMBEDRANK_FAULTS": json.dumps(faults)}, log=log)
    try:
        wait_for(lambda: (state / "at-planning").exists(), 120, "planning", proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
