"""Ranking quality against relevance judgements (qrels): nDCG@10, recall@k and MRR@10.

The definitions are trec_eval's, which BEIR reports through pytrec_eval:
- nDCG@10: sum of rel_i / log2(i + 1) over the first 10 places, divided by the same sum over the judged
  documents in their best order (gain = the graded relevance, as trec_eval's ndcg_cut).
- recall@k: relevant documents among the first k, divided by the query's relevant documents.
- MRR@10: 1 / the place of the first relevant document among the first 10 (0 when there is none).
A document is relevant when its relevance is > 0. A query counts when the qrels hold a relevant document for
it and the ranking holds the query; the averages are over those queries.

qrels files: BEIR's TSV (`query-id corpus-id score`, with that header line), TREC's four columns
(`query_id iteration doc_id relevance`), or three columns (`query_id doc_id relevance`), separated by tabs or
spaces. Everything here is pure but `read_qrels` and `evaluate_file`, which read one file each.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import ConfigError
from .io import storage
from .io.sources import iter_rows, list_shards
from .report import RunReport

NDCG_AT = MRR_AT = 10
Qrels = dict[str, dict[str, int]]  # query id -> doc id -> relevance


# -- qrels -------------------------------------------------------------------------------------------------
def parse_qrels(lines: Iterable[str], source: str) -> Qrels:
    """qrels lines -> {query_id: {doc_id: relevance}}; a line that fits no format is a ConfigError naming it."""
    qrels: Qrels = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split("\t") if "\t" in text else text.split()
        if len(fields) == 4:  # TREC: query_id iteration doc_id relevance
            fields = [fields[0], fields[2], fields[3]]
        if len(fields) != 3:
            raise ConfigError(
                f"qrels {source} line {number}: {text[:80]!r} has {len(fields)} fields; expected "
                "query_id doc_id relevance (BEIR TSV) or query_id 0 doc_id relevance (TREC)"
            )
        qid, did, rel = (f.strip() for f in fields)
        try:
            relevance = int(float(rel))
        except ValueError:
            if number == 1 or not qrels:  # a header line (BEIR: query-id corpus-id score)
                continue
            raise ConfigError(
                f"qrels {source} line {number}: relevance {rel!r} is not a number; fix the line"
            ) from None
        qrels.setdefault(qid, {})[did] = relevance
    if not qrels:
        raise ConfigError(f"qrels {source} holds no judgements; point --qrels at a BEIR or TREC qrels file")
    return qrels


def read_qrels(uri: str, storage_config=None) -> Qrels:
    """A qrels file, local or s3:// (plain, .gz or .zst by its name)."""
    fs, path = storage.filesystem(uri, storage_config)
    try:
        with fs.open(path, "rt", encoding="utf-8", compression="infer") as f:
            return parse_qrels(f, uri)
    except FileNotFoundError:
        raise ConfigError(f"qrels {uri} does not exist; check --qrels (the qrels key)") from None
    except (PermissionError, ConnectionError) as exc:
        raise storage.explain(exc, uri) from None


