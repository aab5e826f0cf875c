"""benchmarks/gpu_check.py --smoke: every step of the GPU check on the CPU with the tiny shape, without Ray
(the GPU machines have none), so that the script cannot rot between GPU runs."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Run the script as `python benchmarks/gpu_check.py` would, with `import ray` made to fail.
RUNNER = (
    "import runpy, sys; sys.modules['ray'] = None; sys.path.insert(0, 'benchmarks'); "
    "sys.argv = ['gpu_check.py', sys.argv[1], '--smoke']; "
    "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')"
)
EXPECTED = [
    "bf16 GEMM peak, measured",
    "weights: random, on the device",
    "embed ours packed (sdpa_packed), eager",
    "embed ours padded SDPA, length-sorted",
    "embed published recipe (sdpa, bs 32, input order)",
    "embed ours / recipe",
    "embed parity (bf16 packed vs fp32, vs recipe)",
    "rerank ours (two-row head, packed)",
    "rerank published recipe (full LM head, bs 8)",
    "rerank ours / recipe",
    "embed ours packed (sdpa_packed), compile time",
    "embed ours packed (sdpa_packed), compiled",
    "embed compiled / eager",
    "tokenizer, one CPU core",
    "CPU cores per GPU (tokenizer alone)",
]


def test_gpu_check_smoke_writes_every_row_without_ray(tmp_path):
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    names = [r["row"] for r in report["rows"]]
    errors = {r["row"]: r["error"] for r in report["rows"] if "error" in r}
    assert not errors, errors
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [n for n in EXPECTED if n not in names] == []
    rows = {r["row"]: r for r in report["rows"]}
    assert rows["embed parity (bf16 packed vs fp32, vs recipe)"]["cos_min_to_recipe"] >= 0.99999
    assert rows["embed ours packed (sdpa_packed), eager"]["tokens_per_s"] > 0
    assert report["env"]["corpus"]["attention_length_E[L^2]/E[L]"] > report["env"]["corpus"]["mean"]
