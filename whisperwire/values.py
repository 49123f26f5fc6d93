"""The values that pass between the parts: audio constants, decoding options, recognition
requests and results, the engine's interface, and the session's events.

Plain data and no behaviour beyond a derived property, so that every part (the session, the
scheduler, the engine, the server) can import it without importing any of the others, and no
part of the streaming core needs an ML library to be imported.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from .protocol import CloseCode, ErrorMessage, Transcription

SAMPLE_RATE = 16_000  # everything inside runs at 16 kHz: the VAD, Whisper, stream times
WINDOW_SAMPLES = 512  # one VAD window: 32 ms, the window the 16 kHz Silero model was trained on


def ms_to_samples(milliseconds: int) -> int:
    return milliseconds * SAMPLE_RATE // 1000


# --------------------------------------------------------------------------- the engine


@dataclass(frozen=True)
class ModelInfo:
    name: str
    multilingual: bool
    languages: frozenset[str]


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None  # None: detect per call, among language_options (empty: all)
    language_options: tuple[str, ...] = ()
    prompt: str | None = None
    # Text heard just before this audio (the previous utterance), given to Whisper after the
    # user's prompt; trimmed from its start so that the prompt fits.
    context: str | None = None
    beam_width: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    word_timestamps: bool = False
    dynamic_preprocessing: bool = False
    # The words already sent for the left context's audio: Whisper's output is forced to begin
    # with them, so it goes on from there (context.py).
    prefix: str | None = None
    # Encode in the smallest window that holds the audio (engine.PARTIAL_WINDOWS_S), not 30 s:
    # for partials, which their final replaces.
    fit_window: bool = False


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio given to transcribe()
    end: float
    prob: float


@dataclass(frozen=True)
class SegmentResult:
    text: str
    start: float  # seconds from the start of the audio given to transcribe()
    end: float
    avg_logprob: float
    n_tokens: int
    no_speech_prob: float
    compression_ratio: float
    words: tuple[Word, ...] | None  # None unless word timestamps were asked for


@dataclass(frozen=True)
class Timing:
    """Where one recognition's time went, on the scheduler's clock (the event loop's too)."""

    queued_at: float
    started_at: float
    ended_at: float
    encode_s: float | None  # inside Whisper's encoder, where the engine says


@dataclass(frozen=True)
class Result:
    segments: tuple[SegmentResult, ...]
    language: str
    language_prob: float | None  # None when the language was given, not detected
    encode_s: float | None = None  # seconds in the encoder, where the engine measures it
    timing: Timing | None = None  # set by the scheduler, for the metrics
    batched: int = 1  # utterances whose first encoder window was encoded in one call with this one's

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments).strip()

    @property
    def mean_logprob(self) -> float | None:
        tokens = sum(s.n_tokens for s in self.segments)
        if tokens == 0:
            return None
        return sum(s.avg_logprob * s.n_tokens for s in self.segments) / tokens


class SpeechProbabilities(Protocol):
    """One stream's VAD: P(speech) for each 512-sample window of the audio, in order."""

    def probabilities(self, audio: np.ndarray) -> np.ndarray: ...


class Engine(Protocol):
    info: ModelInfo

    def count_tokens(self, text: str) -> int: ...

    def detect_language(
        self, audio: np.ndarray, language_options: tuple[str, ...] = ()
    ) -> tuple[str, float]: ...

    def transcribe(self, audio: np.ndarray, options: DecodeOptions) -> Result: ...


# --------------------------------------------------------------------------- requests

_request_ids = itertools.count(1)

Kind = Literal["partial", "draft", "final"]


@dataclass(frozen=True, eq=False)
class InferenceRequest:
    """Audio to recognise. A "draft" is a final asked for early: the audio of the utterance as
    it will end if the silence that began holds (docs/architecture.md, drafts)."""

    session_id: str
    kind: Kind
    transcription_num: int
    audio: np.ndarray  # float32, 16 kHz
    offset_s: float  # stream time of audio[0]
    options: DecodeOptions
    detect_only: bool = False
    # The start (seconds from audio[0]) of each window the VAD called speech (at or above the
    # threshold): how much speech there is (guards.short_burst), and where (guards.uncovered_speech).
    speech_at: tuple[float, ...] = ()
    speech_end_s: float | None = None  # audio time where the VAD heard the speech stop, if it did
    heard_from_s: float | None = None  # audio time where the VAD first heard anything (guards.snap_start)
    # Left context (context.py): the first context_s seconds of audio belong to earlier finals,
    # whose last words were context_words; Whisper hears them, their words are cut again.
    context_s: float = 0.0
    context_words: tuple[str, ...] = ()
    # A final whose audio is exactly a draft's names that draft: the scheduler then hands over
    # the draft's work (waiting or running) instead of recognising the audio twice.
    replaces: int | None = None
    # A partial the session owes before its utterance's final (audio that came faster than real
    # time): queued with the finals, so no newer partial or the final itself pushes it out.
    before_final: bool = False
    # A final recognised again on its utterance's audio alone, its first recognition (with a left
    # context or a prefix) having come back with no words after a partial showed some.
    again: bool = False
    # Unique per request: dataclasses.replace() of a request makes a new one, with a new id.
    request_id: int = field(default_factory=lambda: next(_request_ids), init=False)

    @property
    def speech_s(self) -> float:
        return len(self.speech_at) * WINDOW_SAMPLES / SAMPLE_RATE


# --------------------------------------------------------------------------- session events


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
