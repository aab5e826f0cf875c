"""Import layering (DESIGN.md §1): who may import Ray, torch and s3fs, and no import cycles inside embedrank."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "embedrank"
ROOT = SRC.parents[1]
JOB_PACKAGES = ("embed", "rerank", "retrieve", "export")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    if not path.is_relative_to(SRC):
        return {
            n
            for node in nodes
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else [node.module])
        }
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            names.add(base)
            # `from . import prompts`: the imported name is a module of that package
            names.update(
                f"{base}.{alias.name}"
                for alias in node.names
                if (SRC.parent / f"{base}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
            )
    return names


def tops(names) -> set[str]:
    return {n.split(".")[0] for n in names}


def py_files(*parts):
    for part in parts:
        p = SRC / part
        yield from ([p] if p.suffix == ".py" else sorted(p.rglob("*.py")))


ALL = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", list(py_files("models")), ids=str)
def test_models_never_import_ray_s3fs_or_the_runtime(path):
    names = imports(path)
    assert not tops(names) & {"ray", "s3fs"}, f"{path.name} imports {names}"
    assert not {
        n
        for n in names
        if n.startswith(
            ("embedrank.runtime", "embedrank.embed", "embedrank.rerank", "embedrank.io", "embedrank.testing")
        )
    }, path


@pytest.mark.parametrize(
    "path", list(py_files("io", "runtime", "schema.py", "errors.py", "report.py", "config.py", "templates.py")), ids=str
)
def test_io_and_runtime_never_import_torch_at_module_level(path):
    assert not tops(imports(path, top_level_only=True)) & {"torch", "transformers"}, path


def test_batching_is_pure():
    assert imports(SRC / "models" / "batching.py") <= {"__future__", "collections.abc", "numpy"}


def test_the_top_k_kernel_is_pure():
    assert imports(SRC / "retrieve" / "topk.py") <= {"__future__", "dataclasses", "numpy", "torch"}


def test_metrics_are_pure_of_ray_and_torch():
    assert not tops(imports(SRC / "metrics.py")) & {"ray", "torch", "transformers"}


@pytest.mark.parametrize("name", ["job.py", "vectors.py", "candidates.py", "stages.py", "processor.py"])
def test_retrieve_drivers_never_import_torch_at_module_level(name):
    """The driver plans and commits without torch: only the scoring tasks load it (retrieve/topk.py)."""
    names = imports(SRC / "retrieve" / name, top_level_only=True)
    assert not tops(names) & {"torch"} and "embedrank.retrieve.topk" not in names, name


def ray_allowed(path: Path) -> bool:
    rel = path.relative_to(SRC).parts
    return rel[0] in ("runtime", "data", *JOB_PACKAGES) or rel == ("cli.py",)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_runtime_and_job_packages_import_ray(path):
    if not ray_allowed(path):
        assert "ray" not in tops(imports(path)), f"{path} imports ray"


@pytest.mark.parametrize("package", JOB_PACKAGES)
def test_jobs_never_import_each_other(package):
    others = [p for p in JOB_PACKAGES if p != package]
    for path in py_files(package):
        bad = {n for n in imports(path) for o in others if n.startswith(f"embedrank.{o}")}
        assert not bad, f"{path} imports {bad}"


def test_fault_hooks_are_reached_only_from_the_runtime():
    for path in ALL:
        if any(n.startswith("embedrank.testing") for n in imports(path)):
            assert path.relative_to(SRC).parts[0] in ("runtime", "testing"), path


def test_no_import_cycles():
    graph = {module_name(p): {n for n in imports(p) if n.startswith("embedrank.")} for p in ALL}
    graph = {m: {n for n in deps if n in graph and n != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in graph[node]:
            # a package's __init__ is loaded before its modules: that edge is not a cycle
            if node.startswith(dep + "."):
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep) :] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_jobs_entrypoints_are_thin():
    for path in (ROOT / "jobs").glob("*.py"):
        assert imports(path) <= {"sys", "embedrank.cli"}, path
