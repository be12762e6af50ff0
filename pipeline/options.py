"""The option table's machinery: each option is one record, and commands and config keys come from it.

An option is declared once, as a field of the settings class it belongs to
(`pipeline/settings.py`: JobSettings, RunSettings, Paths, ExportSettings) through
`setting(...)`, or in the short list of command-only options there (`--config`,
`status --watch/--json`). Its name, type and default are the field's; its help, the
commands that take it, its aliases and its limits are the record's. From that table:

- each typer command's parameters (`command()` builds a signature typer reads, so a
  command takes exactly the options that name it, and `extract` every option of scan,
  run and export);
- the config file's keys (the same names and aliases, dashes or underscores);
- type coercion of config values (`coerce`) and the per-option checks (`check`);
- `--help`, with the default shown from the default itself.

This module knows no particular option and imports nothing of the pipeline, so
settings, the CLI and the tests can all use it without cycles.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Annotated, Any, Callable, Optional, Sequence

from pipeline.errors import PipelineError

# The commands. `extract` is scan, run and export in one go, so it takes all of their options.
COMMANDS = ("scan", "run", "status", "export", "extract", "tune")
COMMANDS += ("verify", "probe", "plot", "report")  # issue 13: checking and using the features
COMMANDS += ("index", "search", "dedup")  # after the run: the job's features put to use
EXTRACT_OF = frozenset({"scan", "run", "export"})

_META = "option"


@dataclass(frozen=True)
class Option:
    """One option: everything the CLI, the config file and the validation need to know."""

    name: str  # the settings field and config key; flags are --name-with-dashes and --name_with_underscores
    kind: type  # str, int, float, bool, or tuple (a comma-separated list on the command line)
    default: Any
    help: str
    commands: frozenset[str]  # commands that take it as a flag (extract implied); empty: config file only
    section: str  # "job", "run", "paths", "export" (settings), or "command" (a flag of the command itself)
    aliases: tuple[str, ...] = ()  # other names for it, as flags and as config keys (the guide's --gpu_id)
    choices: tuple[str, ...] | Callable[[], Sequence[str]] = ()  # a callable: a seam's registry's names
    minimum: float | None = None
    positive: bool = False
    default_text: str | None = None  # how --help shows a default that is computed (e.g. "one per core")
    repeat: bool = False  # a flag given once per value (--video-dir A --video-dir B): a tuple of strings

    @property
    def in_config(self) -> bool:
        return self.section != "command"

    def takes(self, command: str) -> bool:
        """Whether `command` has this option as a flag."""
        return command in self.commands or (command == "extract" and bool(self.commands & EXTRACT_OF))

    def keys(self) -> tuple[str, ...]:
        """Every name a config file may give it by (dashes are read as underscores)."""
        return (self.name, *self.aliases)

    def flags(self) -> list[str]:
        """Its command-line spellings: dashes first (shown first in --help), then underscores."""
        names: list[str] = []
        for key in self.keys():
            for spelling in (key.replace("_", "-"), key):
                if f"--{spelling}" not in names:
                    names.append(f"--{spelling}")
        return names

    def help_text(self) -> str:
        shown = self.default_text
        if shown is None and self.default is not None and self.kind is not bool:
            d = self.default
            shown = ",".join(d) if isinstance(d, tuple) else f"{d:g}" if isinstance(d, float) else str(d)
        return f"{self.help} [default: {shown}]" if shown else self.help

    def allowed(self) -> tuple[str, ...]:
        """Its choices (a registry's names are looked up now); empty: any value of its type."""
        return tuple(self.choices()) if callable(self.choices) else self.choices

    def check(self, value: Any) -> None:
        """The per-option limits: one of its choices, at least its minimum, positive."""
        choices = self.allowed()
        if choices and value not in choices:
            raise PipelineError(f"{self.name} must be one of {', '.join(choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise PipelineError(f"{self.name} must be at least {self.minimum:g}, got {value}")
        if self.positive and not value > 0:
            raise PipelineError(f"{self.name} must be positive, got {value}")


def setting(
    default: Any,
    help: str,
    commands: Sequence[str] = (),
    *,
    aliases: Sequence[str] = (),
    choices: Sequence[str] | Callable[[], Sequence[str]] = (),
    minimum: float | None = None,
    positive: bool = False,
    default_text: str | None = None,
    repeat: bool = False,
) -> Any:
    """A settings field that is also a row of the option table (see `options_of`)."""
    unknown = set(commands) - set(COMMANDS)
    assert not unknown, f"no such command: {unknown}"
    meta = dict(help=help, commands=frozenset(commands), aliases=tuple(aliases), choices=choices if callable(choices) else tuple(choices),
                minimum=minimum, positive=positive, default_text=default_text, repeat=repeat)
    return field(default=default, metadata={_META: meta})


def _kind(f: Field[Any]) -> type:
    if f.default is None or f.default is MISSING:
        return str
    return type(f.default)


def options_of(cls: type, section: str) -> tuple[Option, ...]:
    """The table rows a settings dataclass declares, in field order."""
    return tuple(
        Option(name=f.name, kind=_kind(f), default=f.default, section=section, **f.metadata[_META])
        for f in fields(cls)
        if _META in f.metadata
    )


def command_option(name: str, kind: type, default: Any, help: str, commands: Sequence[str]) -> Option:
    """An option of the command itself (not a setting, not a config key): --config, --watch."""
    return Option(name=name, kind=kind, default=default, help=help, commands=frozenset(commands), section="command")


def check_table(table: Sequence[Option]) -> None:
    """Every name and alias is taken once: a clash would make one option shadow another."""
    seen: dict[str, str] = {}
    for o in table:
        for key in o.keys():
            assert key not in seen, f"option name {key!r} used by both {seen[key]} and {o.name}"
            seen[key] = o.name


def coerce(option: Option, value: Any) -> Any:
    """Turn a config or command-line value into the option's type, or say in one line why not."""
    kind, key = option.kind, option.name
    if option.repeat:  # one value or a list of them (a config file may give either); never split
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, (str, int, float)) for i in items):
            raise PipelineError(f"option '{key}' must be a string or a list of strings, got {value!r}")
        return tuple(str(i) for i in items)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip().lstrip(".").lower() for i in items if str(i).strip())
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise PipelineError(f"option '{key}' must be {kind.__name__}, got {value!r}") from None


