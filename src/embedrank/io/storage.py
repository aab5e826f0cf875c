"""Filesystems for URIs: s3:// (s3fs), gs:// (gcsfs), abfs:// and az:// (adlfs: Azure Blob Storage), else local.

Credentials are never taken from the config; each store's own client finds them:
- S3: the AWS environment variables, profile files, the instance role or IRSA.
- GCS: Application Default Credentials (GKE workload identity, GOOGLE_APPLICATION_CREDENTIALS, gcloud);
  STORAGE_EMULATOR_HOST points gcsfs at an emulator.
- Azure: AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, else
  DefaultAzureCredential (AKS workload identity, managed identity, az login). The account comes from the URI
  (abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/...), AZURE_STORAGE_ACCOUNT_NAME or storage.azure_account_name.

The output lock needs three conditional operations that each store spells differently (create_new, version_of,
replace_if): S3 If-None-Match / If-Match on the ETag, GCS ifGenerationMatch on the generation, Azure
If-None-Match / If-Match on the blob's ETag. Errors that reach users name the bucket and the fix, never a secret.
"""

from __future__ import annotations

import os
import posixpath
import re

import fsspec

from ..errors import StorageError

# URI scheme -> the fsspec protocol that serves it (the first of its filesystem class's protocols).
SCHEMES = {"s3": "s3", "gs": "gs", "gcs": "gs", "abfs": "abfs", "abfss": "abfs", "az": "abfs"}
PACKAGES = {"s3": ("s3fs", None), "gs": ("gcsfs", "gcs"), "abfs": ("adlfs", "azure")}  # (package, extra)
# abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/path: the account named in the URI (Spark's spelling).
AZURE_HOST = re.compile(r"^(?P<container>[^@/]+)@(?P<account>[^./]+)\.(?:dfs|blob)\.core\.windows\.net(?P<rest>/.*)?$")


def scheme_of(uri: str) -> str | None:
    """The URI's scheme ("s3", "gs", "az", ...) when it names an object store; None for local paths."""
    head, sep, _ = uri.partition("://")
    return head.lower() if sep and head.lower() in SCHEMES else None


def protocol_of(uri: str) -> str | None:
    """The fsspec protocol of an object-store URI ("s3", "gs" or "abfs"); None for local paths."""
    scheme = scheme_of(uri)
    return SCHEMES[scheme] if scheme else None


def is_remote(uri: str) -> bool:
    return scheme_of(uri) is not None


def storage_options(storage) -> dict:
    """fsspec options per protocol ({"s3": {...}, "gs": {...}, "abfs": {...}}, empty ones left out) from a
    StorageConfig (or None). models/checkpoints.py picks the entry of a model source's protocol."""
    if storage is None:
        return {}
    anon = bool(getattr(storage, "anon", False))
    s3: dict = {}
    client: dict = {}
    if getattr(storage, "endpoint_url", None):
        client["endpoint_url"] = storage.endpoint_url
    if getattr(storage, "region", None):
        client["region_name"] = storage.region
    if client:
        s3["client_kwargs"] = client
    gs: dict = {}
    if getattr(storage, "gcs_endpoint_url", None):  # an emulator or a private endpoint; None: Google's
        gs["endpoint_url"] = storage.gcs_endpoint_url
    abfs: dict = {}
    if getattr(storage, "azure_account_name", None):
        abfs["account_name"] = storage.azure_account_name
    if anon:
        s3["anon"] = True
        gs["token"] = "anon"
        abfs["anon"] = True
    return {name: opts for name, opts in (("s3", s3), ("gs", gs), ("abfs", abfs)) if opts}


def _split_azure(path: str) -> tuple[str | None, str]:
    """(account named in the URI or None, container/path) for the part of an Azure URI after the scheme."""
    match = AZURE_HOST.match(path)
    if not match:
        return None, path
    return match["account"], match["container"] + (match["rest"] or "")


