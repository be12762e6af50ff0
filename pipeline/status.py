"""The `status` command: where a job stands, read from the manifest alone.

Safe to run while runs write (read transactions only), so `--watch` can sit in
another terminal for the whole day.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from pipeline.manifest import Manifest
from pipeline.progress import format_eta

LIVE_SECONDS = 120.0  # a run whose heartbeat is older than this is not counted as current


def report(manifest: Manifest, max_failures: int | None = None) -> dict[str, Any]:
    counts = manifest.counts()
    settings = manifest.settings()
    now = time.time()
    runs = manifest.runs()
    current = [r for r in runs if r["state"] == "running" and now - r["heartbeat_at"] < LIVE_SECONDS]
    basis = current or runs[-1:]
    rate = 0.0
    for r in basis:
        end = r["ended_at"] or r["heartbeat_at"] if r not in current else now
        rate += r["videos_done"] / max(end - r["started_at"], 1e-9)
    left = counts["pending"] + counts["running"]
    eta = left / rate if rate > 0 and left else (0.0 if not left else None)
    num_frames = int(settings.get("num_frames", 0) or 0)
    return {
        **{k: counts[k] for k in ("total", "pending", "running", "done", "failed", "missing")},
        "settings": settings,
        "current_runs": len(current),
        "videos_per_s": round(rate, 3),
        "frames_per_s": round(rate * num_frames, 1),
        "eta_s": None if eta is None else round(eta, 1),
        "runs": [
            {k: r[k] for k in ("id", "state", "device", "started_at", "ended_at", "videos_done", "videos_failed", "message")}
            for r in runs[-10:]
        ],
        "failures": [{"path": p, "error": e} for p, e in manifest.failures(max_failures)],
        "decoded_on": manifest.decoded_on(),  # done videos by decoder: gpu, cpu, unknown (before it was recorded)
    }


def decoded_on_text(on: dict[str, int]) -> str | None:
    """`812 of 1000 done videos on the GPU (81%)`; None before any video is done."""
    total = sum(on.values())
    if not total:
        return None
    gpu = on.get("gpu", 0)
    text = f"{gpu} of {total} done videos on the GPU ({100 * gpu / total:.0f}%)"
    if on.get("unknown"):
        text += f"; {on['unknown']} done before this was recorded"
    return text


def to_json(rep: dict[str, Any]) -> str:
    return json.dumps(rep, ensure_ascii=False)


def render(rep: dict[str, Any], max_failures: int = 20) -> Group:
    counts = Table(title="videos", show_header=True)
    for key in ("total", "pending", "running", "done", "failed", "missing"):
        counts.add_column(key, justify="right")
    counts.add_row(*(str(rep[k]) for k in ("total", "pending", "running", "done", "failed", "missing")))

    speed = Table.grid(padding=(0, 2))
    which = f"{rep['current_runs']} run(s) now" if rep["current_runs"] else "last run"
    speed.add_row("throughput", f"{rep['videos_per_s']:.2f} videos/s, {rep['frames_per_s']:.0f} frames/s ({which})")
    speed.add_row("ETA", format_eta(rep["eta_s"]) if rep["pending"] + rep["running"] else "done")
    if decoded := decoded_on_text(rep.get("decoded_on", {})):
        speed.add_row("decoded", decoded)
    for key, value in sorted(rep["settings"].items()):
        speed.add_row(key, short_fingerprint(value) if key == "model_fingerprint" else value)

    parts: list[Any] = [counts, speed]
    if rep["failures"]:
        fails = Table(title=f"failures ({len(rep['failures'])})", show_header=True)
        fails.add_column("path", overflow="fold")
        fails.add_column("error", overflow="fold")
        for f in rep["failures"][:max_failures]:
            fails.add_row(f["path"], f["error"])
        if len(rep["failures"]) > max_failures:
            fails.add_row(f"... {len(rep['failures']) - max_failures} more", "(status --json lists all)")
        parts.append(fails)
    return Group(*parts)


def show(manifest: Manifest, as_json: bool, watch: bool, interval: float = 2.0) -> None:
    console = Console()
    if as_json:
        print(to_json(report(manifest)))
        return
    if not watch:
        console.print(render(report(manifest)))
        return
    try:
        if not console.is_terminal:  # redirected (a file, nohup, a pipe): Live would write nothing at all
            while True:
                console.print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}")
                console.print(render(report(manifest)))
                console.file.flush()  # each snapshot whole, even if the watch is killed
                time.sleep(interval)
        with Live(render(report(manifest)), console=console, refresh_per_second=1) as live:
            while True:
                time.sleep(interval)
                live.update(render(report(manifest)))
    except KeyboardInterrupt:
        pass


def short_fingerprint(value: str) -> str:
    """The table shows the fingerprint's digest and weights; --json and `verify` have all of it."""
    import json

    try:
        fp = json.loads(value)
        return f"{fp['digest'][:16]} (weights {str(fp['weights'])[:23]})"
    except (ValueError, KeyError, TypeError):
        return value
