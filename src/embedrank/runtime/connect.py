"""Joining a Ray cluster by its address: a bounded wait, and every way it fails as one line that names the fix.

Left alone, `ray.init(address=...)` tries an address that answers nothing for about 14 minutes (20 attempts
of up to 41 s each) and then fails with a page of traceback; a missing token fails after 20 attempts the same
way; an http:// address fails with a multi-line ValueError. Here, before Ray tries:

- a HOST:PORT (or ray://) address must accept a TCP connection within PROBE_TIMEOUT_S, else the run stops at
  once, naming the address and how to check it;
- an http(s):// address is never a job's address (it is the Jobs API, what `ray job submit` takes): the run
  stops, saying whether a Jobs API answers there, and how to reach the cluster instead;
- Ray's own retries of the GCS are cut to GCS_ATTEMPTS (RAY_gcs_server_port_wait_time_s, unless set), so a
  token the cluster refuses fails in seconds and a port that is open but not Ray's within ~1.5 minutes.

The failures that remain are translated by their cause (a token error is an `AuthenticationError` somewhere in
the exception chain): `ClusterTokenError` names RAY_AUTH_MODE / RAY_AUTH_TOKEN, `ClusterAddressError` the
address and where it came from (`ray.address` in the config or the RAY_ADDRESS variable).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError

PROBE_TIMEOUT_S = 10.0  # a host that drops packets: how long a TCP connect may take before we call it unreachable
# Ray's default is 20 attempts, for GCS servers that are still starting; the port answered our probe already, so
# two attempts (each waits up to ~41 s on its own) cover a busy GCS without making a wrong address wait minutes.
GCS_ATTEMPTS = 2
GCS_ATTEMPTS_ENV = "RAY_gcs_server_port_wait_time_s"  # read by ray.init at every connect (ray/_private/node.py)
DEFAULT_GCS_PORT = 6379


class ClusterAddressError(UserError, ConnectionError):
    """The cluster address cannot be used: nothing answers there, or not Ray's GCS, or it is malformed."""


class ClusterTokenError(UserError, ConnectionError):
    """The cluster refused this client: it has token authentication on, and our token is missing or wrong."""


class JobsApiAddressError(UserError, ValueError):
    """An http(s):// address (the Jobs API, for `ray job submit`) was given where a job joins the cluster."""


def join_cluster(address: str, source: str, **init_kwargs) -> None:
    """`ray.init(address=address, **init_kwargs)`, failing in one line. `source` says where the address came
    from, for the message: "ray.address" (the config) or "RAY_ADDRESS" (the environment)."""
    import ray

    named = f"{address} ({source})"
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    if scheme in ("http", "https"):
        raise JobsApiAddressError(_jobs_api_message(address, source))
    if address == "local":  # Ray starts a cluster of this process: nothing to reach
        ray.init(address=address, **init_kwargs)
        return
    if address != "auto":
        _probe(address.split("://", 1)[-1], named, source)
    try:
        with _bounded_gcs_attempts():
            ray.init(address=address, **init_kwargs)
    except Exception as exc:
        if _is_token_error(exc):
            raise ClusterTokenError(_token_message(named)) from exc
        if isinstance(exc, ValueError):
            raise ClusterAddressError(
                f"{named} is not a Ray address: give HOST:PORT of the head's GCS "
                f"(port {DEFAULT_GCS_PORT} by default), ray://HOST:PORT, or auto"
            ) from exc
        if not isinstance(exc, ConnectionError):  # anything else (a version mismatch...) speaks for itself
            raise
        if address == "auto":
            raise ClusterAddressError(
                f"{named}: no running Ray cluster was found on this machine; start one with "
                "`ray start --head`, or give the head's HOST:PORT"
            ) from exc
        if scheme == "ray":
            raise ClusterAddressError(
                f"{named} accepts connections but no Ray Client server answers there: check the head's client "
                "port (10001 by default) and that the head runs it"
            ) from exc
        raise ClusterAddressError(
            f"{named} accepts connections but does not answer as a Ray cluster's GCS: check that it is the "
            f"head's GCS port ({DEFAULT_GCS_PORT} by default, not the dashboard's 8265) with "
            f"`ray status --address {address}`"
        ) from exc


