"""int8 calibration on a sample (embed/calibrate.calibrate_on_sample), without Ray: it embeds the first valid
rows through the job's own prepare step and model, so its vectors are the ones the run writes for those rows."""

import json
from pathlib import Path

import numpy as np
import pytest

import embedrank
from embedrank.config import EmbedJobConfig
from embedrank.embed.calibrate import calibrate_on_sample, settle_int8_range
from embedrank.io.pieces import plan_units
from embedrank.io.sources import list_shards, peek_all
from embedrank.quantize import Int8Range, calibrate
from embedrank.runtime.store import OutputStore

SAMPLE = Path(embedrank.__file__).parent / "data" / "sample_corpus.jsonl"


@pytest.mark.slow
def test_calibration_embeds_the_first_valid_rows_as_the_job_does(tiny_embedding_dir, embedder, sample_rows, tmp_path):
    cfg = EmbedJobConfig(
        input={"uri": str(SAMPLE)}, output={"uri": str(tmp_path / "out")}, model={"source": str(tiny_embedding_dir)}
    )
    shards = list_shards(cfg.input.uri, fmt="auto")
    infos, _ = peek_all(shards)
    units, _ = plan_units(shards, infos, 100, 64.0)
    prepare = dict(
        input_cfg=cfg.input,
        long_docs=cfg.long_docs,
        model_source=str(tiny_embedding_dir),
        revision=None,
        max_length=cfg.model.max_length,
        rows_per_batch=64,
        on_duplicate_id="reject",
        storage_config=None,
        storage_opts="{}",
    )

    def sample(limit):
        return calibrate_on_sample(
            units,
            limit,
            prepare_kwargs=prepare,
            model_cfg=cfg.model,
            model_source=str(tiny_embedding_dir),
            storage_opts="{}",
        )

    vectors = sample(40)
    reference = embedder.embed([r["text"] for r in sample_rows[:40]])
    assert vectors.shape == reference.shape
    np.testing.assert_allclose(vectors, reference, atol=1e-5)

    store = OutputStore(str(tmp_path / "out"))
    output = cfg.output.model_copy(update={"embedding_dtype": "int8", "int8_calibration_rows": 40})
    settled = Int8Range.from_json(settle_int8_range(output, [store], "fp", sample, log=lambda _: None))
    assert settled == calibrate(vectors)
    saved = json.loads(store.read_text(store.path("_embedrank", "int8_range.json")))
    assert saved["fingerprint"] == "fp" and Int8Range.from_dict(saved["range"]) == settled
