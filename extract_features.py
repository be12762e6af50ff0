"""The original guide's entry point, word for word: `python extract_features.py --video_dir ./data/videos
--output_dir ./features --batch_size 64 --num_frames 8 --num_workers 4 --save_format npy --gpu_id 0`,
or `--config configs/clip_baseline.yaml`.

It is `python cli.py extract` (scan, run, export) under the guide's name, with the same
options: `--gpu_id N` is `--gpu N`, `--save_format` is `--format`. The job it leaves is
an ordinary one: rerun the same line after a crash to resume, or use cli.py's commands.
"""

from __future__ import annotations

import sys

from cli import extract_app, main
from pipeline.quick_exit import exit_process

if __name__ == "__main__":
    exit_process(main(sys.argv[1:], extract_app, prog_name="extract_features.py"))
