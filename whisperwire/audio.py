"""Client audio to the model's input: decode, resample to 16 kHz, and optional range compression.

Frames arrive with any length (PROTOCOL.md §2.4), so `AudioDecoder` keeps the bytes of a sample
cut between two frames and joins them with the next one.
"""

from __future__ import annotations

import math

import numpy as np
import soxr

from whisperwire.protocol import Encoding, ErrorCode, ProtocolError
from whisperwire.values import SAMPLE_RATE

# ------------------------------------------------------------------------------ G.711 tables
# The decoders are 256-entry tables indexed by the code byte. The stdlib's audioop did this, but it
# was removed in Python 3.13; a table built once with numpy is as fast and needs no dependency.


def _mulaw_table() -> np.ndarray:
    code = ~np.arange(256, dtype=np.int32) & 0xFF  # codes are sent bit-inverted
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    # 0x84 is the encoder's bias (33 << 2), added before the segment search and removed here.
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    values = np.where(code & 0x80, -magnitude, magnitude)
    return (values / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    code = np.arange(256, dtype=np.int32) ^ 0x55  # even bits are sent inverted
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    # Segment 0 is linear; the others double their step, each with an implicit leading one.
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    values = np.where(code & 0x80, magnitude, -magnitude)  # A-law: sign bit set is positive
    return (values / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()
_ALAW = _alaw_table()

_SAMPLE_BYTES: dict[str, int] = {"pcm_s16le": 2, "pcm_f32le": 4, "pcm_mulaw": 1, "pcm_alaw": 1}


def _to_float(encoding: Encoding, data: bytes | memoryview) -> np.ndarray:
    """Complete samples of one encoding as float32 in [-1, 1]."""
    if encoding == "pcm_s16le":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
    if encoding == "pcm_mulaw":
        return _MULAW[np.frombuffer(data, dtype=np.uint8)]
    if encoding == "pcm_alaw":
        return _ALAW[np.frombuffer(data, dtype=np.uint8)]
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    if not np.isfinite(samples).all():
        raise ProtocolError(
            ErrorCode.INVALID_AUDIO,
            "pcm_f32le audio contains NaN or infinite samples",
        )
    # Over-range floats are a client's gain slip, not a reason to drop the session; clipping
    # keeps the [-1, 1] range the model and the compressor assume.
    return np.clip(samples, -1.0, 1.0)


class AudioDecoder:
    """Bytes of one stream in its declared encoding and rate, to float32 mono at 16 kHz."""

    def __init__(self, encoding: Encoding, sample_rate: int) -> None:
        if encoding not in _SAMPLE_BYTES:
            raise ValueError(f"unknown encoding {encoding!r}")
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.encoding: Encoding = encoding
        self.sample_rate = sample_rate
        self._width = _SAMPLE_BYTES[encoding]
        self._pending = b""
        self._samples_in = 0
        self._finished = False
        # HQ (20-bit, flat to ~91% of Nyquist) is far beyond what speech recognition can use;
        # VHQ only costs more CPU. None means 16 kHz already: samples pass through untouched.
        self._resampler = (
            None
            if sample_rate == SAMPLE_RATE
            else soxr.ResampleStream(sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
        )

    @property
    def samples_in(self) -> int:
        """Input samples received so far, at the input rate (the stream's clock)."""
        return self._samples_in

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete sample held until the next frame completes it."""
        return len(self._pending)

    def decode(self, data: bytes) -> np.ndarray:
        """The 16 kHz samples that `data` (with any held bytes) makes available."""
        self._check_open()
        buffer: bytes | memoryview = self._pending + data if self._pending else memoryview(data)
        usable = len(buffer) - len(buffer) % self._width
        self._pending = bytes(buffer[usable:])
        samples = _to_float(self.encoding, buffer[:usable])
        self._samples_in += len(samples)
        return self._resample(samples, last=False)

    def flush(self) -> np.ndarray:
        """Drain the resampler at the end of the stream; the decoder is finished afterwards.

        A trailing incomplete sample cannot be decoded and is discarded.
        """
        self._check_open()
        self._finished = True
        self._pending = b""
        return self._resample(np.zeros(0, dtype=np.float32), last=True)

    def _resample(self, samples: np.ndarray, last: bool) -> np.ndarray:
        if self._resampler is None:
            return samples
        out = self._resampler.resample_chunk(samples, last=last)
        # The band-limiting filter rings, so near-full-scale input can overshoot slightly.
        return np.clip(out, -1.0, 1.0, out=out)

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("AudioDecoder was flushed; make a new one for a new stream")


# ------------------------------------------------------------------------- range compression
# Speech is pulled toward TARGET_DB by RATIO, from above (loud talkers) and below (quiet or
# distant ones), boosting by at most MAX_GAIN_DB. Below GATE_DB the boost fades out over
# GATE_KNEE_DB, so room noise and silence are left where they are rather than raised to speech
# level. Levels are RMS over 10 ms frames, smoothed with a fast attack (a sudden loud word is
# caught at once) and a slow release (gain does not pump up in the pauses between words).
TARGET_DB = -20.0
RATIO = 3.0
MAX_GAIN_DB = 20.0
MAX_CUT_DB = -30.0
GATE_DB = -50.0
GATE_KNEE_DB = 10.0
ATTACK_MS = 10.0
RELEASE_MS = 400.0
LIMIT_CEILING = 0.97  # peaks end just under full scale, with room for the final rounding
_FRAME_MS = 10.0
_FLOOR_DB = -120.0


def _frame_levels_db(frames: np.ndarray) -> np.ndarray:
    power = np.mean(np.square(frames, dtype=np.float64), axis=1)
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (_FLOOR_DB / 10.0)))


def _follow(levels_db: np.ndarray, frame_s: float) -> np.ndarray:
    """One-pole envelope with separate attack and release time constants.

    The coefficient depends on the direction of each step, so no linear filter expresses it; a
    loop over 10 ms frames is 3000 steps for 30 s, about a millisecond.
    """
    attack = math.exp(-frame_s / (ATTACK_MS / 1000.0))
    release = math.exp(-frame_s / (RELEASE_MS / 1000.0))
    envelope = np.empty_like(levels_db)
    state = float(levels_db[0])  # start settled, so the first word is not treated as a jump
    for i, level in enumerate(levels_db.tolist()):
        coeff = attack if level > state else release
        state = level + coeff * (state - level)
        envelope[i] = state
    return envelope


def _gain_db(envelope_db: np.ndarray) -> np.ndarray:
    gain = np.clip((TARGET_DB - envelope_db) * (1.0 - 1.0 / RATIO), MAX_CUT_DB, MAX_GAIN_DB)
    # Fade to unity below the gate; a cut (gain < 0) never needs gating.
    open_fraction = np.clip((envelope_db - (GATE_DB - GATE_KNEE_DB)) / GATE_KNEE_DB, 0.0, 1.0)
    return np.where(gain > 0.0, gain * open_fraction, gain)


def _per_sample(frame_gain: np.ndarray, frame: int) -> np.ndarray:
    """Frame gains as a (frames, frame) grid, linear between frame centres (no clicks).

    The frames are regular, so each sample blends its frame's gain with one neighbour's by a
    fixed weight; np.interp over every sample would cost ten times as much.
    """
    gains = np.pad(frame_gain.astype(np.float32), 1, mode="edge")
    offset = (np.arange(frame, dtype=np.float32) - (frame - 1) / 2.0) / frame  # -0.5 .. 0.5
    centre = gains[1:-1, None]
    to_previous = np.maximum(-offset, 0.0) * (gains[:-2, None] - centre)
    to_next = np.maximum(offset, 0.0) * (gains[2:, None] - centre)
    return centre + to_previous + to_next


def _limiter_gain(frames: np.ndarray) -> np.ndarray:
    """Per-frame gain that keeps every frame's peak at or under LIMIT_CEILING.

    Each frame takes the smallest gain of itself and its neighbours: interpolated between frame
    centres, the gain inside a frame then never exceeds what that frame's peak needs.
    """
    peaks = np.max(np.abs(frames), axis=1)
    gain = np.minimum(1.0, LIMIT_CEILING / np.maximum(peaks, 1e-12))
    padded = np.pad(gain, 1, mode="edge")
    return np.minimum(np.minimum(padded[:-2], padded[1:-1]), padded[2:])


def compress_dynamic_range(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Even out speech loudness: quiet speech up, loud speech down, silence untouched.

    Returns float32 of the same length, within [-1, 1]. The input is not modified.
    """
    samples = np.asarray(audio, dtype=np.float32)
    n = len(samples)
    if n == 0:
        return samples.copy()
    frame = max(1, round(sample_rate * _FRAME_MS / 1000.0))
    n_frames = -(-n // frame)
    padded = np.zeros(n_frames * frame, dtype=np.float32)
    padded[:n] = samples
    frames = padded.reshape(n_frames, frame)

    envelope = _follow(_frame_levels_db(frames), frame / sample_rate)
    gain = 10.0 ** (_gain_db(envelope) / 20.0)
    compressed = frames * _per_sample(gain, frame)
    limited = compressed * _per_sample(_limiter_gain(compressed), frame)
    # The limiter already holds peaks under the ceiling; this only guards float rounding.
    return np.clip(limited.reshape(-1)[:n], -1.0, 1.0)


# ------------------------------------------------------------------------------ the stream's audio


class SampleBuffer:
    """Samples addressed by their absolute index in the stream, dropped from the front.

    Amortised appends: a 30 s utterance arriving in 20 ms frames must not be copied 1500 times.
    """

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE, dtype=np.float32)
        self._start = 0  # absolute index of _data[0]
        self._length = 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._start + self._length

    def append(self, samples: np.ndarray) -> None:
        needed = self._length + len(samples)
        if needed > len(self._data):
            grown = np.zeros(max(needed, 2 * len(self._data)), dtype=np.float32)
            grown[: self._length] = self._data[: self._length]
            self._data = grown
        self._data[self._length : needed] = samples
        self._length = needed

    def view(self, begin: int, end: int) -> np.ndarray:
        begin, end = max(begin, self._start), min(end, self.end)
        return self._data[begin - self._start : end - self._start]

    def drop_before(self, index: int) -> None:
        cut = min(max(index, self._start), self.end) - self._start
        if cut == 0:
            return
        self._data[: self._length - cut] = self._data[cut : self._length]
        self._length -= cut
        self._start += cut
