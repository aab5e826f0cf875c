"""Import layering (DESIGN.md §1): the model core never sees Ray or datasets; io never sees torch."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "embedrank"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(*parts):
    for part in parts:
        p = SRC / part
        yield from ([p] if p.suffix == ".py" else sorted(p.rglob("*.py")))


RAY_ALLOWED = {"stages.py", "pipeline.py", "rerank_pipeline.py", "cli.py"}


@pytest.mark.parametrize("path", list(files("batching.py", "prompts.py", "attention.py", "models")), ids=str)
def test_core_never_imports_ray_s3fs_or_datasets(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] in {"ray", "s3fs"} or m.startswith("pyarrow.dataset")}
    assert not bad, f"{path.name} imports {bad}"


def test_batching_is_pure():
    assert imported_modules(SRC / "batching.py") <= {"__future__", "collections.abc", "numpy"}


@pytest.mark.parametrize("path", [p for p in SRC.rglob("*.py")], ids=lambda p: str(p.relative_to(SRC)))
def test_only_stages_pipeline_and_cli_import_ray(path):
    if path.name in RAY_ALLOWED:
        return
    assert not {m for m in imported_modules(path) if m.split(".")[0] == "ray"}, f"{path} imports ray"


def test_io_never_imports_torch():
    for path in files("io"):
        assert not {m for m in imported_modules(path) if m.split(".")[0] == "torch"}, f"{path} imports torch"
