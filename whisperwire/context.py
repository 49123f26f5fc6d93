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
from collections import deque
from dataclasses import dataclass, replace

from .endpointer import Due
from .values import InferenceRequest, Result, SegmentResult, Word

# How much audio before an utterance a final hears, at most (less when the utterance and its
# context would not fit Whisper's 30 s window).
LEFT_CONTEXT_S = 8.0
WHISPER_WINDOW_S = 30.0
# Where every earlier final is out, the context starts at the first of the last PREFIX_WORDS
# words sent, and they are Whisper's decoder prefix: forced to begin with them, Whisper goes on
# from there, and the words after them are the request's. Measured (BENCHMARKS.md, "Left context
# anchored on the words sent"): all the words of 8 s, or a few words with 8 s of audio, did worse.
PREFIX_WORDS = 8
# ... only where the new speech follows the last of them within this: after a longer pause the
# speech may be on another subject, and forcing Whisper to go on from the old words misleads it.
ANCHOR_GAP_S = 1.0
# Word start times from the cross-attention alignment are a frame or two early at the cut.
CUT_TOLERANCE_S = 0.05
# A first word that repeats the previous final's last word and starts this close after the cut,
# or before the VAD heard anything of the utterance, is that word again, placed late by the
# alignment ("California. California", "Ranch. Ranch, California").
REPEAT_WITHIN_S = 0.5

_NOT_WORD = re.compile(r"[^\w']+")


def context_samples(utterance: int, available: int, rate: int) -> int:
    """Samples of left context for an utterance of ``utterance`` samples, with ``available``
    samples held before it."""
    room = round(WHISPER_WINDOW_S * rate) - utterance
    return max(0, min(round(LEFT_CONTEXT_S * rate), available, room))


@dataclass(frozen=True)
class SentWord:
    start: int  # absolute samples of the stream
    end: int
    text: str  # as Whisper wrote it, with its leading space


class SentWords:
    """The words of the finals sent, where they lie in the stream, as far back as a left
    context reaches: what the left context's audio says, already decided."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._words: deque[SentWord] = deque()

    def sent(self, request: InferenceRequest, result: Result) -> None:
        offset = request.offset_s
        for segment in result.segments:
            for w in segment.words or ():
                self._words.append(SentWord(round((offset + w.start) * self._rate), round((offset + w.end) * self._rate), w.word))
        horizon = round(2 * LEFT_CONTEXT_S * self._rate)
        while self._words and self._words[-1].end - self._words[0].start > horizon:
            self._words.popleft()

    def anchor(self, start: int, heard: int, earliest: int, room: int) -> tuple[int, str] | None:
        """Where the left context of audio from ``start`` begins, at the first of the last
        PREFIX_WORDS words sent, and their text; None when no sent word lies in reach (no
        earlier than ``earliest``, at most ``room`` samples before ``start``) or the speech,
        first heard at ``heard``, does not follow the last of them within ANCHOR_GAP_S."""
        reach = max(earliest, start - room)
        words = [w for w in self._words if w.start >= reach and w.end <= start][-PREFIX_WORDS:]
        if not words or heard - words[-1].end > round(ANCHOR_GAP_S * self._rate):
            return None
        return words[0].start, "".join(w.text if w.text.startswith(" ") else f" {w.text}" for w in words)


def left_context(due: Due, earliest: int, sent: SentWords | None, rate: int) -> tuple[int, str | None]:
    """Where the left context of ``due``'s audio begins, and the words it says when they are
    known and its speech goes on from them: ``sent`` is None while an earlier final is not out.
    Otherwise the context is LEFT_CONTEXT_S of audio, cut again by time."""
    room = context_samples(due.end - due.start, due.start - earliest, rate)
    heard = due.start if due.heard_from is None else due.heard_from
    anchored = None if sent is None else sent.anchor(due.start, heard, earliest, room)
    return (due.start - room, None) if anchored is None else anchored


def after_prefix(request: InferenceRequest, result: Result) -> Result | None:
    """The result without the words of its forced prefix; None when the words do not begin
    with the prefix (a segment holding it was dropped): then the context is cut by time."""
    prefix = _letters(request.options.prefix or "")
    kept: list[SegmentResult] = []
    for segment in result.segments:
        words = list(segment.words or ())
        while words and prefix:
            letters = _letters(words[0].word)
            if not prefix.startswith(letters):
                return None
            prefix = prefix[len(letters) :]
            words.pop(0)
        if words:
            kept.append(_segment_of(segment, words))
    return None if prefix else replace(result, segments=tuple(kept))


def _letters(text: str) -> str:
    return _NOT_WORD.sub("", text).lower().replace("_", "")


def alone(request: InferenceRequest, rate: int) -> InferenceRequest:
    """The request on its own audio: no left context, no prefix, no previous text as prompt
    (the user's prompt stays), its times still the stream's; marked ``again``."""
    cut = round(request.context_s * rate)
    shift = cut / rate

    def moved(t: float | None) -> float | None:
        return None if t is None else max(0.0, t - shift)

    return replace(
        request,
        audio=request.audio[cut:],
        offset_s=request.offset_s + shift,
        options=replace(request.options, prefix=None, context=None),
        speech_at=tuple(t - shift for t in request.speech_at if t >= shift),
        speech_end_s=moved(request.speech_end_s),
        heard_from_s=moved(request.heard_from_s),
        context_s=0.0,
        context_words=(),
        replaces=None,
        again=True,
    )


def last_words(text: str | None, n: int = 3) -> tuple[str, ...]:
    """The last ``n`` words of a final, normalised as repeat() compares them."""
    return tuple(_normal(w) for w in (text or "").split()[-n:] if _normal(w))


def cut(request: InferenceRequest, result: Result) -> Result:
    """The result without the words of the request's left context (``request.context_s``)."""
    boundary = request.context_s - CUT_TOLERANCE_S
    # Where a repeat is the context's word: near the cut, or where the utterance had no sound yet.
    repeat_before = max(request.context_s + REPEAT_WITHIN_S, (request.heard_from_s or 0.0) - CUT_TOLERANCE_S)
    kept: list[SegmentResult] = []
    for segment in result.segments:
        words = [w for w in segment.words or () if w.start >= boundary]
        if not kept:
            words = words[_repeats(words, request.context_words, repeat_before) :]
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
