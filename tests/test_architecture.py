"""The package's shape: no module imports one that imports it back, lazily or not.

A cycle (runner.py and launcher.py once imported each other) means two stages that
cannot be understood, tested or replaced apart. Base classes live in each seam's
base.py, so a registry (the package) may import its implementations and they the base.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:`: annotations, never executed."""
    return {
        id(n)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
        for n in ast.walk(block)
    }


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every pipeline module `path` imports when it runs, at the top or inside a function."""
    found = set()
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_no_import_cycles() -> None:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: imports_of(p, set(files)) - {m} for m, p in files.items()}
    cycles = []

    def visit(node: str, path: list[str], on_path: set[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in on_path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                on_path.add(nxt)
                visit(nxt, path + [nxt], on_path, done)
                on_path.discard(nxt)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], {start}, done)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


# An idle `run` and `status` answer from the manifest: torch and open_clip are never
# imported (a run with nothing to do must not pay seconds for them, nor a refused one).
_NO_TORCH_MAIN = (
    "import sys, cli; code = cli.main(sys.argv[1:]); "
    "print('imported:', [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]); sys.exit(code)"
)


def test_idle_run_status_and_refused_run_import_no_torch(tmp_path: Path, tiny_model: dict[str, str]) -> None:
    import re
    import subprocess
    import sys

    from tests.conftest import cli, model_args

    out = tmp_path / "out"
    (tmp_path / "none").mkdir()
    cli("scan", "--video-dir", str(tmp_path / "none"), "--output-dir", str(out), *model_args(tiny_model))
    cli("run", "--output-dir", str(out), "--gpu", "cpu")  # the job's first run loads its model: records its dim

    def main(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _NO_TORCH_MAIN, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)

    idle = main("run", "--output-dir", str(out))
    assert idle.returncode == 0, idle.stderr
    assert "imported: []" in idle.stdout, idle.stdout
    line = re.search(r"run finished: 0 done, 0 failed, 0 retries, 0\.00 videos/s; log: (\S+)", idle.stderr)
    assert line, idle.stderr
    log = Path(line.group(1))
    assert log.parent == out / "logs" and "nothing to run" in log.read_text()
    status = main("status", "--output-dir", str(out))
    assert status.returncode == 0 and "imported: []" in status.stdout, status.stdout + status.stderr
    refused = main("run", "--output-dir", str(out), "--num-frames", "4")
    assert refused.returncode == 1 and "imported: []" in refused.stdout, refused.stdout
    assert refused.stderr.strip().splitlines() == [
        "error: this job was created with num_frames=8, not 4: use another --output-dir for different settings"
    ], refused.stderr
