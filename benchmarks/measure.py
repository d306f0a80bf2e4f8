"""What the benchmarks measure alike: the peak memory of a call."""
from __future__ import annotations

import threading
import time
from typing import Callable

import psutil
import torch


class PeakMemory:
    """Peak memory of a call above what was in use before it: the CUDA allocator's peak, or the
    process's resident set sampled every millisecond on the CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def measure(self, fn: Callable[[], object]) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        proc, peak, done = psutil.Process(), [0], threading.Event()
        before = proc.memory_info().rss

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            fn()
        finally:
            done.set()
            sampler.join()
        return max(peak[0] - before, 0)
