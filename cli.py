"""Command line: parses flags, then calls into pipeline/. No logic lives here.

Every flag also reads from --config FILE (the command line wins) and is accepted with
underscores too (--video_dir), as the original guide spelled them.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from pipeline.errors import PipelineError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Batch CLIP feature extraction for large video collections, as a resumable job.",
)


def _underscored(name: str) -> str:
    return "--" + name[2:].replace("-", "_")


def _opt(*names: str, help: str) -> Any:
    under = [_underscored(n) for n in names if n.startswith("--") and "-" in n[2:]]
    return typer.Option(*names, *under, help=help, show_default=False)


def _flag(name: str, help: str) -> Any:
    off = name.replace("--", "--no-", 1)
    return typer.Option(f"{name}/{off}", _underscored(name), help=help, show_default=False)


Config = Annotated[Optional[str], _opt("--config", help="YAML file of option: value (flags win).")]
OutputDir = Annotated[Optional[str], _opt("--output-dir", help="The job's directory [default: features].")]
Db = Annotated[Optional[str], _opt("--db", help="Manifest database URL [default: OUTPUT_DIR/manifest.sqlite].")]
VideoDir = Annotated[Optional[str], _opt("--video-dir", help="Folder searched recursively for videos.")]
Extensions = Annotated[Optional[str], _opt("--extensions", help="Comma-separated file extensions to register.")]
Model = Annotated[Optional[str], _opt("--model", help="open_clip model name or config .json [default: ViT-B-32].")]
Pretrained = Annotated[
    Optional[str], _opt("--pretrained", help="open_clip tag, local checkpoint path, or none [default: openai].")
]
NumFrames = Annotated[Optional[int], _opt("--num-frames", help="Frames sampled per video [default: 8].")]
Sampling = Annotated[
    Optional[str], _opt("--sampling", help="exact, or keyframes: the keyframe nearest each target (approximate, much faster) [default: exact].")
]
Resize = Annotated[
    Optional[str], _opt("--resize", help="swscale (one C call from YUV, default) or pil (open_clip's exact arithmetic, slower).")
]
Decoder = Annotated[
    Optional[str], _opt("--decoder", help="cpu, or nvdec: decode on the run's GPU, falling back to the CPU per video [default: cpu].")
]
DecodeThreads = Annotated[
    Optional[int], _opt("--decode-threads", help="FFmpeg threads per decode worker [default: cores / workers].")
]
Cores = Annotated[Optional[int], _opt("--cores", help="CPU cores the run may use [default: all it may run on].")]
SaveFrames = Annotated[Optional[bool], _flag("--save-frames", help="Keep per-frame features too.")]
Gpu = Annotated[Optional[str], _opt("--gpu", help="auto, cpu, or a CUDA device index [default: auto].")]
BatchSize = Annotated[Optional[int], _opt("--batch-size", help="Videos per forward pass [default: 64].")]
NumWorkers = Annotated[Optional[int], _opt("--num-workers", help="Decode processes [default: one per core].")]
RetryFailed = Annotated[Optional[bool], _flag("--retry-failed", help="Try failed videos again.")]
MaxAttempts = Annotated[Optional[int], _opt("--max-attempts", help="Decode attempts before a video fails [default: 2].")]
ShardSize = Annotated[Optional[int], _opt("--shard-size", help="Videos per shard file [default: 512].")]
LeaseSeconds = Annotated[Optional[float], _opt("--lease-seconds", help="Claim lease, renewed while alive [default: 300].")]
DecodeTimeout = Annotated[
    Optional[float], _opt("--decode-timeout", help="Seconds a video may decode (+1 s per MB) before it fails as a hang [default: 60].")
]
Format = Annotated[
    Optional[str],
    _opt("--format", help="npy (features.npy + video_paths.txt) or pkl (features.pkl; pickle: load only from trusted sources)."),
]


def _options(config: str | None, **flags: Any) -> Any:
    from pipeline.settings import resolve

    return resolve(flags, config)


@app.command()
def scan(
    video_dir: VideoDir = None, output_dir: OutputDir = None, db: Db = None, model: Model = None,
    pretrained: Pretrained = None, num_frames: NumFrames = None, sampling: Sampling = None, resize: Resize = None,
    save_frames: SaveFrames = None, extensions: Extensions = None, config: Config = None,
) -> None:
    """Register every video under --video-dir in the job's manifest (creates the job)."""
    from pipeline import commands

    opts = _options(config, video_dir=video_dir, output_dir=output_dir, db=db, model=model, pretrained=pretrained,
                    num_frames=num_frames, sampling=sampling, resize=resize, save_frames=save_frames,
                    extensions=extensions)
    commands.scan(opts)


