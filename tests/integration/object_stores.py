"""Local GCS and Azure Blob endpoints for the object-store tests, started by the tests themselves.

GCS: gcp-storage-emulator (PyPI) in this process. Its 2026.7 release ignores `ifGenerationMatch` (a second
create-if-absent succeeds) and answers `objects.moveTo` with 501 (which gcsfs retries for half a minute before
copying). Real GCS does both, so `serve_gcs` puts two routes in front of the emulator's own: uploads that carry
`ifGenerationMatch` are refused with 412 unless the object's generation matches (the server is single-threaded,
so the check and the write are one step, as on GCS), and moveTo is the emulator's own copy, then delete.
`test_gcs_endpoint_enforces_generation_match` proves the check is in force before any lock test relies on it.

Azure: Azurite (npm), installed by `make setup` under .venv/azurite (tests/integration/azurite/package-lock.json
pins it), started as a child process on a free port. Azurite enforces If-None-Match and If-Match itself.

Both are reached the way a deployment reaches the real stores, through the environment only: STORAGE_EMULATOR_HOST
for gcsfs, AZURE_STORAGE_CONNECTION_STRING for adlfs (Azurite's published development account and key).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from http import HTTPStatus
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AZURITE = REPO / ".venv" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (documented by Microsoft; it opens nothing but a local emulator).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# gcsfs probes every bucket over gRPC first (zonal/HNS buckets); against an emulator that is a 60 s timeout.
GCS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- GCS ---------------------------------------------------------------------------------------------------
def _add_gcs_routes() -> None:
    """Put the generation precondition and moveTo in front of gcp-storage-emulator's routes (once)."""
    from gcp_storage_emulator import server, settings
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if getattr(server, "_embedrank_routes", False):
        return

    def insert(request, response, storage, *args, **kwargs):
        want = request.query.get("ifGenerationMatch")
        if want and "upload_id" not in request.query:
            bucket = request.params["bucket_name"]
            if "name" in request.query:
                name = request.query["name"][0]
            else:  # multipart: the name is in the metadata part; resumable: in the JSON body
                data = request.data or {}
                name = data["meta"].get("name") if "meta" in data else data.get("name")
            try:
                current = str(storage.get_file_obj(bucket, name)["generation"])
            except NotFound:
                current = "0"
            if current != want[0]:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "At least one of the pre-conditions failed."}})
                return None
        return objects.insert(request, response, storage, *args, **kwargs)

    def move(request, response, storage, *args, **kwargs):
        params = request.params  # parsed once and cached on the request: copy() reads the same dict
        params["dest_bucket_name"] = params["bucket_name"]
        objects.copy(request, response, storage)
        if response.status == HTTPStatus.OK:
            storage.delete_file(params["bucket_name"], params["object_id"])

    bucket = r"(?P<bucket_name>[-.\w]+)"
    server.HANDLERS = (
        (rf"^{settings.UPLOAD_API_ENDPOINT}/b/{bucket}/o$", {"POST": insert, "PUT": objects.upload_partial}),
        (
            rf"^{settings.API_ENDPOINT}/b/{bucket}/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
            {"POST": move},
        ),
        *server.HANDLERS,
    )
    server._embedrank_routes = True


def serve_gcs():
    """(server, endpoint URL): gcp-storage-emulator in memory on a free port, with the routes above."""
    from gcp_storage_emulator.server import create_server

    _add_gcs_routes()
    port = free_port()
    srv = create_server("127.0.0.1", port, in_memory=True)
    srv.start()
    return srv, f"http://127.0.0.1:{port}"


# -- Azure -------------------------------------------------------------------------------------------------
def azurite_missing() -> str | None:
    """Why Azurite cannot start here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (Azurite, the Azure Blob emulator, runs on Node.js)"
    if not AZURITE.exists():
        return f"Azurite is not installed at {AZURITE.parent.parent}: run `make setup` (it needs npm)"
    return None


def connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


def start_azurite(folder: Path) -> tuple[subprocess.Popen, str]:
    """(process, blob endpoint URL): Azurite's blob service on a free port, its data in `folder`.
    Raises RuntimeError naming the log when it does not listen within 30 s."""
    port = free_port()
    log = folder / "azurite.log"
    proc = subprocess.Popen(
        [
            str(AZURITE),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(folder),
            "--skipApiVersionCheck",  # newer azure-storage-blob releases than Azurite knows are fine
            "--loose",
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"Azurite did not listen on 127.0.0.1:{port} within 30 s; see {log}: {log.read_text()[-500:]}")


def stop(proc: subprocess.Popen) -> None:
    # Azurite closes on SIGINT, but waits for open keep-alive connections first: its data is throwaway.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def set_env(values: dict) -> dict:
    """Set environment variables; returns the previous values (None: unset) for restore_env."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return before


def restore_env(before: dict) -> None:
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
