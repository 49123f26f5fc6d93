"""Where utterances start and end: VAD windows in, recognitions due out.

Fed one speech probability per 32 ms window, the endpointer says when a partial, a draft or a
final is due and which audio (absolute 16 kHz sample indices) it covers. It numbers the
utterances, dates a speech start back over the rising probability before it, ends an utterance
after the silence window, and cuts one that reaches the length limit at the quietest point
near it. It holds no audio and knows nothing of requests or messages: the session turns what
is due into recognitions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from .protocol import Metadata
from .values import SAMPLE_RATE, WINDOW_SAMPLES, ms_to_samples

# Silero's own hysteresis: speech starts at `threshold`, ends only under `threshold - 0.15`.
NEG_THRESHOLD_GAP = 0.15
# How far back (in 32 ms windows) the start of speech may be dated before the trigger, and how
# far under the threshold those windows may be.
ONSET_LOOKBACK_WINDOWS = 16
ONSET_GAP = 0.3
# Coverage: the VAD says when a recognition is due, not which audio Whisper hears. An utterance's
# audio starts where the previous one's ended, or this long before the window that crossed the
# threshold when the previous end is further back (an hour of silence is not re-encoded).
# Telephone-band and soft speech is often scored 0.1-0.4 for a second or two before it crosses;
# Whisper's no-speech rules (guards.py), not the VAD, decide that such a stretch held no words.
COVERAGE_LOOKBACK_S = 8.0
# A cut forced by final_transcript_max_duration_s looks this far back for the quietest point.
CUT_SEARCH_S = 2.0
# A point's quietness is the mean probability of the windows this far (in windows) either side
# of it: a single quiet window inside a word (a stop consonant) loses to a real pause. One or
# three windows either side did worse on the monologues of benchmarks/transcript_quality.py.
CUT_SMOOTH_WINDOWS = 2


@dataclass(frozen=True)
class EndpointSettings:
    threshold: float
    min_silence: int  # samples of silence that end an utterance
    pad: int  # samples kept before the start and after the end of speech
    max_samples: int  # an utterance's length limit
    partial_interval: int | None  # samples of audio between partials; None: no partials
    drafts: bool = False  # say when a final's audio is known, before the silence window is over
    lookback: int = round(COVERAGE_LOOKBACK_S * SAMPLE_RATE)  # samples before the trigger an utterance may start

    @classmethod
    def of(cls, metadata: Metadata, *, drafts: bool) -> EndpointSettings:
        vad, params = metadata.streaming_vad_config, metadata.streaming_params
        partials = params.enable_partial_transcripts and not metadata.whisper_params.language_detection_only
        return cls(
            threshold=vad.threshold,
            min_silence=ms_to_samples(vad.min_silence_duration_ms),
            pad=ms_to_samples(vad.speech_pad_ms),
            max_samples=params.final_transcript_max_duration_s * SAMPLE_RATE,
            partial_interval=max(1, round(params.partial_transcript_interval_s * SAMPLE_RATE)) if partials else None,
            drafts=drafts,
        )


@dataclass(frozen=True)
class Due:
    """A recognition the stream needs: utterance ``num``'s audio from ``start`` to ``end``."""

    kind: Literal["partial", "draft", "final"]
    num: int
    start: int
    end: int
    speech: tuple[int, ...]  # start of each window at or above the threshold, before end
    speech_end: int | None = None  # where the VAD heard the speech stop, for a final at a pause
    # Where the VAD first heard anything (a window at or above the onset floor, less the pad):
    # the audio before it is covered for its words, but times do not start in it.
    heard_from: int | None = None


@dataclass(frozen=True)
class DraftVoid:
    """The speech went on: the draft asked for during the silence will not be the final."""

    num: int


Boundary = Due | DraftVoid


@dataclass(frozen=True)
class Progress:
    """Where a stream's speech stands, for a transport that reports it as it goes."""

    speaking: int | None  # the number of the utterance being spoken, None between utterances
    heard_from: int  # where its speech began: its first window at or above the onset floor, less the pad
    last_end: int  # where the previous utterance ended
    settled_below: int  # every utterance numbered below this has had its final, or will have none
    opened: int  # how many utterances have opened so far


@dataclass
class _Utterance:
    num: int
    start: int
    next_partial_at: int | None
    windows: list[tuple[int, float]] = field(default_factory=list)  # (start, probability)
    silence_start: int | None = None
    # In the silence being counted: where the last sound the VAD heard (a run of windows at or
    # above the onset floor) fell back under it, and whether such a run is going on now.
    heard_until: int = 0
    heard_run: bool = False
    draft_asked: bool = False


