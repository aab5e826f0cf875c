"""Check a prebuilt flash-attn wheel against the torch, CUDA and Python it will run with, before installing it.

flash-attn is a C++/CUDA extension of torch: a wheel built for another torch minor, CUDA major, C++ ABI or
Python fails at import (undefined symbols) or refuses to load, long after the image was built. Its release
wheels carry those four in their file name, e.g.
`flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl`, so the name is checked here.

Run by Dockerfile.gpu with the image's Python, where torch is installed:
    python flash_attn_wheel.py URL SHA256     -> prints the hash-pinned requirement line for `uv pip install`
and imported by tests/unit/test_images.py, which checks names against the Dockerfile's own versions.
Standard library only at module level.
"""

from __future__ import annotations

import re
import sys
import urllib.parse

WHEEL = re.compile(
    r"flash_attn-(?P<version>\d+(?:\.\d+)*(?:\.post\d+)?)"
    r"\+cu(?P<cuda>\d+)torch(?P<torch>\d+\.\d+)cxx11abi(?P<abi>TRUE|FALSE)"
    r"-(?P<python>cp\d+)-(?P<abi_tag>cp\d+t?)-(?P<platform>\w+)\.whl"
)


def wheel_name(url: str) -> str:
    """The wheel's file name from its URL (release URLs spell `+` as %2B)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def mismatches(name: str, *, cuda: str, torch: str, python: str, cxx11abi: bool, machine: str = "x86_64") -> list[str]:
    """Every way the wheel `name` disagrees with CUDA `cuda` ("13.0"), torch `torch` ("2.13.0+cu130"),
    Python `python` ("3.11") and torch's C++ ABI; an empty list when it fits."""
    m = WHEEL.fullmatch(name)
    if not m:
        return [
            f"{name}: not a flash-attn release wheel name (flash_attn-VERSION+cuNNtorchX.Ycxx11abiTRUE-cpXY-cpXY-"
            "linux_x86_64.whl); without those tags it cannot be checked against this image"
        ]
    errors = []
    wheel_cuda_major = m["cuda"][:2]  # cu12, cu122 and cu118 all start with the two-digit major
    if wheel_cuda_major != cuda.split(".")[0]:
        errors.append(f"{name}: built for CUDA {wheel_cuda_major}, the image has CUDA {cuda}")
    torch_minor = ".".join(torch.split("+")[0].split(".")[:2])
    if m["torch"] != torch_minor:
        errors.append(f"{name}: built for torch {m['torch']}, the image has torch {torch_minor}")
    if (m["abi"] == "TRUE") != cxx11abi:
        errors.append(f"{name}: built with cxx11abi{m['abi']}, the image's torch has cxx11abi{str(cxx11abi).upper()}")
    want = "cp" + "".join(python.split(".")[:2])
    if m["python"] != want or m["abi_tag"] != want:
        errors.append(f"{name}: built for {m['python']}-{m['abi_tag']}, the image has Python {python} ({want})")
    if not m["platform"].endswith(machine):
        errors.append(f"{name}: built for {m['platform']}, the image is {machine}")
    return errors


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: flash_attn_wheel.py WHEEL_URL SHA256", file=sys.stderr)
        return 2
    url, sha256 = argv
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        print(
            f"FLASH_ATTN_WHEEL_SHA256={sha256!r} is not a sha256: pass the wheel's hash "
            "(sha256sum FILE) with --build-arg FLASH_ATTN_WHEEL_SHA256=...",
            file=sys.stderr,
        )
        return 1
    import platform

    import torch  # the image's own torch: the wheel must fit it, not the Dockerfile's intentions

    errors = mismatches(
        wheel_name(url),
        cuda=torch.version.cuda or "none",
        torch=torch.__version__,
        python=platform.python_version(),
        cxx11abi=torch.compiled_with_cxx11_abi(),
        machine=platform.machine(),
    )
    for error in errors:
        print(f"FLASH_ATTN_WHEEL_URL: {error}; pick the wheel for these versions", file=sys.stderr)
    if errors:
        return 1
    print(f"flash-attn @ {url} --hash=sha256:{sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
