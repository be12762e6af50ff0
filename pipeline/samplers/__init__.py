"""Samplers: which frames of a video make its feature, decided without decoding.

A sampler sees the video stream's packet index (every packet's pts and keyframe flag,
in decode order, read by the decoder) and names the frames it wants as display
indices. How they are decoded is the decoder's business (`pipeline/decoders/`), so
every sampler runs with every decoder. A sampler offers its choices best first (the
keyframe sampler: the nearest keyframes, else the exact frames); the decoder takes the
first it can decode exactly and, where none can, decodes the whole stream and asks
`from_count` for the frames by the count it decoded (docs/design/decode-plan.md).

Registered by name (the job setting `--sampling`); each implementation is a module
here and one line in SAMPLERS. Importing this package imports no PyAV and no torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipeline.registry import Registry

SAMPLERS = Registry("sampling", {
    "exact": "pipeline.samplers.uniform:Uniform",
    "keyframes": "pipeline.samplers.keyframes:NearestKeyframes",
})

# Containers whose packets carry presentation timestamps, so pts order is display order.
# AVI's "pts" is a decode-order counter: with B-frames it names the wrong frames.
PTS_CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "mpegts", "mpeg", "flv", "asf", "ogg"}


def sample_indices(n: int, k: int) -> list[int]:
    """round(linspace(0, n-1, k)): k indices spread over n frames, repeating when n < k."""
    if n < 1:
        raise ValueError("no frames")
    return [int(i) for i in np.round(np.linspace(0, n - 1, k))]


@dataclass(frozen=True)
class PacketIndex:
    """The video stream's packets in decode order, read without decoding anything."""

    pts: list[int | None]
    key: list[bool]
    container: str = ""

    @property
    def n(self) -> int:
        return len(self.pts)

    @cached_property
    def display(self) -> list[int] | None:
        """Every packet's pts in display order; None where pts cannot name frames."""
        if self.container not in PTS_CONTAINERS:
            return None
        if any(p is None for p in self.pts) or len(set(self.pts)) != self.n:
            return None
        return sorted(self.pts)  # type: ignore[arg-type]

    @cached_property
    def position(self) -> dict[int | None, int]:
        """pts -> decode position."""
        return {p: i for i, p in enumerate(self.pts)}


@dataclass(frozen=True)
class Choice:
    """One way to get a video's frames: display indices in target order (repeats allowed)."""

    indices: list[int]
    keyframes: bool = False  # every index is a keyframe: decode each on its own, nothing else


class Sampler(ABC):
    """Which frames of a video make its feature: `num_frames` display indices."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames

    @abstractmethod
    def choose(self, index: PacketIndex) -> list[Choice]:
        """The frames wanted, from the packet index alone: ways to get them, best first.

        The decoder takes the first it can decode exactly; where it can take none, it
        decodes the whole stream and uses `from_count`.
        """

    def from_count(self, n: int) -> list[int]:
        """The frames by the definition on a stream that decodes to n frames: what a full
        decode keeps (n is the decoded count, which may differ from the packet count)."""
        return sample_indices(n, self.num_frames)


def get_sampler(name: str) -> type[Sampler]:
    return SAMPLERS.load(name)
