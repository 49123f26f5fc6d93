"""The streaming session: a sans-I/O state machine.

Feed it text frames, audio bytes, inference results and the time; it returns events: messages
to send, inference it wants run, and when to close. It never touches a socket, a thread or the
clock itself, so every behaviour is testable deterministically (tests/test_session.py).
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from .audio import TARGET_RATE, AudioDecoder
from .engine import DecodeOptions, ModelInfo, Result
from .protocol import (
    MAX_PROMPT_TOKENS,
    CloseCode,
    Control,
    ErrorCode,
    ErrorMessage,
    Metadata,
    ProtocolError,
    Segment,
    SessionLimits,
    Transcription,
    WordTimestamp,
    parse_control,
    parse_metadata,
)
from .vad import WINDOW_SAMPLES

# Silero's own hysteresis: speech starts at `threshold`, ends only under `threshold - 0.15`.
_NEG_THRESHOLD_GAP = 0.15
# A cut forced by final_transcript_max_duration_s looks this far back for the quietest point.
_CUT_SEARCH_S = 2.0
# A point's quietness is the mean probability of the windows this far (in windows) either side
# of it: a single quiet window inside a word (a stop consonant) loses to a real pause. One or
# three windows either side did worse on the monologues of benchmarks/transcript_quality.py.
_CUT_SMOOTH_WINDOWS = 2
# How far back (in 32 ms windows) the start of speech may be dated before the trigger, and how
# far under the threshold those windows may be.
_ONSET_LOOKBACK_WINDOWS = 16
_ONSET_GAP = 0.3
# An utterance with less speech than this (windows at or above the threshold; Silero's own
# minimum speech duration) is a burst of laughter, a breath or a click more often than a word:
# its text is kept only if Whisper decoded it with at least this mean log-probability.
# benchmarks/transcript_quality.py measures both sides.
_MIN_SPEECH_S = 0.25
_SHORT_SPEECH_MIN_LOGPROB = -0.8
# Whisper's end time for the last word of an utterance is often early (by up to half a second
# on a fading last syllable); the VAD saw where the speech really stopped. The last segment and
# word are extended to it, when it is this close.
_END_SNAP_S = 0.6


class SpeechProbabilities(Protocol):
    def probabilities(self, audio: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, eq=False)
class InferenceRequest:
    """Audio to recognise. A "draft" is a final asked for early: the audio of the utterance as
    it will end if the silence that began holds (see Session, drafts)."""

    session_id: str
    kind: Literal["partial", "draft", "final"]
    transcription_num: int
    audio: np.ndarray  # float32, 16 kHz
    offset_s: float  # stream time of audio[0]
    options: DecodeOptions
    detect_only: bool = False
    # The start (seconds from audio[0]) of each window the VAD called speech (at or above the
    # threshold): how much speech there is (_heard), and where (scheduler.transcribe).
    speech_at: tuple[float, ...] = ()
    speech_end_s: float | None = None  # audio time where the VAD heard the speech stop, if it did

    @property
    def speech_s(self) -> float:
        return len(self.speech_at) * WINDOW_SAMPLES / TARGET_RATE

    @property
    def span(self) -> tuple[str, int, float, int]:
        """What makes two requests the same work: session, utterance, and exact audio."""
        return (self.session_id, self.transcription_num, self.offset_s, len(self.audio))


@dataclass(frozen=True)
class SendMessage:
    message: Transcription | ErrorMessage


@dataclass(frozen=True)
class RunInference:
    request: InferenceRequest


@dataclass(frozen=True)
class CancelInference:
    """A draft that will not be needed (the speech went on): drop it if it has not started."""

    request: InferenceRequest


@dataclass(frozen=True)
class CloseConnection:
    code: CloseCode
    reason: str = ""


Event = SendMessage | RunInference | CancelInference | CloseConnection


class State(enum.Enum):
    AWAITING_METADATA = "awaiting_metadata"
    STREAMING = "streaming"
    CLOSING = "closing"  # no more input accepted; waiting for the last finals
    CLOSED = "closed"


# --------------------------------------------------------------------------- audio buffer


class SampleBuffer:
    """Samples addressed by their absolute index in the stream, dropped from the front.

    Amortised appends: a 30 s utterance arriving in 20 ms frames must not be copied 1500 times.
    """

    def __init__(self) -> None:
        self._data = np.zeros(16_000, dtype=np.float32)
        self._start = 0  # absolute index of _data[0]
        self._length = 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._start + self._length

    def append(self, samples: np.ndarray) -> None:
        needed = self._length + len(samples)
        if needed > len(self._data):
            grown = np.zeros(max(needed, 2 * len(self._data)), dtype=np.float32)
            grown[: self._length] = self._data[: self._length]
            self._data = grown
        self._data[self._length : needed] = samples
        self._length = needed

    def view(self, begin: int, end: int) -> np.ndarray:
        begin, end = max(begin, self._start), min(end, self.end)
        return self._data[begin - self._start : end - self._start]

    def drop_before(self, index: int) -> None:
        cut = min(max(index, self._start), self.end) - self._start
        if cut == 0:
            return
        self._data[: self._length - cut] = self._data[cut : self._length]
        self._length -= cut
        self._start += cut


# --------------------------------------------------------------------------- the session


@dataclass
class _Utterance:
    num: int
    start: int  # absolute 16 kHz sample index
    window_probs: list[tuple[int, float]]  # (window start, probability), for the quiet-point cut
    next_partial_at: int
    silence_start: int | None = None
    draft: InferenceRequest | None = None  # asked for during the current silence
    draft_result: Result | None = None


class Session:
    def __init__(
        self,
        session_id: str,
        *,
        model: ModelInfo,
        count_tokens: Callable[[str], int],
        new_vad: Callable[[], SpeechProbabilities],
        limits: SessionLimits = SessionLimits(),
        now: float = 0.0,
        draft_finals: bool = False,
        vad_batch: int = 1,
        context_prompt: bool = False,
    ) -> None:
        self.session_id = session_id
        self.draft_finals = draft_finals
        self.vad_batch = vad_batch  # windows scored per VAD run, at least; see _ingest
        self.state = State.AWAITING_METADATA
        self.metadata: Metadata | None = None
        self._model = model
        self._count_tokens = count_tokens
        self._new_vad = new_vad
        self._limits = limits
        self._context_prompt = context_prompt
        self._context: str | None = None  # the latest final's text, with context_prompt
        self._connected_at = now
        self._last_frame_at = now
        self._close_code_when_done = CloseCode.NORMAL

        self._decoder: AudioDecoder | None = None
        self._vad: SpeechProbabilities | None = None
        self._options: DecodeOptions | None = None
        self._buffer = SampleBuffer()
        self._vad_pos = 0  # absolute index of the next window to classify
        self._utterance: _Utterance | None = None
        self._last_end = 0  # an utterance never starts before the previous one ended
        self._next_num = 0
        self._awaiting: list[int] = []  # final numbers requested, in order
        self._awaiting_end: dict[int, int] = {}  # their audio's end (absolute sample)
        # With context_prompt, an ended utterance whose previous final is not out yet waits here
        # (utterance, end, speech end): its prompt is that final's text.
        self._held: deque[tuple[_Utterance, int, int | None]] = deque()
        self._finished: dict[int, tuple[InferenceRequest, Result]] = {}  # not yet sent
        self._partial_sent: set[int] = set()
        self._recent: deque[tuple[int, float]] = deque(maxlen=_ONSET_LOOKBACK_WINDOWS)

    # ------------------------------------------------------------------ inputs

    def receive_text(self, text: str, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if len(text) > self._limits.max_frame_bytes // 4:  # a character is at most 4 bytes
            if (oversized := self._check_frame_size(len(text.encode("utf-8")))) is not None:
                return oversized
        if self.state is State.AWAITING_METADATA:
            self._last_frame_at = now
            return self._guard(lambda: self._start(text))
        if self.state is not State.STREAMING:
            return []
        self._last_frame_at = now
        return self._guard(lambda: self._control(parse_control(text)))

    def receive_bytes(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.AWAITING_METADATA:
            return self._fail(
                ProtocolError(
                    ErrorCode.BINARY_BEFORE_METADATA,
                    "the first message must be the metadata JSON as a text frame, before any audio",
                )
            )
        if self.state is not State.STREAMING:
            return []
        if (oversized := self._check_frame_size(len(data))) is not None:
            return oversized
        self._last_frame_at = now
        assert self._decoder is not None
        return self._guard(lambda: self._ingest(self._decoder.decode(data)))

    def inference_done(self, request: InferenceRequest, result: Result) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if request.kind == "partial":
            return self._partial_done(request, result)
        if request.kind == "draft":
            utterance = self._utterance
            if utterance is not None and utterance.draft is request:
                utterance.draft_result = result
            return []  # an ended utterance's final request gets this same result itself
        self._finished[request.transcription_num] = (request, result)
        return self._emit_finals()

    def inference_failed(self, request: InferenceRequest, error: BaseException) -> list[Event]:
        return self.internal_error(f"recognition failed ({type(error).__name__})")

    def internal_error(self, what: str) -> list[Event]:
        """Something broke inside the server: the client hears which session, then 1011."""
        return self.abort(ProtocolError(ErrorCode.INTERNAL_ERROR, f"{what}; session {self.session_id}"))

    def abort(self, error: ProtocolError) -> list[Event]:
        """End the session at once for a reason of the server's: its error, then its close code."""
        if self.state is State.CLOSED:
            return []
        return self._fail(error)

    def stop(self, code: CloseCode, reason: str) -> list[Event]:
        """Close now, with no message and without waiting for outstanding finals."""
        if self.state is State.CLOSED:
            return []
        return self._close(code, reason)

    def shutdown(self) -> list[Event]:
        """The server is going away: flush buffered speech, then close with 1001."""
        if self.state is State.AWAITING_METADATA:
            return self._close(CloseCode.GOING_AWAY, "server shutting down")
        if self.state is not State.STREAMING:
            self._close_code_when_done = CloseCode.GOING_AWAY
            return []
        return self._guard(lambda: self._wind_down(CloseCode.GOING_AWAY))

    @property
    def audio_received_s(self) -> float:
        """Seconds of audio received so far, at the declared rate."""
        if self._decoder is None:
            return 0.0
        return self._decoder.samples_in / self._decoder.sample_rate

    @property
    def lag_s(self) -> float:
        """Audio received but not yet dealt with, in seconds: behind the VAD, or since the end of
        the oldest utterance still waiting for its final. The audio of an utterance still being
        spoken is not lag. Read by metrics; a growing lag means the server is falling behind."""
        done = self._vad_pos
        if self._awaiting:
            done = min(done, self._awaiting_end[self._awaiting[0]])
        return max(0, self._buffer.end - done) / TARGET_RATE

    def deadline(self) -> float | None:
        """When timeout() must be called if nothing else arrives first."""
        if self.state is State.AWAITING_METADATA:
            return self._connected_at + self._limits.metadata_timeout_s
        if self.state is State.STREAMING:
            return self._last_frame_at + self._limits.idle_timeout_s
        return None

    def timeout(self, now: float) -> list[Event]:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        if self.state is State.AWAITING_METADATA:
            limit = self._limits.metadata_timeout_s
            return self._fail(
                ProtocolError(
                    ErrorCode.METADATA_TIMEOUT, f"no metadata received within {limit:g} s"
                )
            )
        limit = self._limits.idle_timeout_s
        return self._fail(
            ProtocolError(ErrorCode.IDLE_TIMEOUT, f"no frame received for {limit:g} s")
        )

    # ------------------------------------------------------------------ metadata and control

    def _start(self, text: str) -> list[Event]:
        metadata = parse_metadata(text)
        self._check_model_support(metadata)
        params = metadata.streaming_params
        self._decoder = AudioDecoder(params.encoding, params.sample_rate)
        self._vad = self._new_vad()
        self._options = self._decode_options(metadata)
        self.metadata = metadata
        self.state = State.STREAMING
        return []

    def _check_model_support(self, metadata: Metadata) -> None:
        whisper = metadata.whisper_params
        language = whisper.audio_language
        if language != "auto" and language not in self._model.languages:
            raise ProtocolError(
                ErrorCode.INVALID_METADATA,
                f"model {self._model.name} does not support audio_language {language!r}"
                + ("" if self._model.multilingual else " (it is English-only: use en or auto)"),
                "whisper_params.audio_language",
            )
        unsupported = [c for c in whisper.language_options if c not in self._model.languages]
        if unsupported:
            raise ProtocolError(
                ErrorCode.INVALID_METADATA,
                f"model {self._model.name} does not support language {unsupported[0]!r}",
                "whisper_params.language_options",
            )
        if whisper.prompt is not None:
            tokens = self._count_tokens(whisper.prompt)
            if tokens > MAX_PROMPT_TOKENS:
                raise ProtocolError(
                    ErrorCode.INVALID_METADATA,
                    f"whisper_params.prompt is {tokens} tokens; at most {MAX_PROMPT_TOKENS}",
                    "whisper_params.prompt",
                )

    def _decode_options(self, metadata: Metadata) -> DecodeOptions:
        whisper = metadata.whisper_params
        sampling = metadata.sampling
        language = whisper.audio_language
        return DecodeOptions(
            language=None if language == "auto" else language,
            language_options=tuple(whisper.language_options),
            prompt=whisper.prompt,
            beam_width=sampling.beam_width,
            length_penalty=sampling.length_penalty,
            repetition_penalty=sampling.repetition_penalty,
            no_repeat_ngram_size=sampling.no_repeat_ngram_size,
            word_timestamps=whisper.show_word_timestamps,
            dynamic_preprocessing=whisper.use_dynamic_preprocessing,
        )

    def _control(self, control: Control) -> list[Event]:
        if control is Control.FINALIZE:
            events = self._ingest(np.zeros(0, dtype=np.float32), every_window=True)
            return events + self._end_utterance(self._buffer.end)
        return self._wind_down(CloseCode.NORMAL)

    def _wind_down(self, code: CloseCode) -> list[Event]:
        assert self._decoder is not None
        events = self._ingest(self._decoder.flush(), every_window=True)
        events += self._end_utterance(self._buffer.end)
        self.state = State.CLOSING
        self._close_code_when_done = code
        return events + self._close_if_done()

    # ------------------------------------------------------------------ audio and VAD

    def _ingest(self, samples: np.ndarray, every_window: bool = False) -> list[Event]:
        self._buffer.append(samples)
        usable = (self._buffer.end - self._vad_pos) // WINDOW_SAMPLES * WINDOW_SAMPLES
        # One ONNX run per window costs about 2.4x the CPU per window of runs of three or more
        # (250 vs 105 us here); waiting for vad_batch windows trades that for up to
        # vad_batch - 1 windows of delay in seeing speech start or end.
        if usable == 0 or (usable < self.vad_batch * WINDOW_SAMPLES and not every_window):
            return []
        assert self._vad is not None
        windows = self._buffer.view(self._vad_pos, self._vad_pos + usable)
        probs = self._vad.probabilities(windows)
        events: list[Event] = []
        for prob in probs:
            events += self._window(self._vad_pos, float(prob))
            self._vad_pos += WINDOW_SAMPLES
        self._trim()
        return events

    def _window(self, start: int, prob: float) -> list[Event]:
        assert self.metadata is not None
        vad = self.metadata.streaming_vad_config
        end = start + WINDOW_SAMPLES
        utterance = self._utterance
        if utterance is None:
            if prob < vad.threshold:
                self._recent.append((start, prob))
                return []
            utterance = self._open_utterance(self._onset(start, max(0.1, vad.threshold - _ONSET_GAP)))
        utterance.window_probs.append((start, prob))
        # Speech ends after min_silence_duration_ms of windows *all* under threshold - 0.15
        # (PROTOCOL.md §3): one window at or above it, a soft word, restarts the count.
        events: list[Event] = []
        if prob >= vad.threshold - _NEG_THRESHOLD_GAP:
            utterance.silence_start = None
            events += self._drop_draft(utterance)
        elif utterance.silence_start is None:
            utterance.silence_start = start

        if utterance.silence_start is not None:
            final_end = utterance.silence_start + _ms(vad.speech_pad_ms)
            # At the length limit during a pause, the pause is where the utterance ends.
            if end - utterance.silence_start >= _ms(vad.min_silence_duration_ms) or end - utterance.start >= self._max_samples():
                return events + self._end_utterance(min(final_end, end), speech_end=utterance.silence_start)
            return events + self._maybe_draft(utterance, final_end, end)
        if end - utterance.start >= self._max_samples():
            return events + self._cut_long_utterance(end)
        return events + self._maybe_partial(end)

    def _maybe_draft(self, utterance: _Utterance, final_end: int, end: int) -> list[Event]:
        """Drafts: during the silence window the final's audio is already known (the speech
        ended at silence_start, plus the pad), so its recognition can start now instead of when
        the window has passed. If the silence holds, the final is ready about when it is due;
        if speech resumes, the draft is dropped, or wasted if it already ran."""
        if not self.draft_finals or utterance.draft is not None or final_end > end:
            return []
        if self._context_prompt and self._awaiting:
            return []  # its prompt is a final not out yet
        utterance.draft = self._request("draft", utterance, final_end)
        return [RunInference(utterance.draft)]

    def _drop_draft(self, utterance: _Utterance) -> list[Event]:
        draft, utterance.draft, utterance.draft_result = utterance.draft, None, None
        if draft is None:
            return []
        return [CancelInference(draft)]

    def _onset(self, trigger: int, floor: float) -> int:
        """Where the speech that just crossed the threshold began.

        Silero's probability rises over several windows before it crosses the threshold, and a
        soft first word (or telephone-band audio) may never cross it at all; the unbroken run
        of windows above a lower floor just before the trigger is dated as speech too, so the
        first word is not cut off.
        """
        onset = trigger
        for start, prob in reversed(self._recent):
            if prob < floor or start != onset - WINDOW_SAMPLES or start < self._last_end:
                break
            onset = start
        self._recent.clear()
        return onset

    def _open_utterance(self, window_start: int) -> _Utterance:
        assert self.metadata is not None
        pad = _ms(self.metadata.streaming_vad_config.speech_pad_ms)
        start = max(window_start - pad, self._last_end, self._buffer.start)
        self._utterance = _Utterance(
            num=self._next_num,
            start=start,
            window_probs=[],
            next_partial_at=start + self._partial_interval(),
        )
        self._next_num += 1
        return self._utterance

    def _cut_long_utterance(self, end: int) -> list[Event]:
        """Cut at the quietest point near the limit, so a word is less likely to be split."""
        utterance = self._utterance
        assert utterance is not None
        cut = _quietest_point(utterance.window_probs, utterance.start, end)
        if cut is None:
            cut = end
        events = self._end_utterance(cut)
        # The speech goes on: the next utterance starts right at the cut and keeps the
        # windows it has already seen.
        seen = [(s, p) for s, p in utterance.window_probs if s >= cut]
        return events + self._reopen_after_cut(cut, end, seen)

    def _reopen_after_cut(self, cut: int, end: int, seen: list[tuple[int, float]]) -> list[Event]:
        utterance = _Utterance(
            num=self._next_num,
            start=cut,
            window_probs=seen,
            next_partial_at=cut + self._partial_interval(),
        )
        self._next_num += 1
        self._utterance = utterance
        return self._maybe_partial(end)

    def _maybe_partial(self, end: int) -> list[Event]:
        utterance = self._utterance
        assert utterance is not None and self.metadata is not None
        params = self.metadata.streaming_params
        if not params.enable_partial_transcripts or self.metadata.whisper_params.language_detection_only:
            return []
        if end < utterance.next_partial_at:
            return []
        interval = self._partial_interval()
        # Skip marks already passed (a large frame), so one frame asks for one partial at most.
        while utterance.next_partial_at <= end:
            utterance.next_partial_at += interval
        return [RunInference(self._request("partial", utterance, end))]

    def _end_utterance(self, end: int, speech_end: int | None = None) -> list[Event]:
        utterance = self._utterance
        if utterance is None:
            return []
        self._utterance = None
        end = max(end, utterance.start)
        self._last_end = end
        if end == utterance.start:
            return []  # nothing to recognise; no number ever reached the client
        waits = self._context_prompt and bool(self._awaiting)
        self._awaiting.append(utterance.num)
        self._awaiting_end[utterance.num] = end
        if waits:
            self._held.append((utterance, end, speech_end))
            return self._drop_draft(utterance)
        final = self._final_request(utterance, end, speech_end)
        draft = utterance.draft
        if draft is not None and draft.span == final.span:
            if utterance.draft_result is not None:  # recognised during the silence window
                self._finished[final.transcription_num] = (final, utterance.draft_result)
                return self._emit_finals()
            # Still queued or running: the scheduler promotes that work instead of repeating it.
            return [RunInference(final)]
        return self._drop_draft(utterance) + [RunInference(final)]

    def _final_request(self, utterance: _Utterance, end: int, speech_end: int | None) -> InferenceRequest:
        request = self._request("final", utterance, end)
        if speech_end is None:
            return request
        return replace(request, speech_end_s=(speech_end - utterance.start) / TARGET_RATE)

    def _request(self, kind: Literal["partial", "draft", "final"], utterance: _Utterance, end: int) -> InferenceRequest:
        assert self._options is not None and self.metadata is not None
        options = self._options
        if self._context_prompt and self._context:
            options = replace(options, context=self._context)
        threshold = self.metadata.streaming_vad_config.threshold
        return InferenceRequest(
            session_id=self.session_id,
            kind=kind,
            transcription_num=utterance.num,
            audio=self._buffer.view(utterance.start, end).copy(),
            offset_s=utterance.start / TARGET_RATE,
            options=options,
            detect_only=self.metadata.whisper_params.language_detection_only,
            speech_at=tuple(
                (start - utterance.start) / TARGET_RATE
                for start, prob in utterance.window_probs
                if prob >= threshold and start < end
            ),
        )

    def _trim(self) -> None:
        """Keep only what a held final or a future utterance may still need."""
        if self._utterance is not None:
            keep = self._utterance.start
        else:
            assert self.metadata is not None
            pad = _ms(self.metadata.streaming_vad_config.speech_pad_ms)
            keep = max(self._vad_pos - pad, self._last_end - pad, 0)
        if self._held:
            keep = min(keep, self._held[0][0].start)
        self._buffer.drop_before(keep)

    def _max_samples(self) -> int:
        assert self.metadata is not None
        return self.metadata.streaming_params.final_transcript_max_duration_s * TARGET_RATE

    def _partial_interval(self) -> int:
        assert self.metadata is not None
        interval = self.metadata.streaming_params.partial_transcript_interval_s
        return max(1, round(interval * TARGET_RATE))

    # ------------------------------------------------------------------ results

    def _partial_done(self, request: InferenceRequest, result: Result) -> list[Event]:
        num = request.transcription_num
        current = self._utterance
        # A partial is worth sending only while its utterance is still the one being spoken and
        # every earlier final is out: messages never go back in number.
        if current is None or current.num != num or self._awaiting or self.state is not State.STREAMING:
            return []
        result = _heard(request, result)
        if not result.text:
            return []
        self._partial_sent.add(num)
        return [SendMessage(self._transcription(request, result, is_final=False))]

    def _emit_finals(self) -> list[Event]:
        events: list[Event] = []
        while self._awaiting and self._awaiting[0] in self._finished:
            num = self._awaiting.pop(0)
            self._awaiting_end.pop(num, None)
            request, result = self._finished.pop(num)
            message = self._final_message(request, result)
            if message is not None:
                events.append(SendMessage(message))
        if self._held and self._awaiting[0] == self._held[0][0].num:
            # Every earlier final is out: the context of the held one is known now.
            events.append(RunInference(self._final_request(*self._held.popleft())))
        return events + self._close_if_done()

    def _final_message(self, request: InferenceRequest, result: Result) -> Transcription | None:
        assert self.metadata is not None
        num = request.transcription_num
        if self.metadata.whisper_params.language_detection_only:
            return Transcription(
                transcription_num=num,
                is_final=True,
                transcript="",
                confidence=None,
                language_code=result.language,
                language_prob=result.language_prob,
                segments=[],
            )
        result = _heard(request, result)
        if request.speech_end_s is not None:
            result = _end_at(result, request.speech_end_s)
        if result.text:
            self._context = result.text
        elif num not in self._partial_sent:
            return None  # non-speech after all: the number is skipped, as PROTOCOL.md allows
        self._partial_sent.discard(num)
        return self._transcription(request, result, is_final=True)

    def _transcription(self, request: InferenceRequest, result: Result, *, is_final: bool) -> Transcription:
        words = request.options.word_timestamps
        offset = request.offset_s
        segments = [
            Segment(
                text=s.text.strip(),
                log_prob=s.avg_logprob,
                start_time=round(offset + s.start, 3),
                end_time=round(offset + s.end, 3),
                word_timestamps=[
                    WordTimestamp(
                        word=w.word.strip(),
                        start_time=round(offset + w.start, 3),
                        end_time=round(offset + w.end, 3),
                        prob=w.prob,
                    )
                    for w in s.words or ()
                ]
                if words
                else None,
            )
            for s in result.segments
        ]
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

    # ------------------------------------------------------------------ errors and closing

    def _guard(self, step: Callable[[], list[Event]]) -> list[Event]:
        try:
            return step()
        except ProtocolError as error:
            return self._fail(error)

    def _check_frame_size(self, size: int) -> list[Event] | None:
        # uvicorn closes a frame over its ws_max_size with 1009 before it gets here; a host in
        # front of the app with a larger limit (the Ray Serve proxy's is 16 MiB) does not.
        if size <= self._limits.max_frame_bytes:
            return None
        return self._fail(
            ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"a frame of {size} bytes is over the limit of {self._limits.max_frame_bytes} bytes",
            )
        )

    def _fail(self, error: ProtocolError) -> list[Event]:
        events: list[Event] = [SendMessage(ErrorMessage.from_error(error))]
        if error.close_code is None:
            return events
        return events + self._close(error.close_code, error.code.value)

    def _close(self, code: CloseCode, reason: str) -> list[Event]:
        self.state = State.CLOSED
        self._utterance = None
        return [CloseConnection(code, reason)]

    def _close_if_done(self) -> list[Event]:
        if self.state is State.CLOSING and not self._awaiting:
            reason = "terminated" if self._close_code_when_done is CloseCode.NORMAL else "server shutting down"
            return self._close(self._close_code_when_done, reason)
        return []


