"""The run's live progress bar: job-wide done/total, videos/s, frames/s, ETA.

Rates are this run's own (its videos over its wall time), so a restart shows the
real speed rather than one inflated by work done before it. Off when stderr is not
a terminal: under nohup the log file carries the same figures.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunProgress:
    def __init__(self, counts: dict[str, int], num_frames: int, show: bool = True) -> None:
        self.total = counts["total"] - counts["missing"]
        self.before = counts["done"] + counts["failed"]
        self.num_frames = num_frames
        self.started = time.monotonic()
        console = Console(stderr=True)
        self.bar = Progress(
            TextColumn("[bold]{task.completed}/{task.total} videos"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[vps]:.1f} videos/s  {task.fields[fps]:.0f} frames/s  ETA {task.fields[eta]}"),
            console=console,
            disable=not (show and console.is_terminal),
            refresh_per_second=4,
        )
        self.task = self.bar.add_task("run", total=self.total, completed=self.before, vps=0.0, fps=0.0, eta="--:--:--")

    def update(self, done: int, failed: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        vps = done / elapsed
        left = self.total - self.before - done - failed
        eta = format_eta(left / vps) if vps > 0 else "--:--:--"
        self.bar.update(self.task, completed=self.before + done + failed, vps=vps, fps=vps * self.num_frames, eta=eta)

    def __enter__(self) -> "RunProgress":
        self.bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.bar.stop()
