"""A checkpoint under an s3:// prefix is synced once to a local cache and gives the same vectors."""

import numpy as np
import pytest

from embedrank import Qwen3Embedder
from embedrank.checkpoints import CheckpointError


def test_load_from_s3_prefix(s3, s3_endpoint, tiny_embedding_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    for f in tiny_embedding_dir.iterdir():
        s3.put_file(str(f), f"corpus/models/tiny/{f.name}")
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    remote = Qwen3Embedder.from_pretrained("s3://corpus/models/tiny", storage_options=opts)
    local = Qwen3Embedder.from_pretrained(tiny_embedding_dir)
    texts = ["a short text", "and another one, a little longer than the first"]
    np.testing.assert_array_equal(remote.embed(texts), local.embed(texts))
    cached = list((tmp_path / "cache" / "models").iterdir())
    assert len(cached) == 1 and (cached[0] / ".complete").is_file()
    # Second load: served from the cache, even with the endpoint gone.
    again = Qwen3Embedder.from_pretrained("s3://corpus/models/tiny",
                                          storage_options={"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}})
    np.testing.assert_array_equal(again.embed(texts), local.embed(texts))


def test_pickle_only_prefix_is_refused(s3, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    s3.pipe_file("corpus/models/pickled/config.json", b"{}")
    s3.pipe_file("corpus/models/pickled/pytorch_model.bin", b"not really")
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        Qwen3Embedder.from_pretrained("s3://corpus/models/pickled",
                                      storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}})
