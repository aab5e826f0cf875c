"""Quality of committed rankings against qrels (`--qrels`): one Ray task per file, only sums reach the driver.

Rerank evaluates its input order and its ranked output, retrieve its candidate lists; both go through
`evaluate`, which also says when the qrels judge queries that the rankings do not hold.
"""

from __future__ import annotations

from ..metrics import QualitySums, evaluate_file, read_qrels
from . import cluster


def evaluate(cfg, groups: dict[str, list[tuple[str, str, dict]]], log) -> dict:
    """{"qrels": uri, label: averages} for each group of (file uri, format, column names) rankings."""
    import ray

    cluster.init_ray(cfg)  # a run with nothing left to do has not started Ray yet
    qrels = read_qrels(cfg.qrels, cfg.storage)
    shared, task = ray.put(qrels), cluster.remote_task(evaluate_file)
    refs = {
        label: [task.remote(uri, shared, cfg.storage, fmt, **columns) for uri, fmt, columns in files]
        for label, files in groups.items()
    }
    sums = {label: sum(ray.get(r), QualitySums()) for label, r in refs.items()}
    found = max((s.queries for s in sums.values()), default=0)
    judged = sum(1 for judgements in qrels.values() if any(rel > 0 for rel in judgements.values()))
    if found == 0:
        log(f"embedrank: warning: the qrels {cfg.qrels} judge none of the ranked queries; check their query ids")
    elif found < judged:
        log(
            f"embedrank: warning: {found} of the {judged} queries judged in {cfg.qrels} are in the rankings; the "
            f"other {judged - found} are not evaluated (another query set, or ids that differ)"
        )
    return {"qrels": cfg.qrels, **{label: s.averages() for label, s in sums.items()}}
