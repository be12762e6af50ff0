"""The interface every model implements; the registry is in pipeline/models/__init__.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.settings import JobSettings

if TYPE_CHECKING:
    import torch

    from pipeline.preprocess import Geometry, Preprocess


class Model(ABC):
    """A loaded image encoder on one device."""

    dim: int  # feature width
    preprocess: "Preprocess"  # geometry (done by the workers), mean and std (done here)

    @abstractmethod
    def encode(self, pixels: "torch.Tensor") -> "torch.Tensor":
        """uint8 crops [B, H, W, 3] on the model's device -> features [B, dim], not normalised.

        Runs under the encoder's autocast; the float conversion and normalisation belong
        here because they are the family's (its mean, std and channel order)."""

    def encode_text(self, texts: list[str]) -> "torch.Tensor":
        """Texts -> features [len(texts), dim] in the image features' space, not normalised
        (`search --text`). Optional: a model without a text tower (a vision-only
        checkpoint, an image-only family) keeps this default, a one-line error."""
        raise PipelineError(f"this job's model ({type(self).__name__}) has no text tower: search by --video instead")


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

    @classmethod
    def geometry_hint(cls, job: JobSettings) -> "Geometry | None":
        """The crop geometry `load` will give, read without importing the family's library
        (no torch), or None when it cannot tell. The run starts its decode workers with it
        while the model loads, then checks it against the loaded model's: a wrong hint
        costs the first decodes, never a wrong crop (docs/design/startup.md)."""
        return None
