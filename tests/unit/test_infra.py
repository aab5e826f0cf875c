"""Everything shipped under infra/ and configs/ parses, points at files that exist, and keeps secure defaults.

KubeRay target: CRD ray.io/v1 as of KubeRay v1.6 (authOptions needs >= 1.5.1). The allowed field names below
are that version's RayCluster / RayJob spec fields, so a typo or a field from another version fails here.
"""

import re
from pathlib import Path

import pytest
import yaml

from embedrank.config import CombinedJobConfig, EmbedJobConfig, RerankJobConfig, load_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY_V1_6 = {
    "RayCluster.spec": {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec",
                        "workerGroupSpecs", "authOptions", "suspend", "managedBy", "headServiceAnnotations",
                        "gcsFaultToleranceOptions", "upgradeStrategy"},
    "headGroupSpec": {"rayStartParams", "template", "serviceType", "headService", "enableIngress", "resources",
                      "labels"},
    "workerGroupSpec": {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
                        "scaleStrategy", "suspend", "numOfHosts", "idleTimeoutSeconds", "resources", "labels"},
    "autoscalerOptions": {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                          "upscalingMode", "version", "env", "envFrom", "volumeMounts"},
    "authOptions": {"mode", "enableK8sTokenAuth", "secretName"},
    "RayJob.spec": {"entrypoint", "metadata", "runtimeEnvYAML", "jobId", "shutdownAfterJobFinishes",
                    "ttlSecondsAfterFinished", "activeDeadlineSeconds", "rayClusterSpec", "clusterSelector",
                    "submissionMode", "managedBy", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
                    "submitterPodTemplate", "submitterConfig", "backoffLimit", "suspend", "deletionStrategy"},
}


def documents(folder: str):
    for path in sorted((REPO / folder).rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc, f"{path} holds an empty document"
            yield path, doc


def kinds(kind: str):
    return [(p, d) for p, d in documents("infra") if d.get("kind") == kind]


def test_every_manifest_parses():
    assert len(list(documents("infra"))) >= 8


def test_raycluster_fields_exist_in_kuberay_v1_6():
    (_, cluster), = kinds("RayCluster")
    spec = cluster["spec"]
    assert set(spec) <= KUBERAY_V1_6["RayCluster.spec"]
    assert set(spec["headGroupSpec"]) <= KUBERAY_V1_6["headGroupSpec"]
    assert set(spec["autoscalerOptions"]) <= KUBERAY_V1_6["autoscalerOptions"]
    assert set(spec["authOptions"]) <= KUBERAY_V1_6["authOptions"]
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= KUBERAY_V1_6["workerGroupSpec"]
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in spec["workerGroupSpecs"]
               for c in g["template"]["spec"]["containers"])
    assert spec["enableInTreeAutoscaling"] is True


def test_rayjobs_name_existing_entrypoints_configs_and_cluster():
    clusters = {d["metadata"]["name"] for _, d in kinds("RayCluster")}
    jobs = kinds("RayJob")
    assert {p.name for p, _ in jobs} == {"rayjob-embed.yaml", "rayjob-rerank.yaml", "rayjob-nightly.yaml"}
    for path, job in jobs:
        assert set(job["spec"]) <= KUBERAY_V1_6["RayJob.spec"], path
        match = re.fullmatch(r"python (jobs/\w+\.py) --config (configs/[\w.-]+\.yaml)", job["spec"]["entrypoint"])
        assert match, job["spec"]["entrypoint"]
        assert (REPO / match[1]).is_file() and (REPO / match[2]).is_file()
        assert job["spec"]["clusterSelector"]["ray.io/cluster"] in clusters


def test_nightly_schedule_creates_the_nightly_rayjob():
    (_, cron), = kinds("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-1].endswith("rayjob-nightly.yaml")
    (_, role), = kinds("Role")
    assert role["rules"][0]["resources"] == ["rayjobs"]


def test_secure_defaults():
    (_, cluster), = kinds("RayCluster")
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
    assert "RAY_AUTH_MODE=token" in " ".join(launcher["docker"]["run_options"])
    for name in ("gpu-cluster.yaml", "nightly.yaml", "rerank-gpu.yaml"):
        cfg = yaml.safe_load((REPO / "configs" / name).read_text())
        assert "revision" in cfg["model"], f"{name} must show where to pin the model revision"


def test_dockerfiles_and_dockerignore():
    gpu = (REPO / "infra" / "docker" / "Dockerfile.gpu").read_text()
    assert "nvidia/cuda" in gpu and "torch==" in gpu and "flash-attn" in gpu and "USER ray" in gpu
    assert "USER ray" in (REPO / "infra" / "docker" / "Dockerfile.cpu").read_text()
    assert ".venv" in (REPO / ".dockerignore").read_text().split()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    data = yaml.safe_load(path.read_text())
    cls = (CombinedJobConfig if "embed_job" in data or "rerank_job" in data
           else RerankJobConfig if "rerank" in data else EmbedJobConfig)
    load_config(path, cls=cls)
