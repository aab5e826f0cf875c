"""torch.compile of the Qwen3 decoder layers: `model.compile: auto | on | off`.

Each decoder layer is compiled on its own (regional compilation) with dynamic shapes: the 28-36 layers share
one code object, so the compiler traces and builds one graph that every layer reuses, in seconds rather than
the minutes a whole-model compile takes, and the token count is a symbol rather than a constant. Inside a
layer inductor fuses what eager transformers runs as separate kernels: the four RMSNorms with their fp32
upcasts, the rotary embedding's cat and element-wise ops, SiLU x up, the residual adds. The attention kernels
are one custom op with a fake implementation (attention.packed_attention), so the packed path compiles
without a graph break and without specialising on the lengths of a batch.

`auto` compiles on CUDA (with Triton, which inductor needs there), where those element-wise ops are
memory-bound and fusing them pays. On the CPU the
test-sized models are matrix-product bound: compiling the MLP and norms measured 1.04x eager on this project's
shared 2-core machine, and whole compiled layers between 0.33x and 2.75x (BENCHMARKS.md): not faster, and
not worth a compile of 10-25 s per actor, so `auto` stays eager there; `on` compiles on any device.
"""

from __future__ import annotations

import torch

COMPILE_MODES = ("auto", "on", "off")

# The shapes a warm-up runs: dynamic shapes still specialise a dimension of size 1 (a padded batch of one row),
# so a batch of one row and one of several are both compiled before the first real batch.
WARM_UP_LENGTHS = ((7, 5, 9), (11,))


def compile_enabled(mode: str | None, device: torch.device) -> bool:
    """Whether `mode` (auto | on | off; None = auto) compiles on `device`."""
    mode = mode or "auto"
    if mode not in COMPILE_MODES:
        raise ValueError(f"model.compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "auto":
        return torch.device(device).type == "cuda" and _triton_available()
    return mode == "on"


def _triton_available() -> bool:
    """Inductor's GPU kernels are Triton: without it `auto` stays eager rather than fail at the first batch."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:  # pragma: no cover - a torch without the helper
        return False
    return bool(has_triton())


def compile_layers(base_model) -> None:
    """Compile every decoder layer of a transformers Qwen3Model in place (lazily: the first call compiles)."""
    layers = getattr(base_model, "layers", None)
    if layers is None:
        raise TypeError(f"{type(base_model).__name__} has no decoder layers to compile")
    for layer in layers:
        layer.compile(dynamic=True)


def graphs_compiled() -> int:
    """Graphs dynamo has built in this process so far (first compiles and recompiles alike)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
