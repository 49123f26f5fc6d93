"""Decoding, resampling and range compression of client audio (whisperwire.audio)."""

from __future__ import annotations

import numpy as np
import pytest
import soxr

from whisperwire.audio import (
    LIMIT_CEILING,
    AudioDecoder,
    compress_dynamic_range,
)
from whisperwire.protocol import ErrorCode, ProtocolError
from whisperwire.values import SAMPLE_RATE


def to_s16le(samples: np.ndarray) -> bytes:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype("<i2").tobytes()


def decode_all(decoder: AudioDecoder, frames: list[bytes]) -> np.ndarray:
    parts = [decoder.decode(frame) for frame in frames]
    parts.append(decoder.flush())
    return np.concatenate(parts)


def split_at(data: bytes, cuts: np.ndarray) -> list[bytes]:
    edges = [0, *sorted(int(c) for c in cuts), len(data)]
    return [data[a:b] for a, b in zip(edges[:-1], edges[1:])]


# ------------------------------------------------------------------- G.711 reference encoders
# Written from the G.711 segment rules (sign, 3-bit segment, 4-bit step), independently of the
# decoder's tables, so a wrong table cannot agree with them by construction.


def mulaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    biased = np.minimum(np.abs(x), 32635) + 0x84
    segment = np.floor(np.log2(biased)).astype(np.int32) - 7
    step = (biased >> (segment + 3)) & 0x0F
    return (~(sign | (segment << 4) | step) & 0xFF).astype(np.uint8)


def alaw_encode(pcm: np.ndarray) -> np.ndarray:
    x = pcm.astype(np.int32)
    sign = np.where(x >= 0, 0x80, 0)
    magnitude = np.minimum(np.where(x >= 0, x, -x - 1), 32767) >> 3  # 13-bit, as G.711 A-law
    segment = np.where(magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))) - 4)
    segment = segment.astype(np.int32)
    step = np.where(segment == 0, magnitude >> 1, (magnitude >> segment) & 0x0F)
    return ((sign | (segment << 4) | step) ^ 0x55).astype(np.uint8)


def decode_bytes(encoding: str, data: bytes) -> np.ndarray:
    decoder = AudioDecoder(encoding, SAMPLE_RATE)  # type: ignore[arg-type]
    return decoder.decode(data)


# --------------------------------------------------------------------------------- decoding


def test_s16le_round_trips_exactly() -> None:
    rng = np.random.default_rng(1)
    pcm = np.concatenate([[-32768, -1, 0, 1, 32767], rng.integers(-32768, 32768, 5000)])
    out = decode_bytes("pcm_s16le", pcm.astype("<i2").tobytes())
    assert out.dtype == np.float32
    assert out.min() == -1.0 and out.max() < 1.0
    np.testing.assert_array_equal(np.round(out * 32768).astype(np.int64), pcm)


