"""The streaming session: a sans-I/O state machine.

Feed it text frames, audio bytes, inference results and the time; it returns events: messages
to send, inference it wants run, and when to close. It never touches a socket, a thread or the
clock itself, so every behaviour is testable deterministically (tests/test_session.py).

It wires the parts, each with one concern: the decoder (audio.py), the VAD, the endpointer
(where utterances start and end), the finals queue (what is owed, in order), the guards
(which text to believe) and message building (messages.py).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from . import context, guards, messages
from .audio import AudioDecoder, SampleBuffer
from .endpointer import Boundary, Due, EndpointSettings, Endpointer, Progress
from .finals import FinalsQueue
from .options import check_model_support, decode_options
from .pace import Pace
from .protocol import (CloseCode, Control, ErrorCode, ErrorMessage, Metadata, ProtocolError, SessionLimits,
                       Transcription, parse_control, parse_metadata)
from .values import (SAMPLE_RATE, WINDOW_SAMPLES, CancelInference, CloseConnection, DecodeOptions, Event,
                     InferenceRequest, ModelInfo, Result, RunInference, SendMessage, SpeechProbabilities)

__all__ = ["CancelInference", "CloseConnection", "Event", "InferenceRequest", "RunInference", "SendMessage", "Session", "State"]


class State(enum.Enum):
    AWAITING_METADATA = "awaiting_metadata"
    STREAMING = "streaming"
    CLOSING = "closing"  # no more input accepted; waiting for the last finals
    CLOSED = "closed"


@dataclass
class _Draft:
    """The final asked for during the current silence, and its result once back."""

    request: InferenceRequest
    end: int
    result: Result | None = None


@dataclass
class _Stream:
    """What exists once the metadata is in."""

    metadata: Metadata
    decoder: AudioDecoder
    vad: SpeechProbabilities
    options: DecodeOptions
    endpointer: Endpointer


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
        self._model = model
        self._count_tokens = count_tokens
        self._new_vad = new_vad
        self._limits = limits
        self._context_prompt = context_prompt
        self._context: str | None = None  # the latest final's text: the context prompt, the words a left context repeats
        self._connected_at = now
        self._pace = Pace(last_frame_at=now)
        self._close_code_when_done = CloseCode.NORMAL
        self._stream: _Stream | None = None
        self._buffer = SampleBuffer()
        self._vad_pos = 0  # absolute index of the next window to classify
        self._draft: _Draft | None = None
        self._finals = FinalsQueue()
        self._last_partial: InferenceRequest | None = None  # the latest partial asked for
        self._shown: tuple[int, str] | None = None  # the number and words of the latest partial sent
        self._sent = context.SentWords(SAMPLE_RATE)  # the words of the finals sent, for left contexts

    @property
    def progress(self) -> Progress | None:
        """Where the speech stands, for a transport that reports it (realtime.py); None before the metadata."""
        return None if self._stream is None else self._endpointer.progress(self._finals.first_num)

    # ------------------------------------------------------------------ inputs

    def receive_text(self, text: str, now: float) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if len(text) > self._limits.max_frame_bytes // 4 and (oversized := self._check_frame_size(len(text.encode()))):
            return oversized  # (only a text over a quarter of the limit can be over it: <= 4 bytes a character)
        if self.state is State.AWAITING_METADATA:
            self._pace.frame(now)
            return self._guard(lambda: self._start(text))
        if self.state is not State.STREAMING:
            return []
        self._pace.frame(now)
        return self._guard(lambda: self._control(parse_control(text)))

    def receive_bytes(self, data: bytes, now: float) -> list[Event]:
        if self.state is State.AWAITING_METADATA:
            error = "the first message must be the metadata JSON as a text frame, before any audio"
            return self._fail(ProtocolError(ErrorCode.BINARY_BEFORE_METADATA, error))
        if self.state is not State.STREAMING:
            return []
        if (oversized := self._check_frame_size(len(data))) is not None:
            return oversized
        assert self._stream is not None
        decoder = self._stream.decoder
        return self._guard(lambda: self._audio(decoder.decode(data), now))

    def inference_done(self, request: InferenceRequest, result: Result) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if request.kind == "partial" and not self._finals.owes(request):
            return self._partial_done(request, result)
        if request.kind == "draft":
            if self._draft is not None and self._draft.request is request:
                self._draft.result = result
            return []  # an ended utterance's final request gets this same result itself
        return self._final_done(request, result)

    def inference_failed(self, request: InferenceRequest, error: BaseException) -> list[Event]:
        return self.internal_error(f"recognition failed ({type(error).__name__})")

    def internal_error(self, what: str) -> list[Event]:
        """Something broke inside the server: the client hears which session, then 1011."""
        return self.abort(ProtocolError(ErrorCode.INTERNAL_ERROR, f"{what}; session {self.session_id}"))

    def abort(self, error: ProtocolError) -> list[Event]:
        """End the session at once for a reason of the server's: its error, then its close code."""
        return [] if self.state is State.CLOSED else self._fail(error)

    def stop(self, code: CloseCode, reason: str) -> list[Event]:
        """Close now, with no message and without waiting for outstanding finals."""
        return [] if self.state is State.CLOSED else self._close(code, reason)

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
        if self._stream is None:
            return 0.0
        return self._stream.decoder.samples_in / self._stream.decoder.sample_rate

    @property
    def lag_s(self) -> float:
        """Seconds of audio received and not yet dealt with (behind the VAD, or after the oldest final
        still owed; not an utterance still spoken). Growing: the server falls behind (metrics)."""
        done = min(self._vad_pos, self._finals.oldest_end if self._finals else self._vad_pos)
        return max(0, self._buffer.end - done) / SAMPLE_RATE

    def deadline(self) -> float | None:
        """When timeout() must be called if nothing else arrives first."""
        if self.state is State.AWAITING_METADATA:
            return self._connected_at + self._limits.metadata_timeout_s
        if self.state is State.STREAMING:
            idle = self._pace.last_frame_at + self._limits.idle_timeout_s
            if self._endpointer.open_start is None:
                return idle
            return min(idle, self._pace.stalled_at(self._endpointer.settings.min_silence / SAMPLE_RATE))
        return None

    def timeout(self, now: float) -> list[Event]:
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return []
        if self.state is State.AWAITING_METADATA:
            error = f"no metadata received within {self._limits.metadata_timeout_s:g} s"
            return self._fail(ProtocolError(ErrorCode.METADATA_TIMEOUT, error))
        if now < self._pace.last_frame_at + self._limits.idle_timeout_s:
            # Audio that stops is silence: the open utterance ends as if the silence had come.
            return self._guard(lambda: self._control(Control.FINALIZE))
        error = f'no frame received for {self._limits.idle_timeout_s:g} s; send {{"terminate_session": true}} to end a stream'
        return self._fail(ProtocolError(ErrorCode.IDLE_TIMEOUT, error))

    # ------------------------------------------------------------------ metadata and control

    def _start(self, text: str) -> list[Event]:
        metadata = parse_metadata(text)
        check_model_support(metadata, self._model, self._count_tokens)
        params = metadata.streaming_params
        self._stream = _Stream(
            metadata=metadata,
            decoder=AudioDecoder(params.encoding, params.sample_rate),
            vad=self._new_vad(),
            options=decode_options(metadata),
            endpointer=Endpointer(EndpointSettings.of(metadata, drafts=self.draft_finals)),
        )
        self.state = State.STREAMING
        return []

    def _control(self, control: Control) -> list[Event]:
        if control is Control.FINALIZE:
            events = self._ingest(np.zeros(0, dtype=np.float32), every_window=True)
            return events + self._boundaries(self._endpointer.end_now(self._buffer.end, earliest=self._buffer.start))
        return self._wind_down(CloseCode.NORMAL)

    def _wind_down(self, code: CloseCode) -> list[Event]:
        assert self._stream is not None
        events = self._ingest(self._stream.decoder.flush(), every_window=True)
        events += self._boundaries(self._endpointer.end_now(self._buffer.end, earliest=self._buffer.start))
        self.state = State.CLOSING
        self._close_code_when_done = code
        return events + self._close_if_done()

    @property
    def _endpointer(self) -> Endpointer:
        assert self._stream is not None
        return self._stream.endpointer

    # ------------------------------------------------------------------ audio, VAD, endpoints

    def _audio(self, samples: np.ndarray, now: float) -> list[Event]:
        self._pace.audio(now, len(samples) / SAMPLE_RATE)  # 16 kHz: resampled already
        events = self._ingest(samples)
        return events + self._behind()

    def _behind(self) -> list[Event]:
        """A real-time stream the server has fallen too far behind is told so and closed (1013), so
        that it can move to another server rather than get finals ever staler. A stream sent faster
        than real time is ahead by its own choice and is served as fast as the server can."""
        limit, lag, end_s = self._limits.max_lag_s, self.lag_s, self._buffer.end / SAMPLE_RATE
        if limit is None or lag <= limit or self._pace.faster_than_real_time(end_s):
            return []
        start = self._finals.oldest_start
        unheard = (self._vad_pos if start is None else min(start, self._vad_pos)) / SAMPLE_RATE
        return self._fail(ProtocolError(ErrorCode.SERVER_BEHIND, (
            f"the server has fallen {lag:.1f} s behind this stream (limit {limit:g} s): the audio from "
            f"{unheard:.2f} s of the stream on has no final; closing so that it can be sent to another server")))

    def _ingest(self, samples: np.ndarray, every_window: bool = False) -> list[Event]:
        assert self._stream is not None
        self._buffer.append(samples)
        usable = (self._buffer.end - self._vad_pos) // WINDOW_SAMPLES * WINDOW_SAMPLES
        # One ONNX run per window costs about 2.4x the CPU per window of runs of three or more
        # (250 vs 105 us here); waiting for vad_batch windows trades that for up to
        # vad_batch - 1 windows of delay in seeing speech start or end.
        if usable == 0 or (usable < self.vad_batch * WINDOW_SAMPLES and not every_window):
            return []
        probs = self._stream.vad.probabilities(self._buffer.view(self._vad_pos, self._vad_pos + usable))
        events: list[Event] = []
        for prob in probs:
            # With the context prompt a draft's prompt would be a final that is not out yet.
            drafts = not (self._context_prompt and self._finals)
            found = self._endpointer.window(self._vad_pos, float(prob), earliest=self._buffer.start, drafts=drafts)
            self._vad_pos += WINDOW_SAMPLES
            events += self._boundaries(found)
        self._trim()
        return events

    def _boundaries(self, found: list[Boundary]) -> list[Event]:
        events: list[Event] = []
        for boundary in found:
            if not isinstance(boundary, Due):
                events += self._drop_draft()
            elif boundary.kind == "partial":
                self._last_partial = self._request(boundary)
                events.append(RunInference(self._last_partial))
            elif boundary.kind == "draft":
                self._draft = _Draft(self._request(boundary), boundary.end)
                events.append(RunInference(self._draft.request))
            else:
                events += self._final_due(boundary)
        return events

    def _final_due(self, due: Due) -> list[Event]:
        partial = self._catch_up(due)
        events: list[Event] = [] if partial is None else [RunInference(partial)]  # queued first
        if self._context_prompt and self._finals:
            self._finals.add(due, None)  # asked for once the final before it is out
            if partial is not None:
                self._finals.owe_partial(partial)
            return self._drop_draft() + events
        draft, self._draft = self._draft, None
        replaced = draft.request if draft is not None and draft.end == due.end else None
        final = self._request(due, replaces=replaced)
        self._finals.add(due, final)
        if partial is not None:
            self._finals.owe_partial(partial)
        if draft is None:
            return events + [RunInference(final)]
        if replaced is None:
            return [CancelInference(draft.request), *events, RunInference(final)]
        if draft.result is not None:  # recognised during the silence window
            return events + self._final_done(final, draft.result)
        return events + [RunInference(final)]  # the scheduler hands the draft's work over

    def _catch_up(self, due: Due) -> InferenceRequest | None:
        """Catch-up partials: audio sent faster than real time (a file streamed at full speed)
        reaches the VAD in large batches, so an utterance ends before any of its partials is
        back, and they would all be dropped. Its latest partial is then owed before its final."""
        partial, self._last_partial = self._last_partial, None
        if partial is None or partial.transcription_num != due.num or self._finals.owes_final(due.num):
            return None
        if not self._pace.faster_than_real_time(self._buffer.end / SAMPLE_RATE):
            return None  # a real-time stream: under load, partials are skipped, finals are not
        return replace(partial, before_final=True)  # the same audio, not copied again; a new id

    def _drop_draft(self) -> list[Event]:
        draft, self._draft = self._draft, None
        return [] if draft is None else [CancelInference(draft.request)]

    def _request(self, due: Due, replaces: InferenceRequest | None = None) -> InferenceRequest:
        stream = self._stream
        assert stream is not None
        options = stream.options
        if self._context_prompt and self._context:
            options = replace(options, context=self._context)
        detect_only = stream.metadata.whisper_params.language_detection_only
        start, prefix = due.start, None
        if replaces is not None:  # the final takes over the draft's recognition: its audio, its prefix
            start, prefix = round(replaces.offset_s * SAMPLE_RATE), replaces.options.prefix
        elif due.kind != "partial" and not detect_only:  # left context, anchored on the words sent where all are out
            start, prefix = context.left_context(due, self._buffer.start, None if self._finals else self._sent, SAMPLE_RATE)
        return InferenceRequest(
            session_id=self.session_id,
            kind=due.kind,
            transcription_num=due.num,
            audio=self._buffer.view(start, due.end).copy(),
            offset_s=start / SAMPLE_RATE,
            options=replace(options, prefix=prefix),
            detect_only=detect_only,
            speech_at=tuple((s - start) / SAMPLE_RATE for s in due.speech),
            speech_end_s=None if due.speech_end is None else (due.speech_end - start) / SAMPLE_RATE,
            heard_from_s=None if due.heard_from is None else (due.heard_from - start) / SAMPLE_RATE,
            replaces=None if replaces is None else replaces.request_id,
            context_s=(due.start - start) / SAMPLE_RATE,
            context_words=context.last_words(self._context) if start < due.start else (),
        )

    def _trim(self) -> None:
        """Keep only what a held final or a future utterance may still need."""
        keep = self._endpointer.hold_from(self._vad_pos)
        held = self._finals.held_start
        keep = keep if held is None else min(keep, held)
        self._buffer.drop_before(max(0, keep - round(context.LEFT_CONTEXT_S * SAMPLE_RATE)))

    # ------------------------------------------------------------------ results

    def _partial_done(self, request: InferenceRequest, result: Result) -> list[Event]:
        # A partial is worth sending only while its utterance is still the one being spoken and
        # every earlier final is out: messages never go back in number.
        if self._finals or self.state is not State.STREAMING or self._endpointer.open_num != request.transcription_num:
            return []
        result = guards.partial_result(request, result)
        if not result.text or (request.transcription_num, result.text) == self._shown:
            return []  # nothing, or the words the client already shows
        self._shown = (request.transcription_num, result.text)
        self._finals.partial_sent(request.transcription_num)
        return [SendMessage(messages.transcription(request, result, is_final=False))]

    def _emit_finals(self) -> list[Event]:
        events: list[Event] = []
        for request, result in self._finals.ready():
            message = self._owed_partial(request, result) if request.kind == "partial" else self._final_message(request, result)
            if message is not None:
                events.append(SendMessage(message))
        held = self._finals.next_held()
        if held is not None:  # every earlier final is out: the context of the held one is known
            request = self._request(held)
            self._finals.asked(request)
            events.append(RunInference(request))
        return events + self._close_if_done()

    def _final_done(self, request: InferenceRequest, result: Result) -> list[Event]:
        shown = self._finals.owes_final(request.transcription_num)
        if self.state is not State.CLOSED and guards.hear_alone(request, result, shown=shown):
            return [RunInference(context.alone(request, SAMPLE_RATE))]  # its entry waits for this one
        self._finals.done(request, result)
        return self._emit_finals()

    def _owed_partial(self, request: InferenceRequest, result: Result) -> Transcription | None:
        result = guards.partial_result(request, result)
        if not result.text or self.state is State.CLOSED:
            return None
        self._finals.partial_sent(request.transcription_num)
        return messages.transcription(request, result, is_final=False)

    def _final_message(self, request: InferenceRequest, result: Result) -> Transcription | None:
        num = request.transcription_num
        if request.detect_only:
            return messages.language_only(num, result)
        result = guards.final_result(request, result)
        self._sent.sent(request, result)
        if result.text:
            self._context = result.text
        elif not self._finals.owes_final(num):
            return None  # non-speech after all: the number is skipped, as PROTOCOL.md allows
        self._finals.forget_partial(num)
        return messages.transcription(request, result, is_final=True)

    # ------------------------------------------------------------------ errors and closing

    def _guard(self, step: Callable[[], list[Event]]) -> list[Event]:
        try:
            return step()
        except ProtocolError as error:
            return self._fail(error)

    def _check_frame_size(self, size: int) -> list[Event] | None:
        # uvicorn closes a frame over its ws_max_size with 1009 before it gets here; a host in
        # front of the app with a larger limit (the Ray Serve proxy's is 16 MiB) does not.
        limit = self._limits.max_frame_bytes
        if size <= limit:
            return None
        error = f"a frame of {size} bytes is over the limit of {limit} bytes"
        return self._fail(ProtocolError(ErrorCode.FRAME_TOO_LARGE, error))

    def _fail(self, error: ProtocolError) -> list[Event]:
        events: list[Event] = [SendMessage(ErrorMessage.from_error(error))]
        if error.close_code is None:
            return events
        return events + self._close(error.close_code, error.code.value)

    def _close(self, code: CloseCode, reason: str) -> list[Event]:
        self.state = State.CLOSED
        return [CloseConnection(code, reason)]

    def _close_if_done(self) -> list[Event]:
        if self.state is State.CLOSING and not self._finals:
            reason = "terminated" if self._close_code_when_done is CloseCode.NORMAL else "server shutting down"
            return self._close(self._close_code_when_done, reason)
        return []
