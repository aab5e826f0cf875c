"""Random-weight Qwen3 checkpoints with the real Qwen tokenizer, built without a network.

The real Qwen3-Embedding / Qwen3-Reranker checkpoints come from the Hugging Face hub or a local/S3 path at
run time. Where none can be fetched (CI, an air-gapped laptop) the tests, the benchmarks and the README's
local default use a checkpoint built here: the Qwen BPE ranks shipped in dashscope's wheel turned into a
`tokenizers` tokenizer with Qwen's split pattern and special tokens, and a tiny `Qwen3Config` initialised
from a fixed seed. Its vectors prove plumbing and numerical parity, never retrieval quality.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

ENDOFTEXT_ID = 151643
# Qwen2/3's pre-tokenizer pattern: unlike cl100k it splits digits one by one.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen's added tokens from id 151643 on, in order; the boolean says whether Qwen marks it special.
QWEN_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
VOCAB_SIZE = 151669

# The shape the CPU tests and benchmarks use (issue: 4 layers, hidden 256), GQA like the real models.
TINY_SHAPE = dict(
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
)


def default_cache_dir() -> Path:
    """Where built checkpoints are kept between runs (EMBEDRANK_CACHE or ~/.cache/embedrank)."""
    root = os.environ.get("EMBEDRANK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "embedrank")
    return Path(root)


def _qwen_tiktoken_path() -> Path:
    # Located without importing dashscope: only its data file is needed, not its client dependencies.
    spec = importlib.util.find_spec("dashscope")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "building the offline Qwen tokenizer needs the 'dashscope' package (it ships qwen.tiktoken): "
            "pip install 'embedrank[offline]'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    if not path.is_file():  # pragma: no cover
        raise RuntimeError(f"{path} is missing from the installed dashscope wheel; reinstall dashscope")
    return path


def load_bpe_ranks(path: Path) -> dict[bytes, int]:
    """Read a .tiktoken file: one `base64(token) rank` pair per line."""
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def build_qwen_tokenizer(append_endoftext: bool):
    """The Qwen2/3 BPE tokenizer as a `PreTrainedTokenizerFast`.

    append_endoftext=True mirrors the current Qwen3-Embedding tokenizer, whose post-processor appends
    `<|endoftext|>`; False mirrors older copies and the reranker's tokenizer, which append nothing.
    """
    from tokenizers import AddedToken, normalizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _Converter(TikTokenConverter):
        # transformers reads the file through the tiktoken package; the format is simple enough to read here.
        load_tiktoken_bpe = staticmethod(lambda path: load_bpe_ranks(Path(path)))

    converter = _Converter(vocab_file=str(_qwen_tiktoken_path()), pattern=QWEN_SPLIT_PATTERN)
    backend = converter.converted()
    backend.normalizer = normalizers.NFC()
    backend.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in QWEN_ADDED_TOKENS])
    added = {t: ENDOFTEXT_ID + i for i, (t, _) in enumerate(QWEN_ADDED_TOKENS)}
    for token, expected in added.items():
        if backend.token_to_id(token) != expected:  # pragma: no cover - guards against a changed rank file
            raise RuntimeError(f"{token} got id {backend.token_to_id(token)}, expected {expected}")
    if append_endoftext:
        backend.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>",
            pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", ENDOFTEXT_ID)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def _tiny_config(kind: str, shape: dict):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=VOCAB_SIZE,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=(kind == "reranker"),
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=ENDOFTEXT_ID + 2,
        pad_token_id=ENDOFTEXT_ID,
        **shape,
    )


def build_tiny_checkpoint(
    out_dir: str | os.PathLike,
    *,
    kind: str = "embedding",
    append_endoftext: bool = True,
    seed: int = 0,
    shape: dict | None = None,
) -> Path:
    """Write a random-weight Qwen3 checkpoint (safetensors + tokenizer) into `out_dir`.

    kind="embedding" saves a `Qwen3Model` as Qwen3-Embedding does; kind="reranker" a `Qwen3ForCausalLM`.
    """
    import torch
    from transformers import Qwen3ForCausalLM, Qwen3Model

    if kind not in ("embedding", "reranker"):
        raise ValueError(f"kind must be 'embedding' or 'reranker', got {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = _tiny_config(kind, dict(shape or TINY_SHAPE))
    torch.manual_seed(seed)
    model_cls = Qwen3Model if kind == "embedding" else Qwen3ForCausalLM
    model = model_cls(config).eval()
    with torch.no_grad():
        # Random init draws from N(0, 0.02); widen it so that layers differ visibly from identity and
        # parity tests are not passed by a near-constant network.
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(out, safe_serialization=True)
    build_qwen_tokenizer(append_endoftext).save_pretrained(out)
    return out


def _fingerprint(**parts) -> str:
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def cached_tiny_checkpoint(
    *,
    kind: str = "embedding",
    append_endoftext: bool = True,
    seed: int = 0,
    shape: dict | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Build a tiny checkpoint once and reuse it (building the BPE merges takes tens of seconds)."""
    shape = dict(shape or TINY_SHAPE)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "tiny-models"
    key = _fingerprint(kind=kind, eot=append_endoftext, seed=seed, shape=shape, v=2)
    target = root / f"qwen3-{kind}-{key}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so that a killed build never leaves a half checkpoint behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        build_tiny_checkpoint(staging, kind=kind, append_endoftext=append_endoftext, seed=seed, shape=shape)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
