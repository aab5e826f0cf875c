"""Nightly by document: matching tonight's ids with the previous version's rows, partition by partition."""

import numpy as np

from embedrank.embed.carry import PREVIOUS, TONIGHT, _split, match_partition, rows_for_piece
from embedrank.embed.dedupe import id_hashes


def tonight(ids_by_piece: dict[int, list[str]]) -> np.ndarray:
    rows = [(h, piece) for piece, ids in ids_by_piece.items() for h in id_hashes(ids).tolist()]
    return np.array(rows, dtype=TONIGHT)


def previous(rows: list[tuple[str, int, int]]) -> np.ndarray:
    out = np.empty(len(rows), dtype=PREVIOUS)
    out["hash"] = id_hashes([r[0] for r in rows])
    out["file"], out["row"] = [r[1] for r in rows], [r[2] for r in rows]
    return out


def test_each_piece_gets_the_previous_rows_of_its_ids_wherever_they_were():
    now = tonight({0: ["a", "b", "new"], 1: ["c", "chunked"]})
    before = previous(
        [("a", 0, 0), ("b", 1, 5), ("c", 0, 1), ("chunked", 2, 0), ("chunked", 2, 1), ("gone", 1, 0), ("gone2", 1, 1)]
    )
    # Split into partitions as the tasks do, then match each partition and gather per piece.
    parts = 4
    t_parts, p_parts = _split(now, parts), _split(before, parts)
    results = [match_partition(t_parts[p], p_parts[p], n_tonight=1) for p in range(parts)]
    matches = [m for m, _ in results]
    assert sum(d for _, d in results) == 2  # gone, gone2
    piece0 = {(int(f), int(r)) for _, f, r in rows_for_piece(matches, 0).tolist()}
    piece1 = {(int(f), int(r)) for _, f, r in rows_for_piece(matches, 1).tolist()}
    assert piece0 == {(0, 0), (1, 5)}
    assert piece1 == {(0, 1), (2, 0), (2, 1)}
    assert rows_for_piece(matches, 7).size == 0


def test_empty_sides():
    match, deleted = match_partition(np.empty(0, TONIGHT), previous([("x", 0, 0)]), n_tonight=1)
    assert match.size == 0 and deleted == 1
    match, deleted = match_partition(tonight({0: ["x"]}), n_tonight=1)
    assert match.size == 0 and deleted == 0
