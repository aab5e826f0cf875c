"""Rerank input rows -> one row per (query, document) pair, validated; then prompt tokens per pair.

Two input forms: flat pairs (`query_id`, `query`, `doc_id`, `document`) and candidate lists (`query_id`,
`query`, `candidates: list<struct<doc_id, text>>`). A pair without text takes it from the corpus (joined in
Ray Data before tokenising) or, without a corpus, is dead-lettered. Every pair gets a shard-wide `_seq`
number, so that the commit step can prove each one was written exactly once.

Ids travel as text here (the join, duplicate pairs and dead letters compare text); each is first judged against
the run's id type (rerank/id_types.py): in an int64 run a string id is `wrong_id_type`.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..ids import STRING, row_id_problem
from ..io.sources import RawRows
from ..schema import (
    BAD_CANDIDATES,
    BAD_INSTRUCTION,
    BAD_SHARD,
    CORPUS_TEXT,
    DUPLICATE_PAIR,
    EMPTY_QUERY,
    END_OF_SHARD,
    MISSING_DOCUMENT,
    PAIR_SCHEMA,
    REJECT,
    id_problem,
    shown_id,
    text_problem,
)
from ..templates import row_text


def input_form(columns, input_cfg) -> str:
    """'lists' when the candidates column is present, else 'pairs'."""
    return "lists" if input_cfg.candidates_column in columns else "pairs"


def explode_pairs(
    raw: RawRows, *, shard_key: str, input_cfg, seen: set, seq, has_corpus: bool, id_types: dict | None = None
) -> pa.Table:
    """One output row per pair (or one dead letter per unusable input row). `id_types`: the run's
    {"query_id": ..., "doc_id": ...} (ids.INT64 | ids.STRING; None: both string)."""
    query_type, doc_type = ((id_types or {}).get(name, STRING) for name in ("query_id", "doc_id"))
    cols = {name: [] for name in PAIR_SCHEMA.names}

    def emit(row_no, reject, qid=None, did=None, query=None, doc=None, instruction=None, last=True):
        for key, value in zip(
            PAIR_SCHEMA.names,
            (shard_key, row_no, next(seq), reject, last, qid, did, query, doc, instruction, None, None),
            strict=True,
        ):
            cols[key].append(value)

    c = input_cfg
    for row, row_no, problem in zip(raw.rows, raw.row_numbers, raw.problems):
        if problem is not None:
            emit(row_no, problem)
            continue
        qid, query = row.get(c.query_id_column), row.get(c.query_column)
        instruction = row.get(c.instruction_column) if c.instruction_column else None
        if c.candidates_column in row:
            candidates = row.get(c.candidates_column)
            if not isinstance(candidates, list) or not all(isinstance(x, dict) for x in candidates):
                emit(row_no, BAD_CANDIDATES, shown_id(qid))
                continue
            items = [(x.get("doc_id"), x.get("text")) for x in candidates]
        else:
            items = [(row.get(c.doc_id_column), row.get(c.document_column))]
        if not items:
            emit(row_no, BAD_CANDIDATES, shown_id(qid))
            continue
        qid_problem = row_id_problem(qid, query_type)
        qid = shown_id(qid)
        # Types are judged row by row (a JSON Lines file has none of its own), with the codes of the rerank
        # processor (data/reranking.py): any unusable query is empty_query, an instruction that is not a string
        # (a number, a list) bad_instruction.
        query_problem = EMPTY_QUERY if text_problem(query) is not None else None
        if query_problem is None and instruction is not None and not isinstance(instruction, str):
            query_problem = BAD_INSTRUCTION
        for did, doc in items:
            last = True  # every pair is a unit of its own in the accounting
            problem = qid_problem or row_id_problem(did, doc_type)
            did = shown_id(did)
            if problem:
                emit(row_no, problem, qid, did, last=last)
            elif query_problem:
                emit(row_no, query_problem, qid, did, last=last)
            elif (qid, did) in seen:
                emit(row_no, DUPLICATE_PAIR, qid, did, last=last)
            elif doc is None and has_corpus:
                seen.add((qid, did))
                emit(row_no, None, qid, did, query, None, instruction, last)
            elif text_problem(doc) is not None:
                emit(row_no, text_problem(doc), qid, did, last=last)
            else:
                seen.add((qid, did))
                emit(row_no, None, qid, did, query, doc, instruction, last)
    return pa.table(cols, schema=PAIR_SCHEMA)


def end_of_pairs(shard_key: str, rows: int, seqs: int, error: str | None = None) -> pa.Table:
    """The marker row after a file's last pair; with `error`, the bad-shard marker sent instead when the file
    broke off (input.on_bad_shard: skip)."""
    cols = {name: [None] for name in PAIR_SCHEMA.names}
    cols.update(
        _shard=[shard_key],
        _row=[rows],
        _seq=[seqs],
        _reject=[BAD_SHARD if error else END_OF_SHARD],
        _last=[True],
        _error=[error],
    )
    return pa.table(cols, schema=PAIR_SCHEMA)


def fill_documents(batch: pa.Table) -> pa.Table:
    """After the corpus join: take the corpus text where the pair had none; dead-letter what is still missing."""
    if CORPUS_TEXT not in batch.column_names:
        return batch
    document = pc.coalesce(batch.column("document"), batch.column(CORPUS_TEXT))
    missing = pc.and_(pc.is_null(batch.column(REJECT)), pc.is_null(document))
    reject = pc.if_else(missing, pa.scalar(MISSING_DOCUMENT), batch.column(REJECT))
    out = batch.drop_columns([CORPUS_TEXT, "document", REJECT])
    return out.append_column("document", document).append_column(REJECT, reject)


def corpus_rows(raw: RawRows, corpus_cfg) -> pa.Table:
    """Corpus rows -> (doc_id, _corpus_text) rows for the join. A row without a usable id (null, or neither a
    string nor an integer) is skipped: no pair can name it. Text that is not a string joins as none."""
    ids, texts = [], []
    for row in raw.rows:
        if row is None or id_problem(row.get(corpus_cfg.id_column)) is not None:
            continue
        text = row_text(row, corpus_cfg)
        ids.append(str(row[corpus_cfg.id_column]))
        texts.append(text if isinstance(text, str) else None)
    return pa.table({"doc_id": pa.array(ids, pa.string()), CORPUS_TEXT: pa.array(texts, pa.string())})
