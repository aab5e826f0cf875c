"""The embed job and nightly re-embedding: planning, prepare (validate, hash, tokenise), the Ray Data stages,
and the check for ids held by several input shards."""
