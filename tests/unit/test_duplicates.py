"""Ids held by several shards: hashing, partitioning, and which copies go (pure functions, no Ray)."""

import numpy as np
import pyarrow as pa

from embedrank.embed.dedupe import (
    id_hashes,
    id_partitions,
    later_copies,
    partition,
    shared_hashes,
    split_rows,
    task_groups,
)


def find(shards: list[list[str]], parts: int = 4) -> dict[int, set[int]]:
    """The pipeline's map and reduce steps, run in-process."""
    split = [partition(id_hashes(ids), i, parts) for i, ids in enumerate(shards)]
    shared = np.concatenate([shared_hashes(*[s[p] for s in split]) for p in range(parts)])
    return later_copies(shared)


def test_hashes_are_stable_and_ids_compare_as_strings():
    assert id_hashes(["a", "b"]).tolist() == id_hashes(["a", "b"]).tolist()
    assert id_hashes([7])[0] == id_hashes(["7"])[0]
    assert len(set(id_hashes([f"id{i}" for i in range(10000)]).tolist())) == 10000


def test_later_shards_give_up_their_copies():
    shards = [["a", "b", "c"], ["c", "d", "b"], ["e"], ["b", "x"]]
    drop = find(shards)
    h = dict(zip("abcdex", id_hashes(list("abcdex")).tolist()))
    assert drop == {1: {h["b"], h["c"]}, 3: {h["b"]}}


def test_no_shared_ids_nothing_to_drop_and_repeats_within_a_shard_are_not_cross_shard():
    assert find([["a", "b"], ["c"], []]) == {}
    assert find([["chunked", "chunked", "chunked"], ["other"]]) == {}


def test_split_rows_moves_every_row_of_a_dropped_id():
    table = pa.table({"id": ["a", "b", "b", "c"], "chunk_index": [0, 0, 1, 0]})
    kept, moved = split_rows(table, set(id_hashes(["b"]).tolist()))
    assert kept.column("id").to_pylist() == ["a", "c"]
    assert moved.column("chunk_index").to_pylist() == [0, 1]


def test_many_pieces_are_hashed_by_a_bounded_number_of_tasks():
    for count in (0, 1, 63, 64, 65, 5000):
        groups = task_groups(count, max_tasks=64)
        assert len(groups) <= 64 and [i for g in groups for i in g] == list(range(count))


def test_a_group_task_finds_the_same_shared_ids_as_one_task_per_piece(tmp_path):
    import pyarrow.parquet as pq

    pieces = [["a", "b"], ["c", "a"], ["d"], ["b", "e", "c"]]
    uris = []
    for i, ids in enumerate(pieces):
        pq.write_table(pa.table({"id": ids}), tmp_path / f"{i}.parquet")
        uris.append([str(tmp_path / f"{i}.parquet")])
    one_each = [id_partitions([(i, u)], 4, None) for i, u in enumerate(uris)]
    grouped = [id_partitions([(i, uris[i]) for i in g], 4, None) for g in task_groups(len(uris), max_tasks=2)]
    for runs in (one_each, grouped):
        drop = later_copies(np.concatenate([shared_hashes(*[r[p] for r in runs]) for p in range(4)]))
        assert drop == {1: set(id_hashes(["a"]).tolist()), 3: set(id_hashes(["b", "c"]).tolist())}
