"""Subtitles from final transcripts: SubRip (SRT) and WebVTT.

A cue is a segment of a final. With word timestamps, a segment is cut at word boundaries into
cues of at most one subtitle line (``MAX_CUE_CHARS``), also at the end of each sentence, and each
cue takes its words' times: short cues that follow the speech closely.

Written here rather than with a subtitle library: those read and edit whole files, while a live
stream writes each cue the moment its final arrives, and a cue is three lines in either format.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TextIO

from .protocol import Transcription, WordTimestamp

SubtitleFormat = Literal["srt", "vtt"]

# A common limit for one line of subtitles (broadcasters' style guides use 37 to 42).
MAX_CUE_CHARS = 42
_SENTENCE_END = (".", "?", "!", "。", "？", "！")
_UNSPACED_LANGUAGES = frozenset({"zh", "yue", "ja", "th", "lo", "my", "km", "bo"})


@dataclass(frozen=True)
class Cue:
    start: float  # seconds of audio since the stream started
    end: float
    text: str


def cues(message: Transcription, *, by_words: bool = False) -> list[Cue]:
    """The cues of one final: one per segment, or per line of words when ``by_words``.

    Segments without word timestamps give one cue each, even when ``by_words`` is asked.
    """
    if not message.is_final:
        return []
    # Words come without their spaces; these languages are written without them too.
    joiner = "" if message.language_code in _UNSPACED_LANGUAGES else " "
    found: list[Cue] = []
    for segment in message.segments:
        if by_words and segment.word_timestamps:
            found += _word_cues(segment.word_timestamps, joiner)
        elif segment.text.strip():
            found.append(Cue(segment.start_time, segment.end_time, segment.text.strip()))
    return found


def _word_cues(words: list[WordTimestamp], joiner: str) -> Iterator[Cue]:
    line: list[WordTimestamp] = []
    for word in words:
        if line and len(_text([*line, word], joiner)) > MAX_CUE_CHARS:
            yield _cue(line, joiner)
            line = []
        line.append(word)
        if word.word.strip().endswith(_SENTENCE_END):
            yield _cue(line, joiner)
            line = []
    if line:
        yield _cue(line, joiner)


def _cue(words: list[WordTimestamp], joiner: str) -> Cue:
    return Cue(words[0].start_time, words[-1].end_time, _text(words, joiner))


def _text(words: list[WordTimestamp], joiner: str) -> str:
    return joiner.join(stripped for word in words if (stripped := word.word.strip()))


def timestamp(seconds: float, kind: SubtitleFormat) -> str:
    """``00:00:03,300`` for SRT, ``00:00:03.300`` for WebVTT (hours are always written)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    separator = "," if kind == "srt" else "."
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


class SubtitleWriter:
    """Writes cues as finals arrive, numbered from 1, never going back in time."""

    def __init__(self, kind: SubtitleFormat, out: TextIO, *, by_words: bool = False) -> None:
        self.kind = kind
        self.out = out
        self.by_words = by_words
        self.count = 0
        self._last_end = 0.0
        if kind == "vtt":
            self._write("WEBVTT\n\n")

    def write(self, message: Transcription) -> None:
        """Write the cues of a final; partials have none."""
        for cue in cues(message, by_words=self.by_words):
            # Whisper's times may overlap a little between segments; players want them ordered.
            start = max(cue.start, self._last_end)
            end = max(cue.end, start)
            self._last_end = end
            self.count += 1
            self._write(self._render(self.count, start, end, cue.text))

    def _render(self, number: int, start: float, end: float, text: str) -> str:
        span = f"{timestamp(start, self.kind)} --> {timestamp(end, self.kind)}"
        if self.kind == "vtt":
            # Cue text is markup in WebVTT: a literal "<" or "&" would start a tag or an entity.
            text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f"{number}\n{span}\n{text}\n\n"

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
