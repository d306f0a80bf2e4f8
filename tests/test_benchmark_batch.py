"""benchmarks/batch.py on its smallest setting: the job runs, its videos equal the single runs, and
the RESULT line carries every key."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def test_batch_benchmark_smoke(capsys: pytest.CaptureFixture) -> None:
    from benchmarks import batch

    result = batch.main(["--prompts", "2", "--heads", "2", "--layers", "1", "--steps", "2", "--repeats", "1",
                         "--frames", "5", "--height", "32", "--width", "48"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("RESULT batch_time_over_singles=") and "batch_peak_over_single=" in line
    assert result["batch_rows"] == 2  # both videos in one batch on this CPU
    assert result["maxdiff"] <= 1e-5  # fp32, the matmul blocking of a batch (tests/test_batch.py)
    assert result["batch_time_over_singles"] > 0 and result["batch_peak_over_single"] > 0
