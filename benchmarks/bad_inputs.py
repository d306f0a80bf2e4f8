"""The bad-input matrix: hostile-but-realistic ``generate`` calls on tiny models, as subprocesses.

For each case: exit code, seconds to the end, whether a ``Traceback`` was printed, the size of
stderr, whether every file the user gave is byte-identical afterwards, and stderr's last line.
``--pack`` runs another checkout of the pack (e.g. a ``git worktree`` of an older commit) on the
same cases, for a before/after table. Cases that would run for long are stopped after
``--timeout`` seconds.

    .venv/bin/python benchmarks/bad_inputs.py
    git worktree add /tmp/before 90b74c6 && .venv/bin/python benchmarks/bad_inputs.py --pack /tmp/before
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(HERE), str(HERE / "tests")]
from pipeline_models import save_tree  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from cogvideox_core.video_io import write_mp4  # noqa: E402

SMALL = ["--prompt", "a lighthouse at dusk", "--frames", "9", "--height", "32", "--width", "48",
         "--steps", "2", "--device", "cpu"]


@dataclass
class Case:
    name: str
    argv: list[str]
    inputs: list[Path] = field(default_factory=list)  # files that must survive
    signal_after_progress: int | None = None


def _fixtures(work: Path) -> dict[str, Path]:
    from PIL import Image

    paths = {"t5b": work / "tiny-5b", "t2b": work / "tiny-2b", "inp": work / "tiny-fun-5b-inp"}
    for key, name in (("t5b", "5b"), ("t2b", "2b"), ("inp", "fun-5b-inp")):
        save_tree(name, paths[key])
    nan = work / "tiny-5b-nan"
    shutil.copytree(paths["t5b"], nan)
    weights = next((nan / "transformer").glob("*.safetensors"))
    tensors = load_file(str(weights))
    key = sorted(k for k in tensors if k.endswith("weight"))[0]
    tensors[key][0] = float("nan")
    save_file(tensors, str(weights), metadata={"format": "pt"})
    paths["nan"] = nan
    Image.new("RGB", (1, 1), (90, 120, 200)).save(work / "dot.png")
    (work / "notes.png").write_text("not an image")
    (work / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (work / "folder.safetensors").mkdir()
    (work / "old.mp4").write_bytes(b"an earlier video")
    write_mp4(torch.rand(12, 32, 48, 3), work / "clip.mp4")
    return paths


def _cases(p: dict[str, Path], w: Path) -> list[Case]:
    m5, out = ["--model", str(p["t5b"])], ["--out", str(w / "out.mp4")]
    weights = next((p["t5b"] / "transformer").glob("*.safetensors"))
    long_prompt = " ".join(["a quiet harbour with boats"] * 400)
    return [
        Case("--out is the model's weights file", [*m5, *SMALL, "--out", str(weights)], [weights]),
        Case("--out is the --video source", [*m5, *SMALL, "--video", str(w / "clip.mp4"), "--denoise", "0.8",
                                             "--steps", "4", "--out", str(w / "clip.mp4")], [w / "clip.mp4"]),
        Case("--cfg inf", [*m5, *SMALL, "--cfg", "inf", *out]),
        Case("--cfg nan", [*m5, *SMALL, "--cfg", "nan", *out]),
        Case("weights holding NaN", ["--model", str(p["nan"]), *SMALL, *out]),
        Case("--family 5b on a 2B folder", ["--model", str(p["t2b"]), "--family", "5b", *SMALL, *out]),
        Case("1x1 start image (Fun InP)", ["--model", str(p["inp"]), *SMALL, "--image", str(w / "dot.png"), *out]),
        Case("2001 frames, no context windows", [*m5, *SMALL, "--frames", "2001", *out]),
        Case("32x100000 pixels", [*m5, *SMALL, "--height", "32", "--width", "100000", *out]),
        Case("32x100000 pixels to .safetensors", [*m5, *SMALL, "--height", "32", "--width", "100000",
                                                  "--out", str(w / "out.safetensors")]),
        Case("100000x100000 pixels", [*m5, *SMALL, "--height", "100000", "--width", "100000",
                                      "--out", str(w / "out.safetensors")]),
        Case("Ctrl-C during sampling", [*m5, *SMALL, "--steps", "1000", "--out", str(w / "old.mp4")],
             [w / "old.mp4"], signal_after_progress=int(signal.SIGINT)),
        Case("SIGTERM during sampling", [*m5, *SMALL, "--steps", "1000", "--out", str(w / "old.mp4")],
             [w / "old.mp4"], signal_after_progress=int(signal.SIGTERM)),
        Case("--device cuda (CPU-only torch)", [*m5, *SMALL, "--device", "cuda", *out]),
        Case("--device tpu9", [*m5, *SMALL, "--device", "tpu9", *out]),
        Case("--out is a folder named .safetensors", [*m5, *SMALL, "--out", str(w / "folder.safetensors")]),
        Case("--steps 0", [*m5, *SMALL, "--steps", "0", *out]),
        Case("--steps 5000", [*m5, *SMALL, "--steps", "5000", *out]),
        Case("--steps 2 x --denoise 0.2", [*m5, *SMALL, "--video", str(w / "clip.mp4"), "--denoise", "0.2", *out]),
        Case("--text-encoder is a VAE", [*m5, *SMALL, "--text-encoder", str(p["t5b"] / "vae"), *out]),
        Case("no VAE with --model", ["--model", str(p["t5b"] / "transformer"), *SMALL, *out]),
        Case("unreadable --image", ["--model", str(p["inp"]), *SMALL, "--image", str(w / "notes.png"), *out]),
        Case("--prompts-file not UTF-8", [*m5, *SMALL, "--prompts-file", str(w / "latin1.txt"), *out]),
        Case("--prompts-file missing", [*m5, *SMALL, "--prompts-file", str(w / "none.txt"), *out]),
        Case("prompt of 2000 words", [*m5, *SMALL, "--prompt", long_prompt, *out]),
        Case("Chinese prompt", [*m5, *SMALL, "--prompt", "一只熊猫在竹林里弹吉他", *out]),
    ]


def _hashes(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "" for p in paths]


def run_case(case: Case, pack: Path, timeout: float) -> dict[str, object]:
    before = _hashes(case.inputs)
    cmd = [sys.executable, "-m", "cogvideox_core", "generate", *case.argv]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=pack, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if case.signal_after_progress is not None:
        _signal_after_progress(proc, case.signal_after_progress, timeout)
    try:
        _out, err = proc.communicate(timeout=timeout)
        code: object = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
        code = f"still running after {timeout:.0f} s"
    text = err.decode(errors="replace")
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines() if ln.split("\r")[-1].strip()]
    return {"case": case.name, "exit": code, "seconds": round(time.monotonic() - start, 1),
            "traceback": "Traceback" in text, "stderr_bytes": len(err),
            "inputs_intact": _hashes(case.inputs) == before, "last_line": lines[-1] if lines else ""}


def _signal_after_progress(proc: subprocess.Popen, signum: int, timeout: float) -> None:
    seen, start = b"", time.monotonic()
    while b"/1000" not in seen and time.monotonic() - start < timeout:
        char = proc.stderr.read(1)
        if not char:
            return
        seen += char
    proc.send_signal(signum)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pack", type=Path, default=HERE, help="checkout of the pack to run")
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--only", help="run the cases whose name contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bad_inputs_"))
    pristine = work.with_name(work.name + "_pristine")
    try:
        cases = [c for c in _cases(_fixtures(work), work) if not args.only or args.only in c.name]
        shutil.copytree(work, pristine)
        print("| case | exit | s | traceback | stderr bytes | inputs intact | last line of stderr |")
        print("|---|---|---|---|---|---|---|")
        for case in cases:
            shutil.rmtree(work)  # every case on fresh files: an earlier case may have destroyed some
            shutil.copytree(pristine, work)
            r = run_case(case, args.pack, args.timeout)
            line = str(r["last_line"])
            line = line if len(line) <= 160 else line[:157] + "..."
            print(f"| {r['case']} | {r['exit']} | {r['seconds']} | {'yes' if r['traceback'] else 'no'} | "
                  f"{r['stderr_bytes']} | {'yes' if r['inputs_intact'] else 'NO'} | {line} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pristine, ignore_errors=True)


if __name__ == "__main__":
    main()
