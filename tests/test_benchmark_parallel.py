"""benchmarks/parallel.py on its smallest setting (1 layer, 1 step): 1 process, cfg=2 and ulysses=2
on gloo run, agree, and the RESULT line carries every key."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_parallel_benchmark_smoke(capsys: pytest.CaptureFixture) -> None:
    from benchmarks import parallel

    result = parallel.main(["--layers", "1", "--steps", "1"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    for key in ("cfg2_time_ratio", "ulysses2_time_ratio", "ulysses2_peak_ratio", "parity_maxdiff"):
        assert f"{key}=" in line and result[key] >= 0, line
    # fp32: the 2-rank runs split CFG / tokens, which changes float summation order only
    assert result["parity_maxdiff"] <= 1e-4, line