# -- the typer side --------------------------------------------------------------


def _parameter(o: Option) -> inspect.Parameter:
    import typer

    names = o.flags()
    if o.kind is bool and o.section != "command":
        # --save-frames/--no-save-frames: None when neither is given, so a config file can decide.
        names = [f"{names[0]}/--no-{names[0][2:]}", *names[1:]]
    cli_type = str if o.kind is tuple else o.kind  # a list arrives as "a,b" and is split by coerce
    if o.repeat:
        cli_type = list[str]  # type: ignore[assignment]  # the flag once per value
    default = o.default if o.section == "command" else None  # None: not given, the config or default decides
    if default is None:
        cli_type = Optional[cli_type]  # type: ignore[assignment]
    flag = typer.Option(*names, help=o.help_text(), show_default=False, metavar="TEXT" if o.repeat else None)
    annotation = Annotated[cli_type, flag]  # type: ignore[valid-type]
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)


def command(table: Sequence[Option], name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give `action(**values)` the parameters of command `name` from the table, for typer.

    Typer builds a command from the function's signature (`inspect.signature`), so the
    wrapper carries a generated `__signature__`: one keyword parameter per option the
    command takes, in table order, each `Annotated` with its flags and help.
    """
    assert name in COMMANDS, name
    params = [_parameter(o) for o in table if o.takes(name)]

    def wrap(action: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(action)
        def run(**values: Any) -> Any:
            return action(**values)

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {}
        run.__name__ = name
        return run

    return wrap
