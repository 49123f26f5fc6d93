"""A stand-in for the ``sounddevice`` package whose one input device plays a WAV file.

There is no sound card here or in CI. Tests put this directory first on the PYTHONPATH of a
subprocess, so the program under test imports this module as ``sounddevice``; its input streams
call the program's callback from a thread of their own, a block at a time, in real time, as
PortAudio does. Set by environment variables:

- ``FAKE_MIC_WAV``: a 16 kHz mono 16-bit WAV to play; unset, there is no input device.
- ``FAKE_MIC_SECONDS``: play only the first this many seconds of it.
- ``FAKE_MIC_AFTER``: what the device gives after the clip: ``silence`` (the default, as a
  microphone in a quiet room) or ``nothing`` (no more blocks, as a stalled device).
- ``FAKE_MIC_DONE``: a file created once the whole clip has been delivered.
"""

from __future__ import annotations

import os
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RATE = 16_000
NAME = "stand-in microphone"


class PortAudioError(Exception):
    pass


class CallbackFlags:
    """No overflow, no underflow: always false, as sounddevice's when nothing went wrong."""

    def __bool__(self) -> bool:
        return False

    def __str__(self) -> str:
        return ""


def query_devices(device: Any = None, kind: str | None = None) -> dict[str, Any]:
    if not os.environ.get("FAKE_MIC_WAV"):
        raise PortAudioError("Error querying device -1")
    if device not in (None, 0) and not (isinstance(device, str) and device in NAME):
        raise ValueError(f"No input device matching {device!r}")
    return {"name": NAME, "index": 0, "max_input_channels": 1, "default_samplerate": float(RATE)}


def check_input_settings(
    device: Any = None, channels: Any = None, dtype: Any = None, extra_settings: Any = None,
    samplerate: float | None = None,
) -> None:  # fmt: skip
    query_devices(device, "input")
    if samplerate not in (None, RATE):
        raise PortAudioError("Invalid sample rate [PaErrorCode -9997]")


def _clip() -> np.ndarray:
    with wave.open(os.environ["FAKE_MIC_WAV"]) as wav:
        assert wav.getframerate() == RATE and wav.getnchannels() == 1 and wav.getsampwidth() == 2
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    seconds = os.environ.get("FAKE_MIC_SECONDS")
    return samples[: int(float(seconds) * RATE)] if seconds else samples


class _Stream:
    def __init__(
        self, samplerate: float | None = None, blocksize: int | None = None, device: Any = None,
        channels: int | None = None, dtype: str | None = None,
        callback: Callable[..., None] | None = None, **_: Any,
    ) -> None:  # fmt: skip
        check_input_settings(device, samplerate=samplerate)
        if channels not in (None, 1):
            raise PortAudioError("Invalid number of channels [PaErrorCode -9998]")
        self.samplerate = float(samplerate or RATE)
        self.blocksize = blocksize or 512
        self.dtype = dtype or "float32"
        self._callback = callback
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._play, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # As Pa_StopStream: returns once the callback has run for the last time.
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> _Stream:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _play(self) -> None:
        clip = _clip()
        after = os.environ.get("FAKE_MIC_AFTER", "silence")
        done = os.environ.get("FAKE_MIC_DONE")
        started = time.monotonic()
        offset = 0
        while not self._stopped.is_set():
            if offset >= len(clip):
                if done and not Path(done).exists():
                    Path(done).touch()
                if after == "nothing":
                    self._stopped.wait()
                    return
            block = np.zeros(self.blocksize, dtype="<i2")
            piece = clip[offset : offset + self.blocksize]
            block[: len(piece)] = piece
            offset += self.blocksize
            # A block exists once its last sample has been recorded.
            delay = started + offset / RATE - time.monotonic()
            if delay > 0 and self._stopped.wait(delay):
                return
            if self._callback is not None:
                self._callback(self._convert(block), self.blocksize, None, CallbackFlags())

    def _convert(self, block: np.ndarray) -> Any:
        raise NotImplementedError


class InputStream(_Stream):
    """Gives the callback a (frames, 1) numpy array of ``dtype``."""

    def _convert(self, block: np.ndarray) -> np.ndarray:
        if self.dtype == "float32":
            return (block.astype(np.float32) / 32768.0).reshape(-1, 1)
        return block.astype(self.dtype).reshape(-1, 1)


class RawInputStream(_Stream):
    """Gives the callback a buffer of 16-bit samples."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.dtype != "int16":
            raise PortAudioError("the stand-in records raw blocks as int16 only")

    def _convert(self, block: np.ndarray) -> memoryview:
        return memoryview(block.tobytes())
