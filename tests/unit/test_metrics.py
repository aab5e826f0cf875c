"""Quality against qrels (embedrank/metrics.py): the metrics equal a hand computation on a tiny case; qrels
files in BEIR and TREC form; rankings read from candidate lists and from ranked pairs."""

import math

import pytest

from embedrank.errors import ConfigError
from embedrank.metrics import (
    EvaluatedReport,
    QualitySums,
    ndcg_at_k,
    parse_qrels,
    quality_lines,
    rankings_from_rows,
    recall_at_k,
    reciprocal_rank,
    score_rankings,
)
from embedrank.report import RunReport

QRELS = {
    "q1": {"d1": 2, "d3": 1, "d9": 1},  # d9 is never retrieved
    "q2": {"d5": 0},  # judged, nothing relevant: not averaged
    "q3": {"d2": 1},
}
RANKINGS = [("q1", ["d3", "d2", "d1"]), ("q2", ["d5"]), ("q3", ["d7", "d8"]), ("q4", ["d1"])]  # q4: not judged


def test_metrics_of_one_query_by_hand():
    ranked, judged = ["d3", "d2", "d1"], QRELS["q1"]
    # DCG@10 = 1/log2(2) + 0/log2(3) + 2/log2(4) = 1 + 0 + 1 = 2
    # IDCG@10 = 2/log2(2) + 1/log2(3) + 1/log2(4) = 2 + 0.63093 + 0.5 = 3.13093
    assert ndcg_at_k(ranked, judged) == pytest.approx(2 / 3.130930, abs=1e-6)  # 0.638788
    assert recall_at_k(ranked, judged, 10) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, judged, 1) == pytest.approx(1 / 3)
    assert reciprocal_rank(ranked, judged) == 1.0
    assert reciprocal_rank(["d0", "d1", "d3"], judged) == 0.5
    assert reciprocal_rank(["d0", "d2", "d1"], judged) == pytest.approx(1 / 3)  # d2 is not judged relevant
    assert reciprocal_rank(["x"] * 10 + ["d1"], judged) == 0.0  # beyond MRR@10


def test_averages_over_the_judged_queries_by_hand():
    averages = score_rankings(RANKINGS, QRELS).averages()
    # q1 and q3 count (q2 has no relevant document, q4 no judgement): q3 retrieved nothing relevant.
    assert averages == {
        "queries": 2,
        "ndcg@10": round(0.638788 / 2, 4),
        "mrr@10": 0.5,
        "recall@10": round((2 / 3) / 2, 4),
        "recall@3": round((2 / 3) / 2, 4),
    }


def test_graded_gains_follow_trec_eval():
    judged = {"a": 3, "b": 1}
    assert ndcg_at_k(["b", "a"], judged) == pytest.approx((1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3)))


def test_sums_add_up_across_files():
    first, second = score_rankings(RANKINGS[:1], QRELS), score_rankings(RANKINGS[1:], QRELS)
    assert (first + second).averages() == score_rankings(RANKINGS, QRELS).averages()
    assert QualitySums().averages()["queries"] == 0


def test_qrels_in_beir_and_trec_form():
    beir = ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td3\t1", "", "q3\td2\t1"]
    trec = ["q1 0 d1 2", "q1 0 d3 1", "q3 Q0 d2 1"]
    assert parse_qrels(beir, "beir.tsv") == parse_qrels(trec, "trec.txt") == {"q1": {"d1": 2, "d3": 1}, "q3": {"d2": 1}}
    with pytest.raises(ConfigError, match=r"qrels bad.tsv line 3: .* has 2 fields"):
        parse_qrels(["q1 d1 1", "q1 d2 0", "q1 d3"], "bad.tsv")
    with pytest.raises(ConfigError, match="line 2: relevance 'high' is not a number"):
        parse_qrels(["q1 d1 1", "q1 d2 high"], "bad.tsv")
    with pytest.raises(ConfigError, match="holds no judgements"):
        parse_qrels(["query-id corpus-id score"], "empty.tsv")


def test_rankings_from_candidate_lists_and_from_ranked_pairs():
    lists = [
        {"query_id": "q1", "candidates": [{"doc_id": "d3", "score": 0.9}, {"doc_id": "d1"}]},
        {"query_id": 7, "candidates": []},
    ]
    assert list(rankings_from_rows(lists)) == [("q1", ["d3", "d1"]), ("7", [])]
    pairs = [
        {"query_id": "q1", "doc_id": "d1", "rank": 2},
        {"query_id": "q1", "doc_id": "d3", "rank": 1},
        {"query_id": "q2", "doc_id": "d9", "rank": 1},
        {"query_id": None, "doc_id": "x", "rank": 1},
    ]
    assert list(rankings_from_rows(pairs, rank_column="rank")) == [("q1", ["d3", "d1"]), ("q2", ["d9"])]
    assert list(rankings_from_rows(pairs)) == [("q1", ["d1", "d3"]), ("q2", ["d9"])]  # input order


def test_the_report_carries_quality_when_asked():
    base = RunReport(output="out", model="m", job="rerank")
    report = EvaluatedReport.of(
        base,
        quality={
            "qrels": "q.tsv",
            "before_rerank": {"queries": 2, "ndcg@10": 0.25},
            "after_rerank": {"queries": 2, "ndcg@10": 0.5},
        },
    )
    assert report.to_dict()["quality"]["after_rerank"]["ndcg@10"] == 0.5
    assert report.to_dict()["rows"] == base.to_dict()["rows"]
    lines = report.summary().splitlines()
    assert lines[-3:] == quality_lines(report.quality)
    assert "after rerank" in lines[-1] and "ndcg@10 0.5000" in lines[-1]
    assert "quality" not in EvaluatedReport.of(base).to_dict()
