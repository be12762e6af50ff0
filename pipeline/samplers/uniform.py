"""The exact sampler (`--sampling exact`, the default): round(linspace(0, n-1, N))."""

from __future__ import annotations

from pipeline.samplers import Choice, PacketIndex, Sampler


class Uniform(Sampler):
    """N frames spread evenly over the stream, in display order; n counts its packets
    until a full decode shows a different count (then `from_count` re-picks)."""

    def choose(self, index: PacketIndex) -> list[Choice]:
        return [Choice(self.from_count(index.n))]