class Endpointer:
    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self._utterance: _Utterance | None = None
        self._last_end = 0  # an utterance never starts before the previous one ended
        self._next_num = 0
        # The windows scored since the last utterance, as far back as one may start.
        # Half the length limit at most, so the speech that opens an utterance fits in it.
        self._lookback = min(settings.lookback, settings.max_samples // 2)
        self._recent: deque[tuple[int, float]] = deque(maxlen=max(ONSET_LOOKBACK_WINDOWS, -(-self._reach // WINDOW_SAMPLES)))

    @property
    def open_start(self) -> int | None:
        """Where the utterance being spoken starts, or None between utterances."""
        return None if self._utterance is None else self._utterance.start

    @property
    def open_num(self) -> int | None:
        """The number of the utterance being spoken, or None between utterances."""
        return None if self._utterance is None else self._utterance.num

    def progress(self, owed: int | None) -> Progress:
        """Where the speech stands; ``owed`` is the number of the oldest final still owed."""
        u = self._utterance
        settled = owed if owed is not None else self._next_num if u is None else u.num
        if u is None:
            return Progress(None, self._last_end, self._last_end, settled, self._next_num)
        heard = next((s for s, p in u.windows if p >= self._floor), u.start)
        return Progress(u.num, max(u.start, heard - self.settings.pad), self._last_end, settled, self._next_num)

    @property
    def last_end(self) -> int:
        return self._last_end

    @property
    def _reach(self) -> int:
        return max(self._lookback, ONSET_LOOKBACK_WINDOWS * WINDOW_SAMPLES + self.settings.pad)

    def hold_from(self, next_window: int) -> int:
        """The first sample a recognition may still need, with ``next_window`` the start of the
        next window to be scored: audio before it may be dropped."""
        if self._utterance is not None:
            return self._utterance.start
        return max(self._last_end, next_window - self._reach, 0)

    def window(self, start: int, prob: float, *, earliest: int, drafts: bool = True) -> list[Boundary]:
        """One window's probability. ``earliest`` is the first sample still held, before which
        no utterance may start; ``drafts`` is whether a draft may be asked for now."""
        s = self.settings
        end = start + WINDOW_SAMPLES
        utterance = self._utterance
        if utterance is None:
            if prob < s.threshold:
                self._recent.append((start, prob))
                return []
            onset = self._onset(start, self._floor)
            utterance = self._open_over_recent(max(min(onset - s.pad, start - self._lookback), self._last_end, earliest))
        utterance.windows.append((start, prob))
        # Speech ends after min_silence of windows *all* under threshold - 0.15 (PROTOCOL.md §3):
        # one window at or above it, a soft word, restarts the count.
        found: list[Boundary] = []
        if prob >= s.threshold - NEG_THRESHOLD_GAP:
            utterance.silence_start = None
            found += self._void_draft(utterance)
        else:
            found += self._tail(utterance, start, prob)
        if utterance.silence_start is not None:
            final_end = utterance.heard_until + s.pad
            # At the length limit during a pause, the pause is where the utterance ends.
            if end - utterance.silence_start >= s.min_silence or end - utterance.start >= s.max_samples:
                found += self._end(min(final_end, end), speech_end=utterance.heard_until)
                # What was scored after the end (a sound left to the next utterance) is where the
                # next one's start is dated from and what a finalize looks for.
                self._recent.extend((w, p) for w, p in utterance.windows if w >= self._last_end)
                return found
            # While a sound is going on the final's end is not known: it may be a last word.
            if s.drafts and drafts and not utterance.draft_asked and not utterance.heard_run and final_end <= end:
                utterance.draft_asked = True
                found.append(self._due("draft", utterance, final_end))
            return found
        if end - utterance.start >= s.max_samples:
            return found + self._cut(end)
        return found + self._partial(end)

    def end_now(self, end: int, *, earliest: int) -> list[Boundary]:
        """End the utterance being spoken at ``end`` (finalize, terminate, shutdown).

        With none open, audio since the previous end (within the look-back) in which the VAD
        heard anything above the onset floor is recognised too: speech too soft to cross the
        threshold is still speech the client sent, and Whisper's own rules judge it.
        """
        if self._utterance is None:
            start = max(self._last_end, end - self._lookback, earliest)
            if start >= end or not any(p >= self._floor and s >= start for s, p in self._recent):
                return []
            self._open_over_recent(start)
        return self._end(end)

    def _tail(self, utterance: _Utterance, start: int, prob: float) -> list[Boundary]:
        """A window of the silence being counted.

        The silence is counted under ``threshold - 0.15``, but a soft last word (a speaker
        trailing off, a name said quietly) is often scored between that and the onset floor.
        A run of windows at or above the floor that has fallen back under it is the utterance's
        own: its final's audio reaches the end of the run. A run still going on when the
        silence window is over is the next utterance's first word, and is left to it.
        """
        heard = prob >= self._floor
        if utterance.silence_start is None:
            utterance.silence_start = utterance.heard_until = start
            utterance.heard_run = heard
            return []
        if heard or not utterance.heard_run:
            utterance.heard_run = utterance.heard_run or heard
            return []
        utterance.heard_run = False
        utterance.heard_until = start
        return self._void_draft(utterance)  # asked before the sound: its audio stops short of it

    @staticmethod
    def _void_draft(utterance: _Utterance) -> list[Boundary]:
        if not utterance.draft_asked:
            return []
        utterance.draft_asked = False
        return [DraftVoid(utterance.num)]

    @property
    def _floor(self) -> float:
        return max(0.1, self.settings.threshold - ONSET_GAP)

    # ------------------------------------------------------------------ the parts

    def _onset(self, trigger: int, floor: float) -> int:
        """Where the speech that just crossed the threshold began.

        Silero's probability rises over several windows before it crosses the threshold, and a
        soft first word (or telephone-band audio) may never cross it at all; the unbroken run
        of windows above a lower floor just before the trigger is dated as speech too, so the
        first word is not cut off.
        """
        onset = trigger
        for start, prob in list(reversed(self._recent))[:ONSET_LOOKBACK_WINDOWS]:
            if prob < floor or start != onset - WINDOW_SAMPLES or start < self._last_end:
                break
            onset = start
        return onset

    def _open_over_recent(self, start: int) -> _Utterance:
        """Open an utterance at ``start`` that holds the windows scored since then."""
        utterance = self._open(start, [(s, p) for s, p in self._recent if s >= start])
        self._recent.clear()
        return utterance

    def _open(self, start: int, windows: list[tuple[int, float]] | None = None) -> _Utterance:
        interval = self.settings.partial_interval
        self._utterance = _Utterance(
            num=self._next_num,
            start=start,
            next_partial_at=None if interval is None else start + interval,
            windows=windows or [],
        )
        self._next_num += 1
        return self._utterance

    def _end(self, end: int, speech_end: int | None = None) -> list[Boundary]:
        utterance = self._utterance
        if utterance is None:
            return []
        self._utterance = None
        end = max(end, utterance.start)
        self._last_end = end
        if end == utterance.start:
            return []  # nothing to recognise; no number ever reached the client
        return [self._due("final", utterance, end, speech_end)]

    def _cut(self, end: int) -> list[Boundary]:
        """Cut at the quietest point near the limit, so a word is less likely to be split."""
        utterance = self._utterance
        assert utterance is not None
        # Not in the quiet look-back before the first speech: that cut would recognise nothing.
        threshold = self.settings.threshold
        spoken = next((s for s, p in utterance.windows if p >= threshold), utterance.start)
        cut = quietest_point(utterance.windows, spoken, end)
        if cut is None:
            cut = end
        found = self._end(cut)
        # The speech goes on: the next utterance starts right at the cut and keeps the
        # windows it has already seen.
        self._open(cut, [(s, p) for s, p in utterance.windows if s >= cut])
        return found + self._partial(end)

    def _partial(self, end: int) -> list[Boundary]:
        utterance = self._utterance
        interval = self.settings.partial_interval
        assert utterance is not None
        if interval is None or utterance.next_partial_at is None or end < utterance.next_partial_at:
            return []
        # Skip marks already passed (a large frame), so one frame asks for one partial at most.
        while utterance.next_partial_at <= end:
            utterance.next_partial_at += interval
        return [self._due("partial", utterance, end)]

    def _due(self, kind: Literal["partial", "draft", "final"], utterance: _Utterance, end: int, speech_end: int | None = None) -> Due:
        threshold = self.settings.threshold
        speech = tuple(s for s, p in utterance.windows if p >= threshold and s < end)
        heard = next((s for s, p in utterance.windows if p >= self._floor), None)
        heard_from = None if heard is None else min(max(utterance.start, heard - self.settings.pad), end)
        return Due(kind, utterance.num, utterance.start, end, speech, speech_end, heard_from)


def quietest_point(windows: list[tuple[int, float]], start: int, end: int) -> int | None:
    """The start of the window at the centre of the quietest stretch of the last CUT_SEARCH_S
    before ``end`` (after ``start``), or None when there is no window there."""
    earliest = end - int(CUT_SEARCH_S * SAMPLE_RATE)
    first = next((i for i, (s, _) in enumerate(windows) if s >= earliest and s > start), None)
    if first is None:
        return None
    probs = [p for _, p in windows]
    k = CUT_SMOOTH_WINDOWS

    def quietness(i: int) -> float:
        around = probs[max(i - k, 0) : i + k + 1]
        return sum(around) / len(around)

    # Among equally quiet points take the latest: utterances stay as long as allowed.
    best = min(range(first, len(windows)), key=lambda i: (quietness(i), -i))
    return windows[best][0]
