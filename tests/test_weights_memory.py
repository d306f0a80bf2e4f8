"""benchmarks/weights_memory.py --quick: each storage in its own process, the table and RESULT.

Checked on the 1-layer 5B-width model: the table has every storage (GGUF rows "not available"
when the pack's GGUF loader is absent), the RESULT line's fields, int8 holding fewer weight bytes
than fp8 and bf16 and loading below bf16's peak, and each output difference to fp32 within what
its quantization step allows (relative to the fp32 output's max abs, computed in float32): int8
and Q8_0 (steps of absmax/254 per row, absmax/254 per 32-block) under ``MODEL_REL`` = 1% as in
tests/test_int8.py, fp8 e4m3 and Q4_0 (steps of 2^-4 relative, absmax/16 per block) under
2^-4. And the full-size arithmetic the script prints: int8 at most 0.55x of bf16's weights.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "weights_memory.py"
MODEL_REL = 0.01
FP8_REL = 2**-4


def test_quick_run() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    result = dict(re.findall(r"(\w+)=(\S+)", lines[-1]))
    assert lines[-1].startswith("RESULT ") and list(result) == [
        "int8_peak_over_bf16", "q4_peak_over_bf16", "q8_maxdiff", "int8_maxdiff", "int8_step_time_over_bf16"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split()[0] in
            ("fp32", "bf16", "fp8", "int8", "q8_0", "q4_0")}
    assert set(rows) == {"fp32", "bf16", "fp8", "int8", "q8_0", "q4_0"}
    weights = {k: float(v[0]) for k, v in rows.items() if v[0] != "not"}
    assert weights["int8"] < weights["fp8"] < weights["bf16"] < weights["fp32"]
    assert float(result["int8_peak_over_bf16"]) < 1.0
    assert 0 < float(result["int8_maxdiff"]) and math.isfinite(float(result["int8_step_time_over_bf16"]))
    rel = {k: float(v[8]) for k, v in rows.items() if v[0] != "not"}
    assert rel["int8"] <= MODEL_REL and rel["fp8"] <= FP8_REL
    if "q8_0" in rel:  # the pack's GGUF loader is in the tree
        assert rel["q8_0"] <= MODEL_REL and rel["q4_0"] <= FP8_REL
        assert float(result["q4_peak_over_bf16"]) < float(result["int8_peak_over_bf16"])
    else:
        assert result["q8_maxdiff"] == "nan" and "not available" in " ".join(rows["q8_0"])
    full = next(line for line in lines if line.startswith("full 5B"))
    assert float(re.search(r"int8 ([\d.]+)", full).group(1)) <= 0.55
