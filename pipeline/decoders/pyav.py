"""The CPU decoder (`--decoder cpu`): PyAV, decoding only what the sampler's frames need.

The frames are defined on the decoded stream, not on container metadata: the packet
index is read first, in the same open container the decode then seeks in; exact
frames decode exactly the floor the bitstream allows (each target's keyframe, the
reference pictures up to it, the target), the keyframe sampler's choice decodes each
keyframe alone, and where neither can be done exactly the whole stream is decoded and
the frames picked again from the decoded count. docs/design/decode-plan.md explains the
passes and when a file is judged damaged rather than short.
"""

from __future__ import annotations

from typing import Any

import av

from pipeline.decoders import Convert, Decoder, DecodeError, Sampled, seconds, to_rgb
from pipeline.samplers import PacketIndex, Sampler

# A stream where more than this share of packets yields no frame is damaged, not short.
MIN_DECODED_SHARE = 0.5


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    streams = list(container.streams.video)
    if not streams:
        raise DecodeError("no video stream")
    real = [s for s in streams if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not real:
        raise DecodeError("no video stream (only an attached picture such as cover art)")
    return real[0]


def _open(path: str, hwaccel: Any = None) -> av.container.InputContainer:
    if hasattr(path, "seek"):  # a source's file object: FFmpeg reads from where it is, and a
        path.seek(0)  # video may be opened twice (the full pass after the index pass)
    try:
        return av.open(path, mode="r", metadata_errors="ignore", hwaccel=hwaccel)
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


def _index(c: av.container.InputContainer, stream: av.video.stream.VideoStream) -> PacketIndex:
    pts: list[int | None] = []
    key: list[bool] = []
    try:
        for packet in c.demux(stream):
            if packet.size:
                pts.append(packet.pts)
                key.append(bool(packet.is_keyframe))
    except av.FFmpegError as e:
        raise DecodeError(f"cannot read packets: {_reason(e)}") from None
    return PacketIndex(pts, key, c.format.name)


def index_packets(path: str) -> PacketIndex:
    with _open(path) as c:
        return _index(c, _video_stream(c))


def plan_groups(index: PacketIndex, indices: list[int]) -> list[tuple[int, set[int]]] | None:
    """Targets (as pts) grouped by the keyframe (decode position) each must be decoded from.

    None when timestamps cannot identify frames (missing or repeated pts).
    """
    display = index.display
    if display is None:
        return None
    groups: dict[int, set[int]] = {}
    for t in set(indices):
        pts = display[t]
        j = index.position[pts]
        # The last keyframe at or before the target in decode order that is not shown after it.
        k = next((i for i in range(j, -1, -1) if index.key[i] and index.pts[i] <= pts), None)  # type: ignore[operator]
        if k is None:
            return None
        groups.setdefault(k, set()).add(pts)
    return sorted(groups.items())


def _planned_pass(
    c: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: PacketIndex,
    indices: list[int],
    convert: Convert,
) -> tuple[dict[int, Any], int] | None:
    """Decode only what the targets need, exactly; None where that cannot be done here.

    For each group, in decode order (so every seek is forward): seek to its keyframe,
    feed non-reference frames to the decoder only when they are targets (skip_frame
    NONREF otherwise: nothing depends on them), and once the group's last target is
    fed, drain the decoder rather than feed the packets after it. Returns
    ({display index: converted frame}, frames decoded).
    """
    groups = plan_groups(index, indices)
    if groups is None:
        return None
    display, position = index.display, index.position
    assert display is not None
    by_pts = {display[t]: t for t in set(indices)}
    wanted = set(by_pts)
    kept: dict[int, Any] = {}
    decoded = 0
    ctx = stream.codec_context
    try:
        for k, group in groups:
            if group <= kept.keys():
                continue  # came out with an earlier group (an open GOP's leading frames)
            c.seek(index.pts[k], stream=stream, backward=True, any_frame=False)
            ctx.flush_buffers()
            unfed = group - kept.keys()
            first, last_out = True, None  # last_out: pts of the last frame out since the seek
            for packet in c.demux(stream):
                if packet.size:
                    at = position.get(packet.pts)
                    if at is None or (first and at > k):
                        return None  # unknown packet, or the seek overshot the keyframe
                    first = False
                    ctx.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
                    unfed.discard(packet.pts)
                last_fed = bool(packet.size) and not unfed
                frames = ctx.decode(packet)
                if last_fed:  # out of the reorder buffer, without decoding anything after it
                    frames = [*frames, *ctx.decode(None)]
                for frame in frames:
                    decoded += 1
                    if frame.pts is None or (last_out is not None and frame.pts <= last_out):
                        return None  # output is not in pts order: pts does not give display order
                    last_out = frame.pts
                    if frame.pts in wanted and frame.pts not in kept:
                        kept[frame.pts] = convert(frame)
                if last_fed:
                    break
            if not group <= kept.keys():
                return None  # a target never came out: damaged, or not what the index says
    except av.FFmpegError:
        return None  # let the full pass find and word the error
    finally:
        ctx.skip_frame = "DEFAULT"
    return {by_pts[p]: v for p, v in kept.items()}, decoded


def _keyframe_pass(
    c: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    index: PacketIndex,
    chosen: list[int],
    convert: Convert,
) -> tuple[dict[int, Any], int] | None:
    """Decode each chosen keyframe on its own: seek, feed its one packet, drain, reset.

    Nothing else is decoded (skip_frame NONKEY guards it). None where a seek does not
    land on the keyframe or it does not come out, and the caller decodes exactly instead.
    """
    display = index.display
    assert display is not None
    ctx = stream.codec_context
    kept: dict[int, Any] = {}
    decoded = 0
    try:
        ctx.skip_frame = "NONKEY"
        for d in sorted(set(chosen)):
            pts = display[d]
            c.seek(pts, stream=stream, backward=True, any_frame=False)
            ctx.flush_buffers()
            for packet in c.demux(stream):
                if not packet.size:
                    continue
                at = index.position.get(packet.pts)
                if at is None or at > index.position[pts]:
                    return None
                if packet.pts != pts:
                    continue  # the seek landed on an earlier keyframe: read on to ours
                for frame in (*ctx.decode(packet), *ctx.decode(None)):
                    decoded += 1
                    if frame.pts == pts:
                        kept[d] = convert(frame)
                ctx.flush_buffers()  # leave draining mode for the next keyframe
                break
            if d not in kept:
                return None
    except av.FFmpegError:
        return None
    finally:
        ctx.skip_frame = "DEFAULT"
    return kept, decoded


def _decode_pass(
    path: str, targets: set[int], convert: Convert, threads: int, hwaccel: Any
) -> tuple[dict[int, Any], int, dict[int, float | None]]:
    """Decode the whole stream once, converting only the target frames; return (kept, n, times):
    times are the kept frames' own pts in seconds (their time_base, else the stream's)."""
    kept: dict[int, Any] = {}
    times: dict[int, float | None] = {}
    n = 0
    with _open(path, hwaccel) as c:
        stream = _video_stream(c)
        stream.codec_context.thread_count = threads
        try:
            for frame in c.decode(stream):
                if n in targets:
                    kept[n] = convert(frame)
                    times[n] = seconds(frame.pts, frame.time_base or stream.time_base)
                n += 1
        except av.FFmpegError as e:
            raise DecodeError(f"decode failed after {n} frames: {_reason(e)}") from None
    return kept, n, times


def decode(
    path: str, sampler: Sampler, convert: Convert = to_rgb, threads: int = 1, plan: bool = True, hwaccel: Any = None
) -> Sampled:
    """The sampler's frames of a video, each passed through `convert`.

    Index the packets (no decoding) and ask the sampler for its choices. Take the first
    that decodes exactly in the same open container: nearest keyframes each alone
    (_keyframe_pass), exact frames by the plan (_planned_pass; not with plan=False).
    Where none does, decode the whole stream instead, and if the decoder's frame count
    differs from the packet count, pick the targets again from the decoded count and
    decode once more; a stream that loses most of its frames is damaged.
    """
    with _open(path, hwaccel) as c:
        stream = _video_stream(c)
        stream.codec_context.thread_count = threads
        index = _index(c, stream)
        expected = index.n
        if expected == 0:
            raise DecodeError("the video stream has no packets")
        for choice in sampler.choose(index):
            if choice.keyframes:
                got = _keyframe_pass(c, stream, index, choice.indices, convert)
            else:
                got = _planned_pass(c, stream, index, choice.indices, convert) if plan else None
            if got is not None:
                kept, decoded = got
                # Both passes keep exactly the frames whose pts is the target's (index.display).
                assert index.display is not None
                times = [seconds(index.display[i], stream.time_base) for i in choice.indices]
                return Sampled([kept[i] for i in choice.indices], expected, choice.indices, decoded, times=times)
    indices = sampler.from_count(expected)
    kept, n, times = _decode_pass(path, set(indices), convert, threads, hwaccel)
    decoded = n
    if n != expected:
        if n == 0:
            raise DecodeError(f"no frame decodes ({expected} packets)")
        if n < expected * MIN_DECODED_SHARE:
            raise DecodeError(f"damaged stream: only {n} of {expected} packets decode to frames")
        indices = sampler.from_count(n)
        kept, n2, times = _decode_pass(path, set(indices), convert, threads, hwaccel)
        decoded += n2
        if n2 != n:
            raise DecodeError(f"decoding is not repeatable: {n} frames, then {n2}")
    return Sampled([kept[i] for i in indices], n, indices, decoded, times=[times[i] for i in indices])


class PyAVDecoder(Decoder):
    """PyAV (FFmpeg) on the CPU, `threads` FFmpeg threads. `plan=False` always decodes the
    whole stream (the benchmark's baseline)."""

    hwaccel: Any = None  # PyAV's hwaccel for every open (the nvdec decoder sets it)

    def __init__(self, threads: int = 1, gpu_index: int = 0, plan: bool = True) -> None:
        super().__init__(threads, gpu_index)
        self.plan = plan

    def sample(self, path: str, sampler: Sampler, convert: Convert = to_rgb) -> Sampled:
        return decode(path, sampler, convert, self.threads, self.plan, self.hwaccel)
