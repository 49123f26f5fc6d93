"""Every rule about which of Whisper's text to believe, and where its times are wrong.

Whisper writes text for whatever it is given: "Thank you." for laughter, "you you you" in a
loop, a last word that ends half a second before the speech does. These rules, measured on the
shared clips and generated non-speech (benchmarks/transcript_quality.py, BENCHMARKS.md), decide
what reaches the client. They are pure functions of a request and a result, so the engine, the
scheduler and the session apply them without knowing each other.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TypeVar

from .values import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    InferenceRequest,
    Result,
    SegmentResult,
    Word,
)

_Timed = TypeVar("_Timed", SegmentResult, Word)

# Whisper's own signs that a decoded window held no speech. The streaming VAD hands over short
# bursts of laughter, breath or noise that Whisper decodes as "Thank you." or "Good." with a
# no-speech probability of 0.55-0.9 and a mean log-probability of -0.8 to -1.2 (the laughter cuts
# of benchmarks/transcript_quality.py); the least sure real utterance of the shared clips, JFK's
# "Ask not!" alone, has 0.41 and -0.99 (tests/test_quality.py keeps it). A window is dropped when
# it is probably silent and was not decoded with confidence: past either (no-speech probability,
# mean log-probability) pair.
SILENT_WINDOW_RULES = ((0.6, -0.5), (0.55, -1.0))
# A segment that gzip-compresses better than 2.4:1 is a repetition loop ("you you you ..."),
# which with a single temperature nothing else catches.
COMPRESSION_RATIO_LIMIT = 2.4
_WORD = re.compile(r"\w")

# An utterance with less speech than this (windows at or above the threshold; Silero's own
# minimum speech duration) is a burst of laughter, a breath or a click more often than a word:
# its text is kept only if Whisper decoded it with at least this mean log-probability.
MIN_SPEECH_S = 0.25
SHORT_SPEECH_MIN_LOGPROB = -0.8

# Whisper's end time for the last word of an utterance is often early (by up to half a second
# on a fading last syllable); the VAD saw where the speech really stopped. The last segment and
# word are extended to it, when it is this close.
END_SNAP_S = 0.6

# Whisper sometimes ends a long utterance after its first sentence with a final timestamp, and
# faster-whisper then skips the rest of the 30 s window: seconds of speech are never decoded.
# When the VAD heard at least this much speech after the last segment, that stretch is decoded
# once more. Only speech the VAD heard counts: decoding every uncovered stretch brought text
# for pauses ("them.") on the monologues of benchmarks/transcript_quality.py.
RECOVER_MIN_SPEECH_S = 1.0


def is_speech(text: str, *, no_speech_prob: float, avg_logprob: float, compression_ratio: float) -> bool:
    """Whether one decoded segment is speech rather than Whisper's text for silence or noise."""
    if not _WORD.search(text):
        return False  # "." or "..." alone: no word was heard
    if compression_ratio > COMPRESSION_RATIO_LIMIT:
        return False
    return not any(
        no_speech_prob > no_speech and avg_logprob < log_prob for no_speech, log_prob in SILENT_WINDOW_RULES
    )


def short_burst(request: InferenceRequest, result: Result) -> Result:
    """The result, or no words when the VAD heard too little speech for Whisper's doubtful text."""
    mean = result.mean_logprob
    if request.speech_s >= MIN_SPEECH_S or mean is None or mean >= SHORT_SPEECH_MIN_LOGPROB:
        return result
    return Result(segments=(), language=result.language, language_prob=result.language_prob)


def snap_end(result: Result, speech_end: float) -> Result:
    """The result with its last segment (and word) ending where the VAD heard speech stop."""
    if not result.segments:
        return result
    last = result.segments[-1]
    if not 0 < speech_end - last.end <= END_SNAP_S:
        return result
    words = last.words
    if words:
        words = (*words[:-1], replace(words[-1], end=speech_end))
    return replace(result, segments=(*result.segments[:-1], replace(last, end=speech_end, words=words)))


def snap_start(result: Result, heard_from: float) -> Result:
    """The result with no segment or word starting before the VAD first heard anything.

    A recognition's audio starts where the previous one ended (coverage, endpointer.py), often
    seconds of silence before the speech, and Whisper dates its first segment, and the first
    word's alignment, from the start of its audio. The VAD knows better where speech began.
    """

    def later(item: _Timed) -> _Timed:
        if item.start >= heard_from:
            return item
        start = round(heard_from, 3)
        return replace(item, start=start, end=max(item.end, start))

    segments = []
    for segment in result.segments:
        if segment.start >= heard_from:
            segments.append(segment)
            continue
        words = None if segment.words is None else tuple(later(w) for w in segment.words)
        segments.append(replace(later(segment), words=words))
    return replace(result, segments=tuple(segments))


def partial_result(request: InferenceRequest, result: Result) -> Result:
    """What a partial says of its recognition: the short-burst rule, then the start snap."""
    result = short_burst(request, result)
    if request.heard_from_s is not None:
        result = snap_start(result, request.heard_from_s)
    return result


def final_result(request: InferenceRequest, result: Result) -> Result:
    """What a final says of its recognition: the short-burst rule, then the start and end snaps."""
    result = partial_result(request, result)
    if request.speech_end_s is not None:
        result = snap_end(result, request.speech_end_s)
    return result


def hear_alone(request: InferenceRequest, result: Result, *, shown: bool) -> bool:
    """Whether a final is recognised once more on its own audio (context.alone): it came back
    with no words, a partial of it had ``shown`` some, the VAD heard speech, and it was heard
    after the previous words (left context, prefix or context prompt), which can lead Whisper
    to close the text at their sentence's end ("... okay." then nothing for "bye"). Once only."""
    if request.kind == "partial" or request.again or request.detect_only or not shown or not request.speech_at:
        return False
    anchored = request.context_s > 0 or request.options.prefix is not None or request.options.context is not None
    return anchored and not final_result(request, result).text


def uncovered_speech_s(request: InferenceRequest, covered: float) -> float:
    """Seconds of speech the VAD heard after ``covered`` (seconds from the request's audio[0])."""
    return sum(1 for start in request.speech_at if start >= covered) * WINDOW_SAMPLES / SAMPLE_RATE


def shifted(segment: SegmentResult, seconds: float) -> SegmentResult:
    """The segment, and its words, ``seconds`` later."""
    words = segment.words
    if words is not None:
        words = tuple(replace(w, start=round(w.start + seconds, 3), end=round(w.end + seconds, 3)) for w in words)
    return replace(
        segment, start=round(segment.start + seconds, 3), end=round(segment.end + seconds, 3), words=words
    )
