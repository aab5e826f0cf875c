from embedrank.models import prompts


def test_query_template_has_no_space_after_query():
    assert prompts.embedding_query("what is rope?") == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is rope?"
    )
    assert prompts.embedding_text("doc", "document") == "doc"
    assert prompts.embedding_text("q", "query", "Find code") == "Instruct: Find code\nQuery:q"


def test_reranker_template_pieces():
    assert prompts.RERANK_PREFIX.startswith("<|im_start|>system\nJudge whether the Document")
    assert prompts.RERANK_SUFFIX == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert prompts.rerank_body("q", "d", "I") == "<Instruct>: I\n<Query>: q\n<Document>: d"