def _probe(host_port: str, named: str, source: str) -> None:
    """Raise ClusterAddressError unless HOST:PORT accepts a TCP connection within PROBE_TIMEOUT_S."""
    host, sep, port = host_port.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit():
        raise ClusterAddressError(
            f"{named} is not HOST:PORT: give the head's GCS address (HOST:{DEFAULT_GCS_PORT}"
            " by default), ray://HOST:PORT, or auto"
        )
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except socket.gaierror:
        why = f"the host name {host} does not resolve"
    except TimeoutError:
        why = f"no answer within {PROBE_TIMEOUT_S:g} s (a firewall, or the host is down)"
    except ConnectionRefusedError:
        why = "connection refused (nothing listens on that port)"
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
    else:
        return
    unset = (
        "; or unset RAY_ADDRESS to run on a local Ray"
        if source == "RAY_ADDRESS"
        else "; or leave ray.address empty to run on a local Ray"
    )
    raise ClusterAddressError(
        f"cannot reach the Ray cluster at {named}: {why}. Check the address with "
        f"`ray status --address {host_port}` (the head's GCS port, {DEFAULT_GCS_PORT} by "
        f"default){unset}"
    )


@contextlib.contextmanager
def _bounded_gcs_attempts():
    """Cut Ray's GCS connect attempts to GCS_ATTEMPTS for one ray.init, unless the operator chose a number."""
    if GCS_ATTEMPTS_ENV in os.environ:
        yield
        return
    os.environ[GCS_ATTEMPTS_ENV] = str(GCS_ATTEMPTS)
    try:
        yield
    finally:
        os.environ.pop(GCS_ATTEMPTS_ENV, None)


def _is_token_error(exc: BaseException) -> bool:
    """Whether Ray's failure was the cluster refusing our token. ray.init raises AuthenticationError itself
    when token mode is on and no token exists; when the cluster refused one, it only keeps the text of the
    last attempt's AuthenticationError inside a RuntimeError."""
    seen, current = set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _token_message(named: str) -> str:
    fix = (
        "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, a file) to the cluster's token; `ray get-auth-token` on "
        "the head prints it"
    )
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (
            f"the Ray cluster at {named} requires a token and this client sends none: set RAY_AUTH_MODE=token "
            f"and {fix.removeprefix('set ')}"
        )
    if os.environ.get("RAY_AUTH_TOKEN"):
        sent = "the token in RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        sent = f"the token in {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH)"
    elif (Path.home() / ".ray" / "auth_token").exists():
        sent = f"the token in {Path.home() / '.ray' / 'auth_token'} (RAY_AUTH_TOKEN and RAY_AUTH_TOKEN_PATH are unset)"
    else:
        return (
            f"RAY_AUTH_MODE=token but this client has no token for the Ray cluster at {named} (RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH and ~/.ray/auth_token are all unset): {fix}"
        )
    return f"the Ray cluster at {named} refused {sent}: {fix}"


def _jobs_api_message(address: str, source: str) -> str:
    """Why an http(s):// address cannot be joined, and what answers there: a Ray Jobs API or nothing."""
    url = address.rstrip("/")
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    instead = (
        f"submit the job there with `ray job submit --address {url} -- python jobs/<job>.py ...`, or set "
        f"{source} to the head's GCS address ({host}:{DEFAULT_GCS_PORT} by default)"
    )
    if source == "RAY_ADDRESS":
        instead += ", or unset RAY_ADDRESS to run on a local Ray"
    answer = _jobs_api_answer(url)
    if answer is not None:
        return (
            f"{source}={url} is the Jobs API of a Ray cluster ({answer}), the address `ray job submit` takes; "
            f"a job joins a cluster at its GCS address instead: {instead}"
        )
    return (
        f"{source}={url} is an http:// address, which only `ray job submit` takes (a cluster's Jobs API), and "
        "no Ray Jobs API answers there: check its port (the dashboard's, 8265 by default); a head that runs "
        "Ray without the dashboard (the minimal `ray` install) has no Jobs API, so install embedrank[cluster] "
        f"(ray[default]) on the head image. A job joins a cluster at its GCS address: {instead}"
    )


def _jobs_api_answer(url: str) -> str | None:
    """What a Ray Jobs API at `url` says about itself (its Ray version), or None when none answers."""
    try:
        with urllib.request.urlopen(f"{url}/api/version", timeout=5) as response:
            version = json.loads(response.read()).get("ray_version")
        return f"Ray {version}" if version else None
    except urllib.error.HTTPError as exc:
        # A Ray Jobs API with token authentication answers 401, and says why, before anything else.
        if exc.code == 401 and b"authentication token" in exc.read():
            return "token authentication on"
        return None
    except (OSError, ValueError, AttributeError):  # nothing answers, or not with a Ray version
        return None
