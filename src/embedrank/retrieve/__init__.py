"""Candidates from the vectors: exact top-k by inner product of embedded queries against an embedded corpus.

`embedrank retrieve` (job.py) reads two embed outputs and commits candidate lists that `embedrank rerank` reads;
`retrieve_top_k` (processor.py) does the same for Ray Datasets in a user's own pipeline.
"""
