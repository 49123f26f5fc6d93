"""Transcript quality end to end (real server, tiny.en, Silero VAD): no text for non-speech,
no real speech dropped by the guards, and times that line up with the speech in the audio.

benchmarks/transcript_quality.py runs the long versions of these (over 10 minutes of non-speech).
"""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from tests import nonspeech
from tests.conftest import read_wav, start_server
from tests.streaming import s16le, stream, word_error_rate, words

RATE = 16_000
SECOND = np.zeros(RATE, dtype=np.float32)


def _no_text(received) -> list[str]:  # noqa: ANN001 - streaming.Received
    return [m["transcript"] for m in received.finals if m["transcript"]]


async def test_generated_non_speech_gives_no_final(server) -> None:
    # Five seconds of each signal, one after another with a second of silence between.
    pieces = [np.concatenate([nonspeech.generate(name, 5.0, seed), SECOND]) for seed, name in enumerate(nonspeech.GENERATED)]
    received = await stream(server.url, {}, s16le(np.concatenate(pieces)))
    assert _no_text(received) == [] and received.close_code == 1000


async def test_laughter_cut_anywhere_gives_no_final(server, clips) -> None:
    # Where the stream starts inside the laugh decides which bursts the VAD hands over; before
    # the guards, these cuts gave "Good.", "Thank you." and ".".
    laughter = read_wav(clips["none_laughter_4s.wav"].path)
    heard = []
    for offset in (0.0, 0.1, 0.3, 0.4, 0.8, 0.9):
        for gain in (1.0, 2.0):
            cut = np.clip(laughter[int(offset * RATE) :] * gain, -1, 1)
            received = await stream(server.url, {}, s16le(np.concatenate([cut, SECOND])))
            heard += [(offset, gain, text) for text in _no_text(received)]
    assert heard == []


async def test_pauses_of_the_shared_speech_clips_give_no_final(server, clips) -> None:
    gaps = []
    for name in ("en_earnings22_4482311_3_62.wav", "en_lovecraft_dagon_reading.wav", "en_jfk_inaugural_11s.wav"):
        audio = read_wav(clips[name].path)
        regions = get_speech_timestamps(audio, VadOptions(threshold=0.3, min_silence_duration_ms=100, speech_pad_ms=0))
        gaps += nonspeech.speech_free_parts(audio, [(r["start"], r["end"]) for r in regions])
    assert sum(len(g) for g in gaps) > 3 * RATE
    received = await stream(server.url, {"streaming_vad_config": {"threshold": 0.3}}, s16le(np.concatenate([*gaps, SECOND])))
    assert _no_text(received) == []


async def test_the_weakest_real_utterances_are_kept(server, clips) -> None:
    # JFK split at every pause: "ask not" alone is the least sure utterance of the English clips
    # (no-speech probability 0.41, mean log-probability -0.99); the guards must keep it.
    received = await stream(server.url, {}, s16le(np.concatenate([read_wav(clips["en_jfk_inaugural_11s.wav"].path), SECOND])))
    texts = [m["transcript"] for m in received.finals]
    assert len(texts) == 4, texts
    assert "not" in words(texts[1]), texts


@pytest.mark.parametrize(
    "name",
    ["en_timit_LDC93S1.wav", "en_harvard_birch_canoe.wav", "en_new_home_in_the_stars.wav", "en_librispeech_1221-135766-0002.wav"],
)
async def test_segment_and_word_times_match_the_speech_the_vad_marks(server, clips, vad, name) -> None:
    lead = 1.5
    audio = np.concatenate([np.zeros(int(lead * RATE), np.float32), read_wav(clips[name].path), SECOND, SECOND])
    regions = get_speech_timestamps(audio, VadOptions(threshold=0.5, min_silence_duration_ms=300, speech_pad_ms=0))
    speech_start, speech_end = regions[0]["start"] / RATE, regions[-1]["end"] / RATE
    received = await stream(server.url, {"whisper_params": {"show_word_timestamps": True}}, s16le(audio))
    segments = [s for m in received.finals for s in m["segments"]]
    assert segments, received.messages
    first_word, last_word = segments[0]["word_timestamps"][0], segments[-1]["word_timestamps"][-1]
    for label, got, expected in (
        ("segment start", segments[0]["start_time"], speech_start),
        ("segment end", segments[-1]["end_time"], speech_end),
        ("first word start", first_word["start_time"], speech_start),
        ("last word end", last_word["end_time"], speech_end),
    ):
        assert abs(got - expected) < 0.3, (label, got, expected)


async def test_a_server_with_context_prompt_still_gets_the_words(server, engine, vad, clips) -> None:
    # The session and engine tests check that the previous final reaches Whisper's prompt; here
    # the whole path runs on JFK split at each pause (four utterances), and carrying each final
    # into the next utterance's prompt must not cost words.
    clip = clips["en_jfk_inaugural_11s.wav"]
    audio = s16le(np.concatenate([read_wav(clip.path), SECOND]))
    plain = await stream(server.url, {}, audio)
    with start_server(engine, vad, context_prompt=True) as with_context:
        received = await stream(with_context.url, {}, audio)
    assert len(received.finals) == 4, received.messages
    one_word = 1 / len(words(clip.reference))
    assert word_error_rate(clip.reference, received.text) <= word_error_rate(clip.reference, plain.text) + one_word, received.text
