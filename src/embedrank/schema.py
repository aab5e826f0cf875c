"""The row contract: every column name, internal column, reason code and Arrow schema of a run, in one place.

Rows travel through a run as Arrow tables. Columns starting with `_` are internal: they never reach a
committed file. The data flow, with the columns each step adds:

    input rows -> prepare (embed) / pairs (rerank): PREPARED (+ `pass.<name>` copies of passthrough columns)
               -> model actor: + EMBEDDING / SCORE, + COST (what the model computed, for the report)
               -> writer: OUTPUT files + one FILE_META row per staged file (what the driver commits from)

Every emitted row gets a shard-wide `_seq` number and every shard ends with one END_OF_SHARD marker row
carrying the shard's totals, so that the driver can prove that each row was written exactly once.

Row checks shared by the Python API (which raises) and the stages (which dead-letter) live here too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

# -- internal columns --------------------------------------------------------------------------------------
SHARD = "_shard"  # the input shard's key
ROW = "_row"  # the row's number in its shard (the end marker: the piece's number of input rows)
SEQ = "_seq"  # shard-wide number of every emitted row (the end marker: how many the piece emitted)
REJECT = "_reject"  # null, a reason code, END_OF_SHARD or BAD_SHARD
LAST = "_last"  # the last emitted row of its input row (chunks: the last chunk)
CHANGE = "_change"  # nightly: new | changed | carried (null: dead letter)
PIECE = "_piece"  # end marker only: which piece of the file it closes (io/pieces.py)
ERROR = "_error"  # bad-shard marker only: the line saying which file is truncated or corrupt, and how
PREV_EMBEDDING = "prev_embedding"  # a carried document's vector (the actor passes it through)
TOKEN_IDS = "token_ids"
EMBEDDED = "_embedded"  # the row went through the model (not carried)
COMPUTED = "_computed"  # tokens the model computed for the row, padding included
BUSY_S = "_busy_s"  # the row's share of its batch's model time
ACTOR = "_actor"  # host:pid of the actor that ran it
CORPUS_TEXT = "_corpus_text"  # rerank: the document text joined from the corpus
PASSTHROUGH_PREFIX = "pass."  # input columns copied to the output travel as pass.<name>

END_OF_SHARD = "_end_of_shard"  # REJECT value of the marker row after a shard's last row
# REJECT value of the marker row a piece sends instead of its end marker when its file cannot be read to the end
# and input.on_bad_shard is skip: the shard is then never committed (its rows staged so far are dropped).
BAD_SHARD = "_bad_shard"
MARKERS = (END_OF_SHARD, BAD_SHARD)
ROW_KEYS = (SHARD, ROW, SEQ, REJECT, LAST)  # every prepared row of every job carries these
COST_COLUMNS = (COMPUTED, BUSY_S, ACTOR)

# -- committed output columns ------------------------------------------------------------------------------
CHUNK_COLUMNS = ("chunk_index", "chunk_start", "chunk_end")
CHUNK_ID = "chunk_id"  # chunk mode: "{id}#{chunk_index}", one key per row (written before CHUNK_COLUMNS)
VECTOR_COLUMNS = ("id", "embedding", "n_tokens", "truncated", "content_hash")  # + chunk, passthrough columns
SCORE_COLUMNS = ("query_id", "doc_id", "score", "n_tokens", "truncated")  # before ranking
RANKED_COLUMNS = ("query_id", "doc_id", "score", "rank", "n_tokens", "truncated")
REJECTED_COLUMNS = ("source", "row", "reason")  # after the id column(s)

# -- what the embed prepare step emits ---------------------------------------------------------------------
PREPARED_SCHEMA = pa.schema(
    [
        (SHARD, pa.string()),
        (ROW, pa.int64()),
        (SEQ, pa.int64()),
        (REJECT, pa.string()),
        (LAST, pa.bool_()),
        (CHANGE, pa.string()),
        ("id", pa.string()),
        (TOKEN_IDS, pa.list_(pa.int32())),
        ("n_tokens", pa.int32()),
        ("truncated", pa.bool_()),
        ("content_hash", pa.string()),
        ("chunk_index", pa.int32()),
        ("chunk_start", pa.int32()),
        ("chunk_end", pa.int32()),
        (PREV_EMBEDDING, pa.list_(pa.float32())),
        (PIECE, pa.int32()),
        (ERROR, pa.string()),
    ]
)

# -- what the rerank pairs step emits ----------------------------------------------------------------------
PAIR_SCHEMA = pa.schema(
    [
        (SHARD, pa.string()),
        (ROW, pa.int64()),
        (SEQ, pa.int64()),
        (REJECT, pa.string()),
        (LAST, pa.bool_()),
        ("query_id", pa.string()),
        ("doc_id", pa.string()),
        ("query", pa.string()),
        ("document", pa.string()),
        ("instruction", pa.string()),
        (PIECE, pa.int32()),
        (ERROR, pa.string()),
    ]
)

# -- one row per staged file, from the writer to the driver -------------------------------------------------
FILE_META_SCHEMA = pa.schema(
    [
        # rows: input rows completed in this file (end marker: the shard's input row count);
        # ranges: the `_seq` numbers it holds; shard_total: the shard's number of `_seq` values (end marker only).
        ("shard", pa.string()),
        ("kind", pa.string()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("ranges", pa.string()),
        ("shard_total", pa.int64()),
        ("tokens", pa.int64()),
        ("computed_tokens", pa.int64()),
        ("truncated", pa.int64()),
        ("chunked_rows", pa.int64()),
        ("reasons", pa.string()),
        ("actors", pa.string()),
        # changes: documents per kind (new | changed | carried); model_rows: rows that went through the model;
        # piece: which piece of the file a file or end marker belongs to.
        ("changes", pa.string()),
        ("model_rows", pa.int64()),
        ("piece", pa.int64()),
    ]
)
FILE_META_JSON = ("ranges", "reasons", "actors", "changes")  # columns holding JSON text


def decode_file_meta(row: dict) -> dict:
    """A FILE_META row as the driver uses it: JSON columns decoded, missing counts as 0."""
    out = dict(row)
    for name in FILE_META_JSON:
        raw = row.get(name)
        out[name] = json.loads(raw) if raw else ([] if name == "ranges" else {})
    for name in ("rows", "tokens", "computed_tokens", "truncated", "chunked_rows", "model_rows", "piece"):
        out[name] = out.get(name) or 0
    return out


def list_array(seqs: Iterable[np.ndarray]) -> pa.Array:
    """Token-id arrays -> list<int32> without a Python object per token."""
    seqs = list(seqs)
    offsets = np.zeros(len(seqs) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, pa.int32()))


@dataclass(frozen=True)
class StageColumns:
    """What a stage reads and what it adds: checked on entry, so a wiring mistake names the missing columns."""

    stage: str
    needs: tuple[str, ...]
    adds: tuple[str, ...] = ()

    def check(self, table: pa.Table) -> None:
        missing = [c for c in self.needs if c not in table.column_names]
        if missing:
            raise ValueError(f"{self.stage} stage: missing input columns {missing}; got {table.column_names}")

    def check_output(self, table: pa.Table, rows_in: int) -> None:
        """The stage kept every row (one out per row in) and added what it declares."""
        missing = [c for c in self.adds if c not in table.column_names]
        if missing or table.num_rows != rows_in:
            raise RuntimeError(
                f"{self.stage} stage: produced {table.num_rows} rows for {rows_in} and lacks "
                f"{missing}; this is a bug in embedrank, please report it"
            )


EMBED_STAGE = StageColumns(
    "embed", (*ROW_KEYS, CHANGE, TOKEN_IDS, "n_tokens", PREV_EMBEDDING), ("embedding", EMBEDDED, *COST_COLUMNS)
)
WRITE_VECTORS_STAGE = StageColumns("write", (*ROW_KEYS, "id", "embedding"))
TOKENIZE_PAIRS_STAGE = StageColumns(
    "tokenize", (*ROW_KEYS, "query", "document", "instruction"), (TOKEN_IDS, "n_tokens", "truncated")
)
RERANK_STAGE = StageColumns("rerank", (*ROW_KEYS, TOKEN_IDS, "n_tokens"), ("score", *COST_COLUMNS))
WRITE_SCORES_STAGE = StageColumns("write", (*ROW_KEYS, *SCORE_COLUMNS))

# -- reason codes written to the dead letters; stable names, documented in the README ------------------------
NULL_TEXT = "null_text"
NOT_TEXT = "not_text"
EMPTY_TEXT = "empty_text"
NUL_BYTES = "nul_bytes"
DUPLICATE_ID = "duplicate_id"
NULL_ID = "null_id"
BAD_ID = "bad_id"  # an id that is neither a string nor an integer (JSON Lines: 1.5, true, [..], {..})
WRONG_ID_TYPE = "wrong_id_type"  # a string id in a run whose ids are int64 (ids.py)
WRONG_PASSTHROUGH_TYPE = "wrong_passthrough_type"  # a passthrough value its column's type cannot hold (passthrough.py)
INVALID_UTF8 = "invalid_utf8"
BAD_JSON = "bad_json"
WORKER_CRASH = "worker_crash"  # the row killed the model worker max_worker_crashes times
EMPTY_QUERY = "empty_query"  # rerank
MISSING_DOCUMENT = "missing_document"  # rerank: a doc_id the corpus does not hold
DUPLICATE_PAIR = "duplicate_pair"  # rerank
BAD_CANDIDATES = "bad_candidates"  # rerank: the candidates column is not a list of {doc_id, text}
BAD_INSTRUCTION = "bad_instruction"  # rerank: the instruction column holds something other than text (or null)


def id_problem(value: object) -> str | None:
    """The reason code that makes `value` unusable as an id (strings and integers are ids, as in Parquet)."""
    if value is None:
        return NULL_ID
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return BAD_ID
    return None


def shown_id(value: object) -> str | None:
    """An id as a dead letter shows it: a good one as its string, a bad one as its JSON text (so that 1.5 and
    "1.5" stay apart), None as null."""
    if value is None or id_problem(value) is None:
        return None if value is None else str(value)
    try:
        return json.dumps(value, ensure_ascii=False)[:200]
    except (TypeError, ValueError):
        return repr(value)[:200]


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
