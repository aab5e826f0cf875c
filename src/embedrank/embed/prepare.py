"""Prepare: raw input rows -> validated, formatted, hashed and tokenised rows (an Arrow table).

Runs in CPU tasks, never in the GPU actors. Each row ends as one or more embeddable rows (one per chunk in
`chunk` mode) or as exactly one rejected row carrying its reason code. Column contract: schema.PREPARED_SCHEMA.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..errors import DuplicateIdError
from ..ids import STRING, row_id_problem
from ..io.sources import RawRows
from ..models import prompts
from ..schema import (
    BAD_SHARD,
    DUPLICATE_ID,
    END_OF_SHARD,
    NOT_TEXT,
    PASSTHROUGH_PREFIX,
    PREPARED_SCHEMA,
    WRONG_PASSTHROUGH_TYPE,
    list_array,
    shown_id,
    text_problem,
)
from ..templates import row_text, text_columns
from .passthrough import column, value_fits

PREPARED_COLUMNS = tuple(PREPARED_SCHEMA.names)


def needed_columns(input_cfg) -> list[str]:
    return list(dict.fromkeys([input_cfg.id_column, *text_columns(input_cfg), *input_cfg.passthrough]))


def content_hash(text: str) -> str:
    """Hash of exactly what is embedded (instruction included): equal hash, equal vector for one model."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def chunk_spans(n_text_tokens: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """Token spans [start, end) of the text (without <|endoftext|>) covering it with `window - 1` tokens each."""
    body = window - 1
    stride = body - overlap
    spans, start = [], 0
    while True:
        end = min(start + body, n_text_tokens)
        spans.append((start, end))
        if end >= n_text_tokens:
            return spans
        start += stride


@dataclass
class PreviousShard:
    """Committed rows of the version being replaced: what a nightly run may carry forward (embed/carry.py)."""

    rows: pa.Table  # id, content_hash, embedding, n_tokens, truncated (+ chunk columns in chunk mode)
    by_id: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        # Keyed by the id's text, as prepare holds ids (an int64 output's ids read back as integers).
        for index, rid in enumerate(self.rows.column("id").to_pylist()):
            self.by_id.setdefault(str(rid), []).append(index)

    def hash_of(self, rid: str) -> str | None:
        rows = self.by_id.get(rid)
        return self.rows.column("content_hash")[rows[0]].as_py() if rows else None


@dataclass
class ShardState:
    """What prepare carries from one slice of a shard to the next."""

    seq: Iterator[int] = field(default_factory=itertools.count)  # numbers every emitted row, dead letters too
    seen_ids: set = field(default_factory=set)  # ids embedded or carried so far (duplicates are rejected)
    previous: PreviousShard | None = None  # the previous version's rows of this piece's ids (embed/carry.py)


def prepare_rows(
    raw: RawRows,
    *,
    shard_key: str,
    input_cfg,
    long_docs,
    max_length: int,
    tokenizer,
    state: ShardState,
    on_duplicate_id: str = "reject",
    id_type: str = STRING,
    passthrough_types: dict | None = None,
) -> pa.Table:
    """Turn one slice of a shard into prepared rows.

    Every input row becomes embeddable rows (one per chunk), rows carried from `state.previous` (same id, same
    content hash: not embedded again), or one dead letter. Each emitted row gets the next `state.seq` number,
    so that coverage can be proven by ranges. Ids travel as text; `id_type` (ids.py) judges them: in an int64
    run a string id is a dead letter, and the writer turns the others into int64. `passthrough_types` (settled
    in planning, embed/passthrough.py) types the passthrough columns; a value its column cannot hold makes the
    row a dead letter.
    """
    cols: dict[str, list] = {name: [] for name in PREPARED_COLUMNS}
    extra: dict[str, list] = {name: [] for name in input_cfg.passthrough}
    good_rows, good_texts = [], []
    # A template renders its fields as text: a field holding a number, list or object is judged on its row as
    # not_text, as a Parquet column of that type is refused in planning (a JSON Lines file has no column types).
    fields = text_columns(input_cfg) if input_cfg.template else ()

    def emit(
        row_no,
        reject,
        rid,
        ids=None,
        truncated=False,
        chash=None,
        chunk=(None, None, None),
        last=True,
        source_row=None,
        change=None,
        n_tokens=None,
        prev_embedding=None,
    ):
        values = dict(
            _shard=shard_key,
            _row=row_no,
            _seq=next(state.seq),
            _reject=reject,
            _last=last,
            _change=change,
            id=rid,
            token_ids=ids if ids is not None else np.zeros(0, np.int32),
            n_tokens=n_tokens if n_tokens is not None else (0 if ids is None else len(ids)),
            truncated=truncated,
            content_hash=chash,
            chunk_index=chunk[0],
            chunk_start=chunk[1],
            chunk_end=chunk[2],
            prev_embedding=prev_embedding,
            _piece=None,
            _error=None,
        )
        for name, value in values.items():
            cols[name].append(value)
        for name in extra:
            extra[name].append(None if source_row is None else source_row.get(name))

    for row, row_no, problem in zip(raw.rows, raw.row_numbers, raw.problems):
        if problem is not None:
            emit(row_no, problem, None)
            continue
        rid = row.get(input_cfg.id_column)
        problem = row_id_problem(rid, id_type)
        if problem is not None:
            emit(row_no, problem, shown_id(rid))
            continue
        rid = str(rid)
        text = row_text(row, input_cfg)
        reason = text_problem(text) if not any(_not_text(row.get(name)) for name in fields) else NOT_TEXT
        if reason is not None:
            emit(row_no, reason, rid)
            continue
        if passthrough_types and not all(value_fits(row.get(n), t) for n, t in passthrough_types.items()):
            emit(row_no, WRONG_PASSTHROUGH_TYPE, rid)
            continue
        if rid in state.seen_ids:
            if on_duplicate_id == "fail":
                raise DuplicateIdError(
                    f"id {rid!r} appears twice in shard {shard_key} (row {row_no}); deduplicate the input or set "
                    "output.on_duplicate_id: reject"
                )
            emit(row_no, DUPLICATE_ID, rid)
            continue
        state.seen_ids.add(rid)
        formatted = prompts.embedding_text(text, input_cfg.kind, input_cfg.instruction)
        previous_hash = state.previous.hash_of(rid) if state.previous is not None else None
        if previous_hash is not None and previous_hash == content_hash(formatted):
            _carry(emit, state.previous, row, row_no, rid)
            continue
        good_rows.append((row, row_no, rid, "new" if previous_hash is None else "changed"))
        good_texts.append(formatted)

    if good_texts:
        _tokenize_into(emit, good_rows, good_texts, tokenizer, long_docs, max_length)
    return _to_table(cols, extra, passthrough_types)


def _not_text(value) -> bool:
    return value is not None and not isinstance(value, str)


def _carry(emit, previous: PreviousShard, row: dict, row_no: int, rid: str) -> None:
    """Emit the previous version's rows (every chunk) of an unchanged document, vectors included."""
    table = previous.rows
    indices = previous.by_id[rid]
    chunked = "chunk_index" in table.column_names
    for position, index in enumerate(indices):

        def get(name: str, index: int = index):
            return table.column(name)[index].as_py()

        chunk = (get("chunk_index"), get("chunk_start"), get("chunk_end")) if chunked else (None, None, None)
        emit(
            row_no,
            None,
            rid,
            truncated=get("truncated"),
            chash=get("content_hash"),
            chunk=chunk,
            last=position == len(indices) - 1,
            source_row=row,
            change="carried",
            n_tokens=get("n_tokens"),
            prev_embedding=np.asarray(get("embedding"), dtype=np.float32),
        )


