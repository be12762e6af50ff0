"""`--gpu` parsed once: the devices a run uses, as typed values the executor and the encoder share.

Before, the launcher split the list and the encoder parsed each entry again, and the two
disagreed (`--gpu all` on one GPU reached the encoder as the text 'all'). Now the spec
is checked for syntax when the settings are read (no torch needed) and resolved against
the machine's CUDA devices once, by the run; one device means one engine in this
process, several mean one engine process each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    """One device an engine runs on: `Device("cpu")` or `Device("cuda", 1)`."""

    kind: str  # "cpu" or "cuda"
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"

    @property
    def spec(self) -> str:
        """How `--gpu` names this one device (what an engine started for it is told)."""
        return "cpu" if self.kind == "cpu" else str(self.index)

    def torch(self) -> "torch.device":
        import torch

        return torch.device(self.kind, self.index) if self.index is not None else torch.device(self.kind)


def _bad(spec: str) -> PipelineError:
    return PipelineError(f"--gpu must be auto, cpu, all, or GPU indices like 0,1; got {spec!r}")


def parse_spec(spec: str) -> tuple[str, ...]:
    """The entries of a `--gpu` value, checked for syntax only (no torch, no CUDA query).

    `auto` and `all` stand alone; a list holds `cpu` and GPU indices (`0,1`, `cpu,cpu`).
    """
    text = str(spec).strip().lower()
    if text in ("auto", "all"):
        return (text,)
    parts = tuple(p.strip() for p in text.split(","))
    if len(parts) > 1 and not all(parts):
        raise PipelineError(f"--gpu {text}: empty device in the list")
    if not all(p == "cpu" or p.isdigit() for p in parts):
        raise _bad(str(spec))
    return parts


def cuda_count() -> int:
    """CUDA devices this process can use (0 without a working CUDA runtime)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_devices(spec: str) -> list[Device]:
    """The devices `--gpu spec` means on this machine; a GPU that is not there is an error.

    `auto`: CUDA device 0 if there is one, else the CPU (`warn_on_fallback` says so once
    the run's log is open). `all`: every CUDA device (one on a one-GPU machine, which is
    then a plain single-engine run).
    """
    parts = parse_spec(spec)
    if parts == ("auto",):
        return [Device("cuda", 0) if cuda_count() else Device("cpu")]
    count = cuda_count() if any(p != "cpu" for p in parts) else 0
    if parts == ("all",):
        if not count:
            raise PipelineError("--gpu all: no CUDA GPU is available")
        return [Device("cuda", i) for i in range(count)]
    devices = []
    for p in parts:
        if p == "cpu":
            devices.append(Device("cpu"))
            continue
        index = int(p)
        if index >= count:
            have = f"only {count} CUDA device(s)" if count else "no CUDA GPU is available"
            raise PipelineError(f"--gpu {index} asked for, but {have}")
        devices.append(Device("cuda", index))
    return devices


def warn_on_fallback(spec: str, device: Device) -> None:
    """`--gpu auto` that found no GPU: one warning, in the run's log and on the terminal."""
    if device.kind == "cpu" and parse_spec(spec) == ("auto",):
        log.warning("no CUDA GPU found: running on the CPU, which is much slower")
