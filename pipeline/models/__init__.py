"""Model families: what turns the decode workers' uint8 crops into features.

A family knows how to check a job's model and weights at scan time (so a typo is
refused before the job exists), how to load them, and the preprocessing geometry the
workers must cut crops to. The encoder (pipeline/encoder.py) only batches, stages and
normalises; it never imports a family's library. Adding a family is one module here
and one entry in FAMILIES (docs/design/extending.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.models.base import Family, Model
from pipeline.registry import Registry
from pipeline.settings import JobSettings

if TYPE_CHECKING:
    from pipeline.preprocess import Geometry

__all__ = ["FAMILIES", "Family", "Model", "check_weights", "family_for", "geometry_hint", "load_model"]


FAMILIES = Registry("model family", {
    "open_clip": "pipeline.models.open_clip:OpenClip",
})  # the first that accepts a model name is its family; the first is also the default


def family_for(model: str) -> type[Family]:
    """The family of a job's model; the default family words the error for unknown names."""
    families = list(FAMILIES.classes().values())
    return next((f for f in families if f.accepts(model)), families[0])


def check_weights(job: JobSettings) -> Any:
    return family_for(job.model).check(job)


def load_model(job: JobSettings, device: Any = "cpu") -> Model:
    return family_for(job.model).load(job, device)


def geometry_hint(job: JobSettings) -> "Geometry | None":
    """The job's crop geometry before its model is loaded (no torch), or None.

    Asked of every family rather than of `family_for`, whose `accepts` may import the
    family's library (open_clip imports torch): the hint is checked against the loaded
    model anyway, so the first family that knows one is good enough."""
    for family in FAMILIES.classes().values():
        if (hint := family.geometry_hint(job)) is not None:
            return hint
    return None