def filesystem(uri: str, storage=None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI; local paths are made absolute."""
    protocol = protocol_of(uri)
    if protocol is None:
        head, sep, _ = uri.partition("://")
        if sep and head.lower() != "file" and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", head):
            raise StorageError(
                f"{uri}: the scheme {head}:// is not supported; use s3://, gs://, abfs:// or az://, or a local path"
            )
        path = uri[len("file://") :] if uri.startswith("file://") else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    path = uri.split("://", 1)[1].rstrip("/")
    options = dict(storage_options(storage).get(protocol, {}))
    if protocol == "abfs":
        account, path = _split_azure(path)
        if account:
            options["account_name"] = account
    try:
        # Each process keeps its own cached instance; skip_instance_cache would reconnect every call.
        fs = fsspec.filesystem(protocol, **options)
    except ImportError:
        package, extra = PACKAGES[protocol]
        raise StorageError(
            f"{uri}: {package} is not installed; pip install 'embedrank[{extra}]' (or {package}) on every node"
        ) from None
    except ValueError as exc:  # adlfs: no account name and no connection string
        raise explain(exc, uri) from None
    return fs, path


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def to_uri(fs, path: str) -> str:
    """The URI of `path` inside `fs`: what filesystem() turns back into the same (fs, path)."""
    protocols = _protocols(fs)
    if "s3" in protocols:
        return f"s3://{path}"
    if "gs" in protocols:
        return f"gs://{path}"
    if "abfs" in protocols:
        account = getattr(fs, "account_name", None)
        if account and account != os.environ.get("AZURE_STORAGE_ACCOUNT_NAME"):
            # The account came from a URI (or the config): keep it in the URI, so that workers reach it too.
            container, _, rest = path.partition("/")
            return f"abfs://{container}@{account}.dfs.core.windows.net/{rest}".rstrip("/")
        return f"abfs://{path}"
    return path


def _protocols(fs) -> tuple:
    proto = fs.protocol
    return proto if isinstance(proto, tuple) else (proto,)


def bucket_of(uri: str) -> str:
    if not is_remote(uri):
        return uri
    path = uri.split("://", 1)[1]
    if protocol_of(uri) == "abfs":
        account, path = _split_azure(path)
        container = path.split("/", 1)[0]
        return f"{account}/{container}" if account else container
    return path.split("/", 1)[0]


# -- conditional writes (the output lock) -----------------------------------------------------------------
def create_new(fs, path: str, data: bytes) -> bool:
    """Write `path` only if no object exists there (S3 and Azure If-None-Match: *, GCS ifGenerationMatch=0).
    True when this call created it, False when it already existed."""
    try:
        fs.pipe_file(path, data, mode="create")
    except FileExistsError:
        return False
    return True


def version_of(fs, path: str) -> str:
    """The object's current version, for replace_if: S3's ETag, GCS's generation, Azure's ETag."""
    fs.invalidate_cache(path)
    info = fs.info(path)
    protocols = _protocols(fs)
    if "gs" in protocols:
        return str(info["generation"])
    if "abfs" in protocols:
        return info["etag"]
    return info["ETag"]


def replace_if(fs, path: str, data: bytes, version: str | None) -> bool:
    """Overwrite `path` only if it is still at `version` (see version_of). False when somebody changed it."""
    protocols = _protocols(fs)
    try:
        if "gs" in protocols:
            _gcs_put_if_generation(fs, path, data, version)
        elif "abfs" in protocols:
            from azure.core import MatchConditions

            fs.pipe_file(path, data, etag=version, match_condition=MatchConditions.IfNotModified)
        else:
            fs.pipe_file(path, data, IfMatch=version)
    except (OSError, ValueError):  # 412 precondition failed (gcsfs: FileExistsError): somebody wrote it first
        return False
    except Exception as exc:
        if getattr(exc, "status_code", None) == 412:  # azure.core's ResourceModifiedError
            return False
        raise
    return True


def _gcs_put_if_generation(fs, path: str, data: bytes, generation: str | None) -> None:
    """One media upload with ifGenerationMatch: gcsfs's pipe_file takes no preconditions but 'create'."""
    from urllib.parse import quote

    bucket, key, _ = fs.split_path(path)
    fs.call(
        "POST",
        f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
        uploadType="media",
        name=key,
        ifGenerationMatch=str(generation),
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    fs.invalidate_cache(path)


# -- errors ------------------------------------------------------------------------------------------------
CREDENTIALS_FIX = {
    "s3": "set AWS credentials (environment, profile or instance role) or storage.anon: true for public data",
    "gs": (
        "set Google credentials (GKE workload identity, GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth "
        "application-default login`) or storage.anon: true for public data"
    ),
    "abfs": (
        "set Azure credentials (AKS workload identity, AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT_KEY "
        "or AZURE_STORAGE_SAS_TOKEN) and the account (abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/..., "
        "AZURE_STORAGE_ACCOUNT_NAME or storage.azure_account_name)"
    ),
}
ENDPOINT_FIX = {
    "s3": "check storage.endpoint_url and the network",
    "gs": "check STORAGE_EMULATOR_HOST or storage.gcs_endpoint_url and the network",
    "abfs": "check the account name, the endpoint in AZURE_STORAGE_CONNECTION_STRING and the network",
}


def explain(exc: BaseException, uri: str) -> StorageError:
    """A user-facing error for a failed storage call on `uri` (the message carries no credentials)."""
    name = type(exc).__name__
    text = str(exc)
    low = text.lower()
    protocol = protocol_of(uri) or "s3"
    where = f"bucket {bucket_of(uri)!r}" if is_remote(uri) else uri
    if protocol == "abfs" and ("account_name" in low or "connection_string" in low):
        fix = CREDENTIALS_FIX["abfs"]
    elif (
        isinstance(exc, PermissionError)
        or "AccessDenied" in text
        or "Forbidden" in text
        or "403" in text
        or "AuthorizationFailure" in text
    ):
        fix = "check the credentials or role and the bucket policy"
    elif "NoSuchBucket" in text or "does not exist" in low or "ContainerNotFound" in text:
        fix = "check the bucket name" if protocol != "abfs" else "check the container and account names"
    elif (
        "Could not connect" in text
        or "Cannot connect" in text
        or "Connect" in name
        or "EndpointConnectionError" in text
        or "ServiceRequestError" in name
        or "Connection refused" in text
    ):
        fix = ENDPOINT_FIX[protocol]
    elif (
        "NoCredentials" in name
        or "credential" in low
        or "401" in text
        or "Anonymous caller" in text
        or "AuthenticationFailed" in text
        or "ClientAuthenticationError" in name
    ):
        fix = CREDENTIALS_FIX[protocol]
    else:
        fix = "check the URI, the credentials and storage.endpoint_url"
        if protocol != "s3":
            fix = f"check the URI, then: {CREDENTIALS_FIX[protocol]}"
    return StorageError(f"{uri}: {name} on {where}: {fix}")
