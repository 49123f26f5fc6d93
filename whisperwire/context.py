"""Left context: a final is recognised with the audio before it, and only its own words kept.

An utterance recognised alone starts Whisper cold: "At year end" comes out "at your end", a
name half heard at the start is guessed. Heard after the seconds before it, Whisper continues
the sentence as it does offline. Those seconds belong to earlier finals, so their words are cut
again by time: a word is this request's when it starts at or after the context's end. Measured
on the shared English clips (BENCHMARKS.md, "left context"), this cut beat giving the previous
text as a decoder prefix, which faster-whisper returns inside the new segment with the prefix's
times, and cutting at the previous final's last word, which Whisper often ends early.
"""

from __future__ import annotations

import re
from dataclasses import replace

from .values import InferenceRequest, Result, SegmentResult, Word

# How much audio before an utterance a final hears, at most (less when the utterance and its
# context would not fit Whisper's 30 s window).
LEFT_CONTEXT_S = 8.0
WHISPER_WINDOW_S = 30.0
# Word start times from the cross-attention alignment are a frame or two early at the cut.
CUT_TOLERANCE_S = 0.05
# A first word that repeats the previous final's last word and starts this close after the cut
# is that word again, placed late by the alignment ("California. California").
REPEAT_WITHIN_S = 0.5

_NOT_WORD = re.compile(r"[^\w']+")


def context_samples(utterance: int, available: int, rate: int) -> int:
    """Samples of left context for an utterance of ``utterance`` samples, with ``available``
    samples held before it."""
    room = round(WHISPER_WINDOW_S * rate) - utterance
    return max(0, min(round(LEFT_CONTEXT_S * rate), available, room))


def last_words(text: str | None, n: int = 3) -> tuple[str, ...]:
    """The last ``n`` words of a final, normalised as repeat() compares them."""
    return tuple(_normal(w) for w in (text or "").split()[-n:] if _normal(w))


def cut(request: InferenceRequest, result: Result) -> Result:
    """The result without the words of the request's left context (``request.context_s``)."""
    boundary = request.context_s - CUT_TOLERANCE_S
    kept: list[SegmentResult] = []
    for segment in result.segments:
        words = [w for w in segment.words or () if w.start >= boundary]
        if not kept:
            words = words[_repeats(words, request.context_words, request.context_s + REPEAT_WITHIN_S) :]
        if words:
            kept.append(_segment_of(segment, words))
    return replace(result, segments=tuple(kept))


def _repeats(words: list[Word], previous: tuple[str, ...], before: float) -> int:
    """How many of the first words are the previous final's last words again."""
    if not words or words[0].start >= before:
        return 0
    new = tuple(_normal(w.word) for w in words)
    return next((k for k in range(len(previous), 0, -1) if new[:k] == previous[-k:]), 0)


def _segment_of(segment: SegmentResult, words: list[Word]) -> SegmentResult:
    if len(words) == len(segment.words or ()):
        return segment
    share = len(words) / len(segment.words or words)
    return replace(
        segment,
        text="".join(w.word for w in words),
        start=words[0].start,
        n_tokens=max(1, round(segment.n_tokens * share)),
        words=tuple(words),
    )


def _normal(word: str) -> str:
    return _NOT_WORD.sub("", word).lower()
