"""Load a Qwen3 checkpoint straight onto its device, one tensor at a time.

`from_pretrained` without a `device_map` materialises the whole model in host memory and `.to(device)` then
copies it: an 8B model took 16 GB of host RAM per actor before it reached the GPU. transformers' own
`device_map` path needs `accelerate`, which embedrank does not depend on. Instead the network is built on its
device with uninitialised parameters (transformers' `no_init_weights`), and each safetensors shard is read
with `safe_open(..., device=...)`: every tensor goes from the memory-mapped file to the device and into its
parameter, so the host holds one tensor (at most one shard's pages) at a time, never the whole model.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from ..errors import CheckpointError


def _no_init_weights():
    """transformers' context that skips the random init (5.x: transformers.initialization; 4.x: modeling_utils)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def dtype_kwarg(dtype: torch.dtype) -> dict:
    """`from_pretrained`'s dtype keyword: transformers 5 renamed torch_dtype to dtype."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype" if major >= 5 else "torch_dtype": dtype}


def shard_files(path: Path) -> list[Path]:
    """The checkpoint's safetensors files: those the index names, else the single `model.safetensors`."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / name for name in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no .safetensors weights; embedrank loads safetensors checkpoints only")
    return files


def _target_name(key: str, names: set[str]) -> str | None:
    """The parameter a checkpoint key fills: a base model's keys have no `model.` prefix, a causal LM's have
    it, and either kind of checkpoint may be loaded as either kind of model."""
    for candidate in (key, f"model.{key}", key.removeprefix("model.")):
        if candidate in names:
            return candidate
    return None


@torch.no_grad()
def load_weights(model: torch.nn.Module, path: Path, device: torch.device) -> None:
    """Fill `model`'s parameters and persistent buffers from the shards at `path`, each tensor read onto
    `device` and cast there to the parameter's dtype."""
    from safetensors import safe_open

    targets = dict(model.named_parameters(remove_duplicate=False))
    targets.update(dict(model.named_buffers()))
    missing = set(model.state_dict())
    device_name = str(device) if device.type != "cuda" or device.index is not None else "cuda:0"
    for file in shard_files(path):
        with safe_open(str(file), framework="pt", device=device_name) as shard:
            for key in shard.keys():
                name = _target_name(key, missing | set(targets))
                if name is None:
                    continue  # e.g. a causal LM's lm_head when only the base model is wanted
                target = targets[name]
                tensor = shard.get_tensor(key)
                if tuple(tensor.shape) != tuple(target.shape):
                    raise CheckpointError(
                        f"{file.name}: {key} has shape {tuple(tensor.shape)}, the config gives "
                        f"{tuple(target.shape)}; the checkpoint and its config.json do not match"
                    )
                target.copy_(tensor)
                missing.discard(name)
                del tensor
    if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
        model.tie_weights()
        missing = {m for m in missing if not m.endswith("lm_head.weight")}
    if missing:
        raise CheckpointError(
            f"{path}: the checkpoint lacks {len(missing)} tensors the model needs (e.g. {sorted(missing)[0]}); "
            "point at a complete Qwen3 checkpoint"
        )


def load_qwen3_direct(path: Path, *, causal_lm: bool, device: torch.device, dtype: torch.dtype, attn: str):
    """Build the transformers Qwen3 network on `device` (no random init) and load its weights there."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    if config.model_type != "qwen3":
        raise ValueError(f"{path} is a {config.model_type!r} checkpoint; embedrank runs Qwen3 models only")
    cls = AutoModelForCausalLM if causal_lm else AutoModel
    with torch.device(device), _no_init_weights():
        model = cls.from_config(config, attn_implementation=attn, trust_remote_code=False, **dtype_kwarg(dtype))
    load_weights(model, path, device)
    return model.eval()
