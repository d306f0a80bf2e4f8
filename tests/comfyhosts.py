"""Real ComfyUI servers for the host tests: two generations, one live server each.

``ensure_host(generation)`` builds a host with ``../shared/comfyhost/registry_host.sh`` in
``.cache/`` (reused while the pack's requirements are unchanged). :class:`LiveServer` starts it
headless on CPU through the shared harness (``run_workflow.py --keep-server``), then talks to it
as the editor does: ``/prompt``, ``/history``, ``/interrupt``, ``/object_info``, the i18n
endpoint and the websocket that carries progress and preview images. Standard library only.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMFYHOST = ROOT.parent / "shared" / "comfyhost"
CACHE = ROOT / ".cache"
GENERATIONS = {"2024": CACHE / "comfyhost", "2025": CACHE / "comfyhost25"}
TIMINGS: list[dict] = []  # host tests add rows (workflow x host -> frames, size, seconds)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Server log text without colour codes (the 2025 server colours its log lines)."""
    return ANSI.sub("", text)


def harness() -> Any:
    """The shared harness module (its UI -> API conversion and overrides)."""
    spec = importlib.util.spec_from_file_location("comfyhost_run_workflow", COMFYHOST / "run_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _stamp() -> str:
    return hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()


def ensure_host(generation: str) -> tuple[Path, Path]:
    """(python, ComfyUI folder) of the ``generation`` host, built if missing or stale."""
    dest = GENERATIONS[generation]
    python, stamp = dest / "venv" / "bin" / "python", dest / ".cogvideox-requirements"
    ready = (dest / "ComfyUI" / "main.py").is_file() and python.is_file()
    if not (ready and stamp.is_file() and stamp.read_text() == _stamp()):
        assert (COMFYHOST / "registry_host.sh").is_file(), f"no host scripts at {COMFYHOST}"
        subprocess.run(["bash", str(COMFYHOST / "registry_host.sh"), str(dest), "", generation],
                       check=True, stdin=subprocess.DEVNULL)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", str(dest / "constraints.txt"),
                        "-r", str(ROOT / "requirements.txt")], check=True, stdin=subprocess.DEVNULL)
        stamp.write_text(_stamp())
    return python, dest / "ComfyUI"


class Events:
    """The server's websocket for one client id: JSON messages and binary frames, collected by a
    reader thread (a minimal RFC 6455 client: the server's frames are unmasked)."""

    def __init__(self, port: int, client_id: str) -> None:
        self.json: list[dict] = []
        self.binary: list[bytes] = []
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self._sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head
        self._sock.settimeout(None)
        threading.Thread(target=self._read, daemon=True).start()

    def _exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def _read(self) -> None:
        try:
            while True:
                b0, b1 = self._exact(2)
                n = b1 & 0x7F
                n = struct.unpack(">H", self._exact(2))[0] if n == 126 else (
                    struct.unpack(">Q", self._exact(8))[0] if n == 127 else n)
                payload, opcode = self._exact(n), b0 & 0x0F
                if opcode == 1:
                    self.json.append(json.loads(payload))
                elif opcode == 2:
                    self.binary.append(payload)
                elif opcode == 8:
                    return
        except (OSError, ConnectionError, ValueError):
            return

    def of_type(self, kind: str) -> list[dict]:
        return [m.get("data", {}) for m in list(self.json) if m.get("type") == kind]

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


@dataclass
class Run:
    """One executed prompt: its history entry, the websocket traffic and the output files."""

    prompt_id: str
    status: str
    messages: list
    outputs: dict
    events: Events
    files: list[str] = field(default_factory=list)

    def message(self, kind: str) -> dict | None:
        return next((data for k, data in self.messages if k == kind), None)

    @property
    def cached(self) -> list[str]:
        return (self.message("execution_cached") or {}).get("nodes", [])


