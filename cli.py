"""Command line: the commands, with their options from the option table; no logic lives here.

Every option is defined once, in pipeline/settings.py (OPTIONS); each command below takes
the options that name it, and `extract` every option of scan, run and export. Every flag
also reads from --config FILE (the command line wins) and is accepted with underscores
too (--video_dir), as the original guide spelled them; `extract_features.py` is the
guide's own entry to `extract`.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from pipeline.errors import PipelineError
from pipeline.options import command
from pipeline.settings import OPTIONS, resolve

_APP = dict(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
app = typer.Typer(
    **_APP, no_args_is_help=True,
    help="Batch CLIP feature extraction for large video collections, as a resumable job.",
)
# The original guide's one command (`python extract_features.py --video_dir ... --gpu_id 0`).
extract_app = typer.Typer(**_APP)


@app.command()
@command(OPTIONS, "scan")
def scan(config: str | None, **flags: Any) -> None:
    """Register every video of every location (each --video-dir, each --video-list) in the job's manifest (creates the job)."""
    from pipeline import commands

    commands.scan(resolve(flags, config))


@app.command()
@command(OPTIONS, "run")
def run(config: str | None, **flags: Any) -> None:
    """Process pending videos until none is left; rerun it after any crash to resume."""
    from pipeline import commands

    raise typer.Exit(commands.run(resolve(flags, config)))


@app.command()
@command(OPTIONS, "status")
def status(config: str | None, watch: bool, json: bool, **flags: Any) -> None:
    """Counts by state, throughput, ETA, the job's settings and its failures."""
    from pipeline import commands

    commands.status(resolve(flags, config), as_json=json, watch=watch)


@app.command()
@command(OPTIONS, "export")
def export(config: str | None, **flags: Any) -> None:
    """Write features.npy + video_paths.txt, or features.pkl (load pickles only from trusted sources)."""
    from pipeline import commands

    commands.export(resolve(flags, config))


@app.command()
@command(OPTIONS, "index")
def index(config: str | None, json: bool, rebuild: bool, ivf_min: int | None, **flags: Any) -> None:
    """Build (or extend) a faiss index of the done videos' features in OUTPUT_DIR/index/."""
    from pipeline import commands

    commands.index(resolve(flags, config), as_json=json, rebuild=rebuild, ivf_min=ivf_min)


@app.command()
@command(OPTIONS, "search")
def search(config: str | None, json: bool, text: str | None, video: str | None, top_k: int, **flags: Any) -> None:
    """The done videos nearest a text (--text) or a video (--video), with their cosine."""
    from pipeline import commands

    commands.search(resolve(flags, config), as_json=json, text=text, video=video, top_k=top_k)


@app.command()
@command(OPTIONS, "dedup")
def dedup(config: str | None, json: bool, threshold: float, out: str | None, **flags: Any) -> None:
    """Groups of near-duplicate done videos (pairs with cosine >= --threshold), to CSV or JSON."""
    from pipeline import commands

    commands.dedup(resolve(flags, config), as_json=json, threshold=threshold, out=out)


@app.command()
@extract_app.command()
@command(OPTIONS, "extract")
def extract(config: str | None, **flags: Any) -> None:
    """The original one-shot command: scan, run and export in one go (every option of the three)."""
    from pipeline import commands

    raise typer.Exit(commands.extract(resolve(flags, config)))


# -- issue 13: checking and using the features


@app.command()
@command(OPTIONS, "verify")
def verify(config: str | None, json: bool, **flags: Any) -> None:
    """Check every done video's feature: in its shard, finite, unit norm, sidecars and model fingerprint agree."""
    from pipeline import commands

    raise typer.Exit(commands.verify(resolve(flags, config), as_json=json))


@app.command()
@command(OPTIONS, "probe")
def probe(config: str | None, json: bool, predict: bool, out: str | None, **flags: Any) -> None:
    """Cross-validate a classifier on the features (--labels FILE) and save it; --predict scores the job's videos."""
    from pipeline import commands

    commands.probe(resolve(flags, config), as_json=json, predict=predict, out=out)


@app.command()
@command(OPTIONS, "plot")
def plot(config: str | None, out: str | None, **flags: Any) -> None:
    """PNGs of the feature space coloured by label (--method pca|tsne|umap) and of similarity to class centroids."""
    from pipeline import commands

    commands.plot(resolve(flags, config), out=out)


@app.command()
@command(OPTIONS, "report")
def report(config: str | None, out: str | None, **flags: Any) -> None:
    """One self-contained HTML page: counts, failures, the probe's metrics, the plots."""
    from pipeline import commands

    commands.report(resolve(flags, config), out=out)


@app.command()
@command(OPTIONS, "tune")
def tune(config: str | None, sample: int, out: str | None, **flags: Any) -> None:
    """Measure decode and encode on a sample of the job's videos; write the settings to run with."""
    from pipeline import commands

    commands.tune(resolve(flags, config), sample, out)


def main(argv: list[str] | None = None, command_app: typer.Typer = app, prog_name: str = "cli.py") -> int:
    """Run a command; bad input is one `error:` line on stderr (usage: exit 2, the pipeline's: 1)."""
    try:
        code = command_app(args=argv, standalone_mode=False, prog_name=prog_name)
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
    from pipeline.quick_exit import exit_process

    exit_process(main())
