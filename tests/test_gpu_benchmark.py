"""benchmarks/gpu.py skips cleanly where there is no GPU: exit 0, the reason, nothing measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script measures")
def test_gpu_benchmark_skips_without_a_gpu() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                         check=True, timeout=120)
    last = json.loads(out.stdout.strip().splitlines()[-1])
    assert last == {"skipped": "no GPU: torch.cuda.is_available() is False on this machine; "
                               "nothing measured"}
    assert out.stdout.startswith("no GPU:")
