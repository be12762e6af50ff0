"""The local executor: this machine's devices, one engine each.

One device: the engine runs in this process. Several (`--gpu 0,1`, `all`, `cpu,cpu`):
one engine process per device under a watching parent (pipeline/executors/processes.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pipeline.executors.base import Executor
from pipeline.signals import StopRequest

if TYPE_CHECKING:
    from pipeline.devices import Device
    from pipeline.engine import RunSummary
    from pipeline.settings import Options


class LocalExecutor(Executor):
    name = "local"
    help = "this machine: one engine per --gpu device (in this process when there is one)"

    def run(self, opts: "Options", devices: "list[Device]") -> "RunSummary":
        from pipeline.engine import RunSummary, run_engine
        from pipeline.executors.processes import run_many

        devs = devices
        if len(devs) == 1:
            with StopRequest() as stop:  # from the start: a stop during start-up is clean too
                return run_engine(opts, devs[0], stop)
        started = time.monotonic()
        done, failed, state, log_path = run_many(opts, devs)
        return RunSummary(f"{len(devs)} engines", done, failed, 0, time.monotonic() - started, state, log_path, 0)
