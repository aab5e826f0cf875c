"""A checkpoint under an s3:// prefix is synced once to a local cache and gives the same vectors."""

import numpy as np
import pytest

from embedrank import Qwen3Embedder
from embedrank.models.checkpoints import CheckpointError


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
    again = Qwen3Embedder.from_pretrained(
        "s3://corpus/models/tiny", storage_options={"client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    )
    np.testing.assert_array_equal(again.embed(texts), local.embed(texts))


def test_pickle_only_prefix_is_refused(s3, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    s3.pipe_file("corpus/models/pickled/config.json", b"{}")
    s3.pipe_file("corpus/models/pickled/pytorch_model.bin", b"not really")
    with pytest.raises(CheckpointError, match="no \\*.safetensors weights"):
        Qwen3Embedder.from_pretrained(
            "s3://corpus/models/pickled", storage_options={"client_kwargs": {"endpoint_url": s3_endpoint}}
        )


def test_a_configured_revision_is_honoured(s3, s3_endpoint, tiny_embedding_dir, tmp_path, monkeypatch):
    """On S3 a revision is a folder under the prefix: `revision: v2` loads PREFIX/v2, never PREFIX."""
    from embedrank.models.tiny import build_tiny_checkpoint

    monkeypatch.setenv("EMBEDRANK_CACHE", str(tmp_path / "cache"))
    other = build_tiny_checkpoint(tmp_path / "v2", kind="embedding", seed=1)
    for folder, prefix in ((tiny_embedding_dir, "corpus/models/rev"), (other, "corpus/models/rev/v2")):
        for f in folder.iterdir():
            s3.put_file(str(f), f"{prefix}/{f.name}")
    opts = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    texts = ["which weights are these?"]
    root = Qwen3Embedder.from_pretrained("s3://corpus/models/rev", storage_options=opts).embed(texts)
    pinned = Qwen3Embedder.from_pretrained("s3://corpus/models/rev", revision="v2", storage_options=opts).embed(texts)
    np.testing.assert_array_equal(root, Qwen3Embedder.from_pretrained(tiny_embedding_dir).embed(texts))
    np.testing.assert_array_equal(pinned, Qwen3Embedder.from_pretrained(other).embed(texts))
    assert not np.allclose(root, pinned)
    with pytest.raises(CheckpointError, match="rev/v3: no such prefix"):
        Qwen3Embedder.from_pretrained("s3://corpus/models/rev", revision="v3", storage_options=opts)
