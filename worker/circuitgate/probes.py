"""Probes for ``circuitgate_probe``: a check run before the half-open trial, so a worker learns
that its device is still broken without sacrificing a real task to find out.

A probe is any callable taking no arguments: raising or returning False fails it. Those here
are picklable (they run in a pool process) and raise `ProbeFailed` saying what they saw.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import subprocess

__all__ = ("Command", "CudaDevice", "ProbeFailed", "command", "cuda_device")

logger = logging.getLogger(__name__)

_SAID_SIZE = 200


class ProbeFailed(RuntimeError):
    """The probe saw the device broken; the message says how."""


@dataclasses.dataclass(frozen=True)
class Command:
    """Passes when ``argv`` exits 0 within ``timeout`` seconds (None: the probe's own)."""

    argv: tuple[str, ...]
    timeout: float | None = None

    def __call__(self) -> bool:
        try:
            done = subprocess.run(self.argv, capture_output=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ProbeFailed(f"{self.argv[0]} did not finish within {self.timeout} s") from None
        except OSError as exc:
            raise ProbeFailed(f"{self.argv[0]} could not run: {exc}") from None
        if done.returncode != 0:
            said = (done.stderr or done.stdout).decode(errors="replace").strip()
            last = said.splitlines()[-1][:_SAID_SIZE] if said else "no output"
            raise ProbeFailed(f"{self.argv[0]} exited with {done.returncode}: {last}")
        return True


def command(*argv: str, timeout: float | None = None) -> Command:
    """A probe that runs a command, for example ``command("nvidia-smi", "-L")``."""
    if not argv:
        raise ValueError("command() needs the program to run")
    return Command(tuple(argv), timeout)


@dataclasses.dataclass(frozen=True)
class CudaDevice:
    """Checks CUDA device ``index`` with whichever of ``torch`` and ``pynvml`` is importable:
    with torch a small matrix product on the device (what a task would do first), with
    pynvml a query of the device's memory. With neither the probe cannot tell and passes
    (logging so once per process): the trial is the check then, as without a probe."""

    index: int = 0

    def __call__(self) -> bool:
        if importlib.util.find_spec("torch") is not None:
            return self._with_torch()
        if importlib.util.find_spec("pynvml") is not None:
            return self._with_nvml()
        _say_cannot_tell()
        return True

    def _with_torch(self) -> bool:
        import torch

        if not torch.cuda.is_available() or torch.cuda.device_count() <= self.index:
            raise ProbeFailed(f"torch sees no CUDA device {self.index}")
        device = torch.device("cuda", self.index)
        matrix = torch.ones((64, 64), device=device)
        product = float((matrix @ matrix).sum().item())  # waits for the device
        if product != 64.0**3:
            raise ProbeFailed(f"CUDA device {self.index} computed {product}, not {64.0**3}")
        return True

    def _with_nvml(self) -> bool:
        import pynvml

        try:
            pynvml.nvmlInit()
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
                pynvml.nvmlDeviceGetMemoryInfo(handle)
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError as exc:
            raise ProbeFailed(f"NVML on device {self.index}: {exc}") from None
        return True


def cuda_device(index: int = 0) -> CudaDevice:
    """A probe of CUDA device ``index`` (torch or pynvml, whichever is installed)."""
    return CudaDevice(index)


_warned: list[bool] = []


def _say_cannot_tell() -> None:
    if not _warned:
        _warned.append(True)
        logger.warning(
            "circuitgate.probes.cuda_device: neither torch nor pynvml is importable here,"
            " so the probe passes and the half-open trial is the check"
        )
