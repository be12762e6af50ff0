"""Executors: how a run's engines are started, watched and stopped.

The engine (pipeline/engine.py) is one device's run loop; it knows nothing of how many
of it run or where. An executor takes the run's options and devices, runs engines until
the job is done or a stop is asked for, and sums them up. The manifest stays the one
truth about claims and commits, so every executor inherits exactly-once from it
(docs/design/claim-protocol.md). Adding one (Ray, Slurm) is one module here and one
entry in EXECUTORS (docs/design/extending.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.registry import Registry
from pipeline.executors.base import Executor

if TYPE_CHECKING:
    from pipeline.devices import Device
    from pipeline.engine import RunSummary
    from pipeline.settings import Options

__all__ = ["EXECUTORS", "Executor", "run"]


EXECUTORS = Registry("executor", {
    "local": "pipeline.executors.local:LocalExecutor",
    "ray": "pipeline.executors.ray:RayExecutor",
})


def run(opts: "Options", devices: "list[Device] | None" = None) -> "RunSummary":
    """`devices`: the run's --gpu resolved by the caller (extract does, before scanning), else here."""
    executor = EXECUTORS.load(opts.run.executor)
    return executor().run(opts, opts.run.devices() if devices is None else devices)
