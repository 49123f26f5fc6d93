"""Audio files for the client: decoded to PCM with PyAV, and streamed paced like a live source."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Mapping
from typing import Any, BinaryIO

import av

from whisperwire.client import (
    DEFAULT_URL,
    MessageCallback,
    SessionClosed,
    Stream,
    connect,
    declared_format,
    metadata_payload,
)
from whisperwire.protocol import Metadata, Transcription
from whisperwire.values import SAMPLE_RATE

__all__ = ["decode_file", "stream_file"]


def decode_file(path: str | os.PathLike[str] | BinaryIO, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Decode any audio file PyAV can read (a path or an open binary file) to mono 16-bit
    little-endian PCM at ``sample_rate``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    pcm = bytearray()
    source = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
    with av.open(source, mode="r") as container:
        if not container.streams.audio:
            raise ValueError(f"{source if isinstance(source, str) else 'the file'}: no audio stream")
        for frame in container.decode(container.streams.audio[0]):
            for converted in resampler.resample(frame):
                pcm += converted.to_ndarray().tobytes()
    # The resampler holds back a few samples until it is told the input has ended.
    for converted in resampler.resample(None):
        pcm += converted.to_ndarray().tobytes()
    return bytes(pcm)


async def stream_file(
    path: str | os.PathLike[str],
    url: str = DEFAULT_URL,
    api_key: str | None = None,
    metadata: Mapping[str, Any] | Metadata | None = None,
    *,
    speed: float = 1.0,
    frame_ms: float = 20,
    on_message: MessageCallback | None = None,
) -> list[Transcription]:
    """Transcribe a file as if it were a live source; return every message received.

    The file is decoded to the sample rate the metadata declares (16 kHz by default), then sent
    in ``frame_ms`` frames at ``speed`` times real time (0: as fast as possible) while messages
    are received. At the end it sends terminate and waits for the server to close.
    ``on_message`` (plain or async) is called with each message as it arrives. Server errors
    are raised as described in the module docstring.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0")
    if frame_ms <= 0:
        raise ValueError("frame_ms must be > 0")
    payload = metadata_payload(metadata, {})
    encoding, sample_rate = declared_format(payload)
    if encoding != "pcm_s16le":
        raise ValueError(f"stream_file sends pcm_s16le; the metadata declares {encoding}")
    pcm = await asyncio.to_thread(decode_file, path, sample_rate)

    async with connect(url, api_key=api_key, metadata=payload) as stream:
        sender = asyncio.create_task(_send_paced(stream, pcm, sample_rate, speed, frame_ms))
        receiver = asyncio.create_task(_receive_all(stream, on_message))
        try:
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_EXCEPTION)
            failure = sender.exception() if sender.done() else None
            # SessionClosed while sending: the server ended the session, the receiver says why.
            if failure is not None and not isinstance(failure, SessionClosed):
                raise failure
            return await receiver
        finally:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)


async def _send_paced(
    stream: Stream, pcm: bytes, sample_rate: int, speed: float, frame_ms: float
) -> None:
    bytes_per_second = sample_rate * 2
    frame_bytes = max(2, round(bytes_per_second * frame_ms / 1000) // 2 * 2)
    start = time.monotonic()
    for offset in range(0, len(pcm), frame_bytes):
        frame = pcm[offset : offset + frame_bytes]
        if speed > 0:
            # A live source delivers a frame once its last sample exists. Deadlines come from
            # the clock, not from summed sleeps, so pacing does not drift.
            due = start + (offset + len(frame)) / bytes_per_second / speed
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the receiver run between frames
        await stream.send(frame)
    await stream.close()


async def _receive_all(stream: Stream, on_message: MessageCallback | None) -> list[Transcription]:
    messages: list[Transcription] = []
    async for message in stream:
        messages.append(message)
        if on_message is not None:
            result = on_message(message)
            if inspect.isawaitable(result):
                await result
    return messages
