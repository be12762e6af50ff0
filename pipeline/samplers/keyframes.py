"""The keyframe sampler (`--sampling keyframes`): the keyframe nearest each exact target.

Approximate (the feature changes, hence a job setting) and much cheaper: each chosen
keyframe decodes alone, 8 decoded frames a video whatever the GOP. Where pts cannot
name frames (AVI), it asks for the exact frames instead.
"""

from __future__ import annotations

import bisect

from pipeline.samplers import Choice, PacketIndex, Sampler


def nearest_keyframes(index: PacketIndex, indices: list[int]) -> list[int] | None:
    """For each target (display index), the display index of the keyframe nearest it.

    Ties go to the earlier keyframe. None where pts cannot name frames.
    """
    display = index.display
    if display is None:
        return None
    rank = {p: i for i, p in enumerate(display)}
    keys = sorted(rank[p] for p, k in zip(index.pts, index.key) if k)
    if not keys:
        return None
    chosen = []
    for t in indices:
        i = bisect.bisect_right(keys, t)  # keys[:i] are at or before t
        before = keys[i - 1] if i else None
        after = keys[i] if i < len(keys) else None
        if before is None or (after is not None and after - t < t - before):
            chosen.append(after)
        else:
            chosen.append(before)
    return chosen


class NearestKeyframes(Sampler):
    """The nearest keyframes, decoded alone; else (no pts, or they do not decode alone)
    the exact frames."""

    def choose(self, index: PacketIndex) -> list[Choice]:
        exact = Choice(self.from_count(index.n))
        chosen = nearest_keyframes(index, exact.indices)
        return [exact] if chosen is None else [Choice(chosen, keyframes=True), exact]