def _heard(request: InferenceRequest, result: Result) -> Result:
    """The result, or no words when the VAD heard too little speech for Whisper's doubtful text."""
    mean = result.mean_logprob
    if request.speech_s >= _MIN_SPEECH_S or mean is None or mean >= _SHORT_SPEECH_MIN_LOGPROB:
        return result
    return Result(segments=(), language=result.language, language_prob=result.language_prob)


def _end_at(result: Result, speech_end: float) -> Result:
    """The result with its last segment (and word) ending where the VAD heard speech stop."""
    if not result.segments:
        return result
    last = result.segments[-1]
    if not 0 < speech_end - last.end <= _END_SNAP_S:
        return result
    words = last.words
    if words:
        words = (*words[:-1], replace(words[-1], end=speech_end))
    return replace(result, segments=(*result.segments[:-1], replace(last, end=speech_end, words=words)))


def _quietest_point(window_probs: list[tuple[int, float]], start: int, end: int) -> int | None:
    """The start of the window at the centre of the quietest stretch of the last _CUT_SEARCH_S
    before ``end`` (after ``start``), or None when there is no window there."""
    earliest = end - int(_CUT_SEARCH_S * TARGET_RATE)
    first = next((i for i, (s, _) in enumerate(window_probs) if s >= earliest and s > start), None)
    if first is None:
        return None
    probs = [p for _, p in window_probs]
    k = _CUT_SMOOTH_WINDOWS

    def quietness(i: int) -> float:
        around = probs[max(i - k, 0) : i + k + 1]
        return sum(around) / len(around)

    # Among equally quiet points take the latest: utterances stay as long as allowed.
    best = min(range(first, len(window_probs)), key=lambda i: (quietness(i), -i))
    return window_probs[best][0]


def _ms(milliseconds: int) -> int:
    return milliseconds * TARGET_RATE // 1000
