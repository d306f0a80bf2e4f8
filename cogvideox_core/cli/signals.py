"""SIGINT and SIGTERM as the runtime's interrupt: the sampler stops at its next step, the
command exits 130 with one line and writes nothing. A second signal stops at once."""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Any, Iterator

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_to(runtime: Any) -> Iterator[None]:
    """Within the block the first SIGINT/SIGTERM calls ``runtime.interrupt()`` (the run stops at
    its next check); a second raises ``KeyboardInterrupt`` where the program is (loading
    weights checks nothing for minutes). Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = []

    def handler(signum: int, _frame: object) -> None:
        seen.append(signum)
        if len(seen) > 1:
            raise KeyboardInterrupt
        logger.warning("%s: stopping at the next step (again to stop now)", signal.Signals(signum).name)
        runtime.interrupt()

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = ["interrupts_to"]
