"""The job registry: every job is reachable from the CLI, the Python API and `embedrank run`, from one entry."""

import inspect
import os

import pytest

import embedrank
from embedrank import api
from embedrank.cli import build_parser, job_config_of
from embedrank.registry import JOBS, CombinedJobConfig, spec_of_section
from embedrank.runtime.job import Job


@pytest.mark.parametrize("name", list(JOBS))
def test_every_job_is_reachable_from_the_cli_the_python_api_and_run(name, tmp_path):
    spec = JOBS[name]
    job = spec.job_class()
    assert issubclass(job, Job) and job.NAME == name
    # The Python API: embedrank.run_<name> runs this job.
    runner = getattr(embedrank, f"run_{name}")
    assert runner is getattr(api, f"run_{name}") and list(inspect.signature(runner).parameters)[:2] == [
        "config",
        "overrides",
    ]
    # The CLI: a subcommand whose flags set keys of the job's config.
    config = tmp_path / "job.yaml"
    config.write_text("input: {uri: in}\noutput: {uri: out}\ncorpus: {uri: corpus}\n" if name == "retrieve" else "")
    argv = [name, "--config", str(config), "--input", "in", "--output", "out"]
    args = build_parser().parse_args(argv)
    assert args.func.__name__ == "_cmd_job" and args.command == name
    cfg = job_config_of(args)
    assert isinstance(cfg, spec.config) and cfg.output.uri == os.path.abspath("out")
    for flag in spec.flags:
        section, _, key = flag.key.rpartition(".")
        owner = getattr(cfg, section) if section else cfg
        assert key in type(owner).model_fields, flag
    # Whether it loads a model: a --model flag and a model section exactly when it does.
    assert spec.has_model == any(f.flag == "--model" for f in spec.flags) == ("model" in spec.config.model_fields)
    # `embedrank run`: a section of the combined config runs it.
    assert spec.sections, f"{name} has no section in `embedrank run`"
    for section_name, _ in spec.sections:
        assert section_name in CombinedJobConfig.model_fields and spec_of_section(section_name) is spec


@pytest.mark.parametrize("name", [*JOBS, "run"])
def test_config_describes_every_key_of_every_job(name, capsys):
    from embedrank.cli import main

    config = {"run": "configs/four-steps-local.yaml", "rerank": "configs/rerank-local.yaml"}.get(name)
    config = config or ("configs/retrieve-local.yaml" if name == "retrieve" else "configs/local.yaml")
    assert main(["config", "--config", config, "--job", name]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("  # " in line for line in lines if not line.rstrip().endswith(":")), lines
