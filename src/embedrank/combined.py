"""Several jobs in one Ray job (`embedrank run`): embed, embed queries, retrieve and rerank sections of one config.

Each job is driven from its own thread (a Ray Data graph is consumed by one iterator); the cluster's scheduler
shares the resources between their workers. Jobs run at once, except that a job reading another one's output
waits for it: retrieve reads the two embed outputs, rerank may read retrieve's candidates. So
`embed corpus -> embed queries -> retrieve -> rerank` is one config, and embed beside an unrelated rerank
still runs both graphs together. A job whose input failed does not run; the first error stops the command
after every thread has ended.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from .errors import ConfigError
from .io import storage
from .registry import CombinedJobConfig, section_label, spec_of_section
from .report import RunReport
from .runtime.cluster import init_ray, shutdown_ray
from .runtime.job import run_job


def inputs_of(cfg) -> list[str]:
    """Every location a job reads: its input and its corpus (rerank: texts; retrieve: vectors)."""
    uris = []
    for section in ("input", "corpus"):
        uri = getattr(getattr(cfg, section, None), "uri", None) or []
        uris += [uri] if isinstance(uri, str) else list(uri)
    return uris


def reads_output_of(reader, writer, storage_config) -> bool:
    """Whether `reader` reads at, below or above `writer`'s output location."""

    def place(uri: str) -> str:
        fs, path = storage.filesystem(uri, storage_config)
        return storage.to_uri(fs, path).rstrip("/")

    out = place(writer.output.uri)
    return any(p == out or p.startswith(out + "/") or out.startswith(p + "/") for p in map(place, inputs_of(reader)))


def run_order(sections: dict, storage_config) -> dict[str, list[str]]:
    """Section -> the sections it waits for, in an order where each comes after those (a cycle is refused)."""
    waits = {
        name: [
            other
            for other in sections
            if other != name and reads_output_of(sections[name], sections[other], storage_config)
        ]
        for name in sections
    }
    ordered: dict[str, list[str]] = {}
    while len(ordered) < len(waits):
        ready = [name for name in waits if name not in ordered and all(w in ordered for w in waits[name])]
        if not ready:
            stuck = sorted(set(waits) - set(ordered))
            raise ConfigError(
                f"the sections {', '.join(stuck)} read each other's outputs; point their input.uri "
                "and corpus.uri at outputs of the other sections in one direction only"
            )
        for name in ready:
            ordered[name] = waits[name]
    return ordered


def run_combined(cfg: CombinedJobConfig, log=print) -> dict[str, RunReport]:
    sections = cfg.sections()
    order = run_order(sections, cfg.storage)
    init_ray(cfg)

    def run(name: str, inputs: list[Future]) -> RunReport:
        label, job_class = section_label(name), spec_of_section(name).job_class()
        for upstream, future in zip(order[name], inputs):
            if future.exception() is not None:
                raise RuntimeError(f"{label} did not run: {section_label(upstream)}, whose output it reads, failed")
        return run_job(job_class(sections[name], lambda line: log(f"[{label}] {line}")))

    futures: dict[str, Future] = {}
    pool = ThreadPoolExecutor(max_workers=len(order))
    try:
        for name, waits in order.items():  # submitted after what they wait for: no thread waits on a later one
            futures[name] = pool.submit(run, name, [futures[w] for w in waits])
        errors = [f.exception() for f in futures.values() if f.exception() is not None]
    except BaseException:
        # Ctrl-C reaches this thread only: the jobs' threads wait on Ray, and a Ray shut down ends their waits
        # (each gives its lock back on the way out) instead of running the jobs to their end.
        for future in futures.values():
            future.cancel()
        shutdown_ray()
        raise
    finally:
        pool.shutdown(wait=True)
    if errors:
        raise errors[0]
    return {section_label(name): f.result() for name, f in futures.items()}
