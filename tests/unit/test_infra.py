"""Everything shipped under infra/ and configs/ parses, points at files that exist, and keeps secure defaults.

Every ray.io/v1 document (RayCluster, RayJob, RayCronJob) is checked against KubeRay v1.6.2's CRD schema
(strict: unknown fields are errors) and the operator's own validation rules (tests/unit/kuberay.py, from
../shared/kuberay); the Kubernetes core objects against the API's schemas (kubernetes-validate, strict). The
jobs read their configs from the ConfigMap that the README's one command creates; the images are checked in
tests/unit/test_images.py.
"""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from embedrank.config import EmbedJobConfig, RerankJobConfig, RetrieveJobConfig, load_config
from embedrank.registry import CombinedJobConfig

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


JOB_CLASSES = {"embed": EmbedJobConfig, "nightly": EmbedJobConfig, "rerank": RerankJobConfig}


def configmap_command(text: str) -> list[str]:
    """The `kubectl create configmap embedrank-config ...` command in `text` (a README or a manifest's comment),
    continuation lines joined, as words."""
    lines = [re.sub(r"^\s*#?\s*", "", line) for line in text.splitlines()]
    joined = "\n".join(lines).replace("\\\n", " ")
    (command,) = re.findall(r"^kubectl create configmap embedrank-config .*$", joined, re.MULTILINE)
    return shlex.split(command)


def configmap_files(command: list[str]) -> dict[str, str]:
    """key -> repository path, from the command's --from-file=KEY=PATH words."""
    return dict(w.removeprefix("--from-file=").split("=", 1) for w in command if w.startswith("--from-file="))


def head_config_mount(spec: dict) -> str | None:
    """Where the head container mounts the ConfigMap embedrank-config (None: it does not)."""
    pod = spec["headGroupSpec"]["template"]["spec"]
    volumes = {v["name"] for v in pod.get("volumes", []) if v.get("configMap", {}).get("name") == "embedrank-config"}
    for mount in pod["containers"][0].get("volumeMounts", []):
        if mount["name"] in volumes:
            assert "subPath" not in mount, "a subPath mount never sees an updated ConfigMap"
            return mount["mountPath"]
    return None


def test_the_readme_has_one_configmap_command_and_the_manifest_the_same():
    readme = configmap_command((REPO / "README.md").read_text())
    assert readme == configmap_command((REPO / "infra/kuberay/raycluster.yaml").read_text())
    assert "--dry-run=client" in readme and readme[-3:] == ["apply", "-f", "-"], "create or update, one command"
    files = configmap_files(readme)
    assert set(files) == {"embed.yaml", "nightly.yaml", "rerank.yaml"}
    for path in files.values():
        assert (REPO / path).is_file(), path


def test_rayjobs_run_embedrank_on_the_mounted_config_and_name_an_existing_cluster():
    """Every RayJob (and the RayCronJob's template) runs `embedrank JOB --config /config/KEY` with an absolute
    path; KEY is in the ConfigMap, its file loads as that job's config, and the head the driver runs on mounts
    the ConfigMap at /config."""
    files = configmap_files(configmap_command((REPO / "README.md").read_text()))
    clusters = {d["metadata"]["name"]: d["spec"] for _, d in kinds("RayCluster")}
    jobs = [(p, d["spec"]) for p, d in kinds("RayJob")] + [
        (p, d["spec"]["jobTemplate"]) for p, d in kinds("RayCronJob")
    ]
    assert {p.name for p, _ in jobs} == {
        "rayjob-embed.yaml",
        "rayjob-rerank.yaml",
        "rayjob-nightly.yaml",
        "nightly-raycronjob.yaml",
    }
    for path, spec in jobs:
        match = re.fullmatch(r"embedrank (embed|nightly|rerank) --config (/config/([\w.-]+\.yaml))", spec["entrypoint"])
        assert match, f"{path.name}: {spec['entrypoint']}"
        job, _, key = match.groups()
        assert key in files, f"{path.name}: /config/{key} is not in the ConfigMap"
        load_config(REPO / files[key], cls=JOB_CLASSES[job])
        assert "runtimeEnvYAML" not in spec, "the image has the code; the config comes from the ConfigMap"
        if "clusterSelector" in spec:
            cluster = clusters[spec["clusterSelector"]["ray.io/cluster"]]
        else:  # its own cluster for the night: retried, and cleaned up after the night
            assert spec["shutdownAfterJobFinishes"] and spec["ttlSecondsAfterFinished"] > 0
            assert spec["backoffLimit"] >= 1
            cluster = spec["rayClusterSpec"]
            assert cluster == clusters["embedrank"], (
                f"{path.name}: keep the night's cluster in step with raycluster.yaml"
            )
        assert head_config_mount(cluster) == "/config", path.name


def test_the_raycronjob_creates_the_nightly_rayjob():
    ((_, cron),) = kinds("RayCronJob")
    ((_, night),) = [(p, d) for p, d in kinds("RayJob") if p.name == "rayjob-nightly.yaml"]
    assert cron["spec"]["jobTemplate"] == night["spec"], "keep nightly-raycronjob.yaml in step with rayjob-nightly"
    assert kuberay.cron_errors(cron["spec"]["schedule"]) == []
    assert cron["spec"]["schedule"].split()[1:3] == ["0", "2"], "02:00"
    assert cron["spec"]["schedule"].startswith("CRON_TZ=UTC ")
    assert not cron["spec"].get("suspend")
    readme = (REPO / "README.md").read_text()
    assert "`RayCronJob` feature gate enabled" in readme and "--feature-gates=RayCronJob=true" in readme


