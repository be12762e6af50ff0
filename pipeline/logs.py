"""One log file per command under the job's logs/, plus warnings on the terminal.

A day-long run under nohup is read through its log, so the file gets everything
at INFO with timestamps; the terminal only gets what needs a human now.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is now, so rich's live bar can print it above itself."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def start_log(output_dir: str | os.PathLike[str], command: str, path: Path | None = None) -> Path:
    """Log to a new file for this command, or append to `path` (engines share their parent's)."""
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = path or logs / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    # A full disk must not turn every log line into a traceback on the terminal.
    logging.raiseExceptions = False
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in list(root.handlers):
        if getattr(h, "_pipeline", False):
            root.removeHandler(h)
            h.close()
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler._pipeline = True  # type: ignore[attr-defined]
    console = _CurrentStderr()
    console.setLevel(logging.WARNING)
    console.addFilter(lambda record: record.name.startswith("pipeline"))  # libraries: file only
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console._pipeline = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    root.addHandler(console)
    logging.getLogger("pipeline").info("%s started: pid %d, argv %s", command, os.getpid(), sys.argv)
    return path