def _tokenize_into(emit, good_rows, texts, tokenizer, long_docs, max_length) -> None:
    hashes = [content_hash(t) for t in texts]
    if long_docs.mode == "truncate":
        tok = tokenizer.tokenize_formatted(texts)
        for (row, row_no, rid, change), ids, trunc, chash in zip(good_rows, tok.ids, tok.truncated, hashes):
            emit(row_no, None, rid, ids.astype(np.int32), bool(trunc), chash, (None, None, None), True, row, change)
        return
    # Chunk mode: the whole text is tokenised once, then cut into overlapping windows.
    encoded = tokenizer.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    eot = tokenizer.endoftext_id
    for (row, row_no, rid, change), ids, chash in zip(good_rows, encoded, hashes):
        spans = chunk_spans(len(ids), long_docs.window, long_docs.overlap)
        for index, (start, end) in enumerate(spans):
            chunk = np.empty(end - start + 1, dtype=np.int32)
            chunk[:-1] = ids[start:end]
            chunk[-1] = eot
            emit(row_no, None, rid, chunk, False, chash, (index, start, end), index == len(spans) - 1, row, change)


def _to_table(cols: dict, extra: dict, passthrough_types: dict | None) -> pa.Table:
    arrays = {
        f.name: list_array(cols[f.name]) if f.name == "token_ids" else pa.array(cols[f.name], f.type)
        for f in PREPARED_SCHEMA
    }
    for name, values in extra.items():
        arrays[f"{PASSTHROUGH_PREFIX}{name}"] = column(values, (passthrough_types or {}).get(name))
    return pa.table(arrays)


def end_of_shard(
    shard_key: str,
    rows: int,
    seqs: int,
    passthrough: list[str],
    piece: int = 0,
    error: str | None = None,
    passthrough_types: dict | None = None,
) -> pa.Table:
    """The marker row after a piece's last row: `_row` = input rows, `_seq` = emitted rows, `_piece`. With
    `error`, the bad-shard marker a piece sends instead when its file broke off (input.on_bad_shard: skip)."""
    cols = {name: [None] for name in PREPARED_COLUMNS}
    cols.update(
        _shard=[shard_key],
        _row=[rows],
        _seq=[seqs],
        _reject=[BAD_SHARD if error else END_OF_SHARD],
        _last=[True],
        _error=[error],
        token_ids=[np.zeros(0, np.int32)],
        n_tokens=[0],
        truncated=[False],
        _piece=[piece],
    )
    return _to_table(cols, {name: [None] for name in passthrough}, passthrough_types)
