"""`--to` of `embedrank export` (export/target.py): the two forms, and one line for anything else."""

import pytest

from embedrank.errors import UserError
from embedrank.export.target import parse_target


def test_lancedb_and_lance_targets():
    t = parse_target("lancedb://out/lancedb/docs")
    assert (t.uri, t.database, t.table, str(t)) == (
        "out/lancedb/docs.lance",
        "out/lancedb",
        "docs",
        "lancedb://out/lancedb/docs",
    )
    t = parse_target("lancedb://s3://bucket/db/docs/")
    assert (t.uri, t.database, t.table) == ("s3://bucket/db/docs.lance", "s3://bucket/db", "docs")
    t = parse_target("lance://s3://bucket/vectors.lance")
    assert (t.uri, t.database) == ("s3://bucket/vectors.lance", None)


@pytest.mark.parametrize("to", ["lancedb://docs", "lancedb://db/docs.lance", "lance://", "s3://bucket/x", "out/db"])
def test_other_targets_are_refused_in_one_line(to):
    with pytest.raises(UserError, match="expected") as err:
        parse_target(to)
    assert "\n" not in str(err.value)