@needs_kuberay
def test_the_checks_fail_on_a_raycronjob_the_operator_rejects():
    ((_, cron),) = kinds("RayCronJob")
    bad = {**cron, "metadata": {"name": "embedrank-nightly-reembedding-of-the-whole-corpus"}}
    bad["spec"] = {**cron["spec"], "schedule": "0 25 * * *"}
    bad["spec"]["jobTemplate"] = {**cron["spec"]["jobTemplate"], "clusterSelector": {"ray.io/cluster": "x"}}
    errors = kuberay.operator_errors(bad)
    assert "invalid cron schedule: hour '25' is beyond the range (0-23)" in errors
    assert (
        "invalid RayJob template: The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode"
        in errors
    )
    assert any("exceed a RayJob's 47 characters" in e for e in errors)
    assert kuberay.cron_errors("0 2 * *") and kuberay.cron_errors("@nightly")
    unknown = {**cron, "spec": {**cron["spec"], "concurrencyPolicy": "Forbid"}}  # batch/v1 CronJob's, not v1.6.2's
    assert any("concurrencyPolicy" in e for e in kuberay.schema_errors(unknown))


def ray_cluster_specs():
    for path, doc in documents("infra"):
        if doc.get("kind") == "RayCluster":
            yield path, doc["spec"]
        elif doc.get("kind") == "RayJob" and "rayClusterSpec" in doc["spec"]:
            yield path, doc["spec"]["rayClusterSpec"]
        elif doc.get("kind") == "RayCronJob" and "rayClusterSpec" in doc["spec"]["jobTemplate"]:
            yield path, doc["spec"]["jobTemplate"]["rayClusterSpec"]


def test_ray_version_is_the_pinned_ray_and_kuberay_1_6_everywhere():
    pinned = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.MULTILINE)[1]
    specs = list(ray_cluster_specs())
    assert len(specs) == 3
    for path, spec in specs:
        assert spec["rayVersion"] == pinned, f"{path.name}: rayVersion {spec['rayVersion']} vs constraints.txt {pinned}"
        # KubeRay probes over HTTP from 2.53 on, else with wget, which the images do not have
        assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 53)
    texts = {p: p.read_text() for p in (REPO / "infra").rglob("*") if p.is_file()} | {
        REPO / "README.md": (REPO / "README.md").read_text()
    }
    for path, text in texts.items():
        for floor in re.findall(r"KubeRay >= ?(\d+(?:\.\d+)*)", text):
            assert floor == "1.6", f"{path.relative_to(REPO)} says KubeRay >= {floor}"
    assert all("1.5.1" not in t for t in texts.values())


def test_the_ray_floor_is_the_ray_the_tests_run_on():
    """pyproject's ray[data] and ray[default] floors are constraints.txt's Ray minor (joins need 2.46, token
    authentication 2.52): an older cluster's Ray must not resolve and then fail mid-job."""
    pinned = re.search(r"^ray==(\d+)\.(\d+)\.", (REPO / "constraints.txt").read_text(), re.MULTILINE)
    pyproject = (REPO / "pyproject.toml").read_text()
    floors = re.findall(r'"ray\[(data|default)\]>=([\d.]+)"', pyproject)
    assert {extra for extra, _ in floors} == {"data", "default"}
    for _, floor in floors:
        assert floor == f"{pinned[1]}.{pinned[2]}"
        assert tuple(map(int, floor.split("."))) >= (2, 52)


def test_the_network_policy_admits_the_operator_to_the_jobs_api_only():
    ((_, policy),) = kinds("NetworkPolicy")
    rules = policy["spec"]["ingress"]
    operator = [r for r in rules if any("namespaceSelector" in f for f in r["from"])]
    assert operator and [p["port"] for p in operator[0]["ports"]] == [8265]
    same_namespace = [r for r in rules if r["from"] == [{"podSelector": {}}]]
    assert same_namespace and {p["port"] for p in same_namespace[0]["ports"]} == {8265, 10001}


def test_the_fallback_cronjob_creates_the_nightly_rayjob_with_a_pinned_kubectl():
    ((_, cron),) = kinds("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["timeZone"] == "Etc/UTC"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert re.fullmatch(r"registry\.k8s\.io/kubectl:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", container["image"])
    assert container["command"] == ["/bin/kubectl"], "the kubectl image has no shell"
    assert container["args"][:2] == ["create", "-f"] and container["args"][-1].endswith("rayjob-nightly.yaml")
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volume = mounted[str(Path(container["args"][-1]).parent)]
    (source,) = [v["configMap"]["name"] for v in pod["volumes"] if v["name"] == volume]
    assert f"kubectl create configmap {source} --from-file=infra/kuberay/rayjob-nightly.yaml" in " ".join(
        (REPO / "README.md").read_text().split()
    )
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
