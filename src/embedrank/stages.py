"""Ray Data stages: thin adapters over prepare.py, models/ and io/.

Each stage declares the columns it needs and checks them on entry. None has a side effect visible in the
output: prepare and embed are pure, and the writer only writes under the run's staging folder with names
derived from the rows, so Ray's retries of tasks and restarts of actors cannot duplicate a row.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import socket
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import faults
from .crash_guard import run_guarded
from .io import storage
from .io.sink import CHUNK_COLUMNS, data_table, rejected_table, write_staged, write_table
from .io.sources import PlanError, Shard, iter_rows
from .prepare import PreviousShard, ShardState, end_of_shard, list_array, needed_columns, prepare_rows
from .validation import WORKER_CRASH


def check_columns(table: pa.Table, needed, stage: str) -> None:
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise ValueError(f"{stage} stage: missing input columns {missing}; got {table.column_names}")


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None, max_length: int, storage_opts: str):
    from .checkpoints import resolve_checkpoint
    from .models.tokenization import EmbeddingTokenizer

    path = resolve_checkpoint(source, revision=revision, storage_options=json.loads(storage_opts))
    return EmbeddingTokenizer.from_pretrained(path, max_length=max_length)


def _read_rows(shard: Shard, rows_per_batch: int, columns, storage_config):
    """iter_rows, with a shard that breaks off mid-read reported as the user's problem to fix."""
    reader = iter_rows(shard, rows_per_batch, columns, storage_config)
    rows = 0
    while True:
        try:
            raw = next(reader, None)
        except (PermissionError, ConnectionError, TimeoutError) as exc:  # storage, not the file's content
            raise storage.explain(exc, shard.uri) from None
        except (EOFError, OSError, ValueError) as exc:  # truncated gzip, corrupt Parquet page, ...
            raise PlanError(
                f"input shard {shard.uri} broke off after {rows} rows ({type(exc).__name__}): it is truncated "
                "or corrupt; re-upload it or remove it from the input, then rerun (committed shards are kept)"
            ) from None
        if raw is None:
            return
        rows += len(raw.rows)
        yield raw


def prepare_shards(batch: dict, *, input_cfg, long_docs, model_source: str, revision: str | None,
                   max_length: int, rows_per_batch: int, on_duplicate_id: str, storage_config,
                   storage_opts: str, previous: dict[str, list[str]] | None = None) -> Iterator[pa.Table]:
    """CPU task: read whole shards (one per input row) and yield prepared tables, then an end-of-shard marker.

    `previous` maps a shard key to the URIs of its committed files in the version a nightly run replaces:
    unchanged documents are carried from there instead of being embedded again.
    """
    tokenizer = _tokenizer(model_source, revision, max_length, storage_opts)
    for shard_json in batch["shard"]:
        shard = Shard.from_dict(json.loads(shard_json))
        state = ShardState()
        if previous and previous.get(shard.key):
            state.previous = PreviousShard(read_previous(previous[shard.key], long_docs.mode == "chunk",
                                                         storage_config))
        rows = 0
        for raw in _read_rows(shard, rows_per_batch, needed_columns(input_cfg), storage_config):
            rows += len(raw.rows)
            yield prepare_rows(raw, shard_key=shard.key, input_cfg=input_cfg, long_docs=long_docs,
                               max_length=max_length, tokenizer=tokenizer, state=state,
                               on_duplicate_id=on_duplicate_id)
        yield end_of_shard(shard.key, rows, next(state.seq), list(input_cfg.passthrough), state.deleted())


def read_previous(uris: list[str], chunked: bool, storage_config) -> pa.Table:
    """A shard's committed rows from the previous version: what carrying forward needs, vectors included."""
    columns = ["id", "content_hash", "embedding", "n_tokens", "truncated"] + (list(CHUNK_COLUMNS) if chunked else [])
    return read_parquet(uris, storage_config, columns=columns)


def read_parquet(uris: list[str], storage_config, columns=None) -> pa.Table | None:
    """Committed Parquet files as one table (None for no files)."""
    import pyarrow.parquet as pq

    tables = []
    for uri in uris:
        fs, path = storage.filesystem(uri, storage_config)
        with fs.open(path, "rb") as f:
            tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables) if tables else None