# -- one query ---------------------------------------------------------------------------------------------
def ndcg_at_k(ranked: list[str], judged: dict[str, int], k: int = NDCG_AT) -> float:
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    best = sum(rel / math.log2(i + 2) for i, rel in enumerate(ideal))
    if best == 0:
        return 0.0
    got = sum(max(judged.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    return got / best


def recall_at_k(ranked: list[str], judged: dict[str, int], k: int) -> float:
    relevant = {doc for doc, rel in judged.items() if rel > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def reciprocal_rank(ranked: list[str], judged: dict[str, int], k: int = MRR_AT) -> float:
    for place, doc in enumerate(ranked[:k], 1):
        if judged.get(doc, 0) > 0:
            return 1.0 / place
    return 0.0


# -- many queries --------------------------------------------------------------------------------------------
@dataclass
class QualitySums:
    """Sums of the per-query metrics over the judged queries of some rankings (added up across files)."""

    queries: int = 0  # judged queries found in the rankings
    ndcg: float = 0.0
    mrr: float = 0.0
    recall_10: float = 0.0
    recall_all: float = 0.0  # recall of the whole list
    depth: int = 0  # the longest list seen: recall_all is recall@depth

    def add(self, ranked: list[str], judged: dict[str, int]) -> None:
        self.queries += 1
        self.ndcg += ndcg_at_k(ranked, judged)
        self.mrr += reciprocal_rank(ranked, judged)
        self.recall_10 += recall_at_k(ranked, judged, 10)
        self.recall_all += recall_at_k(ranked, judged, len(ranked))
        self.depth = max(self.depth, len(ranked))

    def __add__(self, other: QualitySums) -> QualitySums:
        return QualitySums(
            self.queries + other.queries,
            self.ndcg + other.ndcg,
            self.mrr + other.mrr,
            self.recall_10 + other.recall_10,
            self.recall_all + other.recall_all,
            max(self.depth, other.depth),
        )

    def averages(self) -> dict:
        n = max(self.queries, 1)
        return {
            "queries": self.queries,
            f"ndcg@{NDCG_AT}": round(self.ndcg / n, 4),
            f"mrr@{MRR_AT}": round(self.mrr / n, 4),
            "recall@10": round(self.recall_10 / n, 4),
            f"recall@{self.depth}": round(self.recall_all / n, 4),
        }


def score_rankings(rankings: Iterable[tuple[str, list[str]]], qrels: Qrels) -> QualitySums:
    """(query id, doc ids best first) pairs -> the sums over those with a relevant judged document."""
    sums = QualitySums()
    for qid, ranked in rankings:
        judged = qrels.get(qid)
        if judged and any(rel > 0 for rel in judged.values()):
            sums.add(ranked, judged)
    return sums


def rankings_from_rows(
    rows: Iterable[dict],
    query_id_column: str = "query_id",
    doc_id_column: str = "doc_id",
    candidates_column: str = "candidates",
    rank_column: str | None = None,
) -> Iterator[tuple[str, list[str]]]:
    """Rows of a ranking -> (query id, doc ids best first).

    Candidate lists (one row per query with a `candidates` list of {doc_id, ...}) rank in list order; flat rows
    (one per pair) rank by `rank_column` when given, else in the order they come. Rows without a query id are
    skipped.
    """
    flat: dict[str, list[tuple[float, int, str]]] = {}
    for n, row in enumerate(rows):
        if row is None or row.get(query_id_column) is None:
            continue
        qid = str(row[query_id_column])
        if candidates_column in row:
            candidates = row.get(candidates_column) or []
            yield qid, [str(c["doc_id"]) for c in candidates if isinstance(c, dict) and c.get("doc_id") is not None]
        elif row.get(doc_id_column) is not None:
            order = row.get(rank_column) if rank_column else None
            flat.setdefault(qid, []).append((n if order is None else order, n, str(row[doc_id_column])))
    for qid, items in flat.items():
        yield qid, [doc for _, _, doc in sorted(items)]


def evaluate_file(uri: str, qrels: Qrels, storage_config=None, fmt: str = "auto", **columns) -> QualitySums:
    """The quality sums of one file of rankings (Parquet or JSON Lines); `columns` as rankings_from_rows."""
    (shard,) = list_shards(uri, fmt=fmt, storage_config=storage_config)

    def rows():
        for raw in iter_rows(shard, 4096, None, storage_config):
            yield from raw.rows

    return score_rankings(rankings_from_rows(rows(), **columns), qrels)


# -- in a run's report -------------------------------------------------------------------------------------
def quality_lines(quality: dict) -> list[str]:
    """The summary lines of a report's `quality` section: one line per ranking evaluated."""
    if not quality:
        return []
    lines = [f"  quality    against {quality['qrels']}"]
    for name, scores in quality.items():
        if name == "qrels":
            continue
        figures = "  ".join(f"{key} {value:.4f}" for key, value in scores.items() if key != "queries")
        lines.append(f"             {name.replace('_', ' '):<14} {figures}  ({scores['queries']} judged queries)")
    return lines


@dataclass
class EvaluatedReport(RunReport):
    """A run report with the quality of its rankings against qrels (section `quality`), when it was asked for."""

    quality: dict = field(default_factory=dict)  # "qrels": uri, then ranking name -> QualitySums.averages()

    @classmethod
    def of(cls, report: RunReport, **extra):
        """The same report as this class (a job's new_report builds the base class)."""
        return cls(**{f.name: getattr(report, f.name) for f in dataclasses.fields(report)}, **extra)

    def to_dict(self) -> dict:
        return {**super().to_dict(), **({"quality": self.quality} if self.quality else {})}

    def summary(self) -> str:
        return "\n".join([super().summary(), *quality_lines(self.quality)])
