"""The transcript-quality rules alone, on made-up results."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from whisperwire import guards
from whisperwire.values import (
    DecodeOptions,
    InferenceRequest,
    Result,
    SegmentResult,
    Word,
)


def segment(text: str = " Hello there.", start: float = 0.0, end: float = 1.0, logprob: float = -0.3, words: bool = False) -> SegmentResult:
    w = (Word(" Hello", start, start + 0.3, 0.9), Word(" there.", start + 0.4, end, 0.9)) if words else None
    return SegmentResult(text, start, end, logprob, 3, 0.1, 1.2, w)


def request(speech_windows: int = 30, speech_end_s: float | None = None) -> InferenceRequest:
    speech_at = tuple(i * 0.032 for i in range(speech_windows))
    return InferenceRequest(
        "s", "final", 0, np.zeros(16_000, np.float32), 2.0, DecodeOptions(language="en"),
        speech_at=speech_at, speech_end_s=speech_end_s,
    )


@pytest.mark.parametrize(
    ("text", "no_speech", "logprob", "ratio", "kept"),
    [
        (" Ask not!", 0.41, -0.99, 1.0, True),  # the least sure real utterance of the shared clips
        (" ...", 0.01, -0.1, 1.0, False),  # no word
        (" you you you you you you you you", 0.01, -0.1, 3.0, False),  # a repetition loop
        (" Thank you.", 0.7, -0.8, 1.0, False),  # probably silent, not confident
        (" Thank you.", 0.58, -1.1, 1.0, False),  # the second rule
        (" Thank you.", 0.7, -0.3, 1.0, True),  # probably silent, but decoded with confidence
    ],
)
def test_is_speech(text: str, no_speech: float, logprob: float, ratio: float, kept: bool) -> None:
    assert guards.is_speech(text, no_speech_prob=no_speech, avg_logprob=logprob, compression_ratio=ratio) is kept


def test_a_short_burst_keeps_only_confident_text() -> None:
    doubtful = Result((segment(logprob=-1.0),), "en", None)
    sure = Result((segment(logprob=-0.5),), "en", None)
    assert guards.short_burst(request(speech_windows=5), doubtful).segments == ()  # 0.16 s of speech
    assert guards.short_burst(request(speech_windows=5), sure) == sure
    assert guards.short_burst(request(speech_windows=10), doubtful) == doubtful  # 0.32 s: speech


def test_the_end_snaps_to_the_vad_when_close_and_only_then() -> None:
    result = Result((segment(start=0.0, end=0.5), segment(start=0.6, end=1.0, words=True)), "en", None)
    snapped = guards.final_result(request(speech_end_s=1.4), result)
    assert snapped.segments[-1].end == 1.4 and snapped.segments[-1].words[-1].end == 1.4
    assert snapped.segments[0] == result.segments[0]
    assert guards.final_result(request(speech_end_s=1.7), result) == result  # 0.7 s: too far
    assert guards.final_result(request(speech_end_s=0.9), result) == result  # never earlier


def test_nothing_starts_before_the_vad_heard_anything_and_what_came_after_is_untouched() -> None:
    # Covered audio from 0 s, the VAD heard the first sound at 1.2 s: Whisper's segment from 0.0
    # and its first word, aligned from 0.1, start there; later words and segments keep their times.
    first = SegmentResult(" Hello there.", 0.0, 2.0, -0.3, 3, 0.1, 1.2, (Word(" Hello", 0.1, 1.5, 0.9), Word(" there.", 1.6, 2.0, 0.9)))
    early = SegmentResult(" Hi.", 0.2, 0.9, -0.3, 2, 0.1, 1.0, (Word(" Hi.", 0.2, 0.9, 0.9),))  # wholly before it
    later = segment(start=2.5, end=3.0, words=True)
    req = replace(request(), heard_from_s=1.2)
    snapped = guards.final_result(req, Result((early, first, later), "en", None))
    hi, hello, rest = snapped.segments
    assert (hi.start, hi.end, hi.words[0].start, hi.words[0].end) == (1.2, 1.2, 1.2, 1.2)
    assert (hello.start, hello.end, [(w.start, w.end) for w in hello.words]) == (1.2, 2.0, [(1.2, 1.5), (1.6, 2.0)])
    assert rest == later
    assert [s.text for s in snapped.segments] == [" Hi.", " Hello there.", later.text]  # no word lost
    assert guards.partial_result(req, Result((first,), "en", None)).segments[0].start == 1.2
    assert guards.final_result(request(), Result((first,), "en", None)).segments[0] == first  # not known: as is


def test_uncovered_speech_and_shifted_segments() -> None:
    assert guards.uncovered_speech_s(request(speech_windows=50), covered=0.64) == pytest.approx(30 * 0.032)
    moved = guards.shifted(segment(start=0.1, end=0.9, words=True), 2.0)
    assert (moved.start, moved.end, moved.words[0].start) == (2.1, 2.9, 2.1)