def token_lists(column: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> list[np.ndarray]:
    """The token-id lists of `rows` as numpy views (no per-token Python objects)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy()
    flat = array.values.to_numpy()
    return [flat[offsets[i]:offsets[i + 1]] for i in rows]


def embedding_array(vectors: np.ndarray, n_rows: int, rows: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    """[len(rows), dim] vectors placed at `rows` of an n_rows column (zeros elsewhere: rows that are dropped)."""
    np_dtype = np.float16 if dtype == "float16" else np.float32
    dim = vectors.shape[1]
    full = np.zeros((n_rows, dim), dtype=np_dtype)
    full[rows] = vectors
    return pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim)


def load_for_actor(model_cls, *, model_cfg, model_source: str, storage_opts: str, torch_threads: int | None):
    """An actor's model: Qwen3Embedder or Qwen3Reranker from the job's model config."""
    import torch

    if torch_threads:
        torch.set_num_threads(torch_threads)
    return model_cls.from_pretrained(
        model_source, dtype=model_cfg.dtype, attention=model_cfg.attention, max_length=model_cfg.max_length,
        max_tokens_per_batch=model_cfg.max_tokens_per_batch, revision=model_cfg.revision,
        storage_options=json.loads(storage_opts),
    )


def with_cost_columns(out: pa.Table, rows: np.ndarray, busy: float, row_cost, actor: str) -> pa.Table:
    """Append `_computed` (tokens computed per row, padding included), `_busy_s` (the batch's time shared by
    tokens) and `_actor`, from which the report derives padding efficiency and tokens/s per actor."""
    n = out.num_rows
    computed = np.zeros(n, dtype=np.int64)
    busy_s = np.zeros(n, dtype=np.float64)
    if rows.size:
        computed[rows] = row_cost
        busy_s[rows] = busy * row_cost / max(int(row_cost.sum()), 1)
    out = out.append_column("_computed", pa.array(computed)).append_column("_busy_s", pa.array(busy_s))
    return out.append_column("_actor", pa.array([actor] * n, pa.string()))


class ModelActor:
    """What the embed and rerank actors share: column checks, fault hooks and the crash guard."""

    NEEDS: tuple[str, ...] = ()
    STAGE = ""
    POISON_COLUMN = ""  # the id column the test-only poison hook looks at

    def __init__(self, ledger=None, max_worker_crashes: int = 2):
        self.ledger = ledger
        self.max_worker_crashes = max_worker_crashes
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.calls = 0

    def start_batch(self, batch: pa.Table) -> None:
        check_columns(batch, ("_shard", "_seq", *self.NEEDS), self.STAGE)
        faults.maybe_exit(self.STAGE, self.calls)
        faults.maybe_sleep(self.STAGE)
        self.calls += 1

    def run_model(self, batch: pa.Table, rows: np.ndarray, model_fn):
        """model_fn(rows) -> (values, costs) under the crash guard -> (rows done, values, costs, batch).

        Rows that kept killing the worker come back marked `_reject = worker_crash` in the returned batch.
        """
        poison = faults.poison_ids()

        def compute(subset: np.ndarray):
            if poison and subset.size:
                faults.crash_on_poison(poison, batch.column(self.POISON_COLUMN).take(subset).to_pylist())
            return model_fn(subset)

        if self.ledger is None:
            return (rows, *compute(rows), batch)
        import ray

        shards = batch.column("_shard").to_pylist()
        seqs = batch.column("_seq").to_pylist()
        row_keys = [f"{shard}/{seq}" for shard, seq in zip(shards, seqs)]
        done, values, costs, crashed = run_guarded(
            rows, row_keys, compute, begin=lambda key: ray.get(self.ledger.begin.remote(key)),
            end=self.ledger.end.remote, limit=self.max_worker_crashes)
        if crashed.size:
            reject = batch.column("_reject").to_pylist()
            for row in crashed:
                reject[row] = WORKER_CRASH
            field = batch.schema.field("_reject")
            kind = pa.string() if pa.types.is_null(field.type) else field.type
            batch = batch.set_column(batch.schema.get_field_index("_reject"), "_reject", pa.array(reject, kind))
        return done, values, costs, batch


class EmbedActor(ModelActor):
    """Actor: embeds the prepared rows of each batch with Qwen3Embedder.embed_tokens. Never tokenises."""

    NEEDS = ("_reject", "_change", "token_ids", "n_tokens", "prev_embedding")
    STAGE = "embed"
    POISON_COLUMN = "id"

    def __init__(self, *, model_cfg, model_source: str, embedding_dtype: str, storage_opts: str,
                 torch_threads: int | None = None, ledger=None, max_worker_crashes: int = 2):
        from .models.embedder import Qwen3Embedder

        super().__init__(ledger, max_worker_crashes)
        self.embedder = load_for_actor(Qwen3Embedder, model_cfg=model_cfg, model_source=model_source,
                                       storage_opts=storage_opts, torch_threads=torch_threads)
        self.dim = model_cfg.dim
        self.embedding_dtype = embedding_dtype

    def _embed(self, tokens: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.embedder.embed_tokens(token_lists(tokens, rows), dim=self.dim)
        return vectors.reshape(-1, self.dim or self.embedder.hidden_size), self.embedder.last_stats.row_cost

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.start_batch(batch)
        good = pc.is_null(batch.column("_reject")).to_numpy(zero_copy_only=False)
        carried = pc.equal(pc.fill_null(batch.column("_change"), ""), "carried").to_numpy(zero_copy_only=False)
        tokens = batch.column("token_ids")
        start = time.perf_counter()
        model_rows, vectors, row_cost, batch = self.run_model(
            batch, np.flatnonzero(good & ~carried), functools.partial(self._embed, tokens))
        busy = time.perf_counter() - start
        rows = model_rows
        carried_rows = np.flatnonzero(good & carried)
        if carried_rows.size:
            previous = np.stack([np.asarray(v, np.float32) for v in
                                 batch.column("prev_embedding").take(carried_rows).to_pylist()])
            rows = np.concatenate([rows, carried_rows])
            vectors = np.concatenate([vectors, previous])
        n = batch.num_rows
        embedded = np.zeros(n, dtype=bool)
        embedded[model_rows] = True
        out = batch.drop_columns(["token_ids", "prev_embedding"])
        out = out.append_column("embedding", embedding_array(vectors, n, rows, self.embedding_dtype))
        out = out.append_column("_embedded", pa.array(embedded))
        return with_cost_columns(out, model_rows, busy, row_cost, self.name)


def write_embeddings(batch: pa.Table, *, chunked: bool, passthrough: list[str], metadata: dict,
                     **kwargs) -> pa.Table:
    """Task: stage the batch's vectors and dead letters as Parquet; returns the files' metadata rows."""
    check_columns(batch, ("_shard", "_row", "_seq", "_reject", "_last", "id", "embedding"), "write")
    metadata = {**metadata, "embedrank.dim": batch.schema.field("embedding").type.list_size}
    return write_staged(batch, to_data=functools.partial(data_table, chunked=chunked, passthrough=passthrough,
                                                         metadata=metadata),
                        to_rejected=rejected_table, **kwargs)


# -- rerank ----------------------------------------------------------------------------------------------


def prepare_pairs(batch: dict, *, input_cfg, has_corpus: bool, rows_per_batch: int,
                  storage_config) -> Iterator[pa.Table]:
    """CPU task: read whole rerank shards and yield one row per pair, then an end-of-shard marker."""
    from .rerank_rows import end_of_pairs, explode_pairs

    for shard_json in batch["shard"]:
        shard = Shard.from_dict(json.loads(shard_json))
        seen: set = set()
        seq = itertools.count()
        rows = 0
        for raw in _read_rows(shard, rows_per_batch, None, storage_config):
            rows += len(raw.rows)
            yield explode_pairs(raw, shard_key=shard.key, input_cfg=input_cfg, seen=seen, seq=seq,
                                has_corpus=has_corpus)
        yield end_of_pairs(shard.key, rows, next(seq))


def read_corpus(batch: dict, *, corpus_cfg, rows_per_batch: int, storage_config) -> Iterator[pa.Table]:
    """CPU task: corpus shards -> (doc_id, _corpus_text) rows for the join; rows without an id are skipped."""
    from .prepare import row_text

    for shard_json in batch["shard"]:
        shard = Shard.from_dict(json.loads(shard_json))
        for raw in _read_rows(shard, rows_per_batch, None, storage_config):
            ids, texts = [], []
            for row in raw.rows:
                if row is None or row.get(corpus_cfg.id_column) is None:
                    continue
                text = row_text(row, corpus_cfg)
                ids.append(str(row[corpus_cfg.id_column]))
                texts.append(text if isinstance(text, str) else None)
            yield pa.table({"doc_id": pa.array(ids, pa.string()), "_corpus_text": pa.array(texts, pa.string())})


def tokenize_pairs(batch: pa.Table, *, model_source: str, revision: str | None, max_length: int,
                   default_instruction: str | None, storage_opts: str) -> pa.Table:
    """CPU task: fill documents from the corpus join, then build each pair's prompt tokens."""
    from .rerank_rows import fill_documents

    batch = fill_documents(batch)
    check_columns(batch, ("_reject", "query", "document", "instruction"), "tokenize")
    tokenizer = _rerank_tokenizer(model_source, revision, max_length, storage_opts)
    rows = np.flatnonzero(pc.is_null(batch.column("_reject")).to_numpy(zero_copy_only=False))
    queries = batch.column("query").take(rows).to_pylist()
    documents = batch.column("document").take(rows).to_pylist()
    instructions = [i or default_instruction for i in batch.column("instruction").take(rows).to_pylist()]
    tokens = tokenizer.tokenize(queries, documents, instructions)
    seqs: list = [np.zeros(0, np.int32)] * batch.num_rows
    truncated = np.zeros(batch.num_rows, dtype=bool)
    for i, ids in zip(rows, tokens.ids):
        seqs[i] = ids.astype(np.int32)
    truncated[rows] = tokens.truncated
    out = batch.drop_columns(["query", "document", "instruction"])
    out = out.append_column("token_ids", list_array(seqs))
    out = out.append_column("n_tokens", pa.array([len(s) for s in seqs], pa.int32()))
    return out.append_column("truncated", pa.array(truncated))


@functools.lru_cache(maxsize=4)
def _rerank_tokenizer(source: str, revision: str | None, max_length: int, storage_opts: str):
    from .checkpoints import resolve_checkpoint
    from .models.reranker import RerankTokenizer

    path = resolve_checkpoint(source, revision=revision, storage_options=json.loads(storage_opts), kind="reranker")
    return RerankTokenizer.from_pretrained(path, max_length=max_length)


class RerankActor(ModelActor):
    """Actor: scores the prompt tokens of each batch with Qwen3Reranker.score_tokens. Never tokenises."""

    NEEDS = ("_reject", "token_ids", "n_tokens")
    STAGE = "rerank"
    POISON_COLUMN = "doc_id"

    def __init__(self, *, model_cfg, model_source: str, storage_opts: str, torch_threads: int | None = None,
                 ledger=None, max_worker_crashes: int = 2):
        from .models.reranker import Qwen3Reranker

        super().__init__(ledger, max_worker_crashes)
        self.reranker = load_for_actor(Qwen3Reranker, model_cfg=model_cfg, model_source=model_source,
                                       storage_opts=storage_opts, torch_threads=torch_threads)

    def _score(self, tokens: pa.Array, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.reranker.score_tokens(token_lists(tokens, rows)), self.reranker.last_stats.row_cost

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.start_batch(batch)
        good = pc.is_null(batch.column("_reject")).to_numpy(zero_copy_only=False)
        start = time.perf_counter()
        rows, scores, row_cost, batch = self.run_model(batch, np.flatnonzero(good),
                                                       functools.partial(self._score, batch.column("token_ids")))
        busy = time.perf_counter() - start
        full = np.zeros(batch.num_rows, dtype=np.float32)
        full[rows] = scores
        out = batch.drop_columns(["token_ids"]).append_column("score", pa.array(full))
        return with_cost_columns(out, rows, busy, row_cost, self.name)


SCORE_COLUMNS = ("query_id", "doc_id", "score", "n_tokens", "truncated")


def score_table(part: pa.Table) -> pa.Table:
    return part.select(list(SCORE_COLUMNS))


def write_scores(batch: pa.Table, **kwargs) -> pa.Table:
    """Task: stage scored pairs and dead letters (ranked later, per shard, at commit)."""
    check_columns(batch, ("_shard", "_row", "_seq", "_reject", "_last", *SCORE_COLUMNS), "write")
    return write_staged(batch, to_data=score_table,
                        to_rejected=functools.partial(rejected_table, id_columns=("query_id", "doc_id")), **kwargs)


# -- ids shared by several shards (duplicates.py) -----------------------------------------------------------


def shard_id_partitions(uris: list[str], shard: int, parts: int, storage_config) -> tuple:
    """Task: one committed shard's id hashes, in `parts` partitions (one return value each)."""
    from .duplicates import id_hashes, partition

    table = read_parquet(uris, storage_config, columns=["id"])
    hashes = id_hashes(table.column("id").to_pylist()) if table is not None else np.zeros(0, np.uint64)
    split = partition(hashes, shard, parts)
    return tuple(split) if parts > 1 else split[0]


def rewrite_without(data_uris: list[str], rejected_uris: list[str], drop: list[int], staging_uri: str, source: str,
                    storage_config) -> tuple[dict[str, list[str]], int]:
    """Task: a committed shard again, without the rows whose id hash is in `drop`; those join its dead letters
    as `duplicate_id`. Returns (staged files by kind, rows moved)."""
    from .duplicates import split_rows
    from .validation import DUPLICATE_ID

    fs, root = storage.filesystem(staging_uri, storage_config)
    kept, moved = split_rows(read_parquet(data_uris, storage_config), set(drop))
    ids = pc.unique(moved.column("id"))
    dead = pa.table({"id": ids.cast(pa.string()), "source": pa.array([source] * len(ids), pa.string()),
                     "row": pa.nulls(len(ids), pa.int64()), "reason": pa.array([DUPLICATE_ID] * len(ids), pa.string())})
    old = read_parquet(rejected_uris, storage_config)
    if old is not None:
        dead = pa.concat_tables([old, dead.cast(old.schema)])
    staged: dict[str, list[str]] = {"data": [], "rejected": []}
    for kind, table in (("data", kept), ("rejected", dead)):
        if table.num_rows:
            path = f"{root}/{kind}.parquet"
            write_table(fs, path, table)
            staged[kind].append(path)
    return staged, len(ids)