class LiveServer:
    """One ComfyUI server of ``generation`` with the pack, models from ``models_yaml``."""

    def __init__(self, generation: str, models_yaml: Path, run_dir: Path, *server_args: str) -> None:
        python, comfy_dir = ensure_host(generation)
        self.generation, self.run_dir = generation, run_dir
        summary = run_dir / "start.json"
        cmd = [sys.executable, str(COMFYHOST / "run_workflow.py"), "--comfy-dir", str(comfy_dir),
               "--python", str(python), "--pack", str(ROOT), "--extra-model-paths", str(models_yaml),
               "--run-dir", str(run_dir), "--summary-json", str(summary), "--keep-server",
               "--startup-timeout", "300", *[f"--server-arg={a}" for a in server_args]]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        m = re.search(r"leaving server running: pid (\d+)", proc.stdout)
        assert proc.returncode == 0 and m, proc.stdout[-4000:] + proc.stderr[-2000:]
        info = json.loads(summary.read_text())
        self.pid, self.port, self.log_path = int(m.group(1)), int(info["port"]), Path(info["server_log"])
        self.startup_s = float(info["startup_s"])
        self.base = f"http://127.0.0.1:{self.port}"
        self.object_info = self.get("/object_info")

    # ---- HTTP ----------------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=120) as r:
            return json.loads(r.read().decode())

    def post(self, path: str, payload: dict) -> tuple[int, Any]:
        req = urllib.request.Request(self.base + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                body = r.read().decode()
                return r.status, json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            body = e.read().decode()
            return e.code, json.loads(body) if body.startswith("{") else body

    def alive(self) -> bool:
        try:
            return "system" in self.get("/system_stats")
        except OSError:
            return False

    def log(self) -> str:
        return strip_ansi(self.log_path.read_text(errors="replace"))

    # ---- prompts -------------------------------------------------------------------------------
    def prompt_from_workflow(self, workflow: Path, small: dict[str, dict]) -> dict:
        """The API prompt of a UI workflow (converted as the editor does) with the inputs of
        ``small`` (node class -> {input: value}) set."""
        wf = json.loads(workflow.read_text())
        if "nodes" not in wf:
            prompt = wf
        else:
            prompt, _warnings = harness().convert_ui_to_api(wf, self.object_info)
        for node in prompt.values():
            node["inputs"].update(small.get(node["class_type"], {}))
        return prompt

    def submit(self, prompt: dict) -> tuple[str, Events]:
        client_id = str(uuid.uuid4())
        events = Events(self.port, client_id)
        status, resp = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        assert status == 200 and not resp.get("node_errors"), f"prompt rejected: {resp}"
        return resp["prompt_id"], events

    def wait(self, prompt_id: str, events: Events, timeout: float = 900) -> Run:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("completed") or status.get("status_str") in ("success", "error"):
                time.sleep(0.3)  # the last websocket messages
                run = Run(prompt_id, status.get("status_str"), status.get("messages") or [],
                          entry.get("outputs") or {}, events)
                run.files = self._files(run.outputs)
                return run
            assert self.alive(), "the server died:\n" + self.log()[-4000:]
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s")

    def run(self, prompt: dict, timeout: float = 900) -> Run:
        prompt_id, events = self.submit(prompt)
        try:
            return self.wait(prompt_id, events, timeout)
        finally:
            events.close()

    def _files(self, outputs: dict) -> list[str]:
        roots = {"output": self.run_dir / "output", "temp": self.run_dir / "temp" / "temp",
                 "input": self.run_dir / "input"}
        return [str(roots.get(item.get("type"), self.run_dir / "output") / item.get("subfolder", "") / item["filename"])
                for out in outputs.values() for items in out.values() if isinstance(items, list)
                for item in items if isinstance(item, dict) and "filename" in item]

    def stop(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        for _ in range(100):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.killpg(self.pid, signal.SIGKILL)


def pack_import_seconds(log: str) -> float:
    """The pack's line of the server's import times (colour codes stripped)."""
    m = re.search(r"^\s*([0-9.]+) seconds(?: \(IMPORT FAILED\))?: \S*" + re.escape(ROOT.name) + r"\s*$",
                  strip_ansi(log), re.M)
    assert m, f"the pack is not in the server's import times:\n{log[-3000:]}"
    assert "IMPORT FAILED" not in m.group(0), m.group(0)
    return float(m.group(1))
