"""Streaming Silero VAD (whisperwire.vad) on real recordings; `vad` comes from conftest."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.vad import SileroVADModel

import whisperwire.vad as vad_module
from whisperwire.vad import WINDOW_SAMPLES, SileroVAD, default_model_path

WINDOWS_PER_S = 16_000 / WINDOW_SAMPLES


@pytest.fixture(scope="module")
def windows_of(clip_audio):  # noqa: ANN001, ANN201
    """A shared clip as float32, cut to whole windows."""

    def cut(name: str) -> np.ndarray:
        samples = clip_audio(name)
        return samples[: len(samples) // WINDOW_SAMPLES * WINDOW_SAMPLES]

    return cut


def window(seconds: float) -> int:
    return int(seconds * WINDOWS_PER_S)


def stream_in_chunks(vad: SileroVAD, audio: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Feed `audio` in chunks of the given window counts, cycling through them."""
    stream = vad.new_stream()
    parts, start, i = [], 0, 0
    while start < len(audio):
        end = start + sizes[i % len(sizes)] * WINDOW_SAMPLES
        parts.append(stream.probabilities(audio[start:end]))
        start, i = end, i + 1
    return np.concatenate(parts)


def test_speech_between_silences(windows_of, vad: SileroVAD) -> None:
    # 3 s of digital silence, 11 s of JFK (with his pauses), 5 s of silence.
    probs = vad.new_stream().probabilities(windows_of("en_jfk_padded_3s_5s_silence.wav"))
    assert probs.dtype == np.float32
    assert len(probs) == window(19.0)
    assert np.all((probs >= 0) & (probs <= 1))
    assert probs[: window(2.5)].mean() < 0.05
    assert probs[window(14.5) :].mean() < 0.05
    speech = probs[window(3.0) : window(14.0)]
    assert (speech > 0.5).mean() > 0.5
    # Every second of the speech has speech in it, pauses or not.
    assert all(second.max() > 0.5 for second in np.array_split(speech, 11))


def test_continuous_reading_is_mostly_speech(windows_of, vad: SileroVAD) -> None:
    probs = vad.new_stream().probabilities(windows_of("en_librispeech_1221-135766-0001.wav"))
    assert (probs > 0.5).mean() > 0.8


@pytest.mark.parametrize(
    ("name", "most"),
    [
        ("none_noise_speechbrain_noise5.wav", 0.1),
        ("none_near_silence_1s.wav", 0.05),
        ("none_laughter_4s.wav", 0.1),
    ],
)
def test_non_speech_has_few_speech_windows(windows_of, vad: SileroVAD, name: str, most: float) -> None:
    probs = vad.new_stream().probabilities(windows_of(name))
    assert (probs > 0.5).mean() < most


def test_matches_faster_whisper_silero(windows_of, vad: SileroVAD) -> None:
    audio = windows_of("en_jfk_inaugural_11s.wav")
    ours = vad.new_stream().probabilities(audio)
    # faster-whisper's one-shot call zeroes the last 64 samples of its input (of the array it
    # is given, too), so it gets a copy and its last window is not compared.
    reference = SileroVADModel(default_model_path())(audio.copy()).reshape(-1)
    assert len(reference) == len(ours)
    np.testing.assert_allclose(ours[:-1], reference[:-1], atol=1e-5)


@pytest.mark.parametrize("sizes", [[1], [3, 1, 7, 2], [16, 5], [50]])
def test_streaming_equals_one_shot(windows_of, vad: SileroVAD, sizes: list[int]) -> None:
    audio = windows_of("en_jfk_padded_3s_5s_silence.wav")[: window(8.0) * WINDOW_SAMPLES]
    one_shot = vad.new_stream().probabilities(audio)
    np.testing.assert_allclose(stream_in_chunks(vad, audio, sizes), one_shot, atol=1e-6)


def test_long_calls_are_split_without_changing_results(
    windows_of, vad: SileroVAD, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = windows_of("en_harvard_birch_canoe.wav")
    expected = vad.new_stream().probabilities(audio)
    monkeypatch.setattr(vad_module, "_MAX_BATCH", 7)
    np.testing.assert_allclose(vad.new_stream().probabilities(audio), expected, atol=1e-6)


def test_interleaved_streams_keep_their_own_state(windows_of, vad: SileroVAD) -> None:
    a = windows_of("en_jfk_inaugural_11s.wav")[: 150 * WINDOW_SAMPLES]
    b = windows_of("none_noise_speechbrain_noise5.wav")[: 150 * WINDOW_SAMPLES]
    alone_a = vad.new_stream().probabilities(a)
    alone_b = vad.new_stream().probabilities(b)

    stream_a, stream_b = vad.new_stream(), vad.new_stream()
    out_a, out_b = [], []
    chunk = 5 * WINDOW_SAMPLES
    for start in range(0, len(a), chunk):
        out_a.append(stream_a.probabilities(a[start : start + chunk]))
        out_b.append(stream_b.probabilities(b[start : start + chunk]))
    np.testing.assert_allclose(np.concatenate(out_a), alone_a, atol=1e-6)
    np.testing.assert_allclose(np.concatenate(out_b), alone_b, atol=1e-6)


def test_state_carries_across_calls_and_reset_clears_it(windows_of, vad: SileroVAD) -> None:
    audio = windows_of("en_jfk_inaugural_11s.wav")
    fresh = vad.new_stream().probabilities(audio[: 40 * WINDOW_SAMPLES])

    stream = vad.new_stream()
    stream.probabilities(audio[40 * WINDOW_SAMPLES : 100 * WINDOW_SAMPLES])
    warm = stream.probabilities(audio[: 40 * WINDOW_SAMPLES])
    assert np.abs(warm - fresh).max() > 1e-3  # state from the earlier call matters

    stream.reset()
    np.testing.assert_allclose(stream.probabilities(audio[: 40 * WINDOW_SAMPLES]), fresh, atol=1e-6)


def test_rejects_partial_windows(vad: SileroVAD) -> None:
    stream = vad.new_stream()
    with pytest.raises(ValueError, match="multiple of 512"):
        stream.probabilities(np.zeros(WINDOW_SAMPLES + 1, dtype=np.float32))
    with pytest.raises(ValueError):
        stream.probabilities(np.zeros((2, WINDOW_SAMPLES), dtype=np.float32))
    assert stream.probabilities(np.zeros(0, dtype=np.float32)).shape == (0,)
