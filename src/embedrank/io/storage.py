"""Filesystems for URIs: s3:// through s3fs (any S3-compatible endpoint), everything else local.

Credentials are never taken from the config: s3fs/botocore find them in the usual AWS environment variables,
profile files or the instance role. Errors that reach users name the bucket and the fix, never a secret.
"""

from __future__ import annotations

import os
import posixpath

import fsspec

from ..errors import StorageError


def is_remote(uri: str) -> bool:
    return uri.startswith("s3://")


def storage_options(storage) -> dict:
    """s3fs options from a StorageConfig (or None)."""
    if storage is None:
        return {}
    opts: dict = {}
    client: dict = {}
    if getattr(storage, "endpoint_url", None):
        client["endpoint_url"] = storage.endpoint_url
    if getattr(storage, "region", None):
        client["region_name"] = storage.region
    if client:
        opts["client_kwargs"] = client
    if getattr(storage, "anon", False):
        opts["anon"] = True
    return opts


def filesystem(uri: str, storage=None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a URI; local paths are made absolute."""
    if is_remote(uri):
        # Each process keeps its own cached instance; skip_instance_cache would reconnect every call.
        fs = fsspec.filesystem("s3", **storage_options(storage))
        return fs, uri[len("s3://") :].rstrip("/")
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def to_uri(fs, path: str) -> str:
    return f"s3://{path}" if "s3" in _protocols(fs) else path


def _protocols(fs) -> tuple:
    proto = fs.protocol
    return proto if isinstance(proto, tuple) else (proto,)


def bucket_of(uri: str) -> str:
    return uri[len("s3://") :].split("/", 1)[0] if is_remote(uri) else uri


def explain(exc: BaseException, uri: str) -> StorageError:
    """A user-facing error for a failed storage call on `uri` (the message carries no credentials)."""
    name = type(exc).__name__
    text = str(exc)
    where = f"bucket {bucket_of(uri)!r}" if is_remote(uri) else uri
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text or "403" in text:
        fix = "check the credentials or role and the bucket policy"
    elif "NoSuchBucket" in text or "does not exist" in text.lower():
        fix = "check the bucket name"
    elif "Could not connect" in text or "Connect" in name or "EndpointConnectionError" in text:
        fix = "check storage.endpoint_url and the network"
    elif "NoCredentials" in name or "credentials" in text.lower():
        fix = "set AWS credentials (environment, profile or instance role) or storage.anon: true for public data"
    else:
        fix = "check the URI, the credentials and storage.endpoint_url"
    return StorageError(f"{uri}: {name} on {where}: {fix}")
