"""`embedrank verify`: compare the fast path with the plain published recipe on a sample.

Users run it on their GPU with the real checkpoint before a big job. The sample is the built-in multilingual +
code corpus (documents) plus queries made from its short rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources

import numpy as np

# fp32 against fp32 must agree to rounding; bf16 against the fp32 recipe within bf16's resolution.
MIN_COSINE = {"fp32": 0.99999, "bf16": 0.999, "fp16": 0.999}


def load_sample_corpus() -> list[dict]:
    """The rows of the shipped sample corpus (id, title, text, lang, source)."""
    text = resources.files("embedrank").joinpath("data/sample_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sample_texts(n: int) -> tuple[list[str], list[str]]:
    """(documents, queries): `n` documents spread over the length range, and short rows as queries."""
    rows = load_sample_corpus()
    docs = [r["text"] for r in rows]
    order = np.argsort([len(d) for d in docs], kind="stable")
    picks = np.unique(np.linspace(0, len(docs) - 1, num=min(n, len(docs))).round().astype(int))
    documents = [docs[i] for i in order[picks]]
    queries = [docs[i] for i in order[: max(1, n // 4)]]
    return documents, queries


@dataclass
class VerifyResult:
    model: str
    device: str
    dtype: str
    backend: str
    rows: int
    min_cosine: float
    mean_cosine: float
    threshold: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def summary(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict}: {self.rows} rows, min cosine {self.min_cosine:.7f} (mean {self.mean_cosine:.7f}, "
            f"threshold {self.threshold}) - {self.model} on {self.device}, {self.dtype}, attention={self.backend}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a.astype(np.float64) * b, axis=1)


def verify(
    source,
    *,
    sample: int = 64,
    device=None,
    dtype=None,
    attention=None,
    max_length: int = 8192,
    revision: str | None = None,
    dim: int | None = None,
    log=None,
) -> VerifyResult:
    """`log(line)`: where progress goes (the recipe in fp32 is slow: minutes for the sample on a CPU)."""
    import torch

    from .models.checkpoints import resolve_checkpoint
    from .models.embedder import Qwen3Embedder
    from .models.forward import parse_dtype
    from .models.reference import load_reference_model, reference_embed
    from .models.tokenization import load_tokenizer

    progress = VerifyProgress(log)
    progress.say(f"loading {source} (fast path)")
    fast = Qwen3Embedder.from_pretrained(
        source, device=device, dtype=dtype, attention=attention, max_length=max_length, revision=revision
    )
    path = resolve_checkpoint(source, revision=revision)
    # The recipe in fp32 is the truth; on GPU with SDPA so that long rows fit in memory.
    ref_impl = "sdpa" if fast.device.type == "cuda" else "eager"
    progress.say(f"loading the published recipe in fp32 ({ref_impl} attention) on {fast.device}")
    ref_model = load_reference_model(path, device=fast.device, dtype=torch.float32, attn_implementation=ref_impl)
    tokenizer = load_tokenizer(path)
    documents, queries = sample_texts(sample)
    progress.say(f"fast path: {len(documents)} documents and {len(queries)} queries")
    got = np.concatenate([fast.embed(documents, dim=dim), fast.embed(queries, kind="query", dim=dim)])
    rows = [(text, "document") for text in documents] + [(text, "query") for text in queries]
    want = []
    for start in range(0, len(rows), RECIPE_STEP):  # in steps, to say how far it is (padding is masked per row)
        step = rows[start : start + RECIPE_STEP]
        for kind in ("document", "query"):
            texts = [text for text, k in step if k == kind]
            if texts:
                want.append(
                    reference_embed(
                        ref_model, tokenizer, texts, kind=kind, dim=dim, max_length=max_length, batch_size=4
                    )
                )
        progress.recipe_rows(start + len(step), len(rows))
    want = np.concatenate(want)
    cos = row_cosines(got, want)
    dtype_name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[parse_dtype(dtype, fast.device)]
    return VerifyResult(
        model=str(source),
        device=str(fast.device),
        dtype=dtype_name,
        backend=fast.backend,
        rows=len(cos),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        threshold=MIN_COSINE[dtype_name],
    )


RECIPE_STEP = 8  # rows of the recipe between progress lines: two of its batches of 4
PROGRESS_EVERY_S = 5.0


class VerifyProgress:
    """Lines saying what verify is doing, and how far the recipe is, at most every PROGRESS_EVERY_S."""

    def __init__(self, log):
        import time

        self.log, self.clock = log, time.monotonic
        self.started = self.last = self.clock()
        self.recipe_started: float | None = None

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log(f"verify: {text} [{self.clock() - self.started:.0f} s]")

    def recipe_rows(self, done: int, total: int) -> None:
        now = self.clock()
        if self.recipe_started is None:
            self.recipe_started = self.last
        if done < total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        rate = done / max(now - self.recipe_started, 1e-9)
        eta = f", about {(total - done) / rate:.0f} s left" if done < total else ""
        self.say(f"recipe {done}/{total} rows{eta}")
