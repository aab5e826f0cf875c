"""Row-level checks shared by the Python API (which raises) and the Ray stages (which dead-letter)."""

from __future__ import annotations

# Reason codes written to `_rejected/`; stable names, documented in the README.
NULL_TEXT = "null_text"
NOT_TEXT = "not_text"
EMPTY_TEXT = "empty_text"
NUL_BYTES = "nul_bytes"
DUPLICATE_ID = "duplicate_id"
NULL_ID = "null_id"
INVALID_UTF8 = "invalid_utf8"
BAD_JSON = "bad_json"
WORKER_CRASH = "worker_crash"  # the row killed the model worker max_worker_crashes times


def text_problem(text: object) -> str | None:
    """The reason code that makes `text` unembeddable, or None when it is fine."""
    if text is None:
        return NULL_TEXT
    if not isinstance(text, str):
        return NOT_TEXT
    if not text.strip():
        return EMPTY_TEXT
    if "\x00" in text:
        return NUL_BYTES
    return None


def check_texts(texts) -> list[str]:
    """Raise a ValueError naming the first bad row; never let a bad row become a silent zero vector."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, got a single str: wrap it in a list")
    texts = list(texts)
    for index, text in enumerate(texts):
        reason = text_problem(text)
        if reason is not None:
            shown = repr(text) if not isinstance(text, str) or len(text) < 40 else repr(text[:40]) + "..."
            raise ValueError(f"row {index}: {reason} ({shown}); drop or fix the row before embedding")
    return texts
