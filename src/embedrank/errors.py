"""Errors a user can cause and fix. The CLI prints their message as one line and exits with code 2.

Every class takes a single message argument, so that Ray can re-raise one that a task or actor raised as an
instance of the same class on the driver (`RayTaskError.as_instanceof_cause`): the CLI finds it by type along
the exception's causes, never by reading traceback text.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the config, the input, the output location or the environment; the message names the fix."""


class ConfigError(UserError, ValueError):
    """A configuration mistake, with the key and the fix in the message."""


class PlanError(UserError, ValueError):
    """The input cannot be run as configured; the message names the shard, column or key and the fix."""


class BadShardError(PlanError):
    """An input file that cannot be read to its end: truncated or corrupt (a decompressor or Parquet error).
    `input.on_bad_shard` says whether it stops the run or is skipped (not committed, listed in the report)."""


class StorageError(UserError, RuntimeError):
    """An object-storage problem a user must fix (bucket, permissions, endpoint)."""


class CheckpointError(UserError, ValueError):
    """A model source that cannot be used as it is (missing, pickle weights only, not Qwen3)."""


class DuplicateIdError(UserError, ValueError):
    """An id repeats within a shard and output.on_duplicate_id is 'fail'."""


class LockError(UserError, RuntimeError):
    """The output is being written by another run, or this run lost its lock."""


def user_error_in(exc: BaseException) -> UserError | None:
    """The UserError inside `exc`, following causes: errors raised in Ray tasks and actors arrive wrapped.

    The innermost one is returned: Ray's wrappers are instances of the cause's class too, but their message is
    the remote traceback, while the original exception (their `cause`) holds the user's one line.
    """
    seen, current, found = set(), exc, None
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UserError):
            found = current
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return found


def first_line(exc: BaseException) -> str:
    """The message's first line (a Ray-wrapped error appends the remote traceback after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
