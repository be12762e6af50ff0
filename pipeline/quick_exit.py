"""Leave the process without the interpreter's teardown once torch is loaded.

Python's own exit frees every module object one by one; with torch and a model loaded
that took 1.0-2.7 s on this machine (issue 11), paid by every run after its last line,
and by every Slurm requeue in a day of them. What the project needs of an exit is in
atexit handlers: multiprocessing joins and finalises its children, and the manifest
closes its databases (pipeline/manifest/database.py: SQLite merges its WAL into
manifest.sqlite when the last connection closes, which garbage collection used to do);
and in the logging handlers' flush. So: end the threads as Python would, run the atexit
handlers, flush logs and stdio, then os._exit with the same code (0.09 s instead of 1.08 s,
docs/design/startup.md). Only the CLI's own entry points call it; a process that never
imported torch exits the ordinary way.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading


def exit_process(code: int) -> None:
    """sys.exit(code), but without the interpreter's teardown once torch is imported."""
    if "torch" not in sys.modules:
        sys.exit(code)
    # What Python's own exit does first (Py_FinalizeEx -> threading._shutdown): the
    # threading atexit calls, which tell concurrent.futures' workers to end, then a join of
    # every non-daemon thread. Joining them without those calls waits forever.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
