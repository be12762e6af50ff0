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


# Device nodes a GPU driver makes; torch.cuda finds no device where none of them exists
# (NVIDIA's, Jetson's nvgpu, WSL2's GPU paravirtualisation, ROCm's HIP build of torch.cuda).
GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/nvhost-ctrl", "/dev/nvmap", "/dev/dxg", "/dev/kfd")


def no_gpu_driver() -> bool:
    """True where no GPU driver is loaded, so CUDA cannot be there: `--gpu auto` on a
    CPU-only box is then answered without importing torch (about 2 s that would otherwise
    come before the decode workers start; docs/design/startup.md). Off Linux, or where a
    caller has already imported torch (tests patch its CUDA answers), torch is asked; an
    explicit `--gpu N` or `all` always asks torch."""
    import os
    import sys

    return sys.platform.startswith("linux") and "torch" not in sys.modules and not any(
        os.path.exists(p) for p in GPU_DRIVER_PATHS)


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
        return [Device("cuda", 0) if not no_gpu_driver() and cuda_count() else Device("cpu")]
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
    """`--gpu auto` that found no GPU: one warning, in the run's log and on the terminal.

    Where nvidia-smi sees a GPU that torch cannot use, the line says why (issue 11: a
    driver older than the CUDA build of torch falls back silently otherwise)."""
    if device.kind == "cpu" and parse_spec(spec) == ("auto",):
        why = unusable_gpu_reason()
        if why:
            log.warning("no CUDA GPU found by torch: running on the CPU, which is much slower; %s", why)
        else:
            log.warning("no CUDA GPU found: running on the CPU, which is much slower")


def nvidia_smi_gpus(timeout: float = 10.0) -> tuple[list[str], str | None, str | None]:
    """What the NVIDIA driver sees, from `nvidia-smi` on PATH: (GPU names, driver version,
    the newest CUDA version the driver supports). ([], None, None) without it."""
    import re
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], None, None
    try:
        query = subprocess.run(
            [exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=timeout,
        )
        banner = subprocess.run([exe], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return [], None, None
    rows = [[p.strip() for p in line.split(",")] for line in query.stdout.splitlines() if line.strip()]
    names = [r[0] for r in rows if query.returncode == 0 and r[0]]
    driver = rows[0][1] if names and len(rows[0]) > 1 else None
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", banner.stdout)
    return names, driver, cuda.group(1) if cuda else None


def unusable_gpu_reason() -> str | None:
    """Why torch sees no GPU while nvidia-smi sees one (None when nvidia-smi sees none):
    a CPU-only torch build, or torch's CUDA initialisation error beside the driver's
    CUDA version and the one torch was built for."""
    names, driver, driver_cuda = nvidia_smi_gpus()
    if not names:  # the usual CPU-only box: answered without importing torch
        return None
    import torch

    seen = f"nvidia-smi sees {len(names)} GPU(s) ({names[0]}, driver {driver or '?'}, CUDA {driver_cuda or '?'})"
    built = torch.version.cuda
    if built is None:
        return f"{seen}, but this torch {torch.__version__} is a CPU-only build: install a CUDA build of torch"
    error = None
    try:
        torch.cuda.init()
    except Exception as e:  # noqa: BLE001 - its message is the reason we want
        error = " ".join(str(e).split())[:300]
    reason = f"{seen}, but torch {torch.__version__} was built for CUDA {built}"
    if error:
        reason += f" and torch.cuda says: {error}"
    if driver_cuda and _older(driver_cuda, built):
        reason += f"; the driver supports CUDA {driver_cuda} at most: update the NVIDIA driver or use a torch built for it"
    return reason


def _older(a: str, b: str) -> bool:
    """Version `a` is older than `b` (dotted numbers)."""
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) for p in v.split(".") if p.isdigit())
    return parts(a) < parts(b)


def describe(device: Device) -> str:
    """`cuda:0 (NVIDIA H200, 139 GiB)` or `cpu`: the device and what it is."""
    if device.kind != "cuda":
        return str(device)
    import torch

    props = torch.cuda.get_device_properties(device.index or 0)
    return f"{device} ({props.name}, {props.total_memory / 2**30:.0f} GiB)"


def announce(devices: list[Device], spec: str) -> str:
    """Say at start-up which devices the run uses: on the terminal (always, not only as a
    warning) and in the run's log. Returns the line."""
    import sys

    named = ", ".join(describe(d) for d in devices)
    if all(d.kind == "cpu" for d in devices):
        named += f" (asked for: --gpu {spec})" if parse_spec(spec) != ("auto",) else " (no GPU found)"
    line = f"run on {named}"
    log.info(line)
    print(line, file=sys.stderr, flush=True)
    return line
