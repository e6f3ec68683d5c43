"""A hook that blocks a lab worker's event loop, as a hung callback or C call would.

`SIGNAL` sent to the worker's main process makes its main thread, where the consumer's event
loop runs, wait while the file ``CIRCUITGATE_LAB_BLOCK`` names exists.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

__all__ = ("BLOCK_ENV", "SIGNAL", "install")

SIGNAL = signal.SIGUSR2
BLOCK_ENV = "CIRCUITGATE_LAB_BLOCK"


def _block_while_flagged(signum: int, frame: Any) -> None:
    flag = os.environ.get(BLOCK_ENV, "")
    while flag and os.path.exists(flag):
        time.sleep(0.05)


def install(**_: Any) -> None:
    """Install the handler (in the main process, as the worker starts)."""
    signal.signal(SIGNAL, _block_while_flagged)
