"""Embed and rerank in one Ray job (`embedrank run`): two job graphs at once, each with its own actor pool.

Each job is driven from its own thread (a Ray Data graph is consumed by one iterator); the cluster's scheduler
shares the resources between the two pools. The first error stops the command after both threads end.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .config import CombinedJobConfig
from .embed.job import EmbedJob
from .report import RunReport
from .rerank.job import RerankJob
from .runtime.cluster import init_ray
from .runtime.job import run_job


def run_combined(cfg: CombinedJobConfig, log=print) -> dict[str, RunReport]:
    init_ray(cfg)
    jobs = {}
    if cfg.embed_job is not None:
        jobs["embed"] = lambda: run_job(EmbedJob(cfg.embed_job, lambda line: log(f"[embed] {line}")))
    if cfg.rerank_job is not None:
        jobs["rerank"] = lambda: run_job(RerankJob(cfg.rerank_job, lambda line: log(f"[rerank] {line}")))
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        raise errors[0]
    return {name: f.result() for name, f in futures.items()}
