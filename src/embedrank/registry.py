"""Every job, declared once: its name, config class, Job class, command-line flags, whether it loads a model
and its sections in a combined config. The CLI, the Python API (`embedrank.run_<name>`), `embedrank run` and
`embedrank config` are all built from this table, so a new job is its package plus one entry here.

Job classes are named by import path and imported only when a job runs: the CLI refuses a bad config before
Ray or torch is imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from pydantic import create_model, model_validator

from .config import EmbedJobConfig, RayConfig, RerankJobConfig, RetrieveJobConfig, StorageConfig
from .errors import ConfigError
from .settings import Section, key, section


@dataclass(frozen=True)
class Flag:
    """A command-line flag that sets one config key (`--input X` = `--set input.uri=X`)."""

    flag: str
    key: str
    help: str
    boolean: bool = False  # a switch: present sets the key to true


@dataclass(frozen=True)
class JobSpec:
    name: str  # the subcommand, and embedrank.run_<name>
    help: str
    config: type[Section]
    job: str  # "module:Class" of its runtime.job.Job
    has_model: bool
    flags: tuple[Flag, ...]
    config_help: str
    sections: tuple[tuple[str, str], ...] = ()  # (combined config key, name in reports) in `embedrank run`

    def job_class(self):
        module, name = self.job.split(":")
        return getattr(importlib.import_module(module), name)


INPUT = Flag("--input", "input.uri", "input URI(s): directory, glob or file, local or s3://")
OUTPUT = Flag("--output", "output.uri", "output location, local or s3://")
MODEL = Flag("--model", "model.source", "local directory, hub id, s3:// prefix or builtin:tiny-random")
PRUNE = Flag("--prune", "output.prune", "remove committed shards whose input file is gone (kept by default)", True)
QRELS = "BEIR/TREC qrels file: also report nDCG@10, recall@k and MRR@10"

JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "embed",
            "embed a corpus of shards into committed Parquet vectors (Ray job)",
            EmbedJobConfig,
            "embedrank.embed.job:EmbedJob",
            True,
            (INPUT, OUTPUT, MODEL, PRUNE),
            "YAML job config (see configs/)",
            sections=(("embed_job", "embed"), ("query_embed_job", "embed-queries")),
        ),
        JobSpec(
            "nightly",
            "re-embed what changed into a new version and move OUTPUT/_CURRENT",
            EmbedJobConfig,
            "embedrank.embed.nightly:NightlyJob",
            True,
            (INPUT, Flag("--output", "output.uri", "output root holding the versions and _CURRENT"), MODEL),
            "YAML job config (see configs/nightly.yaml)",
            sections=(("nightly_job", "nightly"),),
        ),
        JobSpec(
            "retrieve",
            "each query's top k corpus documents by inner product of their vectors, as candidate lists for "
            "rerank (Ray job)",
            RetrieveJobConfig,
            "embedrank.retrieve.job:RetrieveJob",
            False,  # the vectors are made: nothing to load
            (
                INPUT,
                OUTPUT,
                Flag("--corpus", "corpus.uri", "the embed job's output of the corpus (its vectors)"),
                Flag("--qrels", "qrels", QRELS),
                PRUNE,
            ),
            "YAML job config (see configs/retrieve-local.yaml)",
            sections=(("retrieve_job", "retrieve"),),
        ),
        JobSpec(
            "rerank",
            "score candidate lists with Qwen3-Reranker into ranked Parquet (Ray job)",
            RerankJobConfig,
            "embedrank.rerank.job:RerankJob",
            True,
            (
                INPUT,
                OUTPUT,
                MODEL,
                Flag("--corpus", "corpus.uri", "corpus with the text of doc-id-only candidates"),
                Flag("--qrels", "qrels", QRELS + " before and after reranking"),
                PRUNE,
            ),
            "YAML job config (see configs/rerank-*.yaml)",
            sections=(("rerank_job", "rerank"),),
        ),
    )
}


def spec_of_section(name: str) -> JobSpec:
    """The job that a section of a combined config runs."""
    return next(spec for spec in JOBS.values() for section_name, _ in spec.sections if section_name == name)


def section_label(name: str) -> str:
    return next(label for spec in JOBS.values() for key_, label in spec.sections if key_ == name)


class _CombinedSections(Section):
    storage: StorageConfig = section(StorageConfig, "object storage, for every section")
    ray: RayConfig = section(RayConfig, "the Ray cluster, for every section")

    @classmethod
    def job_sections(cls) -> list[str]:
        return [name for name in cls.model_fields if name not in ("storage", "ray")]

    def sections(self) -> dict[str, Section]:
        """The job sections present, each with the top-level storage and ray."""
        shared = {"storage": self.storage, "ray": self.ray}
        return {
            name: getattr(self, name).model_copy(update=shared)
            for name in self.job_sections()
            if getattr(self, name) is not None
        }

    @model_validator(mode="after")
    def _some_job(self):
        if not self.sections():
            raise ConfigError(f"the config has no job section; add {', '.join(self.job_sections())}")
        return self


CombinedJobConfig = create_model(
    "CombinedJobConfig",
    __base__=_CombinedSections,
    __doc__="""Several jobs in one Ray job (`embedrank run`): each section is a whole job config, with its own
    workers. The top-level `ray` and `storage` sections apply to every section (and replace theirs). The jobs run
    at once, except that a job reading another one's output starts once that one has finished (combined.py).""",
    **{
        name: (spec.config | None, key(None, f"a whole {spec.name} job config ({label})"))
        for spec in JOBS.values()
        for name, label in spec.sections
    },
)
