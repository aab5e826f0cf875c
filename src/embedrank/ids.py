"""Ids keep their type: integer ids are written as int64, string ids as strings.

Every output holds one id type per id column (a dataset whose files disagree is unreadable as one table by
polars, DuckDB or a vector index), settled once in planning (`settle_id_type`):

    output.id_type: string   every id written as text (an integer as its decimal digits, as before int64 ids)
    output.id_type: auto     an output that holds committed files keeps their type; a new one takes the
                             input's: an integer Parquet column -> int64, a string column -> string, and for
                             JSON Lines the ids of the first lines planning reads (all integers -> int64)

Input files whose ids disagree (one integer, one string) are refused in planning with one line, as is string
input into an output that holds int64 ids. In a run whose ids are int64, a row whose id is a string (a JSON
Lines row after the first lines) or an integer outside int64 is a dead letter (`wrong_id_type`, `bad_id`).

Inside a run ids travel as their text (dead letters show any id, good or bad, as text); the writers turn them
into the run's type (`id_array`). Pure functions; `committed_schema` reads one Parquet footer.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import PlanError
from .schema import BAD_ID, WRONG_ID_TYPE, id_problem

INT64 = "int64"
STRING = "string"
MIXED = "mixed"  # a JSON Lines file whose first lines hold both integer and string ids
INT64_RANGE = (-(2**63), 2**63 - 1)
_INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_STRING_TYPES = {"string", "large_string", "string_view", "utf8", "large_utf8"}


def column_id_type(type_name: str) -> str | None:
    """An Arrow type name (a Parquet footer's; dictionary encoding looked through) -> INT64 | STRING, or None
    when the column cannot hold ids (or has no type: a JSON Lines column)."""
    if type_name.startswith("dictionary<values="):
        type_name = type_name[len("dictionary<values=") :].split(",", 1)[0]
    if type_name in _INTEGER_TYPES:
        return INT64
    if type_name in _STRING_TYPES:
        return STRING
    return None


def sampled_id_type(kinds: frozenset[str] | set[str]) -> str | None:
    """The Python type names of a JSON Lines column's first values -> INT64 | STRING | MIXED, or None when
    none of them is a usable id (bad ids are judged on their rows)."""
    found = {INT64 if k == "int" else STRING for k in kinds if k in ("int", "str")}
    return found.pop() if len(found) == 1 else (MIXED if found else None)


def settle_id_type(
    configured: str,
    found: dict[str, str],
    existing: str | None,
    *,
    output_uri: str,
    column: str = "id",
    output_column: str | None = None,
    key: str = "output.id_type",
) -> str:
    """The run's id type for one id column. `found`: input file -> the type of its `column` (INT64 | STRING |
    MIXED; files without a known type left out); `existing`: the type of `output_column` (default: `column`) in
    the output's committed files kept by this run. Raises PlanError (one line) for mixed input or input that an
    existing int64 output cannot hold."""
    mixed = [uri for uri, kind in found.items() if kind == MIXED]
    if mixed and configured != STRING:
        raise PlanError(
            f"input {mixed[0]} holds both integer and string {column!r} values in its first lines; one output "
            f"holds one id type: fix the input, or set {key}: string to write every id as text"
        )
    integer = sorted(uri for uri, kind in found.items() if kind == INT64)
    text = sorted(uri for uri, kind in found.items() if kind == STRING)
    if existing == INT64 and (text or mixed or configured == STRING):
        cause = f"input {(text or mixed)[0]} has string ids" if text or mixed else f"{key} is string"
        raise PlanError(
            f"output {output_uri} holds int64 {output_column or column!r} values and {cause}: one output holds one "
            "id type; write to a new output.uri (or remove that output)"
        )
    if configured == STRING or existing == STRING:
        return STRING
    if integer and text:
        raise PlanError(
            f"{column!r} is an integer column in {integer[0]} and a string column in {text[0]}: one output holds "
            f"one id type; make them agree, or set {key}: string to write every id as text"
        )
    return existing or (INT64 if integer else STRING)


def row_id_problem(value: object, id_type: str) -> str | None:
    """The reason code that makes `value` unusable as an id of a run whose ids are `id_type`, or None."""
    problem = id_problem(value)
    if problem is not None or id_type != INT64:
        return problem
    if isinstance(value, str):
        return WRONG_ID_TYPE
    return None if INT64_RANGE[0] <= value <= INT64_RANGE[1] else BAD_ID


def id_array(values: pa.Array | pa.ChunkedArray, id_type: str) -> pa.Array | pa.ChunkedArray:
    """Ids (as text or as integers, already checked with `row_id_problem`) -> the run's type."""
    target = pa.int64() if id_type == INT64 else pa.string()
    return values if values.type == target else values.cast(target)


def item_id_type(kind: pa.DataType, name: str = "doc_id") -> str | None:
    """The id type of field `name` of the items of a list<struct> column type (candidate lists), or None."""
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return None
    item = kind.value_type
    if not pa.types.is_struct(item) or item.get_field_index(name) < 0:
        return None
    return column_id_type(str(item.field(name).type))


def schema_id_type(schema: pa.Schema, column: str = "id") -> str | None:
    """The id type of a committed file's `column`, or None when it has no such column."""
    if column not in schema.names:
        return None
    return column_id_type(str(schema.field(column).type))


def committed_schema(store, records: dict[str, dict]) -> pa.Schema | None:
    """The schema of the data files named by commit `records` in `store` (their first file's footer: every
    file of an output shares it), or None when they name none."""
    for record in records.values():
        for name in record.get("files", {}).get("data", []):
            with store.fs.open(store.path(name), "rb") as f:
                return pq.ParquetFile(f).schema_arrow
    return None


def file_id_type(info, column: str) -> str | None:
    """An input file's id type from what planning read of it (io/sources.ShardInfo): its footer's column
    type, or for JSON Lines the values of its first lines; None when unknown."""
    if info.sampled is not None:
        return sampled_id_type(info.sampled.get(column, frozenset()))
    type_name = info.columns.get(column)
    return column_id_type(type_name) if type_name else None
