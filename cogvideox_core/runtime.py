"""The protocol a host implements for the core, and the plain-torch default.

The core never decides on its own where a model lives or how progress is shown: it asks the
runtime. ComfyUI's adapter (``nodes/host/``) maps these calls onto ``ModelPatcher``,
``load_models_gpu``, ``ProgressBar`` and the interrupt flag; :class:`TorchRuntime` is the
standalone default used by the CLI and the tests. Layer classes and attention are not asked
here: a model gets them once, when it is built (the loaders' ``ops`` and ``attention``).
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Callable, Protocol

import torch
from torch import nn

from .errors import Interrupted

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, "torch.Tensor | None"], None]


class Runtime(Protocol):
    """What the core needs from its host."""

    device: torch.device  # where compute runs
    offload_device: torch.device  # where idle weights wait
    intermediate_device: torch.device  # where finished results are handed back

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        """Make ``model`` ready on ``device``, freeing other models as the host sees fit."""

    def free_memory(self) -> int:
        """Bytes free on ``device`` for activations (after loaded models)."""

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        """Report ``step`` of ``total``; ``preview`` is optional predicted clean latents."""

    def check_interrupt(self) -> None:
        """Raise :class:`~cogvideox_core.errors.Interrupted` if the user asked to stop."""


class TorchRuntime:
    """Standalone runtime: one device, a text progress bar on stderr, an interrupt flag."""

    def __init__(self, device: str | torch.device | None = None, show_progress: bool = True) -> None:
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.offload_device = torch.device("cpu")
        self.intermediate_device = torch.device("cpu")
        self.show_progress = show_progress
        self.interrupt_event = threading.Event()
        self._bar = _TextBar()
        self.last_step: tuple[int, int] | None = None  # (step, total) of the last progress call

    def load(self, model: nn.Module, extra_memory: int = 0) -> None:
        model.to(self.device)

    def free_memory(self) -> int:
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free)
        return _host_available_memory()

    def progress(self, step: int, total: int, preview: torch.Tensor | None = None) -> None:
        self.last_step = (step, total)
        if self.show_progress:
            self._bar.update(step, total)

    def interrupt(self) -> None:
        """Ask the run to stop at its next check (thread- and signal-handler-safe)."""
        self.interrupt_event.set()

    def check_interrupt(self) -> None:
        if self.interrupt_event.is_set():
            self.interrupt_event.clear()
            self._bar.end_line()
            where = "" if self.last_step is None else f" at step {self.last_step[0]}/{self.last_step[1]}"
            raise Interrupted(f"interrupted{where}")


def _host_available_memory() -> int:
    """RAM available to a new allocation: psutil, else Linux's MemAvailable, else 8 GiB."""
    try:
        import psutil  # in requirements.txt and in every ComfyUI

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


class _TextBar:
    """A minimal progress bar for the CLI (no tqdm dependency)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._open = False  # a bar line without its newline yet

    def end_line(self) -> None:
        """Finish a half-drawn bar line so the next message starts on its own line."""
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False

    def update(self, step: int, total: int) -> None:
        now = time.monotonic()
        if self._start is None or step <= 1:
            self._start = now
        width = 30
        done = int(width * step / max(total, 1))
        rate = (now - self._start) / max(step, 1)
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {step}/{total} {rate:.2f}s/it")
        self._open = step < total
        if step >= total:
            sys.stderr.write("\n")
            self._start = None
        sys.stderr.flush()


def call_progress(runtime: Any, step: int, total: int, preview: torch.Tensor | None = None) -> None:
    """Report progress and honour an interrupt in one call (used once per step)."""
    runtime.progress(step, total, preview)
    runtime.check_interrupt()
