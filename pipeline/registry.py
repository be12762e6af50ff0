"""The one registry every seam uses: implementation names mapped to "module:Class".

A seam's package holds its Registry; an implementation is imported only when it is
used, so listing the names (for `--help`, the option checks, the contract tests)
imports no implementation's library, and a decode worker never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.errors import PipelineError


class Registry(dict[str, str]):
    """name -> "module:Class", in the order lookups by content (`accepts`) try them."""

    def __init__(self, what: str, entries: dict[str, str]) -> None:
        super().__init__(entries)
        self.what = what

    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def load(self, name: str) -> Any:
        """The implementation registered as `name`; an unknown name is the user's one-line error."""
        if name not in self:
            raise PipelineError(f"{self.what} must be one of {', '.join(self)}, got {name!r}")
        module, _, cls = self[name].partition(":")
        return getattr(importlib.import_module(module), cls)

    def classes(self) -> dict[str, Any]:
        return {name: self.load(name) for name in self}
