"""benchmarks/cpu_conv.py on one repeat: it runs, the three decodes agree, every key is there."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_cpu_conv_benchmark_smoke() -> None:
    from benchmarks import cpu_conv

    out = cpu_conv.measure(repeat=1)
    assert out["maxdiff"] <= 1e-4  # fp32: oneDNN and ATen's column buffer sum in other orders
    for key in ("decode_ours_over_aten", "decode_ours_over_diffusers", "encode_ours_over_aten"):
        assert out[key] > 0
