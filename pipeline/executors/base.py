"""The interface every executor implements; the registry is in pipeline/executors/__init__.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar


if TYPE_CHECKING:
    from pipeline.devices import Device
    from pipeline.engine import RunSummary
    from pipeline.settings import Options


class Executor(ABC):
    name: ClassVar[str]
    help: ClassVar[str]

    @abstractmethod
    def run(self, opts: "Options", devices: "list[Device]") -> "RunSummary":
        """Process the job's pending videos on `devices` until none is left or a stop is asked for."""
