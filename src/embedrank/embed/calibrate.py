"""One int8 range per output: calibrated once on a sample before the graph, kept by every later run.

Every shard of an output must use the same per-dimension ranges, or codes of two files would not compare.
Actors cannot calibrate on their own batches (each would find another range), so the driver settles the range
before the graph starts, and hands it to the actors and writers as JSON (quantize.Int8Range):

    output.int8_range: <r>          [-r, r] in every dimension: no sample, reproducible across runs and roots
    output.int8_range: calibrate    one Ray task embeds the first `output.int8_calibration_rows` valid rows of
                                    the input (the job's own prepare step and model) and takes each
                                    dimension's min and max

The settled range is written to OUTPUT/_embedrank/int8_range.json with the run's fingerprint before any shard
is staged. A resumed run (same fingerprint) reads it back and never calibrates again, so shards committed
before a kill and after it share one range; a nightly run looks in its previous version as well, because its
carried documents keep their codes. A fingerprint change re-embeds every shard and so calibrates afresh.
"""

from __future__ import annotations

import json

import numpy as np

from ..quantize import Int8Range, calibrate, fixed_range

RANGE_FILE = ("_embedrank", "int8_range.json")


def wants_int8(output_cfg) -> bool:
    dtypes = [output_cfg.embedding_dtype, *getattr(output_cfg, "extra_embedding_dtypes", ())]
    return "int8" in dtypes


def range_spec(output_cfg) -> str:
    """`calibrate`, or the fixed r of output.int8_range as text (part of the fingerprint)."""
    value = getattr(output_cfg, "int8_range", "calibrate")
    return "calibrate" if value in (None, "calibrate") else repr(float(value))


def stored_range(store, fingerprint_id: str) -> Int8Range | None:
    """The range an output holds for this fingerprint, or None."""
    text = store.read_text(store.path(*RANGE_FILE))
    if not text:
        return None
    saved = json.loads(text)
    return Int8Range.from_dict(saved["range"]) if saved.get("fingerprint") == fingerprint_id else None


def settle_int8_range(
    output_cfg, stores: list, fingerprint_id: str, sample, dim: int | None = None, log=print
) -> str | None:
    """The run's int8 range as JSON (None: no int8 column). `stores`: the run's OutputStore first, then any
    other whose range it must keep (nightly: the current version). `sample(limit)` returns at most `limit`
    [n, d] float vectors of the run's input (calibrate_on_sample in a Ray task); `dim` (model.dim, when set)
    sizes a fixed range without one."""
    if not wants_int8(output_cfg):
        return None
    for store in stores:
        found = stored_range(store, fingerprint_id) if store is not None else None
        if found is not None:
            break
    else:
        spec = range_spec(output_cfg)
        if spec == "calibrate":
            vectors = np.asarray(sample(int(getattr(output_cfg, "int8_calibration_rows", 4096))), np.float32)
            if not len(vectors):
                raise ValueError(
                    "output.int8_range: calibrate found no valid row to calibrate on; set output.int8_range to a "
                    "number r (a fixed [-r, r] range)"
                )
            found = calibrate(vectors)
            log(f"embedrank: int8 range calibrated on {len(vectors)} vectors")
        else:
            if dim is None:
                dim = np.asarray(sample(limit=1), np.float32).shape[1]
            found = fixed_range(dim, float(spec))
    stores[0].write_json(stores[0].path(*RANGE_FILE), {"fingerprint": fingerprint_id, "range": found.to_dict()})
    return found.to_json()


def calibrate_on_sample(units: list, rows: int, *, prepare_kwargs: dict, model_cfg, model_source: str, storage_opts):
    """Ray task: [n <= rows, d] float vectors of the first valid rows of `units`, made by the job's own
    prepare step (texts, templates, instructions, truncation) and model (Matryoshka cut, L2)."""
    import pyarrow.compute as pc

    from .. import schema as S
    from ..io.pieces import unit_row
    from ..models.embedder import Qwen3Embedder
    from ..runtime.actor import token_lists
    from .stages import prepare_shards

    tokens = []
    for unit in units:
        for table in prepare_shards({"pieces": [unit_row(unit)["pieces"]]}, **prepare_kwargs):
            good = np.flatnonzero(pc.is_null(table.column(S.REJECT)).to_numpy(zero_copy_only=False))
            tokens += token_lists(table.column(S.TOKEN_IDS), good[: rows - len(tokens)])
            if len(tokens) >= rows:
                break
        if len(tokens) >= rows:
            break
    model = Qwen3Embedder.from_pretrained(
        model_source,
        dtype=model_cfg.dtype,
        attention=model_cfg.attention,
        max_length=model_cfg.max_length,
        max_tokens_per_batch=model_cfg.max_tokens_per_batch,
        revision=model_cfg.revision,
        storage_options=json.loads(storage_opts),
    )
    return model.embed_tokens(tokens, dim=model_cfg.dim)
