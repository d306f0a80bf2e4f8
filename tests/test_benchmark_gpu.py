"""benchmarks/gpu.py --tiny: the GPU benchmark's code path on the CPU (tiny models, fp32).

One subprocess run (about 40-70 s on 2 cores; torch.compile of the tiny blocks is most of it):
exit 0, the markdown table with every section, a measured or explained row for every variant,
the RESULT line with every key, and our latents equal to diffusers' within 1e-4 (the script
itself exits 1 when they are not). The GPU numbers are measured only on a lent GPU.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
TIMEOUT_S = 240  # a hang guard; the run takes well under half of it
RESULT_KEYS = ("step_ratio", "best_ratio", "mfu", "sampling_peak_ratio", "decode_peak_gb",
               "step_ratio_15", "parity_maxdiff", "parity_maxdiff_15")
VARIANTS = ("attention sdpa", "attention flash", "attention sage", "compile", "fp8", "best:",
            "cache teacache", "cache fbc", "cache pab", "cache fastercache")


@pytest.fixture(scope="module")
def tiny_run() -> subprocess.CompletedProcess:
    return subprocess.run(["timeout", str(TIMEOUT_S), sys.executable, str(SCRIPT), "--tiny"], cwd=ROOT,
                          capture_output=True, text=True, check=False)


def _rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    """(section, run) -> the row's cells, from the markdown table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 9 and cells[0] not in ("section", "---"):
            rows[(cells[0], cells[1])] = cells
    return rows


def _result(stdout: str) -> dict[str, str]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT gpu ")]
    assert len(lines) == 1, stdout[-2000:]
    assert lines[0] == stdout.strip().splitlines()[-1], "the RESULT line is the last line"
    return dict(item.split("=", 1) for item in lines[0].split()[2:])


def test_tiny_run_exits_zero(tiny_run: subprocess.CompletedProcess) -> None:
    assert tiny_run.returncode == 0, tiny_run.stderr[-4000:]


def test_table_has_every_section_and_says_tiny_means_nothing(tiny_run: subprocess.CompletedProcess) -> None:
    out = tiny_run.stdout
    assert "| section | run | s/step | vs diffusers eager | MFU | peak GB | work GB | blocks run | note |" in out
    assert "mean nothing" in out
    rows = _rows(out)
    for section in ("5b", "1.5"):
        for run in ("diffusers eager", "ours plain"):
            cells = rows[(section, run)]
            assert float(cells[2]) > 0, cells  # s/step measured
            assert cells[5] == "n/a", cells  # no VRAM numbers on the CPU
    assert sum(1 for section, _ in rows if section == "decode") == 3


def test_every_variant_is_measured_or_says_why_not(tiny_run: subprocess.CompletedProcess) -> None:
    rows = [cells for (section, _), cells in _rows(tiny_run.stdout).items() if section == "variants"]
    for name in VARIANTS:
        cells = next((c for c in rows if c[1].startswith(name)), None)
        assert cells is not None, f"no row for variant {name!r}"
        assert "error:" not in cells[8], cells  # a failing variant is a bug, logged in stderr
        measured = cells[2] != "n/a"
        assert measured or cells[8].startswith("not available:"), cells
        if measured:
            assert float(cells[3]) > 0, cells  # a ratio against diffusers' eager run
    # on the CPU, sdpa always runs, flash needs CUDA
    assert next(c for c in rows if c[1] == "attention sdpa")[2] != "n/a"
    assert next(c for c in rows if c[1] == "attention flash")[8].startswith("not available:")


def test_result_line_has_every_key(tiny_run: subprocess.CompletedProcess) -> None:
    result = _result(tiny_run.stdout)
    for key in RESULT_KEYS:
        assert key in result, f"RESULT has no {key}: {result}"
    assert float(result["step_ratio"]) > 0
    assert result["decode_peak_gb"] == "n/a" and result["sampling_peak_ratio"] == "n/a"  # CPU: no VRAM


def test_ours_equals_diffusers(tiny_run: subprocess.CompletedProcess) -> None:
    result = _result(tiny_run.stdout)
    for key in ("parity_maxdiff", "parity_maxdiff_15"):
        assert float(result[key]) <= 1e-4, result
    assert "PARITY FAILED" not in tiny_run.stdout


def test_parity_failure_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    """Latents that differ from diffusers' beyond the tolerance fail the benchmark (exit 1)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import gpu

    latents = torch.zeros(1, 16, 3, 4, 6)
    comparison = SimpleNamespace(ours=SimpleNamespace(latents=latents + 2e-4),
                                 diffusers=SimpleNamespace(latents=latents))
    case = SimpleNamespace(key="5b", args=SimpleNamespace(dtype="float32"))
    report = gpu.Report()
    assert gpu.check_parity(case, comparison, report)[0] == pytest.approx(2e-4)
    assert gpu.finish(report, gpu.parse_args(["--tiny"])) == 1
    out = capsys.readouterr().out
    assert "PARITY FAILED 5b" in out and "RESULT gpu step_ratio=n/a" in out
