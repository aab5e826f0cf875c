"""Where an export goes: `lancedb://DIR/TABLE` (a table of the LanceDB database DIR) or `lance://URI` (a bare
Lance dataset). DIR and URI are local paths or object-storage URIs (s3://, gs://, ...)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class ExportTarget:
    uri: str  # the Lance dataset itself (a LanceDB table TABLE of DIR is DIR/TABLE.lance)
    database: str | None = None  # LanceDB: DIR
    table: str | None = None  # LanceDB: TABLE

    def __str__(self) -> str:
        return f"lancedb://{self.database}/{self.table}" if self.database else f"lance://{self.uri}"


def parse_target(to: str) -> ExportTarget:
    """`--to` -> an ExportTarget; anything else is one line naming the two forms."""
    if to.startswith("lancedb://"):
        rest = to[len("lancedb://") :].rstrip("/")
        database, _, table = rest.rpartition("/")
        if not database or not table or "." in table:
            raise UserError(f"--to {to}: expected lancedb://DIR/TABLE (a database folder, then a table name)")
        return ExportTarget(uri=posixpath.join(database, f"{table}.lance"), database=database, table=table)
    if to.startswith("lance://"):
        uri = to[len("lance://") :].rstrip("/")
        if not uri:
            raise UserError(f"--to {to}: expected lance://URI (a local path or an s3:// URI of a Lance dataset)")
        return ExportTarget(uri=uri)
    raise UserError(f"--to {to}: expected lancedb://DIR/TABLE or lance://URI")
