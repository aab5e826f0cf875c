"""A real multi-node Ray cluster on this machine for the `ray job submit` tests.

`ray start --head --block` (dashboard on 127.0.0.1, no CPUs: the job drivers run there, the work elsewhere)
plus worker nodes started with `ray start --address --block`, each with its own --temp-dir, resources and agent
ports, all with token authentication. Each `ray start --block` runs in a session of its own, so the fixture stops
exactly the processes it started (their process groups), never with `ray stop`, and a test can kill one node's
raylet by its pid (a node dying mid-job).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")  # job states that never change again


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path  # one folder per node below it: its --temp-dir and its log
    gcs: str  # host:port of the head's GCS
    dashboard: str  # http://127.0.0.1:PORT: the Jobs API
    env: dict  # what a client needs: token auth, PATH
    nodes: dict[str, subprocess.Popen] = field(default_factory=dict)  # name -> its `ray start --block`

    # -- nodes ---------------------------------------------------------------------------------------------
    def start_node(self, name: str, *args: str) -> subprocess.Popen:
        """`ray start --block` in a session of its own. Every node gets its own dashboard agent port: Ray's
        default (52365) is taken by whichever Ray on this machine started first, and a head whose agent cannot
        bind it accepts no job ("No available agent to submit job")."""
        log = open(self.root / f"{name}.log", "w")
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--block",
                "--temp-dir",
                str(self.root / name),
                "--dashboard-agent-listen-port",
                str(free_port()),
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.nodes[name] = proc
        return proc

    def add_worker(self, name: str, cpus: int) -> None:
        """Start a worker node and wait until the cluster counts its CPUs."""
        before = _cpus(self)
        self.start_node(
            name, "--address", self.gcs, "--num-cpus", str(cpus), "--resources", json.dumps({"worker_node": 1})
        )
        _wait(lambda: _cpus(self) >= before + cpus, 120, f"the worker node {name}", self.root / f"{name}.log")

    def live_workers(self) -> list[str]:
        """Names of the worker nodes whose `ray start --block` still runs."""
        return [name for name, proc in self.nodes.items() if name != "head" and proc.poll() is None]

    def wait_cpus(self, cpus: float, timeout: float = 120) -> None:
        """Wait until the cluster counts exactly `cpus` CPUs (a dead node's are gone once Ray marks it dead)."""
        _wait(lambda: _cpus(self) == cpus, timeout, f"a cluster of {cpus:g} CPUs", self.root / "head.log")

    def raylet_pid(self, name: str) -> int:
        """The pid of node `name`'s raylet: the process called raylet in the session its `ray start` leads."""
        group = self.nodes[name].pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) == group and (entry / "comm").read_text().strip() == "raylet":
                    return int(entry.name)
            except (ProcessLookupError, FileNotFoundError, PermissionError):
                continue
        raise LookupError(f"no raylet runs in the process group of node {name} ({group})")

    def wait_node_gone(self, name: str, timeout: float = 60) -> None:
        """Wait until `ray start --block` of node `name` has exited (it does when its raylet dies)."""
        self.nodes[name].wait(timeout=timeout)

    # -- jobs ----------------------------------------------------------------------------------------------
    def submit(
        self,
        *entrypoint: str,
        runtime_env: str = "infra/runtime_env.yaml",
        wait: bool = True,
        timeout: int = 600,
        extra: tuple = (),
    ) -> subprocess.CompletedProcess:
        cmd = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            self.dashboard,
            "--runtime-env",
            runtime_env,
            *extra,
            *(() if wait else ("--no-wait",)),
            "--",
            *entrypoint,
        ]
        deadline = time.time() + 300
        while True:
            proc = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
            # The head's job agent registers a little after the Jobs API answers: Ray says to try again.
            if "No available agent to submit job" not in proc.stderr + proc.stdout or time.time() > deadline:
                return proc
            time.sleep(3)

    def jobs(self):
        """A Jobs API client of this cluster (the token in its header)."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})

    def wait_job(self, submission_id: str, timeout: float = 600) -> str:
        """Wait until the job reaches a terminal state; returns it."""
        client, deadline, status = self.jobs(), time.time() + timeout, "?"
        while time.time() < deadline:
            status = str(client.get_job_status(submission_id).value)
            if status in TERMINAL:
                return status
            time.sleep(2)
        raise TimeoutError(
            f"job {submission_id} still {status} after {timeout:.0f} s:\n{client.get_job_logs(submission_id)[-4000:]}"
        )

    def ray(self, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    # -- where things ran ----------------------------------------------------------------------------------
    def node_of_actors(self, class_fragment: str) -> set[str]:
        """Node ids of the actors whose class name contains `class_fragment` (alive or dead)."""
        code = (
            "import json, ray; from ray.util.state import list_actors; "
            f"print(json.dumps([(a.class_name, a.node_id) for a in list_actors(address={self.dashboard!r}, "
            "limit=10000, raise_on_missing_output=False)]))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return {node for name, node in json.loads(out.stdout.strip().splitlines()[-1]) if class_fragment in name}

    def head_node_id(self) -> str:
        code = (
            "import json, ray; from ray.util.state import list_nodes; "
            f"print(json.dumps([(n.node_id, n.is_head_node) for n in list_nodes(address={self.dashboard!r})]))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return next(node for node, head in json.loads(out.stdout.strip().splitlines()[-1]) if head)

    def stop(self) -> None:
        for proc in reversed(list(self.nodes.values())):
            _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group this fixture started, then SIGKILL what is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # `ray start --block` may leave its GCS behind on SIGTERM
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def start_cluster(root: Path, credentials: dict, worker_cpus: int = 3) -> Cluster:
    """A head and one worker node, token authentication on. Tried twice: on a loaded machine a raylet gives up
    when its dashboard agent needs more than 15 s to start ("The current node timed out during startup")."""
    try:
        return _start_cluster(root, credentials, worker_cpus)
    except RuntimeError:
        return _start_cluster(root / "again", credentials, worker_cpus)


def _start_cluster(root: Path, credentials: dict, worker_cpus: int) -> Cluster:
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    env = {
        **os.environ,
        **credentials,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("EMBEDRANK_FAULTS", None)
    gcs_port, dashboard_port = free_port(), free_port()
    cluster = Cluster(root, f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}", env)
    try:
        cluster.start_node(
            "head",
            "--head",
            "--port",
            str(gcs_port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(free_port()),
            "--num-cpus",
            "0",
            "--resources",
            '{"head_node": 1}',
        )
        _wait(
            lambda: cluster.ray("job", "list", "--address", cluster.dashboard, timeout=30).returncode == 0,
            120,
            "the head's Jobs API",
            root / "head.log",
        )
        cluster.add_worker("worker", worker_cpus)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _cpus(cluster: Cluster) -> float:
    out = cluster.ray("status", "--address", cluster.gcs, timeout=60)
    for line in out.stdout.splitlines():
        if "CPU" in line and "/" in line:
            try:
                return float(line.split("/")[1].split()[0])
            except (IndexError, ValueError):
                continue
    return 0.0


def _wait(ready, timeout: float, what: str, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if ready():
                return
        except subprocess.TimeoutExpired:  # a `ray` command slower than its own limit: not ready yet
            pass
        time.sleep(2)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s:\n{log.read_text()[-3000:]}")
