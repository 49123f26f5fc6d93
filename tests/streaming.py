"""Test helpers: stream audio to a live server over a real WebSocket and collect what comes back."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from jiwer import wer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from whisper_normalizer.english import EnglishTextNormalizer

_normalise = EnglishTextNormalizer()


def word_error_rate(reference: str, hypothesis: str) -> float:
    return wer(_normalise(reference), _normalise(hypothesis) or "<empty>")


# Bounds for one sentence heard as one turn. Offline faster-whisper tiny.en on the TIMIT clip alone
# writes "dog suit and" for "dark suit in" (2 of 11 words); a bound below that would fail offline
# Whisper itself. A lost phrase (3 or more words) still fails either bound.
TURN_WER_BOUND = {"en_harvard_birch_canoe.wav": 0.15, "en_timit_LDC93S1.wav": 0.2}


@dataclass
class Received:
    messages: list[dict[str, Any]] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)  # monotonic seconds after the first audio frame
    close_code: int | None = None
    close_reason: str = ""

    @property
    def finals(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "transcription" and m["is_final"]]

    @property
    def partials(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "transcription" and not m["is_final"]]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == "error"]

    @property
    def text(self) -> str:
        return " ".join(m["transcript"] for m in self.finals if m["transcript"])


def s16le(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def mulaw(audio: np.ndarray) -> bytes:
    """G.711 μ-law, the standard's segment encoder (the server decodes with tables)."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int32)
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    pcm = np.minimum(np.abs(pcm), 32635) + 0x84
    seg = np.searchsorted([0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF], pcm)
    value = (seg << 4) | ((pcm >> (seg + 3)) & 0xF)
    return (value ^ mask).astype(np.uint8).tobytes()


def alaw(audio: np.ndarray) -> bytes:
    """G.711 A-law, the standard's segment encoder."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], pcm)
    shift = np.where(seg < 2, 1, seg)
    value = np.where(seg >= 8, 0x7F, (np.minimum(seg, 7) << 4) | ((pcm >> shift) & 0xF))
    return (value ^ mask).astype(np.uint8).tobytes()


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    return soxr.resample(audio, 16_000, rate).astype(np.float32)


async def stream(
    url: str,
    metadata: dict[str, Any] | str | None,
    audio: bytes = b"",
    *,
    bytes_per_second: int = 32_000,
    frame_ms: int = 20,
    speed: float = 0.0,
    controls: dict[int, str] | None = None,
    end: str | None = '{"terminate_session": true}',
    headers: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> Received:
    """Send metadata, then audio in frames (paced at `speed` × real time; 0 = at once), then `end`.

    `controls` maps a byte offset to a text frame sent when the audio reaches it.
    """
    frame = max(1, bytes_per_second * frame_ms // 1000)

    async def send(ws: ClientConnection, started: float) -> None:
        if metadata is not None:
            await ws.send(metadata if isinstance(metadata, str) else json.dumps(metadata))
        pending = dict(sorted((controls or {}).items()))
        for offset in range(0, len(audio), frame):
            for at in [a for a in pending if a <= offset]:
                await ws.send(pending.pop(at))
            if speed > 0:
                lag = started + offset / bytes_per_second / speed - time.monotonic()
                if lag > 0:
                    await asyncio.sleep(lag)
            await ws.send(audio[offset : offset + frame])
        for text in pending.values():
            await ws.send(text)
        if end is not None:
            await ws.send(end)

    return await _session(url, send, headers, timeout)


async def converse(
    url: str,
    frames: list[Any],
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Received:
    """Send `frames` as they are (text, binary, or an async iterator: one fragmented message),
    then collect everything until the server closes."""

    async def send(ws: ClientConnection, started: float) -> None:
        for frame in frames:
            await ws.send(frame)

    return await _session(url, send, headers, timeout)


async def _session(
    url: str,
    send: Callable[[ClientConnection, float], Awaitable[None]],
    headers: dict[str, str] | None,
    timeout: float,
) -> Received:
    """Run `send` while collecting every message until the server closes."""
    received = Received()
    async with connect(url, additional_headers=headers or {}, max_size=None, open_timeout=30) as ws:
        started = time.monotonic()
        task = asyncio.create_task(_collect(ws, received, started))
        try:
            await send(ws, started)
        except ConnectionClosed:
            pass
        await asyncio.wait_for(task, timeout)
        received.close_code = ws.close_code
        received.close_reason = ws.close_reason or ""
    return received


async def _collect(ws: ClientConnection, received: Received, started: float) -> None:
    try:
        async for raw in ws:
            received.messages.append(json.loads(raw))
            received.arrival.append(time.monotonic() - started)
    except ConnectionClosed:
        pass


async def until(condition: Callable[[], bool], what: str, limit_s: float = 60.0) -> None:
    """Wait for a state of the server, not for an amount of time; ``limit_s`` only bounds a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", _normalise(text))
