"""Benchmark corpora: real text from the sample corpus, cut at lognormal lengths (skewed like real corpora)."""

from __future__ import annotations

import numpy as np

from embedrank.verify import load_sample_corpus


def lognormal_corpus(tokenizer, rows: int, median: int, cap: int, seed: int = 0) -> list[str]:
    """Texts cut from the sample corpus's token stream at lognormal lengths (real text, skewed lengths)."""
    stream = []
    for row in load_sample_corpus():
        stream.extend(tokenizer(row["text"], add_special_tokens=False)["input_ids"])
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median), 1.0, rows).astype(int), 3, cap - 1)
    texts, pos = [], 0
    for n in lengths:
        if pos + n > len(stream):
            pos = 0
        texts.append(tokenizer.decode(stream[pos : pos + n]))
        pos += n
    return texts
