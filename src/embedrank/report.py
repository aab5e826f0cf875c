"""Run metrics: accumulated from the writer's per-file metadata, written as _embedrank/report.json, printed for
people."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

BAD_SHARDS_SHOWN = 5  # bad files named in the summary; the report lists every one


@dataclass
class RunReport:
    output: str
    model: str
    run_id: str = ""
    job: str = "embed"  # embed | rerank: rows are texts or (query, document) pairs
    shards_total: int = 0
    shards_skipped: int = 0  # committed by an earlier run with the same settings
    shards_committed: int = 0
    shards_removed: int = 0  # committed earlier, gone from the input, removed (prune)
    shards_kept_not_in_input: list = field(default_factory=list)  # committed earlier, gone from the input, kept
    bad_shards: list = field(default_factory=list)  # {"shard": uri, "error": line}: skipped (input.on_bad_shard)
    rows_read: int = 0
    rows_embedded: int = 0
    vectors_written: int = 0
    rows_rejected: int = 0
    rejected_by_reason: Counter = field(default_factory=Counter)
    rows_truncated: int = 0
    chunk_rows: int = 0  # vectors with chunk_index > 0
    tokens: int = 0
    computed_tokens: int = 0
    actors: dict = field(default_factory=dict)  # actor -> [busy seconds, tokens]
    started: float = field(default_factory=time.time)
    wall_s: float = 0.0
    stream_s: float = 0.0  # from the first to the last row through Ray Data (start-up excluded)
    builtin_model: bool = False
    below_top_k: int = 0  # rerank: scored pairs not kept by output.top_k
    changes: Counter = field(default_factory=Counter)  # documents: new | changed | carried
    deleted: int = 0  # documents of the previous version gone from the input (nightly)
    model_rows: int = 0  # rows (texts or chunks) that went through the model
    nightly: dict = field(default_factory=dict)  # version, previous version, pointer moved...
    int8_range: dict | None = None  # output.embedding_dtype int8: the output's range (embed/calibrate.py)

    def add_bad_shard(self, uri: str, error: str) -> None:
        """A file that could not be read to its end, skipped under input.on_bad_shard: skip (never committed)."""
        self.bad_shards.append({"shard": uri, "error": error})

    def add_file(self, meta: dict) -> None:
        """Account one committed file's decoded metadata row (schema.FILE_META_SCHEMA, decode_file_meta)."""
        if meta["kind"] == "data":
            self.rows_embedded += meta["rows"]
            self.vectors_written += sum(end - start for start, end in meta["ranges"])
            self.tokens += meta["tokens"]
            self.computed_tokens += meta["computed_tokens"]
            self.rows_truncated += meta["truncated"]
            self.chunk_rows += meta["chunked_rows"]
            self.changes.update(meta["changes"])
            self.model_rows += meta["model_rows"]
            for actor, (busy, tokens) in meta["actors"].items():
                entry = self.actors.setdefault(actor, [0.0, 0])
                entry[0] += busy
                entry[1] += tokens
        elif meta["kind"] == "rejected":
            self.rows_rejected += meta["rows"]
            self.rejected_by_reason.update(meta["reasons"])
        elif meta["kind"] == "end":
            self.rows_read += meta["rows"]

    @property
    def outputs(self) -> list[str]:
        return [self.output]

    @property
    def done_word(self) -> str:
        return {"rerank": "scored", "nightly": "written"}.get(self.job, "embedded")

    @property
    def padding_efficiency(self) -> float:
        return self.tokens / self.computed_tokens if self.computed_tokens else 1.0

    def finish(self) -> RunReport:
        self.wall_s = time.time() - self.started
        return self

    def to_dict(self) -> dict:
        tokens_per_s = self.tokens / self.wall_s if self.wall_s else 0.0
        return {
            "job": self.job,
            "output": self.output,
            "model": self.model,
            "run_id": self.run_id,
            "builtin_model": self.builtin_model,
            "shards": {
                "total": self.shards_total,
                "skipped_already_committed": self.shards_skipped,
                "committed": self.shards_committed,
                "removed_from_input": self.shards_removed,
                "kept_not_in_input": len(self.shards_kept_not_in_input),
                "bad_skipped": len(self.bad_shards),
            },
            "bad_shards": self.bad_shards,
            "rows": {
                "read": self.rows_read,
                self.done_word: self.rows_embedded,
                "rejected": self.rows_rejected,
                "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
                "truncated": self.rows_truncated,
                "extra_chunks": self.chunk_rows,
                **({"below_top_k": self.below_top_k} if self.job == "rerank" else {}),
            },
            "vectors_written": self.vectors_written,
            **({"int8_range": self.int8_range} if self.int8_range else {}),
            "rows_through_model": self.model_rows,
            **(
                {
                    "nightly": {
                        **self.nightly,
                        "new": self.changes.get("new", 0),
                        "changed": self.changes.get("changed", 0),
                        "carried": self.changes.get("carried", 0),
                        "embedded": self.changes.get("new", 0) + self.changes.get("changed", 0),
                        "deleted": self.deleted,
                    }
                }
                if self.job == "nightly"
                else {}
            ),
            "tokens": self.tokens,
            "computed_tokens": self.computed_tokens,
            "padding_efficiency": round(self.padding_efficiency, 4),
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "stream_s": round(self.stream_s, 2),
            "stream_tokens_per_s": round(self.tokens / self.stream_s, 1) if self.stream_s else 0.0,
            "tokens_per_s_per_actor": {a: round(t / b, 1) if b else 0.0 for a, (b, t) in sorted(self.actors.items())},
        }

    def summary(self) -> str:
        d = self.to_dict()
        rows = d["rows"]
        reasons = ", ".join(f"{k} {v}" for k, v in rows["rejected_by_reason"].items()) or "none"
        unit = "pairs" if self.job == "rerank" else "rows"
        lines = [
            f"embedrank {self.job}: {d['output']}",
            f"  shards     {self.shards_total} ({self.shards_committed} committed now, "
            f"{self.shards_skipped} already committed)",
            f"  rows       read {rows['read']}; {unit} {self.done_word} {rows[self.done_word]}, "
            f"rejected {rows['rejected']} ({reasons})",
            f"  long docs  truncated {rows['truncated']}, extra chunks {rows['extra_chunks']}"
            + (f"; below top_k {self.below_top_k}" if self.job == "rerank" else ""),
            f"  tokens     {self.tokens} (padding efficiency {self.padding_efficiency:.3f})",
            f"  time       {self.wall_s:.1f} s, {d['tokens_per_s']:.0f} tokens/s, "
            f"{self.rows_embedded / self.wall_s if self.wall_s else 0:.0f} {unit}/s overall",
        ]
        if self.shards_kept_not_in_input:
            lines.append(
                f"  kept       {len(self.shards_kept_not_in_input)} committed shards no longer in the input "
                f"(e.g. {self.shards_kept_not_in_input[0]}); --prune removes them"
            )
        if self.bad_shards:
            lines.append(
                f"  bad        {len(self.bad_shards)} shards skipped, not committed (input.on_bad_shard: "
                "skip); fix them and rerun:"
            )
            shown = BAD_SHARDS_SHOWN if len(self.bad_shards) > BAD_SHARDS_SHOWN + 1 else len(self.bad_shards)
            lines += [f"             {bad['error']}" for bad in self.bad_shards[:shown]]
            if len(self.bad_shards) > shown:
                lines.append(f"             and {len(self.bad_shards) - shown} more: see bad_shards in the report")
        if self.shards_removed:
            lines.append(f"  removed    {self.shards_removed} committed shards no longer in the input (prune)")
        if self.job == "nightly":
            n = d["nightly"]
            lines.append(
                f"  nightly    embedded {n['embedded']} (new {n['new']}, changed {n['changed']}), carried "
                f"{n['carried']}, deleted {n['deleted']}; {n.get('outcome', '')}"
            )
        for actor, tps in d["tokens_per_s_per_actor"].items():
            lines.append(f"  actor      {actor}: {tps:.0f} tokens/s while busy")
        if (
            self.job != "nightly"
            and self.shards_committed == 0
            and self.shards_total
            and not self.rows_read
            and not self.bad_shards
        ):
            lines.append(
                f"  nothing to {self.job}: every shard was already committed with these settings "
                "(_embedrank/report.json keeps the figures of the run that did the work)"
            )
        return "\n".join(lines)
