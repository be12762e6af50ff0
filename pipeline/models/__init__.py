"""Model families: what turns the decode workers' uint8 crops into features.

A family knows how to check a job's model and weights at scan time (so a typo is
refused before the job exists), how to load them, and the preprocessing geometry the
workers must cut crops to. The encoder (pipeline/encoder.py) only batches, stages and
normalises; it never imports a family's library. Adding a family is one module here
and one entry in FAMILIES (docs/design/extending.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from pipeline.settings import JobSettings

if TYPE_CHECKING:
    import torch

    from pipeline.preprocess import Preprocess


class Model(ABC):
    """A loaded image encoder on one device."""

    dim: int  # feature width
    preprocess: "Preprocess"  # geometry (done by the workers), mean and std (done here)

    @abstractmethod
    def encode(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 crops [B, H, W, 3] on the model's device -> features [B, dim], not normalised.

        Runs under the encoder's autocast; the float conversion and normalisation belong
        here because they are the family's (its mean, std and channel order)."""


class Family(ABC):
    """One way of naming, checking and loading models (a library, a hub)."""

    name: str

    @classmethod
    @abstractmethod
    def accepts(cls, model: str) -> bool:
        """Is `model` (the job's --model) one of this family's?"""

    @classmethod
    @abstractmethod
    def check(cls, job: JobSettings) -> Any:
        """Refuse an unknown model or weights now, without loading anything."""

    @classmethod
    @abstractmethod
    def load(cls, job: JobSettings, device: Any) -> Model:
        ...


def _families() -> list[type[Family]]:
    from pipeline.models.open_clip import OpenClip

    return [OpenClip]  # the first that accepts a name is its family; the first is the default


def family_for(model: str) -> type[Family]:
    """The family of a job's model; the default family words the error for unknown names."""
    families = _families()
    return next((f for f in families if f.accepts(model)), families[0])


def check_weights(job: JobSettings) -> Any:
    return family_for(job.model).check(job)


def load_model(job: JobSettings, device: Any = "cpu") -> Model:
    return family_for(job.model).load(job, device)
