"""`report`: one self-contained HTML page about a job, to read or send: nothing else to fetch.

The job's counts by state, its settings and model fingerprint, its failures (the first
MAX_FAILURES), the last probe's metrics (`OUT/probe/metrics.json`, if a probe was run)
and the plots (`OUT/plots/*.png`, if `plot` was run), each image embedded as base64.
Every text from the job (paths, reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline import fingerprint as fingerprints
from pipeline.manifest import open_manifest
from pipeline.probe import METRICS_FILE, PROBE_DIR
from pipeline.writer import atomic_write

MAX_FAILURES = 200
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:72em}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}img{max-width:100%;border:1px solid #eee}")


def _table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    e = lambda v: html.escape("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)))  # noqa: E731
    head = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def _probe_section(metrics: dict[str, Any]) -> str:
    keys = ["n", "auc", "log_loss", "accuracy"]
    rows = [[f"fold {f['fold']}", *(f.get(k) for k in keys)] for f in metrics["folds"]]
    rows.append(["overall (out of fold)", *(metrics["overall"].get(k) for k in keys)])
    classes = metrics["classes"]
    confusion = [[f"true {c}", *row] for c, row in zip(classes, metrics["overall"]["confusion"])]
    return (
        f"<h2>Probe: {html.escape(metrics['classifier'])}</h2>"
        f"<p>labels {html.escape(str(metrics.get('labels')))}; classes "
        + html.escape(", ".join(f"{c} ({metrics['counts'][c]})" for c in classes))
        + f"; {len(metrics['folds'])} grouped folds</p>"
        + _table(rows, ["", *keys])
        + "<p>confusion matrix (rows: true, columns: predicted)</p>"
        + _table(confusion, ["", *(f"predicted {c}" for c in classes)])
    )


def build(output_dir: str | os.PathLike[str], db: str | None) -> str:
    """The page's HTML."""
    out = Path(output_dir)
    manifest = open_manifest(out, db)
    try:
        counts, settings, failures = manifest.counts(), manifest.settings(), manifest.failures()
        fp = fingerprints.stored(manifest)
    finally:
        manifest.close()
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(str(out))}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Job {html.escape(str(out))}</h1><p>report made {time.strftime('%Y-%m-%d %H:%M:%S')}</p>",
        "<h2>Videos</h2>", _table([[counts[k] for k in counts]], list(counts)),
        "<h2>Settings</h2>",
        _table([[k, v] for k, v in sorted(settings.items()) if k != fingerprints.SETTING_KEY]),
        "<p>model fingerprint: " + html.escape(fingerprints.describe(fp) if fp else "unknown (no run of this version yet)") + "</p>",
        f"<h2>Failures ({len(failures)})</h2>",
    ]
    if failures:
        parts.append(_table([[p, e] for p, e in failures[:MAX_FAILURES]], ["path", "reason"]))
        if len(failures) > MAX_FAILURES:
            parts.append(f"<p>... and {len(failures) - MAX_FAILURES} more (status --json lists all)</p>")
    metrics_file = out / PROBE_DIR / METRICS_FILE
    if metrics_file.is_file():
        parts.append(_probe_section(json.loads(metrics_file.read_text())))
    else:
        parts.append("<h2>Probe</h2><p>no probe yet: run <code>probe --labels FILE</code></p>")
    plots = sorted((out / "plots").glob("*.png"))
    parts.append("<h2>Plots</h2>")
    if not plots:
        parts.append("<p>no plots yet: run <code>plot --labels FILE</code></p>")
    for png in plots:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(png.name)}</h3><img alt='{html.escape(png.name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write(output_dir: str | os.PathLike[str], db: str | None, out: str | None = None) -> Path:
    """Write the page (default OUTPUT_DIR/report.html), atomically."""
    dest = Path(out) if out else Path(output_dir) / "report.html"
    page = build(output_dir, db)
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dest, page.encode("utf-8"))
    return dest
