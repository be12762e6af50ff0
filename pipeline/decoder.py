"""Stage 2a: turn one video file into its N sampled frames, as RGB arrays.

The frames are defined on the decoded stream, not on container metadata: n is the
number of frames the decoder gives, targets are round(linspace(0, n-1, N)) in the
decoder's output (display) order, and each frame is turned upright by its display
matrix. docs/design/decode-plan.md explains the two passes and when a file is judged
damaged rather than short.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

# A stream where more than this share of packets yields no frame is damaged, not short.
MIN_DECODED_SHARE = 0.5


class DecodeError(Exception):
    """The file cannot give its frames; the message is the reason users will read."""


@dataclass(frozen=True)
class Sampled:
    frames: list[Any]  # one per target, in target order (repeats share an object)
    n: int  # frames in the stream
    indices: list[int]


def sample_indices(n: int, k: int) -> list[int]:
    """round(linspace(0, n-1, k)): k indices spread over n frames, repeating when n < k."""
    if n < 1:
        raise ValueError("no frames")
    return [int(i) for i in np.round(np.linspace(0, n - 1, k))]


def upright(rgb: np.ndarray, rotation: float | int | None) -> np.ndarray:
    """Apply a display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it)."""
    if not rotation:
        return rgb
    quarter = int(round(rotation / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, k=quarter)) if quarter else rgb


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    streams = list(container.streams.video)
    if not streams:
        raise DecodeError("no video stream")
    real = [s for s in streams if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not real:
        raise DecodeError("no video stream (only an attached picture such as cover art)")
    return real[0]


def _open(path: str) -> av.container.InputContainer:
    try:
        return av.open(path, mode="r", metadata_errors="ignore")
    except FileNotFoundError:
        raise DecodeError("file not found (vanished since the scan?)") from None
    except IsADirectoryError:
        raise DecodeError("not a file") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except av.FFmpegError as e:
        raise DecodeError(f"cannot open: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    if isinstance(e, av.FFmpegError):
        return f"{type(e).__name__}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def count_packets(path: str) -> int:
    """Video packets with data: the frame count a well-formed stream will decode to."""
    with _open(path) as c:
        stream = _video_stream(c)
        n = 0
        try:
            for packet in c.demux(stream):
                if packet.size:
                    n += 1
        except av.FFmpegError as e:
            raise DecodeError(f"cannot read packets: {_reason(e)}") from None
        return n


def _decode_pass(path: str, targets: set[int], convert: Callable[[av.VideoFrame], Any], threads: int) -> tuple[dict[int, Any], int]:
    """Decode the whole stream once, converting only the target frames; return (kept, n)."""
    kept: dict[int, Any] = {}
    n = 0
    with _open(path) as c:
        stream = _video_stream(c)
        stream.codec_context.thread_count = threads
        try:
            for frame in c.decode(stream):
                if n in targets:
                    kept[n] = convert(frame)
                n += 1
        except av.FFmpegError as e:
            raise DecodeError(f"decode failed after {n} frames: {_reason(e)}") from None
    return kept, n


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return upright(frame.to_ndarray(format="rgb24"), frame.rotation)


def sample_frames(
    path: str,
    num_frames: int,
    convert: Callable[[av.VideoFrame], Any] = to_rgb,
    threads: int = 1,
) -> Sampled:
    """The N target frames of a video, each passed through `convert`.

    First pass: count packets (no decoding) and pick targets. Second pass: decode,
    keeping the targets. If the decoder's count differs from the packet count the
    targets were wrong, so they are picked again from the decoded count and the
    stream decoded once more; a stream that loses most of its frames is damaged.
    """
    expected = count_packets(path)
    if expected == 0:
        raise DecodeError("the video stream has no packets")
    indices = sample_indices(expected, num_frames)
    kept, n = _decode_pass(path, set(indices), convert, threads)
    if n != expected:
        if n == 0:
            raise DecodeError(f"no frame decodes ({expected} packets)")
        if n < expected * MIN_DECODED_SHARE:
            raise DecodeError(f"damaged stream: only {n} of {expected} packets decode to frames")
        indices = sample_indices(n, num_frames)
        kept, n2 = _decode_pass(path, set(indices), convert, threads)
        if n2 != n:
            raise DecodeError(f"decoding is not repeatable: {n} frames, then {n2}")
    return Sampled([kept[i] for i in indices], n, indices)
