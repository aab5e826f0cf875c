"""KubeRay v1.6.2's checks of a manifest, from ../shared/kuberay: the CRD schema (strict) and the operator's rules.

`schema_errors(doc)` validates a ray.io/v1 document (RayCluster, RayJob, RayCronJob) against its CRD's
openAPIV3Schema with unknown fields as errors (the API server would prune them silently). `operator_errors(doc)`
applies the rules of the operator's validation.go that our manifests can meet, each returning the operator's own
message, so a failure reads as the operator would report it (`ValidationFailed`, or for a RayCronJob the
`InvalidRayCronJobSpec` event, after which it never creates a RayJob).
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import yaml

KUBERAY = Path(__file__).resolve().parents[3] / "shared" / "kuberay" / "v1.6.2"
CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _strict(schema: dict) -> dict:
    """The schema with unknown properties refused and Kubernetes' int-or-string understood."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.pop("x-kubernetes-int-or-string", False):
            node.pop("type", None)
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

    walk(schema)
    return schema


@functools.cache
def crd_schema(kind: str) -> dict:
    # libyaml's loader where PyYAML has it: the CRDs are large, and the pure-Python loader takes seconds each
    crd = yaml.load((KUBERAY / CRDS[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _strict(version["schema"]["openAPIV3Schema"])


def schema_errors(doc: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(doc["kind"]))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def _autoscaling(spec: dict) -> bool:
    return bool(spec.get("enableInTreeAutoscaling"))


def raycluster_spec_errors(spec: dict) -> list[str]:
    """ValidateRayClusterSpec (the parts that apply to our manifests)."""
    errors = []
    head = spec["headGroupSpec"]
    if not head["template"]["spec"].get("containers"):
        errors.append("headGroupSpec should have at least one container")
    groups = [("Head", head)] + [(g.get("groupName", ""), g) for g in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        params = group.get("rayStartParams") or {}
        if any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")) and group.get("resources"):
            errors.append(
                f"resource fields should not be set in both rayStartParams and Resources for {name} "
                "group; please use only one"
            )
        if "labels" in params:
            errors.append(
                f"rayStartParams['labels'] is not supported for {name} group; please use the top-level "
                "Labels field instead"
            )
    for name, group in groups[1:]:
        if not group["template"]["spec"].get("containers"):
            errors.append("workerGroupSpec should have at least one container")
        lo, hi = group.get("minReplicas"), group.get("maxReplicas")
        if not _autoscaling(spec) and (lo is None or hi is None):
            errors.append(f"worker group {name} must set both minReplicas and maxReplicas when autoscaling is disabled")
        if lo is not None and hi is not None and lo > hi:
            errors.append(f"worker group {name} has minReplicas {lo} greater than maxReplicas {hi}")
        if group.get("suspend") and _autoscaling(spec):
            errors.append(f"worker group {name} cannot be suspended with Autoscaler enabled")
    auth = spec.get("authOptions") or {}
    if auth.get("mode") == "token":
        version = spec.get("rayVersion")
        if not version:
            errors.append(
                "authOptions.mode is 'token' but RayVersion was not specified. Ray version 2.52.0 or later is required"
            )
        elif tuple(int(x) for x in version.split(".")[:3]) < (2, 52, 0):
            errors.append(f"authOptions.mode is 'token' but minimum Ray version is 2.52.0, got {version}")
    if (spec.get("autoscalerOptions") or {}).get("idleTimeoutSeconds", 0) < 0:
        errors.append("autoscalerOptions.idleTimeoutSeconds must be non-negative")
    return errors


def rayjob_errors(doc: dict) -> list[str]:
    """ValidateRayJobMetadata + ValidateRayJobSpec + validateDeletionConfiguration."""
    errors = []
    spec = doc["spec"]
    name = doc["metadata"].get("name")
    if name is not None and (len(name) > 47 or not DNS1035.fullmatch(name)):
        errors.append(
            "The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label of at most 47 characters"
        )
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if spec.get("suspend") and not shutdown:
        errors.append(
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not "
            "allowed to be suspended"
        )
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0:
        errors.append("The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer")
    if not shutdown and ttl > 0:
        errors.append(
            "The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
            "TTLSecondsAfterFinished"
        )
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode", "K8sJobMode")
    backoff = spec.get("backoffLimit")
    if spec.get("suspend") and selector:
        errors.append("The RayJob spec is invalid: the ClusterSelector mode doesn't support the suspend operation")
    if spec.get("rayClusterSpec") is None and not selector:
        errors.append("The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            errors.append("cluster name in ClusterSelector should not be empty")
        if mode == "SidecarMode":
            errors.append("ClusterSelector is not supported in SidecarMode")
        if backoff is not None and backoff > 0:
            errors.append("The RayJob spec is invalid: BackoffLimit is incompatible with ClusterSelector mode")
    if mode == "InteractiveMode" and backoff is not None and backoff > 0:
        errors.append("The RayJob spec is invalid: BackoffLimit is incompatible with InteractiveMode")
    if spec.get("rayClusterSpec") is not None:
        auth = spec["rayClusterSpec"].get("authOptions") or {}
        if auth.get("enableK8sTokenAuth"):
            errors.append("The RayJob spec is invalid: K8s token auth mode is currently not supported for RayJob")
        errors += [f"The RayJob spec is invalid: {e}" for e in raycluster_spec_errors(spec["rayClusterSpec"])]
    if "runtimeEnvYAML" in spec:
        try:
            yaml.safe_load(spec["runtimeEnvYAML"])
        except yaml.YAMLError as exc:
            errors.append(f"runtimeEnvYAML is not valid YAML: {exc}")
    for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
        if key in spec and spec[key] <= 0:
            errors.append(f"The RayJob spec is invalid: {key} must be a positive integer")
    if backoff is not None and backoff < 0:
        errors.append("The RayJob spec is invalid: backoffLimit must be a positive integer")
    return errors


# robfig/cron v3's ParseStandard, which ValidateRayCronJobSpec and the controller call: an optional TZ= or
# CRON_TZ= zone, then a @descriptor or five fields (minute hour day-of-month month day-of-week).
CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
CRON_FIELDS = (  # (name, low, high, names)
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}),
    ("day of week", 0, 6, {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}),
)


def cron_errors(schedule: str) -> list[str]:
    """Why robfig/cron's ParseStandard would refuse `schedule` (empty when it parses)."""
    spec = schedule.strip()
    if spec.startswith(("TZ=", "CRON_TZ=")):
        zone, _, spec = spec.partition(" ")
        zone = zone.split("=", 1)[1]
        if not re.fullmatch(r"UTC|Local|[A-Za-z_]+(/[A-Za-z0-9_+-]+)*", zone):
            return [f"provided bad location {zone}"]
        spec = spec.strip()
    if spec.startswith("@"):
        if spec in CRON_DESCRIPTORS or re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|ms|s|m|h))+", spec):
            return []
        return [f"unrecognized descriptor: {spec}"]
    fields = spec.split()
    if len(fields) != 5:
        return [f"expected exactly 5 fields, found {len(fields)}: {fields}"]
    errors = []
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        for part in text.split(","):
            m = re.fullmatch(r"(\*|\?|\w+)(?:-(\w+))?(?:/(\d+))?", part)
            if not m:
                errors.append(f"failed to parse {name} {part!r}")
                continue

            def value(token, name=name, low=low, high=high, names=names):
                number = names.get(token.lower()) if not token.isdigit() else int(token)
                if number is None or not low <= number <= high:
                    errors.append(f"{name} {token!r} is beyond the range ({low}-{high})")
                    return low
                return number

            if m[1] in ("*", "?"):
                if m[2]:
                    errors.append(f"failed to parse {name} {part!r}")
            else:
                start = value(m[1])
                if m[2] and value(m[2]) < start:
                    errors.append(f"{name} {part!r}: beginning of range after end")
            if m[3] is not None and int(m[3]) == 0:
                errors.append(f"{name} {part!r}: step of range should be a positive number")
    return errors


def raycronjob_errors(doc: dict) -> list[str]:
    """ValidateRayCronJobSpec: the schedule parses, and the RayJob template passes ValidateRayJobSpec. Also the
    name check the RayJobs it creates (named NAME-xxxxx) must pass, else every night fails at creation."""
    spec = doc["spec"]
    errors = [f"invalid cron schedule: {e}" for e in cron_errors(spec["schedule"])]
    template = {"metadata": {}, "spec": spec["jobTemplate"]}
    errors += [f"invalid RayJob template: {e}" for e in rayjob_errors(template)]
    name = doc["metadata"].get("name", "")
    if len(name) + 6 > 47:
        errors.append(
            f"RayCronJob name {name!r} is too long: the RayJobs it creates ({name}-xxxxx) exceed a RayJob's "
            "47 characters"
        )
    return errors


def operator_errors(doc: dict) -> list[str]:
    if doc["kind"] == "RayJob":
        return rayjob_errors(doc)
    if doc["kind"] == "RayCronJob":
        return raycronjob_errors(doc)
    name = doc["metadata"].get("name", "")
    errors = []
    if len(name) > 63 or not DNS1035.fullmatch(name):
        errors.append("RayCluster name should be a valid DNS1035 label of at most 63 characters")
    return errors + raycluster_spec_errors(doc["spec"])
