"""What an operator relies on: nothing committed is deleted unless asked, and --dry-run changes nothing."""

import json

from embedrank.cli import main

from .conftest import run_job


def write_jsonl(path, ids):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "text": f"text of {i}"}) + "\n" for i in ids))


def test_shards_gone_from_the_input_are_kept_unless_pruned(tmp_path, job_config):
    write_jsonl(tmp_path / "a" / "one.jsonl", ["a1", "a2"])
    write_jsonl(tmp_path / "a" / "two.jsonl", ["a3"])
    write_jsonl(tmp_path / "b" / "three.jsonl", ["b1"])
    out = tmp_path / "out"
    config = job_config(str(tmp_path / "a"), str(out))
    assert run_job(config).returncode == 0

    proc = run_job(config, "--input", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "kept       2 committed shards no longer in the input" in proc.stdout and "--prune" in proc.stdout
    manifest = json.loads((out / "_embedrank" / "manifest.json").read_text())
    assert manifest["rows"] == 4 and len(manifest["shards"]) == 3
    report = json.loads((out / "_embedrank" / "report.json").read_text())
    assert report["shards"]["kept_not_in_input"] == 2 and report["shards"]["removed_from_input"] == 0

    proc = run_job(config, "--input", str(tmp_path / "b"), "--prune")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "removed    2 committed shards" in proc.stdout
    manifest = json.loads((out / "_embedrank" / "manifest.json").read_text())
    assert manifest["rows"] == 1 and len(manifest["shards"]) == 1
    assert sorted(p.name for p in (out / "_embedrank" / "commits").iterdir()) == [f"{manifest['shards'][0]}.json"]


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path, job_config, capsys):
    write_jsonl(tmp_path / "in" / "one.jsonl", ["x1", "x2"])
    out = tmp_path / "out"
    code = main(["embed", "--config", str(job_config(str(tmp_path / "in"), str(out))), "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "embedrank embed --dry-run" in printed and "1 to embed, 0 already committed" in printed
    assert "(not loaded); nothing was written" in printed
    assert not out.exists()
    import ray

    assert not ray.is_initialized()