def test_f32le_passes_through_and_clips_out_of_range() -> None:
    values = np.array([0.0, 0.25, -0.5, 1.0, -1.0, 1.5, -7.0], dtype="<f4")
    out = decode_bytes("pcm_f32le", values.tobytes())
    np.testing.assert_array_equal(out, [0.0, 0.25, -0.5, 1.0, -1.0, 1.0, -1.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_f32le_non_finite_is_invalid_audio(bad: float) -> None:
    decoder = AudioDecoder("pcm_f32le", 16_000)
    data = np.array([0.1, bad, 0.2], dtype="<f4").tobytes()
    decoder.decode(data[:3])  # the bad sample arrives split across frames
    with pytest.raises(ProtocolError) as caught:
        decoder.decode(data[3:])
    assert caught.value.code == ErrorCode.INVALID_AUDIO
    assert "NaN" in caught.value.message


def test_mulaw_and_alaw_anchor_codes() -> None:
    # Silence, and the largest magnitudes, of each law.
    mulaw = decode_bytes("pcm_mulaw", bytes([0xFF, 0x7F, 0x80, 0x00])) * 32768
    np.testing.assert_array_equal(mulaw, [0, 0, 32124, -32124])
    alaw = decode_bytes("pcm_alaw", bytes([0xD5, 0x55, 0xAA, 0x2A])) * 32768
    np.testing.assert_array_equal(alaw, [8, -8, 32256, -32256])


@pytest.mark.parametrize(
    ("encoding", "encode"), [("pcm_mulaw", mulaw_encode), ("pcm_alaw", alaw_encode)]
)
def test_g711_decodes_within_quantisation_error(encoding: str, encode) -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int32)
    decoded = decode_bytes(encoding, encode(pcm).tobytes()) * 32768
    # G.711 steps grow with the segment: about 1/16 of the magnitude, never under 16.
    half_step = np.maximum(16, (np.abs(pcm) + 132) / 16) / 2
    error = np.abs(decoded - pcm)
    assert np.all(error <= half_step + 1), f"worst error {error.max()} at {pcm[error.argmax()]}"
    # Over the whole range, the mean error is a small fraction of the signal.
    assert error.mean() / np.abs(pcm).mean() < 0.02


@pytest.mark.parametrize(
    ("encoding", "encode"), [("pcm_mulaw", mulaw_encode), ("pcm_alaw", alaw_encode)]
)
def test_g711_every_code_re_encodes_to_itself(encoding: str, encode) -> None:
    codes = np.arange(256, dtype=np.uint8)
    decoded = np.round(decode_bytes(encoding, codes.tobytes()) * 32768).astype(np.int32)
    again = encode(decoded)
    if encoding == "pcm_mulaw":
        assert decoded[0x7F] == 0 and again[0x7F] == 0xFF  # μ-law's negative zero
        codes, again = np.delete(codes, 0x7F), np.delete(again, 0x7F)
    np.testing.assert_array_equal(again, codes)


# ----------------------------------------------------------------- split samples, counters

ENCODINGS = ["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]


def encode_clip(encoding: str, samples: np.ndarray) -> bytes:
    if encoding == "pcm_f32le":
        return samples.astype("<f4").tobytes()
    pcm = np.frombuffer(to_s16le(samples), dtype="<i2")
    if encoding == "pcm_mulaw":
        return mulaw_encode(pcm).tobytes()
    if encoding == "pcm_alaw":
        return alaw_encode(pcm).tobytes()
    return pcm.tobytes()


@pytest.mark.parametrize("rate", [16_000, 8_000, 44_100])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_split_frames_give_the_same_output_as_one_frame(clip_audio, encoding: str, rate: int) -> None:
    samples = clip_audio("en_harvard_birch_canoe.wav")[:16_000]
    data = encode_clip(encoding, samples)
    whole = decode_all(AudioDecoder(encoding, rate), [data])  # type: ignore[arg-type]

    rng = np.random.default_rng(rate)
    cuts = rng.choice(len(data), size=300, replace=False)
    cuts = np.concatenate([cuts, np.arange(1001, 1017)])  # a run of 1-byte frames too
    frames = split_at(data, np.unique(cuts))
    assert min(len(f) for f in frames) == 1
    split = decode_all(AudioDecoder(encoding, rate), frames)  # type: ignore[arg-type]
    np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("encoding", ["pcm_s16le", "pcm_f32le"])
def test_one_byte_frames_give_the_same_output_as_one_frame(clip_audio, encoding: str) -> None:
    samples = clip_audio("en_harvard_birch_canoe.wav")[8_000:10_000]
    data = encode_clip(encoding, samples)
    whole = decode_all(AudioDecoder(encoding, 16_000), [data])  # type: ignore[arg-type]
    split = decode_all(
        AudioDecoder(encoding, 16_000), [data[i : i + 1] for i in range(len(data))]  # type: ignore[arg-type]
    )
    np.testing.assert_array_equal(split, whole)
    np.testing.assert_allclose(whole, samples, atol=1 / 32768)


def test_samples_in_and_pending_bytes_count_input_samples() -> None:
    decoder = AudioDecoder("pcm_s16le", 44_100)
    decoder.decode(b"\x00" * 1001)
    assert (decoder.samples_in, decoder.pending_bytes) == (500, 1)
    decoder.decode(b"\x00")
    assert (decoder.samples_in, decoder.pending_bytes) == (501, 0)
    decoder.decode(b"")
    assert decoder.samples_in == 501

    f32 = AudioDecoder("pcm_f32le", 8_000)
    f32.decode(b"\x00" * 7)
    assert (f32.samples_in, f32.pending_bytes) == (1, 3)

    mulaw = AudioDecoder("pcm_mulaw", 8_000)
    mulaw.decode(b"\xff" * 80)
    assert (mulaw.samples_in, mulaw.pending_bytes) == (80, 0)


def test_16k_passes_through_without_delay() -> None:
    decoder = AudioDecoder("pcm_s16le", 16_000)
    out = decoder.decode(np.arange(320, dtype="<i2").tobytes())
    assert len(out) == 320
    assert len(decoder.flush()) == 0


def test_decoder_cannot_be_used_after_flush() -> None:
    decoder = AudioDecoder("pcm_s16le", 8_000)
    decoder.decode(b"\x00\x01" * 100)
    decoder.flush()
    with pytest.raises(RuntimeError):
        decoder.decode(b"\x00\x00")
    with pytest.raises(RuntimeError):
        decoder.flush()


# ------------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("rate", [8_000, 44_100, 48_000])
def test_resampled_real_speech_matches_the_original(clip_audio, rate: int) -> None:
    original = clip_audio("en_harvard_birch_canoe.wav")
    at_rate = soxr.resample(original, SAMPLE_RATE, rate, quality="VHQ")
    data = to_s16le(at_rate)

    decoder = AudioDecoder("pcm_s16le", rate)
    step = rate // 50 * 2  # 20 ms frames, as a client would send
    out = decode_all(decoder, [data[i : i + step] for i in range(0, len(data), step)])

    assert out.dtype == np.float32
    assert decoder.samples_in == len(at_rate)
    assert abs(len(out) - len(original)) <= 3
    n = min(len(out), len(original))
    # 8 kHz loses everything above 4 kHz, which in speech is little energy.
    assert np.corrcoef(out[:n], original[:n])[0, 1] > 0.98


# -------------------------------------------------------------------------- range compression


def level_db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


@pytest.fixture
def speech(clip_audio) -> np.ndarray:
    clip = clip_audio("en_harvard_birch_canoe.wav")
    return clip / np.abs(clip).max() * 0.9


def test_drc_brings_quiet_and_loud_speech_together(speech: np.ndarray) -> None:
    loud = speech
    quiet = loud * 0.02  # 34 dB down
    gap = np.zeros(8_000, dtype=np.float32)
    audio = np.concatenate([quiet, gap, loud]).astype(np.float32)

    out = compress_dynamic_range(audio)
    n = len(loud)
    before = level_db(loud) - level_db(quiet)
    after = level_db(out[-n:]) - level_db(out[:n])
    assert before > 30
    assert after < 15, f"levels still {after:.1f} dB apart"
    assert level_db(out[:n]) > level_db(quiet) + 10  # quiet speech was raised
    assert level_db(out[-n:]) < level_db(loud) - 3  # loud speech was lowered
    assert out.dtype == np.float32 and len(out) == len(audio)


def test_drc_output_stays_within_range_by_limiting(speech: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    quiet = speech * 0.01
    quiet[20_000:20_040] = 0.95 * np.sign(rng.standard_normal(40))  # a sudden click
    loud = np.clip(rng.standard_normal(16_000) * 0.8, -1, 1)  # very loud noise
    out = compress_dynamic_range(np.concatenate([quiet, loud]).astype(np.float32))
    # Held by the limiter, not merely clipped at full scale.
    assert np.abs(out).max() <= LIMIT_CEILING + 1e-6


def test_drc_leaves_silence_near_silence() -> None:
    assert not compress_dynamic_range(np.zeros(16_000, dtype=np.float32)).any()
    hiss = (np.random.default_rng(3).standard_normal(32_000) * 10 ** (-75 / 20)).astype(np.float32)
    out = compress_dynamic_range(hiss)
    assert level_db(out) < -70


def test_drc_does_not_modify_input_and_handles_short_input(speech: np.ndarray) -> None:
    audio = speech[:1234].copy()
    kept = audio.copy()
    assert len(compress_dynamic_range(audio)) == 1234
    np.testing.assert_array_equal(audio, kept)
    assert len(compress_dynamic_range(np.zeros(0, dtype=np.float32))) == 0
    assert len(compress_dynamic_range(audio[:7])) == 7
