"""Inputs cannot make the tool run code or write outside its output directory."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np

from pipeline.samples import Spec, make_video
from tests.conftest import cli, model_args, status_json

HOSTILE_NAMES = [
    "-rf.mp4", "$(touch PWNED).mp4", "..mp4", "a\nb.mp4", "semi;colon`x`.mp4", "ünïcödé 视频.mp4",
    "x" * 200 + ".mp4", "%s%n.mp4", "' OR 1=1 --.mp4",
]


def snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_hostile_file_names_stay_inside_the_output(tmp_path: Path, tiny_model) -> None:
    src = tmp_path / "v"
    for i, name in enumerate(HOSTILE_NAMES):
        make_video(src / name, Spec("x.mp4", frames=4 + i, width=32, height=32))
    out = tmp_path / "out"
    work = tmp_path / "cwd"
    work.mkdir()
    before = snapshot(tmp_path)
    cli("extract", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model),
        "--gpu", "cpu", "--num-workers", "1", cwd=work)
    cli("export", "--output-dir", str(out), "--format", "pkl", cwd=work)
    created = snapshot(tmp_path) - before
    outside = [p for p in created if out not in p.parents and p != out]
    assert not outside, f"written outside the output directory: {outside}"
    assert not list(tmp_path.rglob("PWNED"))
    st = status_json(out)
    assert st["done"] == len(HOSTILE_NAMES)
    with open(out / "features.pkl", "rb") as f:
        assert sorted(pickle.load(f)["video_paths"]) == sorted(str(src / n) for n in HOSTILE_NAMES)
    assert np.load(out / "features.npy").shape == (len(HOSTILE_NAMES), 512)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


def test_checkpoints_load_weights_only(tmp_path: Path, tiny_model) -> None:
    mark = tmp_path / "EXECUTED"
    os.environ["EVIL_MARK"] = str(mark)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    src = tmp_path / "v"
    make_video(src / "a.mp4", Spec("a.mp4", frames=4, width=32, height=32))
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), "--model", tiny_model["model"], "--pretrained", str(evil))
    proc = cli("run", "--output-dir", str(out), "--gpu", "cpu", check=False)
    assert proc.returncode == 1 and "cannot load model" in proc.stderr
    assert not mark.exists(), "the checkpoint's pickle ran code"


def test_pickle_warning_in_help_and_readme() -> None:
    assert "trusted" in cli("export", "--help").stdout
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "trust" in readme and "pickle" in readme
