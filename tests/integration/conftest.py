"""Integration fixtures: a real S3 endpoint on 127.0.0.1 (moto's server mode) and a corpus in it.

Jobs run as subprocesses through the CLI (`python -m embedrank.cli embed ...`), each with its own local Ray,
exactly as users run them; that also lets tests kill a run with SIGKILL.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedrank.runtime.store import REJECTED

REPO = Path(__file__).resolve().parents[2]
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    os.environ.update(CREDENTIALS)
    server, _ = serve_moto()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def serve_moto():
    """moto's S3 in server mode on 127.0.0.1 (a free port), behind FaultyS3 with no fault switched on.

    Every server started here shares one in-process moto backend, so two endpoints see the same buckets.
    """
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    app = FaultyS3(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, app


class FaultyS3:
    """WSGI middleware in front of moto that injects storage faults, switched on and off by the tests.

    throttle_every = n: every n-th request (reads and writes alike) is answered 503 SlowDown, as S3 does under
    load. deny_writes = "bucket/prefix": every PUT, POST and DELETE under it is answered 403 AccessDenied.
    Conditional writes (If-None-Match / If-Match) are served one at a time: S3 makes them atomic, moto's
    threaded server alone does not.
    """

    conditional = threading.Lock()  # shared by every endpoint: they share one backend

    def __init__(self, app):
        self.app = app
        self.throttle_every = 0
        self.deny_writes: str | None = None
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.throttle_every, self.deny_writes, self.counts = 0, None, {}

    def _count(self, what: str) -> int:
        with self._lock:
            self.counts[what] = self.counts.get(what, 0) + 1
            return self.counts[what]

    def __call__(self, environ, start_response):
        from werkzeug.wsgi import get_input_stream

        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "").lstrip("/")
        write = method in ("PUT", "POST", "DELETE")
        n = self._count("requests")
        if self.throttle_every and n % self.throttle_every == 0:
            self._count("throttled_writes" if write else "throttled_reads")
            return self._error(
                environ,
                start_response,
                "503 Slow Down",
                "SlowDown",
                "Please reduce your request rate.",
                get_input_stream,
            )
        if write and self.deny_writes and path.startswith(self.deny_writes):
            self._count("denied")
            return self._error(
                environ, start_response, "403 Forbidden", "AccessDenied", "Access Denied", get_input_stream
            )
        if write and ("HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ):
            with self.conditional:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    @staticmethod
    def _error(environ, start_response, status, code, message, get_input_stream):
        get_input_stream(environ).read()  # consume the request body so the connection stays usable
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>faulty-s3</RequestId></Error>"
        ).encode()
        start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
        return [body]


@pytest.fixture(scope="session")
def faulty_s3(s3_endpoint):
    """(endpoint URL, FaultyS3 controls): a second endpoint on the same moto backend, with injected faults."""
    server, faults = serve_moto()
    yield f"http://127.0.0.1:{server.server_port}", faults
    server.shutdown()


@pytest.fixture(scope="session")
def s3(s3_endpoint):
    """An s3fs filesystem on the local endpoint, with a fresh bucket per test session."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    fs.mkdir("corpus")
    return fs


def corpus_rows(sample_rows, n: int, prefix: str = "r") -> list[dict]:
    """n rows of real text with skewed lengths, cut from the sample corpus."""
    rows = []
    for i in range(n):
        src = sample_rows[i % len(sample_rows)]
        cut = [60, 200, 600, 1500][i % 4]
        rows.append({"id": f"{prefix}{i:05d}", "text": f"{i}: " + src["text"][:cut], "lang": src["lang"]})
    return rows


def write_shard(fs, path: str, rows: list[dict]) -> None:
    """Parquet (.parquet), JSON Lines (.jsonl), gzip (.jsonl.gz) or zstd (.jsonl.zst), by extension."""
    if path.endswith(".parquet"):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), buf)
        data = buf.getvalue()
    else:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        if path.endswith(".gz"):
            data = gzip.compress(data)
        elif path.endswith(".zst"):
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
    fs.pipe_file(path, data)


def job_env(extra: dict | None = None) -> dict:
    env = {**os.environ, **CREDENTIALS, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def job_command(command: str, config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "embedrank.cli", command, "--config", str(config), *args]


def run_job(
    config: Path, *args: str, env: dict | None = None, timeout: int = 300, command: str = "embed"
) -> subprocess.CompletedProcess:
    return subprocess.run(
        job_command(command, config, *args),
        cwd=REPO,
        env=job_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def start_job(
    config: Path, *args: str, env: dict | None = None, log: Path | None = None, command: str = "embed"
) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(
        job_command(command, config, *args),
        cwd=REPO,
        env=job_env(env),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the job's whole process group: the driver and the local Ray it started."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
    time.sleep(1)


JOB_MAX_LENGTH = 512  # model.max_length of the job configs written here


@pytest.fixture(scope="session")
def job_embedder(tiny_embedding_dir):
    """The embedder the job configs describe, in-process: what every committed vector must equal."""
    from embedrank import Qwen3Embedder

    return Qwen3Embedder.from_pretrained(tiny_embedding_dir, max_length=JOB_MAX_LENGTH)


def config_factory(folder: Path, s3_endpoint: str, model_dir: Path):
    """A factory writing job configs for the local S3 endpoint and a tiny model into `folder`."""
    import yaml

    def make(input_uri: str, output_uri: str, **sections) -> Path:
        cfg = {
            "input": {"uri": input_uri},
            "output": {"uri": output_uri},
            "model": {"source": str(model_dir), "max_length": JOB_MAX_LENGTH},
            "embed": {"batch_size": 128},
            "prepare": {"batch_size": 200},
            "storage": {"endpoint_url": s3_endpoint},
            "ray": {"num_cpus": 2},
            "progress_interval_s": 2,
        }
        for key, value in sections.items():
            cfg.setdefault(key, {}).update(value)
        path = folder / f"job-{len(list(folder.glob('job-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


@pytest.fixture
def job_config(tmp_path, s3_endpoint, tiny_embedding_dir):
    return config_factory(tmp_path, s3_endpoint, tiny_embedding_dir)


@pytest.fixture(scope="module")
def job_config_module(tmp_path_factory, s3_endpoint, tiny_embedding_dir):
    return config_factory(tmp_path_factory.mktemp("configs"), s3_endpoint, tiny_embedding_dir)


def read_output(fs, root: str, folder: str | None = None) -> pa.Table:
    """The committed rows of a job output, read the way its users do: the data folder (vectors/ or scores/)
    or, with folder="rejected", the dead letters (`_rejected/`), through pyarrow.dataset."""
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    root = root.rstrip("/")
    remote = root.startswith("s3://")
    if remote:
        fs.invalidate_cache()  # the job wrote from another process
    exists = fs.exists if remote else os.path.exists
    path = root[5:] if remote else root
    if folder is None:
        folder = next((name for name in ("vectors", "scores", "candidates") if exists(f"{path}/{name}")), "vectors")
    elif folder == "rejected":
        folder = REJECTED
    if not exists(f"{path}/{folder}"):
        return pa.table({})
    if remote:
        return ds.dataset(f"{path}/{folder}", format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs))).to_table()
    return ds.dataset(f"{path}/{folder}", format="parquet").to_table()
