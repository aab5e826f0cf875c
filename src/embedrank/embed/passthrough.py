"""Passthrough columns (`input.passthrough`) keep one type per output, settled in planning like the ids (ids.py).

Each column's Arrow type comes from, in this order:

    the output's files   an output that holds committed files keeps their type
    Parquet inputs       the footer's type (dictionary-encoded or large strings -> string, integers -> int64,
                         floats -> float64); files that disagree are refused in planning, in one line
    JSON Lines inputs    the values of the first lines: strings -> string, integers -> int64, numbers -> float64,
                         booleans -> bool; lists, objects, a mix of kinds or nothing but nulls -> string

A string column takes any JSON Lines value: a string as it is, anything else as its JSON text (`5` -> "5",
`["a"]` -> '["a"]'). A typed column takes the values of its type (float64 also integers); a JSON Lines row
further down whose value has another type is a dead letter (`wrong_passthrough_type`), never a failed task or a
silently emptied cell. Every batch builds its columns with the settled types, so a batch of nulls cannot give a
file of another schema. Pure functions.
"""

from __future__ import annotations

import json

import pyarrow as pa

from ..errors import PlanError
from ..ids import INT64_RANGE

STRING = pa.string()
_SCALARS = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


def normalized(kind: pa.DataType) -> pa.DataType:
    """A Parquet column's type as the output holds it: the values of a dictionary, string for large strings,
    int64 for any integer but uint64, float64 for any float."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return STRING
    if pa.types.is_integer(kind) and kind != pa.uint64():
        return pa.int64()
    if pa.types.is_floating(kind):
        return pa.float64()
    return kind


def sampled_type(kinds: frozenset[str]) -> pa.DataType | None:
    """The Python type names of a JSON Lines column's first values -> its type; None when all were null."""
    kinds = frozenset(kinds) - {"NoneType"}
    if not kinds:
        return None
    if kinds <= {"int", "float"}:
        return pa.float64() if "float" in kinds else pa.int64()
    if len(kinds) == 1 and next(iter(kinds)) in _SCALARS:
        return _SCALARS[next(iter(kinds))]
    return STRING  # lists, objects or a mix: JSON text


def fits(found: pa.DataType | None, target: pa.DataType) -> bool:
    """Whether values of type `found` can be written to a column of type `target` as they are."""
    return found is None or found == target or (found == pa.int64() and target == pa.float64())


def settle_types(names: list[str], infos: dict, uris: dict, kept: pa.Schema | None) -> dict[str, pa.DataType]:
    """Each passthrough column's type. `infos`: shard key -> io/sources.ShardInfo of the pending input files,
    `uris`: shard key -> its URI, `kept`: the schema of the committed files the output keeps (None: none)."""
    types = {}
    for name in names:
        typed = {
            uris[k]: normalized(i.schema.field(name).type)
            for k, i in infos.items()
            if i.schema is not None and name in i.schema.names and not pa.types.is_null(i.schema.field(name).type)
        }
        sampled = {
            uris[k]: kind
            for k, i in infos.items()
            if i.sampled is not None and (kind := sampled_type(i.sampled.get(name, frozenset()))) is not None
        }
        # A column of nulls only (a file of one, or an output written when batches inferred their types) says
        # nothing about the type.
        if kept is not None and name in kept.names and not pa.types.is_null(kept.field(name).type):
            target, source = kept.field(name).type, "the output's files"
        elif typed:
            uri = sorted(typed)[0]
            target, source = typed[uri], uri
            if all(fits(kind, pa.float64()) for kind in typed.values()) and pa.float64() in typed.values():
                target = pa.float64()  # integer files beside float ones: one float64 column
        elif sampled:
            kinds = set(sampled.values())
            if kinds <= {pa.int64(), pa.float64()}:
                target = pa.float64() if pa.float64() in kinds else pa.int64()
            else:
                target = kinds.pop() if len(kinds) == 1 else STRING  # files of different kinds: JSON text
            source = "the first lines of the JSON Lines input"
        else:
            types[name] = STRING
            continue
        for uri, kind in {**typed, **sampled}.items():
            json_into_text = uri in sampled and target == STRING
            if not (json_into_text or fits(kind, target)):
                raise PlanError(
                    f"input.passthrough column {name!r} is {kind} in {uri} and {target} in {source}: an output holds "
                    "one type per column; make them agree, or leave the column out of input.passthrough"
                )
        types[name] = target
    return types


def value_fits(value: object, target: pa.DataType) -> bool:
    """Whether a JSON Lines value can be written to a column of type `target` (a Parquet value always can: its
    file's type fits, planning checked)."""
    if value is None or target == STRING:
        return True
    if target == pa.int64():
        return isinstance(value, int) and not isinstance(value, bool) and INT64_RANGE[0] <= value <= INT64_RANGE[1]
    if target == pa.float64():
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if target == pa.bool_():
        return isinstance(value, bool)
    return True


def column(values: list, target: pa.DataType | None) -> pa.Array:
    """A passthrough column of `target` type (None: inferred, for callers without a plan)."""
    if target is None:
        return pa.array(values)
    if target == STRING:
        values = [
            v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str) for v in values
        ]
    return pa.array(values, target)
