"""Transcription messages (PROTOCOL.md §4) from a request and its result."""

from __future__ import annotations

import math

from .protocol import Segment, Transcription, WordTimestamp
from .values import InferenceRequest, Result, SegmentResult


def transcription(request: InferenceRequest, result: Result, *, is_final: bool) -> Transcription:
    """A partial or final: times move from the request's audio to the stream's."""
    segments = [_segment(s, request.offset_s, request.options.word_timestamps) for s in result.segments]
    mean = result.mean_logprob
    return Transcription(
        transcription_num=request.transcription_num,
        is_final=is_final,
        transcript=" ".join(s.text for s in segments if s.text),
        confidence=None if mean is None else math.exp(mean),
        language_code=result.language,
        language_prob=result.language_prob,
        segments=segments,
    )


def language_only(num: int, result: Result) -> Transcription:
    """The final of an utterance under language_detection_only (PROTOCOL.md §4.2)."""
    return Transcription(
        transcription_num=num,
        is_final=True,
        transcript="",
        confidence=None,
        language_code=result.language,
        language_prob=result.language_prob,
        segments=[],
    )


def _segment(segment: SegmentResult, offset: float, with_words: bool) -> Segment:
    words = None
    if with_words:
        words = [
            WordTimestamp(
                word=w.word.strip(),
                start_time=round(offset + w.start, 3),
                end_time=round(offset + w.end, 3),
                prob=w.prob,
            )
            for w in segment.words or ()
        ]
    return Segment(
        text=segment.text.strip(),
        log_prob=segment.avg_logprob,
        start_time=round(offset + segment.start, 3),
        end_time=round(offset + segment.end, 3),
        word_timestamps=words,
    )