@app.command()
def run(
    output_dir: OutputDir = None, db: Db = None, gpu: Gpu = None, batch_size: BatchSize = None,
    num_workers: NumWorkers = None, retry_failed: RetryFailed = None, max_attempts: MaxAttempts = None,
    shard_size: ShardSize = None, lease_seconds: LeaseSeconds = None, decode_timeout: DecodeTimeout = None,
    decoder: Decoder = None, decode_threads: DecodeThreads = None, cores: Cores = None, model: Model = None,
    pretrained: Pretrained = None, num_frames: NumFrames = None, sampling: Sampling = None, resize: Resize = None,
    save_frames: SaveFrames = None, config: Config = None,
) -> None:
    """Process pending videos until none is left; rerun it after any crash to resume."""
    from pipeline import commands

    opts = _options(config, output_dir=output_dir, db=db, gpu=gpu, batch_size=batch_size, num_workers=num_workers,
                    retry_failed=retry_failed, max_attempts=max_attempts, shard_size=shard_size,
                    lease_seconds=lease_seconds, decode_timeout=decode_timeout, decoder=decoder,
                    decode_threads=decode_threads, cores=cores, model=model, pretrained=pretrained,
                    num_frames=num_frames, sampling=sampling, resize=resize, save_frames=save_frames)
    raise typer.Exit(commands.run(opts))


@app.command()
def status(
    output_dir: OutputDir = None, db: Db = None, config: Config = None,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh live until Ctrl-C.")] = False,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Counts by state, throughput, ETA, the job's settings and its failures."""
    from pipeline import commands

    commands.status(_options(config, output_dir=output_dir, db=db), as_json=json, watch=watch)


@app.command()
def export(output_dir: OutputDir = None, db: Db = None, format: Format = None, config: Config = None) -> None:
    """Write features.npy + video_paths.txt, or features.pkl (load pickles only from trusted sources)."""
    from pipeline import commands

    commands.export(_options(config, output_dir=output_dir, db=db, format=format))


@app.command()
def extract(
    video_dir: VideoDir = None, output_dir: OutputDir = None, db: Db = None, model: Model = None,
    pretrained: Pretrained = None, num_frames: NumFrames = None, sampling: Sampling = None, resize: Resize = None,
    save_frames: SaveFrames = None, extensions: Extensions = None, gpu: Gpu = None, batch_size: BatchSize = None,
    num_workers: NumWorkers = None, decoder: Decoder = None, decode_threads: DecodeThreads = None,
    cores: Cores = None, retry_failed: RetryFailed = None, max_attempts: MaxAttempts = None,
    shard_size: ShardSize = None, format: Format = None, config: Config = None,
) -> None:
    """The original one-shot command: scan, run and export in one go."""
    from pipeline import commands

    opts = _options(config, video_dir=video_dir, output_dir=output_dir, db=db, model=model, pretrained=pretrained,
                    num_frames=num_frames, sampling=sampling, resize=resize, save_frames=save_frames,
                    extensions=extensions, gpu=gpu, batch_size=batch_size, num_workers=num_workers, decoder=decoder,
                    decode_threads=decode_threads, cores=cores, retry_failed=retry_failed,
                    max_attempts=max_attempts, shard_size=shard_size, format=format)
    raise typer.Exit(commands.extract(opts))


def main(argv: list[str] | None = None) -> int:
    try:
        code = app(args=argv, standalone_mode=False, prog_name="cli.py")
        return code if isinstance(code, int) else 0  # without standalone mode, Exit is returned
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except typer.TyperException as e:  # typer's own click: usage errors and bad values
        if type(e).__name__ == "NoArgsIsHelpError":
            print(e.format_message())
            return 0
        message = " ".join(e.format_message().split())
        print(f"error: {message} (see --help)", file=sys.stderr)
        return 2
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
